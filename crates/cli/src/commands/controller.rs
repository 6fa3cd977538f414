//! `nimbus controller list`.

use crate::args::{Connection, ControllerAction, Output};
use crate::{context, output};
use nimbus_api::ControllerView;

const HEADERS: &[&str] = &[
    "ID",
    "URL",
    "VERSION",
    "HEARTBEAT",
    "OPERATIONS",
    "TASKS",
    "STARTED",
];

fn row(c: &ControllerView) -> Vec<String> {
    let id = c.id.to_string();
    vec![
        if c.this {
            format!("{id} (answered)")
        } else {
            id
        },
        c.url.clone(),
        c.version.clone(),
        format!("{:.1}s ago", c.heartbeat_age_ms as f64 / 1000.0),
        c.operations.to_string(),
        if c.tasks.is_empty() {
            "-".into()
        } else {
            c.tasks.join(",")
        },
        c.started_at.to_rfc3339(),
    ]
}

pub async fn run(conn: &Connection, out: Output, action: ControllerAction) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match action {
        ControllerAction::List => {
            output::list(out, &client.list_controllers().await?, HEADERS, row)
        }
    }
}
