//! A VM migrating in: its floating IPs are claimed here only once it runs here.
//!
//! The target host gets the VM's network (segment, port, rules, the floating IP's route and
//! NAT) before QEMU starts, but while the guest still runs on the source only the source's
//! router reaches it: a target that answered for the floating IP then would take its
//! traffic into a dead end (gateway frames never cross the VXLAN). So the VM's addresses are
//! "arriving" from the incoming launch until the guest resumes here; then the floating IPs
//! are announced at once and answered from here (see [`super::floating`]).

use super::{floating, HostNetwork, NetError};
use nimbus_agent_api::VmSpec;
use std::net::Ipv4Addr;

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
        state.arriving.extend(addresses(spec));
    }

    /// `spec`'s guest resumed here: announces its floating IPs routed here (first: every
    /// moment counts for its peers), then claims them (ARP answers) with the next apply.
    pub async fn arrived(&self, spec: &VmSpec) -> Result<(), NetError> {
        let mut state = self.state.lock().await;
        let mine: Vec<(u32, Ipv4Addr)> = addresses(spec).collect();
        for a in &mine {
            state.arriving.remove(a);
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
