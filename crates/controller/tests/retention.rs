//! Retention, without agents: usage samples older than the retention are rolled up and every
//! usage total a user can query over whole hours (per instance and in total, per project,
//! and the `/metrics` totals since the beginning) is unchanged; old finished operations and
//! audit entries are deleted, what is recent, still running, or still named is kept.
//! Samples are written to the store directly (what agents would have pushed: irregular
//! rates, a gap, meters that end, a disk meter), so the test controls their times.

use chrono::{DateTime, TimeZone, Utc};
use nimbus_api::{AuditEntry, OperationKind, UsageQuery, UsageReport};
use nimbus_controller::app::Caller;
use nimbus_controller::background::retention;
use nimbus_controller::{App, ControllerConfig};
use nimbus_store::{NewOperation, UsageRow, HOUR_MS};
use uuid::Uuid;

async fn fixture() -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ControllerConfig::new(dir.path().to_path_buf());
    let app = App::open(config).await.expect("open");
    app.bootstrap().await.expect("bootstrap");
    (app, dir)
}

fn admin() -> Caller {
    Caller {
        explicit_project: false,
        ..Caller::system("retention-test", "default")
    }
}

/// A meter of `kind` sampled every `step_s` seconds from `start_ms` for `count` samples,
/// skipping samples `gap`; its rates vary from sample to sample, so thinning that loses
/// usage would show.
struct Meter {
    kind: &'static str,
    project: &'static str,
    start_ms: i64,
    step_s: i64,
    count: u64,
    gap: std::ops::Range<u64>,
    ends: bool,
}

fn samples(m: &Meter) -> Vec<UsageRow> {
    let (meter_id, instance_id) = (Uuid::new_v4(), Uuid::new_v4());
    let mut out = Vec::new();
    let (mut running, mut cpu, mut rx, mut storage) = (0u64, 0u64, 0u64, 0u64);
    for seq in 1..=m.count {
        let wobble = (seq * 7919) % 13 + 1;
        running += m.step_s as u64 * 1000 * wobble / 13;
        cpu += 3_000_000 * wobble * wobble;
        rx += 1500 * wobble;
        storage += m.step_s as u64 * 2048 * wobble;
        if m.gap.contains(&seq) {
            continue;
        }
        out.push(UsageRow {
            meter_id,
            seq,
            kind: m.kind.into(),
            instance_id,
            instance_name: format!("vm-{}", &instance_id.to_string()[..4]),
            project: m.project.into(),
            host: "host1".into(),
            started_ms: m.start_ms,
            sampled_ms: m.start_ms + seq as i64 * m.step_s * 1000,
            vcpus: 2,
            memory_mib: 512,
            running_ms: running,
            cpu_ns: cpu,
            net_rx_bytes: rx,
            net_tx_bytes: rx / 3,
            rss_bytes: 1 << 28,
            storage_bytes: 1 << 30,
            storage_kib_seconds: storage,
            last: m.ends && seq == m.count,
        });
    }
    out
}

async fn report(app: &App, from_ms: i64, to_ms: i64) -> UsageReport {
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).single().expect("time");
    let q = UsageQuery {
        project: None,
        from: Some(at(from_ms)),
        to: Some(at(to_ms)),
    };
    app.usage_report(&admin(), &q).await.expect("report")
}

fn assert_close(what: &str, a: f64, b: f64) {
    let tolerance = 1e-9 * a.abs().max(b.abs()).max(1.0);
    assert!((a - b).abs() <= tolerance, "{what}: {a} before, {b} after");
}

