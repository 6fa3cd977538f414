//! `nimbus snapshot ...`

use super::{follow_then, step_output};
use crate::args::{Connection, Output, SnapshotCmd};
use crate::{context, output};
use nimbus_api::{CreateSnapshot, SnapshotDeleted, SnapshotRestored, SnapshotView};
use std::collections::HashMap;
use uuid::Uuid;

pub async fn run(conn: &Connection, out: Output, cmd: SnapshotCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        SnapshotCmd::Create {
            instance,
            name,
            disk_only,
            wait,
        } => {
            let req = CreateSnapshot {
                instance,
                name,
                disk_only,
            };
            let op = client.create_snapshot(&req).await?;
            let op = follow_then(&client, out, op, &wait).await?;
            let id = step_output::<serde_json::Value>(&op, "record")
                .and_then(|o| o.get("snapshot_id")?.as_str().map(str::to_string));
            if let (true, Output::Table, Some(id)) = (wait.wait, out, id) {
                print_taken(&client.snapshot(&id).await?);
            }
            Ok(())
        }
        SnapshotCmd::List { instance } => {
            let all = client.list_snapshots(instance.as_deref()).await?;
            match out {
                Output::Json => output::json(&all),
                Output::Table => {
                    output::table(HEADERS, &tree_rows(&all));
                    Ok(())
                }
            }
        }
        SnapshotCmd::Show { snapshot } => {
            let s = client.snapshot(&snapshot).await?;
            match out {
                Output::Json => output::json(&s),
                Output::Table => {
                    show(&s);
                    Ok(())
                }
            }
        }
        SnapshotCmd::Restore { snapshot, wait } => {
            let op = client.restore_snapshot(&snapshot).await?;
            let op = follow_then(&client, out, op, &wait).await?;
            if let (Output::Table, Some(r)) = (out, step_output::<SnapshotRestored>(&op, "restore"))
            {
                let heartbeat = r
                    .first_heartbeat_ms
                    .map(|ms| format!("{ms} ms"))
                    .unwrap_or_else(|| "none yet".into());
                output::fields(&[
                    ("restored", format!("{} to {snapshot}", op.target_name)),
                    ("running after", format!("{} ms", r.running_ms)),
                    ("first heartbeat after", heartbeat),
                ]);
            }
            Ok(())
        }
        SnapshotCmd::Delete { snapshot, wait } => {
            let op = client.delete_snapshot(&snapshot).await?;
            let op = follow_then(&client, out, op, &wait).await?;
            if let (Output::Table, Some(d)) =
                (out, step_output::<SnapshotDeleted>(&op, "delete_on_host"))
            {
                output::fields(&[
                    ("snapshot", snapshot.clone()),
                    ("freed", output::bytes(d.freed_bytes)),
                ]);
            }
            Ok(())
        }
    }
}

const HEADERS: &[&str] = &[
    "name", "instance", "state", "memory", "stored", "pause", "host", "created",
];

/// Rows in tree order: each instance's roots, then their children indented under them;
/// `*` marks the snapshot an instance's state descends from.
fn tree_rows(all: &[SnapshotView]) -> Vec<Vec<String>> {
    let ids: Vec<Uuid> = all.iter().map(|s| s.id).collect();
    let mut children: HashMap<Option<Uuid>, Vec<&SnapshotView>> = HashMap::new();
    for s in all {
        // A parent outside the listing (filtered out) makes a root here.
        let parent = s.parent_id.filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(s);
    }
    let mut rows = Vec::new();
    let roots = children.get(&None).cloned().unwrap_or_default();
    for root in roots {
        push_subtree(root, "", "", &children, &mut rows);
    }
    rows
}

fn push_subtree(
    s: &SnapshotView,
    lead: &str,
    branch: &str,
    children: &HashMap<Option<Uuid>, Vec<&SnapshotView>>,
    rows: &mut Vec<Vec<String>>,
) {
    let mark = if s.current { " *" } else { "" };
    rows.push(vec![
        format!("{lead}{branch}{}{mark}", s.name),
        s.instance.clone(),
        s.state.to_string(),
        if s.memory { "yes" } else { "disk only" }.into(),
        output::bytes(s.stored_bytes),
        format!("{:.1} ms", s.vm_pause_ms),
        s.host.clone(),
        s.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
    ]);
    let kids = children.get(&Some(s.id)).cloned().unwrap_or_default();
    let lead = match branch {
        "" => lead.to_string(),
        "└─ " => format!("{lead}   "),
        _ => format!("{lead}│  "),
    };
    for (i, kid) in kids.iter().enumerate() {
        let branch = if i + 1 == kids.len() {
            "└─ "
        } else {
            "├─ "
        };
        push_subtree(kid, &lead, branch, children, rows);
    }
}

fn show(s: &SnapshotView) {
    output::fields(&[
        ("id", s.id.to_string()),
        ("name", s.name.clone()),
        ("instance", s.instance.clone()),
        ("state", s.state.to_string()),
        ("parent", output::opt(&s.parent)),
        ("current", if s.current { "yes" } else { "no" }.into()),
        (
            "content",
            if s.memory {
                "memory, CPU and disk"
            } else {
                "disk only"
            }
            .into(),
        ),
        ("host", s.host.clone()),
        ("VM pause", format!("{:.1} ms", s.vm_pause_ms)),
        ("stored", stored(s)),
        ("replicated", replicated(s)),
        ("operation", output::opt(&s.operation)),
        ("created", s.created_at.to_rfc3339()),
    ]);
}

/// `12.4 MiB (disk layer 1.2 MiB, new memory 11.2 MiB of 480.0 MiB captured)`.
fn stored(s: &SnapshotView) -> String {
    let memory = if s.memory {
        format!(
            ", new memory {} of {} captured",
            output::bytes(s.memory_new_bytes),
            output::bytes(s.memory_bytes)
        )
    } else {
        String::new()
    };
    format!(
        "{} (disk layer {}{memory})",
        output::bytes(s.stored_bytes),
        output::bytes(s.disk_layer_bytes)
    )
}

/// `yes, at 2026-12-06T03:10:02Z (31.2 MiB sent), held by 2 of 2 live controllers` or `no`:
/// whether an HA restart of an instance with a local disk can use it.
fn replicated(s: &SnapshotView) -> String {
    let Some(at) = s.replicated_at else {
        return "no".into();
    };
    let held = match &s.replicas {
        Some(r) if r.held == 0 => {
            ", held by no live controller (an HA restart cannot use it)".to_string()
        }
        Some(r) => format!(", held by {} of {} live controllers", r.held, r.controllers),
        None => String::new(),
    };
    format!(
        "yes, at {} ({} sent){held}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        output::bytes(s.replica_bytes)
    )
}

/// The summary after `snapshot create --wait`.
fn print_taken(s: &SnapshotView) {
    output::fields(&[
        ("snapshot", format!("{} of {}", s.name, s.instance)),
        ("VM pause", format!("{:.1} ms", s.vm_pause_ms)),
        ("stored", stored(s)),
        ("parent", output::opt(&s.parent)),
        ("host", s.host.clone()),
    ]);
}
