//! The VXLAN device [`VXLAN`] that joins the hosts' bridges into one layer-2 network, and its
//! flood list: one all-zero FDB entry per peer host, so that broadcasts and frames to unknown
//! MACs are copied to every peer (head-end replication, no multicast needed in the underlay).
//! Learning stays on: a frame from a remote VM teaches the device which host that MAC is
//! behind, and a migrated VM's announcement re-teaches it at once.

use super::command::{Cmd, Shell};
use super::error::NetError;
use super::link::{self, VxlanInfo};
use super::segment::Segment;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Name of the VXLAN device on every host.
pub const VXLAN: &str = "nimbus-vx";
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// VNIs are 24-bit.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The MAC of flood entries.
const FLOOD_MAC: &str = "00:00:00:00:00:00";

/// What the VXLAN device must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanParams {
    pub vni: u32,
    /// This host's underlay address (source of the encapsulated packets).
    pub local: IpAddr,
}

impl VxlanParams {
    fn matches(&self, info: &VxlanInfo) -> bool {
        info.vni == self.vni && info.local == Some(self.local) && info.port == VXLAN_PORT
    }
}

/// `ip link add <dev> type vxlan id <vni> dstport 4789 local <addr>`.
pub fn add_cmd(shell: &Shell, dev: &str, params: VxlanParams) -> Cmd {
    let vni = params.vni.to_string();
    let port = VXLAN_PORT.to_string();
    let local = params.local.to_string();
    shell.ip(&[
        "link", "add", dev, "type", "vxlan", "id", &vni, "dstport", &port, "local", &local,
    ])
}

/// `ip link del <dev>`.
pub fn del_cmd(shell: &Shell, dev: &str) -> Cmd {
    shell.ip(&["link", "del", dev])
}

/// `bridge fdb append 00:00:00:00:00:00 dev nimbus-vx dst <peer>`.
pub fn flood_add_cmd(shell: &Shell, dev: &str, peer: IpAddr) -> Cmd {
    shell.bridge(&[
        "fdb",
        "append",
        FLOOD_MAC,
        "dev",
        dev,
        "dst",
        &peer.to_string(),
    ])
}

/// `bridge fdb del 00:00:00:00:00:00 dev nimbus-vx dst <peer>`.
pub fn flood_del_cmd(shell: &Shell, dev: &str, peer: IpAddr) -> Cmd {
    shell.bridge(&[
        "fdb",
        "del",
        FLOOD_MAC,
        "dev",
        dev,
        "dst",
        &peer.to_string(),
    ])
}

/// Creates the device, or re-creates it when its VNI, local address or port differ, and makes
/// it an up port of the bridge with `mtu`. Returns whether it was (re)created.
pub async fn ensure(
    shell: &Shell,
    seg: &Segment,
    params: VxlanParams,
    mtu: u16,
) -> Result<bool, NetError> {
    let (dev, bridge) = (seg.vxlan.as_str(), seg.bridge.as_str());
    if params.vni > MAX_VNI {
        return Err(NetError::Invalid {
            what: "VNI (24 bits)",
            value: params.vni.to_string(),
        });
    }
    let existing = link::show(shell, dev).await?;
    let keep = match &existing {
        Some(l) => l.vxlan.as_ref().is_some_and(|v| params.matches(v)),
        None => false,
    };
    if keep {
        link::ensure_port(shell, dev, existing.as_ref(), bridge, mtu).await?;
        return Ok(false);
    }
    if existing.is_some() {
        tracing::info!(
            ?existing,
            "VXLAN device differs from the cloud's: re-creating it"
        );
        del_cmd(shell, dev).run().await?;
    }
    add_cmd(shell, dev, params).run().await?;
    link::ensure_port(shell, dev, None, bridge, mtu).await?;
    Ok(true)
}

/// What a reconciliation of the flood list changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerChanges {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
}

