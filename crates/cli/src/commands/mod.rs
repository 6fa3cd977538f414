//! Client commands, one module per resource, plus the server commands.

pub mod audit;
pub mod console;
pub mod controller;
pub mod flavor;
pub mod floating_ip;
pub mod group;
pub mod host;
pub mod host_trust;
pub mod image;
pub mod instance;
pub mod keypair;
pub mod network;
pub mod operation;
pub mod placement_group;
pub mod project;
pub mod quota;
pub mod secgroup;
pub mod server;
pub mod snapshot;
pub mod token;
pub mod usage;

use crate::args::{Output, WaitArgs};
use crate::{output, progress};
use nimbus_api::OperationView;
use nimbus_client::Client;

/// Prints an accepted operation, or waits for it with `--wait`.
pub async fn follow(
    client: &Client,
    out: Output,
    op: OperationView,
    wait: &WaitArgs,
) -> anyhow::Result<()> {
    follow_then(client, out, op, wait).await.map(drop)
}

/// Like [`follow`], and answers the operation as it ended (or as accepted, without
/// `--wait`), for commands that print a summary of what it did.
pub async fn follow_then(
    client: &Client,
    out: Output,
    op: OperationView,
    wait: &WaitArgs,
) -> anyhow::Result<OperationView> {
    let op = if wait.wait {
        progress::wait(client, &op, wait.timeout).await?
    } else {
        op
    };
    match out {
        Output::Json => output::json(&op)?,
        Output::Table => {
            if wait.wait {
                println!(
                    "{} {}: {}",
                    op.kind.as_str(),
                    op.target_name,
                    op.state.as_str()
                );
            } else {
                println!(
                    "{} {}: operation {} accepted (follow with `nimbus operation wait {}`)",
                    op.kind.as_str(),
                    op.target_name,
                    op.id,
                    op.id
                );
            }
        }
    }
    Ok(op)
}

/// What step `name` of a finished operation reported, decoded.
pub fn step_output<T: serde::de::DeserializeOwned>(op: &OperationView, name: &str) -> Option<T> {
    let step = op.steps.iter().find(|s| s.name == name)?;
    serde_json::from_value(step.output.clone()?).ok()
}
