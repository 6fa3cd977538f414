//! Registration: the former flat cloud network (`nimbus0`, `nimbus-vx`, for VMs defined
//! before tenant networks) and the flood list (the other hosts) of every VXLAN device here,
//! from each answer of the controller to the agent's registration.

use super::segment::{self, Segment};
use super::vxlan::{self, PeerChanges, VxlanParams};
use super::{bridge, egress, underlay, warn_once, HostNetwork, NetError, NIC_MTU};
use nimbus_agent_api::NetworkConfig;
use std::collections::BTreeSet;

/// What [`HostNetwork::apply`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub bridge_created: bool,
    pub vxlan_created: bool,
    pub peers: PeerChanges,
}

impl Applied {
    fn changed(&self) -> bool {
        self.bridge_created || self.vxlan_created || self.peers != PeerChanges::default()
    }
}

impl HostNetwork {
    /// Sets up (or repairs) the bridge, the VXLAN device and its peers for `config`.
    pub async fn apply(&self, config: &NetworkConfig) -> Result<Applied, NetError> {
        if let Some(reason) = &self.disabled {
            tracing::debug!(reason, "host networking is off: cloud network not set up");
            return Ok(Applied::default());
        }
        let mut state = self.state.lock().await;
        let mut applied = Applied {
            bridge_created: bridge::ensure(&self.shell, bridge::BRIDGE, NIC_MTU).await?,
            ..Applied::default()
        };
        let Some(local) = self.underlay else {
            warn_once(
                &mut state,
                "no underlay",
                "no underlay address: this host's VMs reach no other host",
            );
            return Ok(applied);
        };
        let params = VxlanParams {
            vni: config.vni,
            local,
        };
        let flat = Segment::flat(config.vni);
        applied.vxlan_created = vxlan::ensure(&self.shell, &flat, params, NIC_MTU).await?;
        let mut peers = BTreeSet::new();
        for peer in &config.peers {
            match underlay::peer_address(peer, local).await {
                Some(addr) if addr != local => {
                    peers.insert(addr);
                }
                Some(_) => {}
                None => warn_once(&mut state, peer, "cannot resolve VXLAN peer; skipped"),
            }
        }
        applied.peers = vxlan::reconcile_peers(&self.shell, vxlan::VXLAN, &peers).await?;
        // Tenant networks present here flood to the same hosts.
        let segments = segment::existing(&self.shell).await?;
        for seg in &segments {
            vxlan::reconcile_peers(&self.shell, &seg.vxlan, &peers).await?;
        }
        let peers_changed = state.peers != peers;
        state.peers = peers;
        state.registered = true;
        if peers_changed && !segments.is_empty() {
            egress::ensure(&self.shell, &self.protected(&state)).await?;
        }
        if applied.changed() {
            tracing::info!(
                vni = config.vni,
                %local,
                bridge_created = applied.bridge_created,
                vxlan_created = applied.vxlan_created,
                peers_added = ?applied.peers.added,
                peers_removed = ?applied.peers.removed,
                "cloud network set up"
            );
        }
        Ok(applied)
    }
}