/// Makes the flood list of VXLAN device `dev` exactly `desired`.
pub async fn reconcile_peers(
    shell: &Shell,
    dev: &str,
    desired: &BTreeSet<IpAddr>,
) -> Result<PeerChanges, NetError> {
    let cmd = shell.bridge(&["-j", "fdb", "show", "dev", dev]);
    let out = cmd.run().await?;
    let current = parse_flood(&out).map_err(|detail| NetError::Output {
        command: cmd.to_string(),
        detail,
    })?;
    let changes = plan_peers(&current, desired);
    for peer in &changes.removed {
        flood_del_cmd(shell, dev, *peer).run().await?;
    }
    for peer in &changes.added {
        flood_add_cmd(shell, dev, *peer).run().await?;
    }
    Ok(changes)
}

/// The peers to add and to remove to go from `current` to `desired`.
pub fn plan_peers(current: &BTreeSet<IpAddr>, desired: &BTreeSet<IpAddr>) -> PeerChanges {
    PeerChanges {
        added: desired.difference(current).copied().collect(),
        removed: current.difference(desired).copied().collect(),
    }
}

#[derive(Deserialize)]
struct FdbEntry {
    mac: String,
    dst: Option<String>,
}

/// The flood destinations in the JSON of `bridge -j fdb show dev nimbus-vx`.
pub fn parse_flood(json: &str) -> Result<BTreeSet<IpAddr>, String> {
    if json.trim().is_empty() {
        return Ok(BTreeSet::new());
    }
    let entries: Vec<FdbEntry> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    entries
        .into_iter()
        .filter(|e| e.mac == FLOOD_MAC)
        .filter_map(|e| e.dst)
        .map(|dst| {
            dst.parse()
                .map_err(|_| format!("bad FDB destination {dst:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn commands() {
        let shell = Shell::here();
        let params = VxlanParams {
            vni: 4242,
            local: ip("10.249.0.11"),
        };
        assert_eq!(
            add_cmd(&shell, VXLAN, params).to_string(),
            "ip link add nimbus-vx type vxlan id 4242 dstport 4789 local 10.249.0.11"
        );
        assert_eq!(
            flood_add_cmd(&shell, VXLAN, ip("10.249.0.12")).to_string(),
            "bridge fdb append 00:00:00:00:00:00 dev nimbus-vx dst 10.249.0.12"
        );
        assert_eq!(
            flood_del_cmd(&shell, VXLAN, ip("10.249.0.12")).to_string(),
            "bridge fdb del 00:00:00:00:00:00 dev nimbus-vx dst 10.249.0.12"
        );
        assert_eq!(del_cmd(&shell, VXLAN).to_string(), "ip link del nimbus-vx");
    }

    #[test]
    fn flood_entries_are_the_all_zero_ones() {
        let json = r#"[{"mac":"96:c8:86:c6:97:92","flags":[],"master":"nimbus0","state":"permanent"},
            {"mac":"00:00:00:00:00:00","dst":"10.1.1.2","flags":["self"],"state":"permanent"},
            {"mac":"52:54:0a:c8:00:0a","dst":"10.1.1.9","flags":["self"]},
            {"mac":"00:00:00:00:00:00","dst":"10.1.1.3","flags":["self"],"state":"permanent"}]"#;
        let peers = parse_flood(json).expect("parses");
        assert_eq!(peers, [ip("10.1.1.2"), ip("10.1.1.3")].into());
        assert_eq!(parse_flood("").expect("empty"), BTreeSet::new());
        assert!(parse_flood(r#"[{"mac":"00:00:00:00:00:00","dst":"x"}]"#).is_err());
    }

    #[test]
    fn peers_are_reconciled() {
        let current = [ip("10.0.0.2"), ip("10.0.0.3")].into();
        let desired = [ip("10.0.0.3"), ip("10.0.0.4")].into();
        assert_eq!(
            plan_peers(&current, &desired),
            PeerChanges {
                added: vec![ip("10.0.0.4")],
                removed: vec![ip("10.0.0.2")],
            }
        );
        assert_eq!(plan_peers(&desired, &desired), PeerChanges::default());
    }

    #[test]
    fn a_matching_device_is_kept() {
        let params = VxlanParams {
            vni: 7,
            local: ip("10.0.0.1"),
        };
        let mut info = VxlanInfo {
            vni: 7,
            local: Some(ip("10.0.0.1")),
            port: VXLAN_PORT,
        };
        assert!(params.matches(&info));
        info.vni = 8;
        assert!(!params.matches(&info));
        info.vni = 7;
        info.local = None;
        assert!(!params.matches(&info));
    }
}
