//! `nimbus group ...`

use super::follow;
use crate::args::{Connection, GroupCmd, Output};
use crate::{context, output};
use nimbus_api::{CreateGroup, GroupView, PolicyKind, StepBound, UpdateGroup};

fn pct(v: Option<f64>) -> String {
    v.map(|p| format!("{p:.0}%")).unwrap_or_else(|| "-".into())
}

fn row(g: &GroupView) -> Vec<String> {
    vec![
        g.name.clone(),
        format!("{}/{}", g.current, g.desired),
        format!("{}..{}", g.min, g.max),
        format!("{}%", g.target_cpu),
        pct(g.cpu_percent),
        g.replacements.to_string(),
        g.flavor.clone(),
        g.state.clone(),
    ]
}

const HEADERS: &[&str] = &[
    "name",
    "current/desired",
    "min..max",
    "target",
    "cpu",
    "replaced",
    "flavor",
    "state",
];

fn policy(g: &GroupView) -> String {
    match g.policy {
        PolicyKind::TargetTracking => format!("target tracking, {}% CPU", g.target_cpu),
        PolicyKind::Step => {
            let steps: Vec<String> = g
                .steps
                .iter()
                .map(|s| {
                    let sign = if s.bound == StepBound::Above {
                        '>'
                    } else {
                        '<'
                    };
                    format!("{sign}{}%: {:+}", s.cpu, s.change)
                })
                .collect();
            format!("step ({})", steps.join(", "))
        }
    }
}

fn show(out: Output, g: &GroupView) -> anyhow::Result<()> {
    if out == Output::Json {
        return output::json(g);
    }
    output::fields(&[
        ("name", g.name.clone()),
        ("state", g.state.clone()),
        ("desired", g.desired.to_string()),
        ("current", g.current.to_string()),
        ("min..max", format!("{}..{}", g.min, g.max)),
        ("policy", policy(g)),
        ("avg cpu", pct(g.cpu_percent)),
        (
            "window",
            format!("{} s (cooldown {} s)", g.window_secs, g.cooldown_secs),
        ),
        ("flavor", format!("{} (image {})", g.flavor, g.image)),
        ("replacements", g.replacements.to_string()),
    ]);
    println!();
    let rows: Vec<Vec<String>> = g
        .instances
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.state.to_string(),
                output::opt(&m.host),
                pct(m.cpu_percent),
            ]
        })
        .collect();
    output::table(&["instance", "state", "host", "cpu"], &rows);
    println!();
    let rows: Vec<Vec<String>> = g
        .events
        .iter()
        .map(|e| {
            vec![
                e.at.format("%H:%M:%S").to_string(),
                e.kind.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    output::table(&["at", "event", "message"], &rows);
    Ok(())
}

pub async fn run(conn: &Connection, out: Output, cmd: GroupCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        GroupCmd::Create {
            name,
            flavor,
            image,
            min,
            max,
            desired,
            target_cpu,
            policy,
            steps,
            window_secs,
            cooldown_secs,
        } => {
            let req = CreateGroup {
                name,
                flavor,
                image,
                min,
                max,
                desired,
                target_cpu,
                policy: policy.into(),
                steps,
                window_secs,
                cooldown_secs,
            };
            show(out, &client.create_group(&req).await?)
        }
        GroupCmd::List => output::list(out, &client.list_groups().await?, HEADERS, row),
        GroupCmd::Show { name } => show(out, &client.group(&name).await?),
        GroupCmd::Set {
            name,
            desired,
            min,
            max,
            target_cpu,
            window_secs,
            cooldown_secs,
        } => {
            let req = UpdateGroup {
                desired,
                min,
                max,
                target_cpu,
                window_secs,
                cooldown_secs,
            };
            if req == UpdateGroup::default() {
                anyhow::bail!(
                    "nothing to change: give --desired, --min, --max, --target-cpu, --window-secs or --cooldown-secs"
                );
            }
            show(out, &client.update_group(&name, &req).await?)
        }
        GroupCmd::Delete { name, wait } => {
            follow(&client, out, client.delete_group(&name).await?, &wait).await
        }
    }
}