fn assert_same(what: &str, before: &UsageReport, after: &UsageReport) {
    assert_eq!(
        before.instances.len(),
        after.instances.len(),
        "{what}: instances"
    );
    let pairs = before
        .instances
        .iter()
        .map(|i| (&i.instance, &i.usage, i.running_seconds));
    let total = "total".to_string();
    let pairs = pairs.chain([(&total, &before.total, 0.0)]);
    let afters = after
        .instances
        .iter()
        .map(|i| (&i.usage, i.running_seconds));
    let afters = afters.chain([(&after.total, 0.0)]);
    for ((name, b, b_run), (a, a_run)) in pairs.zip(afters) {
        let what = format!("{what} {name}");
        assert_close(&format!("{what} running_seconds"), b_run, a_run);
        assert_close(
            &format!("{what} vcpu_s"),
            b.vcpu_seconds_allocated,
            a.vcpu_seconds_allocated,
        );
        assert_close(
            &format!("{what} cpu_s"),
            b.cpu_seconds_used,
            a.cpu_seconds_used,
        );
        assert_close(
            &format!("{what} memory"),
            b.memory_mib_seconds,
            a.memory_mib_seconds,
        );
        assert_close(&format!("{what} disk"), b.disk_gib_hours, a.disk_gib_hours);
        assert_close(
            &format!("{what} snapshot"),
            b.snapshot_gib_hours,
            a.snapshot_gib_hours,
        );
        assert_eq!(b.net_rx_bytes, a.net_rx_bytes, "{what} rx");
        assert_eq!(b.net_tx_bytes, a.net_tx_bytes, "{what} tx");
    }
}

/// The most samples any meter has in one clock hour before `before_ms`.
async fn most_per_meter_hour(app: &App, before_ms: i64) -> i64 {
    use sqlx::Row;
    sqlx::query(
        "SELECT MAX(n) AS most FROM (SELECT COUNT(*) AS n FROM usage_samples \
         WHERE sampled_ms < $1 GROUP BY meter_id, sampled_ms / 3600000) AS per_hour",
    )
    .bind(before_ms)
    .fetch_one(app.store().pool())
    .await
    .expect("most")
    .try_get("most")
    .expect("most")
}

async fn sample_count(app: &App) -> i64 {
    use sqlx::Row;
    sqlx::query("SELECT COUNT(*) AS n FROM usage_samples")
        .fetch_one(app.store().pool())
        .await
        .expect("count")
        .try_get("n")
        .expect("n")
}

#[tokio::test]
async fn rolled_up_usage_reports_the_same_totals_over_whole_hours() {
    let (app, _dir) = fixture().await;
    let now = Utc::now().timestamp_millis();
    let day0 = (now - 4 * 24 * HOUR_MS).div_euclid(HOUR_MS) * HOUR_MS;
    let meters = [
        // Opens 17 minutes into an hour, samples every 10 s for 5 h, with a 2-hour gap.
        Meter {
            kind: "instance",
            project: "default",
            start_ms: day0 + 17 * 60_000,
            step_s: 20,
            count: 900,
            gap: 200..550,
            ends: true,
        },
        // Irregular step, runs on until well inside the retention (its recent samples stay).
        Meter {
            kind: "instance",
            project: "acme",
            start_ms: day0 + 5 * 60_000,
            step_s: 599,
            count: 550,
            gap: 0..0,
            ends: false,
        },
        Meter {
            kind: "disk",
            project: "acme",
            start_ms: day0,
            step_s: 120,
            count: 300,
            gap: 0..0,
            ends: true,
        },
        Meter {
            kind: "snapshot",
            project: "default",
            start_ms: day0 + 90 * 60_000,
            step_s: 61,
            count: 250,
            gap: 0..0,
            ends: true,
        },
    ];
    for m in &meters {
        for s in samples(m) {
            assert!(app.store().insert_usage_sample(&s).await.expect("insert"));
        }
    }
    let hours = |a: i64, b: i64| (day0 + a * HOUR_MS, day0 + b * HOUR_MS);
    let windows = [
        hours(0, 96),
        hours(0, 1),
        hours(1, 2),
        hours(2, 5),
        hours(3, 4),
        hours(0, 30),
        hours(40, 50),
        hours(47, 95),
    ];
    let mut before = Vec::new();
    for (from, to) in windows {
        before.push(report(&app, from, to).await);
    }
    let totals_before = app.usage_by_project().await.expect("totals");
    let rows_before = sample_count(&app).await;

    let removed = retention::pass(&app).await.expect("pass");
    let rows_after = sample_count(&app).await;
    assert!(removed.usage_samples > 0, "{removed:?}");
    assert_eq!(rows_before - rows_after, removed.usage_samples as i64);
    let cutoff = (now - 48 * HOUR_MS).div_euclid(HOUR_MS) * HOUR_MS;
    assert_eq!(
        most_per_meter_hour(&app, cutoff).await,
        2,
        "{rows_before} -> {rows_after}"
    );

    for ((from, to), b) in windows.iter().zip(&before) {
        let a = report(&app, *from, *to).await;
        let what = format!("[{}h, {}h)", (from - day0) / HOUR_MS, (to - day0) / HOUR_MS);
        assert!(
            !b.instances.is_empty() || (from - day0) / HOUR_MS >= 40,
            "{what}: a window with usage"
        );
        assert_same(&what, b, &a);
    }
    let totals_after = app.usage_by_project().await.expect("totals");
    assert_eq!(
        totals_before.keys().collect::<Vec<_>>(),
        totals_after.keys().collect::<Vec<_>>()
    );
    for (project, b) in &totals_before {
        let a = &totals_after[project];
        assert_close(&format!("{project} total vcpu_s"), b.vcpu_s, a.vcpu_s);
        assert_close(&format!("{project} total cpu_s"), b.cpu_s, a.cpu_s);
        assert_close(&format!("{project} total disk"), b.disk_gib_h, a.disk_gib_h);
        assert_close(&format!("{project} total rx"), b.net_rx, a.net_rx);
    }

    // A second pass has nothing left to do; the recent samples were never touched.
    let again = retention::pass(&app).await.expect("pass");
    assert_eq!(again.usage_samples, 0);
    let recent = report(&app, now - 24 * HOUR_MS, now).await;
    assert!(!recent.instances.is_empty(), "recent usage stays");
}

