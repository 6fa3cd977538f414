//! Where traffic is filtered and translated once a VM is plugged: the controller's host
//! firewall (security groups, [`super::secgroups`]; instance names for DNS; floating IPs,
//! [`super::floating`]) applied in one call, and each router's 1:1 NATs with the host's
//! routes and ARP answers for the floating IPs held here.

use super::{egress, floating, router, HostNetwork, NetError, State};
use nimbus_agent_api::HostFirewall;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

impl HostNetwork {
    /// Makes the host's security-group rules exactly `fw` (see [`super::secgroups`]); answers
    /// whether they are enforced (not on a host without networking, whose VMs have no NICs).
    pub async fn apply_firewall(&self, fw: &HostFirewall) -> Result<bool, NetError> {
        let mut state = self.state.lock().await;
        if self.disabled.is_some() {
            return Ok(false);
        }
        state.firewall.apply(&self.shell, fw).await?;
        state.zones.replace(&fw.names);
        state.metadata.registry().set_floating(&fw.floating);
        state.floating = Some(fw.floating.clone());
        self.apply_floating(&mut state).await?;
        Ok(true)
    }

    /// Makes the floating IPs of `state` that have their router here translated (each
    /// router's NATs, the host's routes, ARP answers and egress exceptions), and announces
    /// the ones this host just took.
    pub(super) async fn apply_floating(&self, state: &mut State) -> Result<(), NetError> {
        let Some(nats) = &state.floating else {
            // Not told yet (a restarted agent): routers and routes stay as they are.
            return egress::ensure(&self.shell, &self.protected(state)).await;
        };
        let routers: BTreeSet<u32> = state.routers.keys().copied().collect();
        let held = floating::held(nats, &routers);
        for (vni, netns) in &state.routers {
            let nats = nats_of(state, *vni).unwrap_or_default();
            router::set_nats(netns, &nats).await?;
        }
        if state.uplink.is_none() {
            if let Some(underlay) = self.underlay {
                state.uplink = floating::uplink_device(&self.shell, underlay).await?;
                if let Some(uplink) = &state.uplink {
                    floating::prepare_uplink(&self.shell, uplink).await?;
                }
            }
        }
        egress::ensure(&self.shell, &self.protected(state)).await?;
        let by_vni = held.iter().map(|(f, (v, _))| (*f, *v)).collect();
        let claimed = floating::claimed(&held, |vni, ip| {
            state.leases.holds(vni, ip)
                && !state.arriving.contains(&(vni, ip))
                && !state.departed.contains(&(vni, ip))
        });
        let uplink = state.uplink.as_deref();
        floating::reconcile(&self.shell, uplink, &by_vni, &claimed, &state.claimed).await?;
        let taken: Vec<Ipv4Addr> = claimed.difference(&state.claimed).copied().collect();
        state.claimed = claimed;
        if let Some(uplink) = &state.uplink {
            if !taken.is_empty() {
                tracing::info!(?taken, uplink, "floating IPs taken here");
            }
            let netns = self.shell.netns().map(str::to_string);
            floating::announce(netns, uplink.clone(), taken).await;
        }
        Ok(())
    }
}

/// The 1:1 NATs of network `vni`'s router, from the floating IPs the controller last sent
/// (`None`: not sent yet).
pub(super) fn nats_of(state: &State, vni: u32) -> Option<Vec<router::Nat>> {
    let nats = state.floating.as_deref()?;
    Some(
        floating::held(nats, &[vni].into())
            .into_iter()
            .map(|(floating, (_, private))| router::Nat { floating, private })
            .collect(),
    )
}
