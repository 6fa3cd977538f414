//! A tenant network's layer-2 segment on this host: a bridge `nb<vni>` and a VXLAN device
//! `nx<vni>` carrying the network's VNI to the other hosts. Made when the host gets the first
//! port of the network, removed when its last port leaves. Taps of one network are ports of
//! its bridge only, and the VXLAN device of a network only talks its own VNI, so broadcast,
//! ARP and unknown unicast of one network never reach a port of another, on this host or on
//! any other. Frames flooded to a host without the network are dropped by its kernel (no
//! device has that VNI there).

use super::bridge::{self, BRIDGE};
use super::command::Shell;
use super::error::NetError;
use super::vxlan::{self, VxlanParams, VXLAN};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Name prefix of tenant bridges (`nb4201`).
pub const BRIDGE_PREFIX: &str = "nb";
/// Name prefix of tenant VXLAN devices (`nx4201`).
pub const VXLAN_PREFIX: &str = "nx";

/// The devices of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub vni: u32,
    pub bridge: String,
    pub vxlan: String,
}

impl Segment {
    /// The former single flat network (`nimbus0`, `nimbus-vx`), for VMs defined before
    /// tenant networks.
    pub fn flat(vni: u32) -> Self {
        Self {
            vni,
            bridge: BRIDGE.to_string(),
            vxlan: VXLAN.to_string(),
        }
    }

    /// The segment of tenant network `vni` (names fit Linux's 15 characters: VNIs have at
    /// most 8 digits).
    pub fn tenant(vni: u32) -> Self {
        Self {
            vni,
            bridge: format!("{BRIDGE_PREFIX}{vni}"),
            vxlan: format!("{VXLAN_PREFIX}{vni}"),
        }
    }
}

/// Makes (or repairs) the segment's bridge and, with an underlay address, its VXLAN device
/// with a flood entry per peer. Returns whether the bridge was created.
pub async fn ensure(
    shell: &Shell,
    seg: &Segment,
    underlay: Option<IpAddr>,
    peers: &BTreeSet<IpAddr>,
    mtu: u16,
) -> Result<bool, NetError> {
    let created = bridge::ensure(shell, &seg.bridge, mtu).await?;
    if let Some(local) = underlay {
        let params = VxlanParams {
            vni: seg.vni,
            local,
        };
        vxlan::ensure(shell, seg, params, mtu).await?;
        vxlan::reconcile_peers(shell, &seg.vxlan, peers).await?;
    }
    Ok(created)
}

#[derive(Deserialize)]
struct Port {
    ifname: String,
}

/// Removes the segment's devices when no port but its VXLAN device and its router's port is
/// left on its bridge. Returns whether it removed them (the router goes next, see
/// [`super::router::remove`]).
pub async fn remove_if_unused(shell: &Shell, seg: &Segment) -> Result<bool, NetError> {
    let cmd = shell.ip(&["-j", "link", "show", "master", &seg.bridge]);
    let done = cmd.output().await?;
    if !done.success {
        if super::command::no_such_device(&done.stderr) {
            return Ok(false);
        }
        return Err(cmd.failed(&done));
    }
    let ports = parse_ports(&done.stdout).map_err(|detail| NetError::Output {
        command: cmd.to_string(),
        detail,
    })?;
    let router_port = format!("{}{}", super::router::GATEWAY_PORT_PREFIX, seg.vni);
    if ports.iter().any(|p| p != &seg.vxlan && p != &router_port) {
        return Ok(false);
    }
    for dev in [&seg.vxlan, &seg.bridge] {
        let del = shell.ip(&["link", "del", dev]);
        let out = del.output().await?;
        if !out.success && !super::command::no_such_device(&out.stderr) {
            return Err(del.failed(&out));
        }
    }
    Ok(true)
}

/// The names in the JSON of `ip -j link show master <bridge>`.
pub fn parse_ports(json: &str) -> Result<Vec<String>, String> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let ports: Vec<Port> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(ports.into_iter().map(|p| p.ifname).collect())
}

/// The tenant segments whose VXLAN device exists on this host.
pub async fn existing(shell: &Shell) -> Result<Vec<Segment>, NetError> {
    let cmd = shell.ip(&["-j", "link", "show", "type", "vxlan"]);
    let out = cmd.run().await?;
    let names = parse_ports(&out).map_err(|detail| NetError::Output {
        command: cmd.to_string(),
        detail,
    })?;
    Ok(names
        .iter()
        .filter_map(|n| n.strip_prefix(VXLAN_PREFIX)?.parse().ok())
        .map(Segment::tenant)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux() {
        let seg = Segment::tenant(super::super::vxlan::MAX_VNI);
        assert_eq!(seg.bridge, "nb16777215");
        assert!(seg.bridge.len() <= 15 && seg.vxlan.len() <= 15);
        assert_eq!(Segment::flat(4200).bridge, "nimbus0");
    }

    #[test]
    fn ports_parse() {
        let json = r#"[{"ifindex":5,"ifname":"nx4201","flags":["UP"]},{"ifindex":7,"ifname":"nt0a1b2c3d4e"}]"#;
        assert_eq!(
            parse_ports(json).expect("parses"),
            ["nx4201", "nt0a1b2c3d4e"]
        );
        assert!(parse_ports("").expect("empty").is_empty());
        assert!(parse_ports("{").is_err());
    }
}