#[tokio::test]
async fn old_finished_operations_and_audit_entries_are_deleted() {
    let (app, _dir) = fixture().await;
    let store = app.store();
    let old = "2020-01-01T00:00:00.000000Z";
    let op = |kind| NewOperation {
        id: Uuid::new_v4(),
        kind,
        project: "default".into(),
        target_id: Uuid::new_v4(),
        target_name: "x".into(),
        params: serde_json::json!({}),
    };
    let mut ids = Vec::new();
    for (state, age) in [
        ("succeeded", old),
        ("failed", old),
        ("running", old),
        ("succeeded", "now"),
    ] {
        let o = op(OperationKind::InstanceStart);
        store.insert_operation(&o).await.expect("op");
        let age = if age == "now" {
            now_text()
        } else {
            age.to_string()
        };
        sqlx::query("UPDATE operations SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(state)
            .bind(age)
            .bind(o.id.to_string())
            .execute(store.pool())
            .await
            .expect("age");
        ids.push(o.id);
    }
    let audit = |at: DateTime<Utc>| AuditEntry {
        id: Uuid::new_v4(),
        at,
        token_id: None,
        token_name: None,
        project: Some("default".into()),
        method: "POST".into(),
        path: "/v1/flavors".into(),
        action: "POST /v1/flavors".into(),
        target: None,
        status: 201,
        client_ip: None,
    };
    let (ancient, recent) = (
        audit(Utc::now() - chrono::Duration::days(91)),
        audit(Utc::now()),
    );
    store.insert_audit(&ancient).await.expect("audit");
    store.insert_audit(&recent).await.expect("audit");

    let removed = retention::pass(&app).await.expect("pass");
    assert_eq!(
        (removed.operations, removed.audit_entries),
        (2, 1),
        "{removed:?}"
    );
    let scope = nimbus_store::Scope::All;
    let kept: Vec<bool> = still_there(&app, &scope, &ids).await;
    assert_eq!(
        kept,
        [false, false, true, true],
        "old finished ones go; running and recent stay"
    );
    let left: Vec<Uuid> = store
        .list_audit(&scope, None, 100)
        .await
        .expect("audit")
        .iter()
        .map(|e| e.id)
        .collect();
    assert!(
        left.contains(&recent.id) && !left.contains(&ancient.id),
        "{left:?}"
    );
}

fn now_text() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

async fn still_there(app: &App, scope: &nimbus_store::Scope, ids: &[Uuid]) -> Vec<bool> {
    let mut out = Vec::new();
    for id in ids {
        out.push(app.store().get_operation(scope, *id).await.is_ok());
    }
    out
}
