//! Security groups on the host: stateful allow rules per VM port, compiled from the
//! [`HostFirewall`] the controller sends.
//!
//! Connection tracking is not available in the bridge family on every kernel (it needs
//! `nf_conntrack_bridge`), so the rules live in the `inet` family, which bridged IPv4 frames
//! traverse with `br_netfilter` (`net.bridge.bridge-nf-call-iptables=1`, set by
//! [`Installed::apply`]). There the ports are not visible (in and out device are the
//! bridge), so a bridge-family chain first tags each frame with its ports in the packet mark:
//!
//! ```text
//! table bridge nimbus  (with port security)
//!   chain sg_tag (hook forward, priority -200):
//!       meta mark set 0
//!       iifname "nt*" mark |= 0xffff0000          a VM port the controller sent no rules for
//!       oifname "nt*" mark |= 0x0000ffff
//!       iifname vmap @sg_tag_in                   tap -> jump sg_ti_<tap>
//!       oifname vmap @sg_tag_out                  tap -> jump sg_to_<tap>
//!   chain sg_ti_<tap>: mark = mark & 0xffff | id<<16     the port's id, fixed for its life
//!   chain sg_to_<tap>: mark = mark & 0xffff0000 | id
//! table inet nimbus_sg
//!   chain zone (hook prerouting, priority raw):
//!       ct zone set iifname map { nb<vni>: <n> }  a conntrack zone per tenant network, so
//!                                                 overlapping CIDRs of two projects never
//!                                                 share a tracked connection
//!   chain forward (hook forward, priority filter):
//!       meta mark 0 accept                        no VM port involved
//!       ct state established,related accept      replies and tracked connections (stateful)
//!       ct state invalid drop
//!       mark & 0xffff0000 vmap @sg_out            id<<16 -> jump sg_c<n>: sender's egress
//!       mark & 0xffff0000 == 0xffff0000 drop      a VM port without rules sends nothing
//!       mark & 0xffff vmap @sg_in                 id -> jump sg_c<n>: receiver's ingress
//!       mark & 0xffff == 0xffff drop              ... and receives nothing
//!   chain sg_c<n>: a rule list (ingress: -> accept; egress: -> return), then drop; shared
//!                  by every port with the same rules (the members of the same groups)
//!   set g<vni>_<n>: the addresses of a group's members on network <vni>
//! ```
//! Applying is one nftables transaction per host, and it holds only what changed since the
//! last apply ([`plan`]): a group's new rule rewrites the one chain its ports share, a new
//! member adds one set element, a new port its map entries and tag chains. So a rule update
//! is small whatever the number of ports. The kernel switches to the new rules at once, or
//! (when nft refuses the batch) keeps the old ones and the error is reported; the next apply
//! then rebuilds both tables' objects from scratch, in one transaction as well (also the
//! first apply of an agent, which does not know what a previous run left). Connections
//! already tracked go on after a rule is removed (EC2's semantics); new ones are checked
//! against the new rules.

mod compile;
mod plan;

use super::command::Shell;
use super::error::NetError;
use super::port_security::{self, list_json};
use super::segment::BRIDGE_PREFIX;
use compile::bridge_obj;
use nimbus_agent_api::HostFirewall;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The table of the rules (inet family, reached by bridged frames through br_netfilter).
pub const SG_TABLE: &str = "nimbus_sg";
const FAMILY: &str = "inet";
const FORWARD: &str = "forward";
/// The chain that gives each network's frames their conntrack zone.
const ZONE: &str = "zone";
/// The bridge-family chain that tags frames with their ports.
const TAG_CHAIN: &str = "sg_tag";
/// The bridge-family maps from a tap to its tag chain (as sender, as receiver).
const TAG_IN_MAP: &str = "sg_tag_in";
const TAG_OUT_MAP: &str = "sg_tag_out";
/// Port id of a VM port without rules (in either half of the mark).
const UNKNOWN: u32 = 0xffff;
/// The most ports with rules one host can have (ids 1..=MAX_PORTS).
pub const MAX_PORTS: usize = 0xfffe;
const IN_MAP: &str = "sg_in";
const OUT_MAP: &str = "sg_out";
/// Prefix of the rule chains (`sg_c<n>`).
const RULE_CHAIN_PREFIX: &str = "sg_c";
/// Prefix of the bridge table's objects this module owns.
const BRIDGE_PREFIX_OURS: &str = "sg_t";
/// Prefix of the group sets (`g<vni>_<n>`).
const SET_PREFIX: &str = "g";

/// The host's security-group rules as this agent last put them into the kernel: what the
/// next apply compares with. Unknown (`None`) after a start or a failed apply: the next
/// apply rebuilds everything.
#[derive(Debug, Default)]
pub struct Installed {
    tables: Option<plan::Tables>,
}

impl Installed {
    /// Makes the host's security-group rules exactly `fw`, in one transaction: on failure
    /// the previous rules stay in force and the error is answered.
    pub async fn apply(&mut self, shell: &Shell, fw: &HostFirewall) -> Result<(), NetError> {
        let (mut cmds, old) = match self.tables.take() {
            Some(tables) => (Vec::new(), tables),
            None => rebuild(shell).await?,
        };
        let (changes, new) = plan::plan(&old, fw)?;
        if changes.is_empty() && cmds.is_empty() {
            self.tables = Some(new);
            return Ok(());
        }
        tracing::debug!(
            commands = changes.len(),
            rebuild = !cmds.is_empty(),
            "security-group rules"
        );
        cmds.extend(changes);
        // On failure `tables` stays unknown: the next apply starts from scratch.
        port_security::apply(shell, cmds).await?;
        self.tables = Some(new);
        Ok(())
    }
}

