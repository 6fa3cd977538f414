//! Client commands, one module per resource, plus the server commands.

pub mod console;
pub mod flavor;
pub mod group;
pub mod host;
pub mod image;
pub mod instance;
pub mod operation;
pub mod server;

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
    let op = if wait.wait {
        progress::wait(client, &op, wait.timeout).await?
    } else {
        op
    };
    match out {
        Output::Json => output::json(&op),
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
            Ok(())
        }
    }
}
