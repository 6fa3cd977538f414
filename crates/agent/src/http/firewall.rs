//! `PUT /firewall`: the host's security-group rules, as the controller computed them.

use super::Json;
use crate::agent::Agent;
use crate::error::Result;
use axum::extract::State;
use nimbus_agent_api::{FirewallApplied, HostFirewall};

pub async fn set(
    State(agent): State<Agent>,
    Json(fw): Json<HostFirewall>,
) -> Result<Json<FirewallApplied>> {
    let enforced = agent.network().apply_firewall(&fw).await?;
    tracing::info!(
        ports = fw.ports.len(),
        enforced,
        "security-group rules applied"
    );
    Ok(Json(FirewallApplied {
        ports: fw.ports.len(),
        enforced,
    }))
}