/// The commands that empty both tables of every security-group object (the inet table is
/// made anew; the bridge table keeps port security), and the tables they leave.
async fn rebuild(shell: &Shell) -> Result<(Vec<Value>, plan::Tables), NetError> {
    // Bridged IPv4 frames through the inet hooks, where connections are tracked.
    shell
        .sysctl(&["-q", "-w", "net.bridge.bridge-nf-call-iptables=1"])
        .run()
        .await?;
    let mut cmds = if port_security::table_exists(shell).await? {
        Vec::new()
    } else {
        port_security::base()
    };
    let zones = existing_zones(shell).await?;
    let tag_chains = existing_tag_chains(shell).await?;
    cmds.extend(skeleton(&tag_chains));
    Ok((cmds, plan::recovered(zones)))
}

/// Both tables' base objects, emptied: the inet table deleted and made again with its base
/// chains, maps and forward rules; the bridge tag chain and maps emptied and the per-port
/// tag chains (`tag_chains`) deleted.
fn skeleton(tag_chains: &[String]) -> Vec<Value> {
    let chain = |family: &str, table: &str, name: &str, hook: &str, prio: i32| {
        json!({"add": {"chain": {"family": family, "table": table, "name": name,
            "type": "filter", "hook": hook, "prio": prio, "policy": "accept"}}})
    };
    let (bfamily, btable) = (port_security::FAMILY, port_security::TABLE);
    let mut cmds = vec![
        chain(bfamily, btable, TAG_CHAIN, "forward", -200),
        json!({"flush": bridge_obj("chain", TAG_CHAIN)}),
    ];
    for map in [TAG_IN_MAP, TAG_OUT_MAP] {
        cmds.push(
            json!({"add": {"map": {"family": bfamily, "table": btable, "name": map,
            "type": "ifname", "map": "verdict"}}}),
        );
        cmds.push(json!({"flush": bridge_obj("map", map)}));
    }
    for name in tag_chains {
        cmds.push(json!({"flush": bridge_obj("chain", name)}));
        cmds.push(json!({"delete": bridge_obj("chain", name)}));
    }
    cmds.extend(compile::tag_rules());
    cmds.extend([
        json!({"add": {"table": {"family": FAMILY, "name": SG_TABLE}}}),
        json!({"delete": {"table": {"family": FAMILY, "name": SG_TABLE}}}),
        json!({"add": {"table": {"family": FAMILY, "name": SG_TABLE}}}),
        chain(FAMILY, SG_TABLE, FORWARD, "forward", 0),
        chain(FAMILY, SG_TABLE, ZONE, "prerouting", -300),
    ]);
    for map in [IN_MAP, OUT_MAP] {
        cmds.push(
            json!({"add": {"map": {"family": FAMILY, "table": SG_TABLE, "name": map,
            "type": "mark", "map": "verdict"}}}),
        );
    }
    cmds.extend(compile::forward_rules());
    cmds
}

/// The per-port tag chains in the host's bridge table (none without a table).
async fn existing_tag_chains(shell: &Shell) -> Result<Vec<String>, NetError> {
    let listing = list_json(shell, &["chains", port_security::FAMILY]).await?;
    let items = listing.as_ref().and_then(|l| l["nftables"].as_array());
    Ok(items
        .into_iter()
        .flatten()
        .filter(|item| item["chain"]["table"] == port_security::TABLE)
        .filter_map(|item| item["chain"]["name"].as_str())
        .filter(|name| name.starts_with(BRIDGE_PREFIX_OURS) && *name != TAG_CHAIN)
        .map(str::to_string)
        .collect())
}

/// The conntrack zone of each network in the zone rule now in force, so that a rebuild
/// (after an agent restart) keeps tracked connections in their zones.
async fn existing_zones(shell: &Shell) -> Result<BTreeMap<u32, u16>, NetError> {
    let listing = list_json(shell, &["chain", FAMILY, SG_TABLE, ZONE]).await?;
    Ok(listing.as_ref().map(zones_of).unwrap_or_default())
}

/// The (bridge name -> zone) pairs of a zone chain's listing, by VNI.
fn zones_of(listing: &Value) -> BTreeMap<u32, u16> {
    let mut zones = BTreeMap::new();
    for item in listing["nftables"].as_array().into_iter().flatten() {
        for expr in item["rule"]["expr"].as_array().into_iter().flatten() {
            let pairs = &expr["mangle"]["value"]["map"]["data"]["set"];
            for pair in pairs.as_array().into_iter().flatten() {
                let vni = pair[0].as_str().and_then(|b| b.strip_prefix(BRIDGE_PREFIX));
                let vni = vni.and_then(|v| v.parse::<u32>().ok());
                let zone = pair[1].as_u64().and_then(|z| u16::try_from(z).ok());
                if let (Some(vni), Some(zone)) = (vni, zone) {
                    zones.insert(vni, zone);
                }
            }
        }
    }
    zones
}

#[cfg(test)]
mod tests;
