//! A VM migrating in: its floating IPs are claimed here only once it runs here.
//!
//! The target host gets the VM's network (segment, port, rules, the floating IP's route and
//! NAT) before QEMU starts, but while the guest still runs on the source only the source's
//! router reaches it: a target that answered for the floating IP then would take its
//! traffic into a dead end (gateway frames never cross the VXLAN). So the VM's addresses are
//! "arriving" from the incoming launch until the guest resumes here; then the floating IPs
//! are announced at once and answered from here (see [`super::floating`]).
//!
//! The source hands the floating IPs over when the guest stops for the switch-over
//! ([`HostNetwork::handing_over`]): it stops answering for them, and announces them at the
//! target's uplink MAC. The peers' packets of the pause then wait in the target's port
//! (QEMU reads them once the guest resumes there) instead of being lost in the paused copy
//! here: measured before, a floating-IP peer lost every packet from the pause until the
//! target's own announcement, and its TCP's retransmission back-off (0.2, 0.4, 0.8 s...)
//! turned that into silences of 0.25-2.3 s where private-IP peers waited 0.1-0.2 s.

use super::{floating, HostNetwork, NetError};
use nimbus_agent_api::VmSpec;
use std::net::{IpAddr, Ipv4Addr};

/// The (VNI, IPv4 address) of each tenant NIC of `spec`.
pub(super) fn addresses(spec: &VmSpec) -> impl Iterator<Item = (u32, Ipv4Addr)> + '_ {
    spec.nics.iter().filter_map(|nic| {
        let ip = nic.ip.split('/').next()?.parse().ok()?;
        Some((nic.vni?, ip))
    })
}

impl HostNetwork {
    /// `spec` is about to be launched here to receive a live migration: its floating IPs
    /// stay unclaimed until [`Self::arrived`].
    pub async fn expect_arrival(&self, spec: &VmSpec) {
        let mut state = self.state.lock().await;
        for a in addresses(spec) {
            state.departed.remove(&a);
            state.arriving.insert(a);
        }
    }

    /// `spec`'s guest stopped here for the switch-over of its migration to the host whose
    /// underlay address is `target`: stops claiming its floating IPs here and announces them
    /// at the target's uplink MAC when this host knows it (same uplink network); the target
    /// claims them itself once the guest resumes there. A guest that resumes here instead (a
    /// migration failed or undone) calls [`Self::arrived`].
    pub async fn handing_over(
        &self,
        spec: &VmSpec,
        target: Option<IpAddr>,
    ) -> Result<(), NetError> {
        let mut state = self.state.lock().await;
        let mine: Vec<(u32, Ipv4Addr)> = addresses(spec).collect();
        state.departed.extend(mine.iter().copied());
        if self.disabled.is_some() {
            return Ok(());
        }
        let (Some(nats), Some(uplink)) = (&state.floating, state.uplink.clone()) else {
            return Ok(());
        };
        // Only this VM's addresses claimed here, and only their ARP answers: the guest is
        // paused now, every command here competes with its resume on the target.
        let routers = state.routers.keys().copied().collect();
        let held = floating::held(nats, &routers);
        let addrs: Vec<Ipv4Addr> = floating::claimed(&held, |vni, ip| mine.contains(&(vni, ip)))
            .intersection(&state.claimed)
            .copied()
            .collect();
        if addrs.is_empty() {
            return Ok(());
        }
        if let Some(target) = target {
            match floating::neighbour_mac(&self.shell, &uplink, target).await? {
                Some(owner) => {
                    tracing::info!(?addrs, %target, "floating IPs handed over to the migration's target");
                    let netns = self.shell.netns().map(str::to_string);
                    floating::hand_over(netns, uplink.clone(), owner, addrs.clone()).await;
                }
                None => tracing::info!(
                    %target,
                    "the migration's target is not a neighbour on the uplink: its floating IPs \
                     move when it announces them"
                ),
            }
        }
        for addr in &addrs {
            floating::unclaim(&self.shell, &uplink, *addr).await?;
            state.claimed.remove(addr);
        }
        Ok(())
    }

    /// `spec`'s guest resumed here, where it runs already: claims its floating IPs back if
    /// they were handed over (a switch-over that failed, a completed migration undone).
    pub async fn resumed_here(&self, spec: &VmSpec) -> Result<(), NetError> {
        let handed_over = {
            let state = self.state.lock().await;
            addresses(spec).any(|a| state.departed.contains(&a))
        };
        if handed_over {
            tracing::info!(instance_id = %spec.id, "the guest resumed here: its floating IPs come back");
            self.arrived(spec).await
        } else {
            Ok(())
        }
    }

    /// `spec`'s guest resumed here: announces its floating IPs routed here (first: every
    /// moment counts for its peers), then claims them (ARP answers) with the next apply.
    pub async fn arrived(&self, spec: &VmSpec) -> Result<(), NetError> {
        let mut state = self.state.lock().await;
        let mine: Vec<(u32, Ipv4Addr)> = addresses(spec).collect();
        for a in &mine {
            state.arriving.remove(a);
            state.departed.remove(a);
        }
        if self.disabled.is_some() {
            return Ok(());
        }
        if let (Some(nats), Some(uplink)) = (&state.floating, &state.uplink) {
            let routers = state.routers.keys().copied().collect();
            let held = floating::held(nats, &routers);
            let now: Vec<Ipv4Addr> = floating::claimed(&held, |vni, ip| mine.contains(&(vni, ip)))
                .into_iter()
                .collect();
            let netns = self.shell.netns().map(str::to_string);
            floating::announce(netns, uplink.clone(), now).await;
        }
        self.apply_floating(&mut state).await
    }
}
