//! `--wait`: follow an operation with a progress display until it ends.

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use nimbus_api::{OperationState, OperationView};
use nimbus_client::Client;
use std::time::Duration;

/// Waits for operation `op` to finish, showing its steps and latest message; fails (exit
/// code 1) when the operation did not succeed.
pub async fn wait(
    client: &Client,
    op: &OperationView,
    timeout_secs: u64,
) -> anyhow::Result<OperationView> {
    let bar = ProgressBar::new(op.steps_total.max(1) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:20}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} {}", op.kind.as_str(), op.target_name));
    bar.enable_steady_tick(Duration::from_millis(120));
    let id = op.id.to_string();
    let result = client
        .wait_operation(&id, Duration::from_secs(timeout_secs), |op| {
            bar.set_length(op.steps_total.max(1) as u64);
            bar.set_position(op.steps_done as u64);
            let running = op
                .steps
                .iter()
                .find(|s| s.state == nimbus_api::StepState::Running)
                .map(|s| s.name.clone());
            let msg = match (&running, &op.message) {
                (Some(step), Some(m)) => format!("{step}: {m}"),
                (Some(step), None) => step.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => String::new(),
            };
            bar.set_message(msg);
        })
        .await;
    bar.finish_and_clear();
    let done = result?;
    match done.state {
        OperationState::Succeeded => Ok(done),
        OperationState::Cancelled => bail!("operation {} was cancelled", done.id),
        _ => bail!(
            "operation {} failed: {}",
            done.id,
            done.error
                .clone()
                .unwrap_or_else(|| "no reason given".into())
        ),
    }
}
