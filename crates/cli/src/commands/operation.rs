//! `nimbus operation ...`

use crate::args::{Connection, OperationCmd, Output};
use crate::{context, output, progress};
use nimbus_api::OperationView;

fn row(o: &OperationView) -> Vec<String> {
    vec![
        o.id.to_string(),
        o.kind.as_str().into(),
        o.target_name.clone(),
        o.state.as_str().into(),
        format!("{}/{}", o.steps_done, o.steps_total),
        o.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        output::opt(&o.error),
    ]
}

const HEADERS: &[&str] = &["id", "kind", "target", "state", "steps", "created", "error"];

fn show(out: Output, o: &OperationView) -> anyhow::Result<()> {
    match out {
        Output::Json => output::json(o),
        Output::Table => {
            output::fields(&[
                ("id", o.id.to_string()),
                ("kind", o.kind.as_str().into()),
                ("target", format!("{} ({})", o.target_name, o.target_id)),
                ("state", o.state.as_str().into()),
                ("message", output::opt(&o.message)),
                ("error", output::opt(&o.error)),
                ("created", o.created_at.to_rfc3339()),
                ("updated", o.updated_at.to_rfc3339()),
            ]);
            println!();
            let rows: Vec<Vec<String>> = o
                .steps
                .iter()
                .map(|s| {
                    let took = match (s.started_at, s.finished_at) {
                        (Some(a), Some(b)) => format!("{} ms", (b - a).num_milliseconds()),
                        _ => "-".into(),
                    };
                    vec![
                        s.name.clone(),
                        s.state.as_str().into(),
                        took,
                        output::opt(&s.error),
                    ]
                })
                .collect();
            output::table(&["step", "state", "took", "error"], &rows);
            Ok(())
        }
    }
}

pub async fn run(conn: &Connection, out: Output, cmd: OperationCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        OperationCmd::List { limit } => {
            output::list(out, &client.list_operations(limit).await?, HEADERS, row)
        }
        OperationCmd::Show { id } => show(out, &client.operation(&id).await?),
        OperationCmd::Wait { id, timeout } => {
            let op = client.operation(&id).await?;
            let done = progress::wait(&client, &op, timeout).await?;
            show(out, &done)
        }
        OperationCmd::Cancel { id } => {
            let op = client.cancel_operation(&id).await?;
            println!(
                "cancel requested for operation {} ({} {})",
                op.id,
                op.kind.as_str(),
                op.target_name
            );
            Ok(())
        }
    }
}
