//! `nimbus usage`: usage per instance and in total over a period, as a table, JSON or CSV.

use crate::args::{Connection, OutputArg, UsageArgs};
use crate::{context, output};
use anyhow::{bail, Context};
use chrono::{DateTime, Duration, Utc};
use nimbus_api::{UsageAmounts, UsageQuery, UsageReport};

const HEADERS: &[&str] = &[
    "instance",
    "project",
    "running_s",
    "vcpu_s_alloc",
    "cpu_s_used",
    "memory_mib_s",
    "disk_gib_h",
    "snapshot_gib_h",
    "net_rx_bytes",
    "net_tx_bytes",
];

pub async fn run(conn: &Connection, out: OutputArg, args: UsageArgs) -> anyhow::Result<()> {
    let now = Utc::now();
    let q = UsageQuery {
        // The global --project (sent with every request) chooses the project; an admin who
        // names none sees every project.
        project: None,
        from: args
            .from
            .as_deref()
            .map(|s| parse_time(s, now))
            .transpose()?,
        to: args.to.as_deref().map(|s| parse_time(s, now)).transpose()?,
    };
    let report = context::client(conn)?.usage(&q).await?;
    match out {
        OutputArg::Json => output::json(&report),
        OutputArg::Table => {
            println!("usage from {} to {}", report.from, report.to);
            output::table(HEADERS, &rows(&report));
            Ok(())
        }
        OutputArg::Csv => {
            print!("{}", csv(&report));
            Ok(())
        }
    }
}

/// One line per instance and a total.
fn rows(r: &UsageReport) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = r
        .instances
        .iter()
        .map(|i| cells(&i.instance, &i.project, i.running_seconds, &i.usage))
        .collect();
    let running: f64 = r.instances.iter().map(|i| i.running_seconds).sum();
    rows.push(cells("TOTAL", "", running, &r.total));
    rows
}

fn cells(name: &str, project: &str, running_s: f64, u: &UsageAmounts) -> Vec<String> {
    vec![
        name.to_string(),
        project.to_string(),
        format!("{running_s:.1}"),
        format!("{:.1}", u.vcpu_seconds_allocated),
        format!("{:.2}", u.cpu_seconds_used),
        format!("{:.0}", u.memory_mib_seconds),
        format!("{:.6}", u.disk_gib_hours),
        format!("{:.6}", u.snapshot_gib_hours),
        u.net_rx_bytes.to_string(),
        u.net_tx_bytes.to_string(),
    ]
}

/// The report as CSV (a header line, then instances and the total). Instance and project
/// names are validated names (lowercase letters, digits, `-`), so no cell needs quoting.
pub fn csv(r: &UsageReport) -> String {
    let mut text = HEADERS.join(",");
    text.push('\n');
    for row in rows(r) {
        text.push_str(&row.join(","));
        text.push('\n');
    }
    text
}

/// RFC 3339, or a time before `now`: `-90s`, `-30m`, `-1h`, `-7d`.
pub fn parse_time(s: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Some(ago) = s.strip_prefix('-') {
        let (n, unit) = ago.split_at(ago.len().saturating_sub(1));
        let n: i64 = n
            .parse()
            .with_context(|| format!("{s:?}: expected a number before the unit, e.g. -1h"))?;
        let d = match unit {
            "s" => Duration::seconds(n),
            "m" => Duration::minutes(n),
            "h" => Duration::hours(n),
            "d" => Duration::days(n),
            _ => bail!("{s:?}: the unit must be s, m, h or d, e.g. -1h"),
        };
        return Ok(now - d);
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| {
            format!("{s:?} is neither RFC 3339 (2026-11-25T10:00:00Z) nor a time ago (-1h)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::InstanceUsage;

    #[test]
    fn times_absolute_and_relative() {
        let now = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(
            parse_time("-1h", now).expect("rel"),
            now - Duration::hours(1)
        );
        assert_eq!(
            parse_time("-90s", now).expect("rel"),
            now - Duration::seconds(90)
        );
        assert_eq!(
            parse_time("2026-11-25T10:00:00+01:00", now).expect("abs"),
            now - Duration::hours(3)
        );
        assert!(parse_time("-1w", now)
            .expect_err("an error")
            .to_string()
            .contains("unit"));
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn csv_has_a_row_per_instance_and_a_total() {
        let now = Utc::now();
        let used = UsageAmounts {
            vcpu_seconds_allocated: 80.0,
            net_rx_bytes: 5,
            ..UsageAmounts::default()
        };
        let r = UsageReport {
            project: None,
            from: now,
            to: now,
            instances: vec![InstanceUsage {
                instance_id: uuid::Uuid::nil(),
                instance: "web1".into(),
                project: "default".into(),
                running_seconds: 40.0,
                usage: used.clone(),
            }],
            total: used,
        };
        let text = csv(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("instance,project,running_s,vcpu_s_alloc"));
        assert!(lines[1].starts_with("web1,default,40.0,80.0,"));
        assert!(lines[2].starts_with("TOTAL,,40.0,80.0,"));
        assert!(lines[2].ends_with(",5,0"));
    }
}
