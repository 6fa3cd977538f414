//! Where a VM's ports are plugged: a tap per NIC on its network's bridge (the segment,
//! its DHCP responder and its gateway made with the network's first port here), port
//! security on each tap, the DHCP lease; re-applied for a VM a restarted agent adopts;
//! removed with the VM, and the segment with the network's last port here.

use super::segment::{self, Segment};
use super::{
    arrival, bridge, dhcp, guest, port_security, router, tap, HostNetwork, NetError, State, NIC_MTU,
};
use nimbus_agent_api::VmSpec;
use nimbus_qemu::QemuConfig;

impl HostNetwork {
    /// Creates the taps of `spec`'s NICs (and the bridge, if needed) and adds the NICs to
    /// `config`. Every QEMU launch calls this; nothing happens for a VM without NICs.
    pub async fn plug(&self, spec: &VmSpec, config: &mut QemuConfig) -> Result<(), NetError> {
        if spec.nics.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        if let Some(reason) = &self.disabled {
            tracing::warn!(
                instance_id = %spec.id,
                reason,
                "host networking is off: the VM starts without its NICs"
            );
            return Ok(());
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            let bridge = match nic.vni {
                Some(vni) => {
                    let seg = Segment::tenant(vni);
                    let peers = &state.peers;
                    if segment::ensure(&self.shell, &seg, self.underlay, peers, NIC_MTU).await? {
                        tracing::info!(vni, bridge = seg.bridge, "network segment created");
                    }
                    self.serve_dhcp(&mut state, &seg, nic);
                    self.route(&mut state, &seg, nic).await?;
                    seg.bridge
                }
                None => {
                    bridge::ensure(&self.shell, bridge::BRIDGE, NIC_MTU).await?;
                    bridge::BRIDGE.to_string()
                }
            };
            let name = tap::tap_name(spec.id, i);
            if tap::ensure(&self.shell, &name, &bridge, NIC_MTU).await? {
                tracing::info!(instance_id = %spec.id, tap = name, bridge, "tap created");
            }
        }
        port_security::secure(&self.shell, &ports_of(spec)).await?;
        state.metadata.registry().register(spec);
        guest::add_to_config(spec, config);
        Ok(())
    }

    /// (Re)applies the port security of `spec`'s NICs, for a VM whose QEMU a restarted agent
    /// adopted (its taps exist; their rules normally do too, and re-applying is harmless).
    /// A VM still arriving by live migration is marked so first ([`Self::expect_arrival`]):
    /// its floating IPs are not claimed here.
    pub async fn protect(&self, spec: &VmSpec) -> Result<(), NetError> {
        if spec.nics.is_empty() || self.disabled.is_some() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        for nic in &spec.nics {
            if let Some(vni) = nic.vni {
                let seg = Segment::tenant(vni);
                self.serve_dhcp(&mut state, &seg, nic);
                self.route(&mut state, &seg, nic).await?;
            }
        }
        port_security::secure(&self.shell, &ports_of(spec)).await?;
        state.metadata.registry().register(spec);
        Ok(())
    }

    /// Adds `nic`'s lease and makes sure its network's DHCP responder runs. A responder that
    /// cannot start is logged: the guest then keeps the address its kernel command line
    /// gives it, and the next launch on this network tries again.
    fn serve_dhcp(&self, state: &mut State, seg: &Segment, nic: &nimbus_agent_api::NicSpec) {
        state.leases.insert(seg.vni, nic);
        if state.responders.contains_key(&seg.vni) {
            return;
        }
        let (leases, zones) = (state.leases.clone(), state.zones.clone());
        match dhcp::Responder::start(self.shell.netns(), &seg.bridge, seg.vni, leases, zones) {
            Ok(r) => {
                state.responders.insert(seg.vni, r);
            }
            Err(e) => tracing::warn!(vni = seg.vni, error = %e, "no DHCP on this network here"),
        }
    }

    /// Removes the taps of `spec`'s NICs (absent ones are fine), and the segments of its
    /// networks that no other port here uses any more.
    pub async fn unplug(&self, spec: &VmSpec) -> Result<(), NetError> {
        if spec.nics.is_empty() || self.disabled.is_some() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        for a in arrival::addresses(spec) {
            state.arriving.remove(&a);
            state.departed.remove(&a);
        }
        state.metadata.registry().forget(spec);
        let taps: Vec<String> = (0..spec.nics.len())
            .map(|i| tap::tap_name(spec.id, i))
            .collect();
        port_security::release(&self.shell, &taps).await?;
        for i in 0..spec.nics.len() {
            let name = tap::tap_name(spec.id, i);
            if tap::remove(&self.shell, &name).await? {
                tracing::info!(instance_id = %spec.id, tap = name, "tap removed");
            }
        }
        for nic in &spec.nics {
            let Some(vni) = nic.vni else { continue };
            state.leases.remove(vni, nic);
            let seg = Segment::tenant(vni);
            if segment::remove_if_unused(&self.shell, &seg).await? {
                state.responders.remove(&vni);
                state.dns.remove(&vni);
                state.metadata.stop(vni);
                let host = self.router_host(&mut state).await?;
                router::remove(&self.shell, &host, vni).await?;
                state.routers.remove(&vni);
                self.apply_floating(&mut state).await?;
                tracing::info!(
                    vni,
                    bridge = seg.bridge,
                    "network segment removed: no port left"
                );
            }
        }
        Ok(())
    }
}

/// The port-security view of `spec`'s NICs.
fn ports_of(spec: &VmSpec) -> Vec<port_security::Port> {
    spec.nics
        .iter()
        .enumerate()
        .map(|(i, nic)| port_security::Port::of(tap::tap_name(spec.id, i), nic))
        .collect()
}
