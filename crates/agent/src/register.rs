//! Registration with the controller: at start and every [`REGISTER_INTERVAL`], so that a
//! restarted controller relearns its hosts. Failures are logged and retried.

use crate::agent::Agent;
use nimbus_agent_api::RegisterHost;
use std::time::Duration;

/// How often the agent registers.
pub const REGISTER_INTERVAL: Duration = Duration::from_secs(10);

/// Registers forever (abort the task to stop).
pub async fn register_loop(agent: Agent, controller_url: String) {
    let url = format!(
        "{}/v1/internal/hosts/register",
        controller_url.trim_end_matches('/')
    );
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; not registering");
            return;
        }
    };
    let mut ok = None;
    let mut tick = tokio::time::interval(REGISTER_INTERVAL);
    loop {
        tick.tick().await;
        let body = RegisterHost {
            agent_url: agent.advertise_url().to_string(),
            inventory: agent.inventory(),
        };
        let result = http
            .post(&url)
            .bearer_auth(agent.token())
            .json(&body)
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match (result, ok) {
            (Ok(_), Some(true)) => tracing::debug!(url, "registered"),
            (Ok(_), _) => {
                tracing::info!(url, "registered with the controller");
                ok = Some(true);
            }
            (Err(e), Some(false)) => tracing::debug!(url, error = %e, "registration failed"),
            (Err(e), _) => {
                tracing::warn!(url, error = %e, "registration failed; retrying every 10 s");
                ok = Some(false);
            }
        }
    }
}
