//! Registration with the controller: at start and every [`REGISTER_INTERVAL`], so that a
//! restarted controller relearns its hosts. Failures are logged and retried.
//!
//! The answer ([`RegisterResponse`], or no body from an older controller) says what the host
//! must set up: the cloud network is applied (and repaired) after every registration.

use crate::agent::Agent;
use crate::controllers::ControllerUrls;
use crate::error::error_chain;
use crate::fence::Contact;
use nimbus_agent_api::{NetworkConfig, RegisterHost, RegisterResponse};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often the agent registers.
pub const REGISTER_INTERVAL: Duration = Duration::from_secs(3);

/// Registers forever (abort the task to stop).
///
/// Every answered registration is a contact for the fence ([`crate::fence`]), dated when it
/// was sent.
pub async fn register_loop(agent: Agent, controllers: Arc<ControllerUrls>, contact: Arc<Contact>) {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    let http = match crate::controller_link::client(builder, agent.controller_tls()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; not registering");
            return;
        }
    };
    let mut ok = None;
    let mut network_error: Option<String> = None;
    let mut tick = tokio::time::interval(REGISTER_INTERVAL);
    loop {
        tick.tick().await;
        let body = RegisterHost {
            agent_url: agent.advertise_url().to_string(),
            inventory: agent.inventory(),
        };
        let Some(url) = controllers.url("/v1/internal/hosts/register") else {
            tracing::error!("no controller URL; not registering");
            return;
        };
        let (sent, sent_wall) = (Instant::now(), SystemTime::now());
        let request = http.post(&url).json(&body);
        let result = crate::controller_link::authorize(request, agent.token())
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match (result, ok) {
            (Ok(response), seen) => {
                contact.reached(sent, sent_wall);
                if seen == Some(true) {
                    tracing::debug!(url, "registered");
                } else {
                    tracing::info!(url, "registered with the controller");
                    ok = Some(true);
                }
                if let Some(network) = read_answer(response).await {
                    apply_network(&agent, &network, &mut network_error).await;
                }
            }
            (Err(e), Some(false)) => {
                tracing::debug!(url, error = %e, "registration failed");
                controllers.failed();
            }
            (Err(e), _) => {
                tracing::warn!(url, error = %e, every = ?REGISTER_INTERVAL, "registration failed; retrying (the next controller, if several)");
                ok = Some(false);
                controllers.failed();
            }
        }
    }
}

/// The network of the controller's answer; no body (an older controller) means none.
async fn read_answer(response: reqwest::Response) -> Option<NetworkConfig> {
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the registration answer");
            return None;
        }
    };
    parse_answer(&body)
}

/// Parses a registration answer (empty: no network).
fn parse_answer(body: &[u8]) -> Option<NetworkConfig> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    match serde_json::from_slice::<RegisterResponse>(body) {
        Ok(answer) => answer.network,
        Err(e) => {
            tracing::warn!(error = %e, "the registration answer is not a RegisterResponse");
            None
        }
    }
}

/// Applies the cloud network; a failure is logged when it first occurs or changes.
async fn apply_network(agent: &Agent, network: &NetworkConfig, last_error: &mut Option<String>) {
    match agent.network().apply(network).await {
        Ok(_) => {
            if last_error.take().is_some() {
                tracing::info!("cloud network set up after earlier failures");
            }
        }
        Err(e) => {
            let msg = error_chain(&e);
            if last_error.as_deref() != Some(msg.as_str()) {
                tracing::error!(error = msg, "cannot set up the cloud network; retrying");
            }
            *last_error = Some(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_and_without_network() {
        assert_eq!(parse_answer(b""), None);
        assert_eq!(parse_answer(b"{}"), None);
        assert_eq!(parse_answer(br#"{"network":null}"#), None);
        assert_eq!(parse_answer(b"<html>"), None);
        let body = br#"{"network":{"vni":42,"peers":["10.249.0.12"],"cidr":"10.200.0.0/16"}}"#;
        assert_eq!(
            parse_answer(body),
            Some(NetworkConfig {
                vni: 42,
                peers: vec!["10.249.0.12".into()],
                cidr: "10.200.0.0/16".into(),
            })
        );
    }
}
