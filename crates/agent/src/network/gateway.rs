//! Each tenant network's gateway on this host, made with its first port here: its router
//! ([`super::router`]) with the network's floating-IP NATs, its DNS server
//! ([`super::dns`]) and metadata service ([`super::metadata`]), and the host's egress rules
//! ([`super::egress`]) that keep every router away from the others, the hosts and the
//! controller.

use super::firewall::nats_of;
use super::segment::Segment;
use super::{dhcp, dns, egress, floating, router, HostNetwork, NetError, State};
use std::net::Ipv4Addr;

impl HostNetwork {
    /// Makes sure router `r` answers its network's names. A server that cannot start is
    /// logged (names do not resolve there; addresses work) and tried again at the next launch.
    fn serve_dns(&self, state: &mut State, r: &router::Router) {
        if state.dns.contains_key(&r.vni) {
            return;
        }
        let zones = state.zones.clone();
        match dns::Server::start(&r.netns, router::ROUTER_GATEWAY, r.gateway, r.vni, zones) {
            Ok(server) => {
                state.dns.insert(r.vni, server);
            }
            Err(e) => tracing::warn!(vni = r.vni, error = %e, "no DNS on this network here"),
        }
    }

    /// What tenant gateways must not reach: the other hosts and the controller's API (and
    /// the floating IPs held here, which they may reach); until the controller told this run
    /// of the agent, also what was in force when it started.
    pub(super) fn protected(&self, state: &State) -> egress::Protected {
        let routers = state.routers.keys().copied().collect();
        let mut hosts = state.peers.clone();
        if !state.registered {
            hosts.extend(&state.kept.hosts);
        }
        egress::Protected {
            hosts,
            controller: self.controller,
            floating: match state.floating.as_deref() {
                Some(nats) => floating::held(nats, &routers).into_keys().collect(),
                None => state.kept.floating.clone(),
            },
        }
    }

    /// The name this host's routers start with (asked once).
    pub(super) async fn router_host(&self, state: &mut State) -> Result<String, NetError> {
        if let Some(name) = &state.router_host {
            return Ok(name.clone());
        }
        let name = router::host_name(&self.shell).await?;
        state.router_host = Some(name.clone());
        Ok(name)
    }

    /// Makes sure `nic`'s network has its gateway router here (for a NIC with an IPv4
    /// gateway), and the host's egress rules with it.
    pub(super) async fn route(
        &self,
        state: &mut State,
        seg: &Segment,
        nic: &nimbus_agent_api::NicSpec,
    ) -> Result<(), NetError> {
        let Some(lease) = dhcp::lease_of(nic) else {
            return Ok(());
        };
        let Some(gateway) = lease.gateway.filter(|g| *g != Ipv4Addr::UNSPECIFIED) else {
            return Ok(());
        };
        let host = self.router_host(state).await?;
        let r = router::Router::new(&host, seg.vni, gateway, lease.prefix);
        egress::ensure(&self.shell, &self.protected(state)).await?;
        let nats = nats_of(state, seg.vni);
        if router::ensure(&self.shell, seg, &r, nats.as_deref()).await? {
            tracing::info!(vni = seg.vni, netns = r.netns, %gateway, "network gateway created");
        }
        self.serve_dns(state, &r);
        if let Err(e) = state.metadata.serve(seg.vni, &r.netns).await {
            // The guests still boot and route; the next launch on this network tries again.
            tracing::warn!(vni = seg.vni, error = %e, "no metadata service on this network here");
        }
        // Floating IPs of this network the controller sent before the router existed.
        if state.routers.insert(seg.vni, r.netns).is_none() {
            self.apply_floating(state).await?;
        }
        Ok(())
    }
}
