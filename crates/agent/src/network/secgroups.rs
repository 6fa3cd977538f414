//! Security groups on the host: stateful allow rules per VM port, compiled from the
//! [`HostFirewall`] the controller sends.
//!
//! Connection tracking is not available in the bridge family on every kernel (it needs
//! `nf_conntrack_bridge`), so the rules live in the `inet` family, which bridged IPv4 frames
//! traverse with `br_netfilter` (`net.bridge.bridge-nf-call-iptables=1`, set by [`apply`]).
//! There the ports are not visible (in and out device are the bridge), so a bridge-family
//! chain first tags each frame with its ports in the packet mark:
//!
//! ```text
//! table bridge nimbus  (with port security)
//!   chain sg_tag (hook forward, priority -200):
//!       meta mark set 0
//!       iifname "nt*" mark |= 0xffff0000          a VM port the controller sent no rules for
//!       oifname "nt*" mark |= 0x0000ffff
//!       iifname <tap> mark = mark & 0xffff | id<<16     one pair per VM port with rules
//!       oifname <tap> mark = mark & 0xffff0000 | id
//! table inet nimbus_sg
//!   chain zone (hook prerouting, priority raw):
//!       ct zone set iifname map { nb<vni>: <n> }  a conntrack zone per tenant network, so
//!                                                 overlapping CIDRs of two projects never
//!                                                 share a tracked connection
//!   chain forward (hook forward, priority filter):
//!       meta mark 0 accept                        no VM port involved
//!       ct state established,related accept      replies and tracked connections (stateful)
//!       ct state invalid drop
//!       mark & 0xffff0000 vmap @sg_out            egress rules of the sending port
//!       mark & 0xffff0000 == 0xffff0000 drop      a VM port without rules sends nothing
//!       mark & 0xffff vmap @sg_in                 ingress rules of the receiving port
//!       mark & 0xffff == 0xffff drop              ... and receives nothing
//!   chain sg_egress_<tap>:  one rule per egress rule -> return; drop
//!   chain sg_ingress_<tap>: one rule per ingress rule -> accept; drop
//!   set g<vni>_<n>: the addresses of a group's members on network <vni>
//! ```
//! Applying is one nftables transaction per host: both chains and the maps are flushed, the
//! previous port chains and group sets deleted and everything made again, so the kernel
//! switches from the old rules to the new ones at once, or (when nft refuses the batch) keeps
//! the old ones and the error is reported. Connections already tracked go on after a rule is
//! removed (EC2's semantics); new ones are checked against the new rules.

use super::command::Shell;
use super::error::NetError;
use super::port_security::{self, field, matches};
use super::segment::Segment;
use super::tap::{tap_name, TAP_PREFIX};
use nimbus_agent_api::{FirewallRule, HostFirewall, Remote};
use nimbus_api::{Direction, Protocol};
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
/// Port id of a VM port without rules (in either half of the mark).
const UNKNOWN: u32 = 0xffff;
/// The most ports with rules one host can have (ids 1..=MAX_PORTS).
pub const MAX_PORTS: usize = 0xfffe;
const IN_MAP: &str = "sg_in";
const OUT_MAP: &str = "sg_out";
/// Prefixes of the objects this module owns (deleted and made again on every apply).
const CHAIN_PREFIX: &str = "sg_";
const SET_PREFIX: &str = "g";

fn obj(kind: &str, name: &str) -> Value {
    json!({kind: {"family": FAMILY, "table": SG_TABLE, "name": name}})
}

fn rule(chain: &str, expr: Value) -> Value {
    json!({"add": {"rule": {"family": FAMILY, "table": SG_TABLE, "chain": chain, "expr": expr}}})
}

fn mark() -> Value {
    json!({"meta": {"key": "mark"}})
}

/// `mark & keep | set`.
fn set_mark(keep: u32, set: u32) -> Value {
    json!({"mangle": {"key": mark(), "value": {"|": [{"&": [mark(), keep]}, set]}}})
}

fn masked(mask: u32) -> Value {
    json!({"&": [mark(), mask]})
}

/// The set names of the groups: `g<vni>_<n>` by (network, group).
fn set_names(fw: &HostFirewall) -> BTreeMap<(u32, String), String> {
    fw.groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            (
                (g.vni, g.group.clone()),
                format!("{SET_PREFIX}{}_{i}", g.vni),
            )
        })
        .collect()
}

/// The match expressions of one rule (protocol, ports, remote); `None` if it names a group
/// the controller sent no members for (it matches nobody).
fn rule_matches(
    r: &FirewallRule,
    vni: u32,
    sets: &BTreeMap<(u32, String), String>,
) -> Option<Vec<Value>> {
    let mut m = Vec::new();
    let proto = match r.protocol {
        Protocol::Tcp => Some("tcp"),
        Protocol::Udp => Some("udp"),
        Protocol::Icmp => Some("icmp"),
        Protocol::Any => None,
    };
    if let Some(p) = proto {
        m.push(matches("==", json!({"meta": {"key": "l4proto"}}), json!(p)));
    }
    if let (Some(p), Some(min)) = (proto.filter(|_| r.protocol.has_ports()), r.port_min) {
        let max = r.port_max.unwrap_or(min);
        let ports = if min == max {
            json!(min)
        } else {
            json!({"range": [min, max]})
        };
        m.push(matches("==", field(p, "dport"), ports));
    }
    let addr = match r.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    let remote = match &r.remote {
        Remote::Cidr(cidr) => match cidr.split_once('/') {
            Some((a, len)) => {
                json!({"prefix": {"addr": a, "len": len.parse::<u8>().unwrap_or(u8::MAX)}})
            }
            None => json!(cidr),
        },
        Remote::Group(g) => json!(format!("@{}", sets.get(&(vni, g.clone()))?)),
    };
    m.push(matches("==", field("ip", addr), remote));
    Some(m)
}

/// The commands that make the port chains, the sets, the maps' entries and both base
/// chains' rules of `fw` (into the emptied skeleton).
pub fn compile(fw: &HostFirewall) -> Result<Vec<Value>, NetError> {
    if fw.ports.len() > MAX_PORTS {
        return Err(NetError::Invalid {
            what: "number of ports with security groups on one host",
            value: fw.ports.len().to_string(),
        });
    }
    let sets = set_names(fw);
    let mut cmds = Vec::new();
    for g in &fw.groups {
        let name = &sets[&(g.vni, g.group.clone())];
        cmds.push(
            json!({"add": {"set": {"family": FAMILY, "table": SG_TABLE, "name": name,
            "type": "ipv4_addr"}}}),
        );
        if !g.addresses.is_empty() {
            cmds.push(
                json!({"add": {"element": {"family": FAMILY, "table": SG_TABLE,
                "name": name, "elem": g.addresses}}}),
            );
        }
    }
    cmds.extend(tag_rules(fw));
    cmds.extend(zone_rule(fw));
    cmds.extend(forward_rules());
    let mut in_elems = Vec::new();
    let mut out_elems = Vec::new();
    for (i, port) in fw.ports.iter().enumerate() {
        let id = i as u32 + 1;
        for (direction, verdict, key, elems) in [
            (
                Direction::Ingress,
                json!({"accept": null}),
                id,
                &mut in_elems,
            ),
            (
                Direction::Egress,
                json!({"return": null}),
                id << 16,
                &mut out_elems,
            ),
        ] {
            let tap = tap_name(port.instance_id, port.nic);
            let chain = format!("{CHAIN_PREFIX}{}_{tap}", direction.as_str());
            cmds.push(json!({"add": obj("chain", &chain)}));
            for r in port.rules.iter().filter(|r| r.direction == direction) {
                if let Some(mut expr) = rule_matches(r, port.vni, &sets) {
                    expr.push(verdict.clone());
                    cmds.push(rule(&chain, json!(expr)));
                }
            }
            cmds.push(rule(&chain, json!([{"drop": null}])));
            elems.push(json!([key, {"jump": {"target": chain}}]));
        }
    }
    for (map, elems) in [(IN_MAP, in_elems), (OUT_MAP, out_elems)] {
        if !elems.is_empty() {
            cmds.push(
                json!({"add": {"element": {"family": FAMILY, "table": SG_TABLE,
                "name": map, "elem": elems}}}),
            );
        }
    }
    Ok(cmds)
}

/// The bridge-family rules that put the frame's ports into its mark.
fn tag_rules(fw: &HostFirewall) -> Vec<Value> {
    let taps = json!(format!("{TAP_PREFIX}*"));
    let (iif, oif) = (
        json!({"meta": {"key": "iifname"}}),
        json!({"meta": {"key": "oifname"}}),
    );
    let mut exprs = vec![
        json!([{"mangle": {"key": mark(), "value": 0}}]),
        json!([
            matches("==", iif.clone(), taps.clone()),
            set_mark(0xffff, UNKNOWN << 16)
        ]),
        json!([
            matches("==", oif.clone(), taps),
            set_mark(0xffff_0000, UNKNOWN)
        ]),
    ];
    for (i, port) in fw.ports.iter().enumerate() {
        let id = i as u32 + 1;
        let tap = json!(tap_name(port.instance_id, port.nic));
        exprs.push(json!([
            matches("==", iif.clone(), tap.clone()),
            set_mark(0xffff, id << 16)
        ]));
        exprs.push(json!([
            matches("==", oif.clone(), tap),
            set_mark(0xffff_0000, id)
        ]));
    }
    exprs
        .into_iter()
        .map(|expr| {
            json!({"add": {"rule": {"family": port_security::FAMILY, "table": port_security::TABLE,
                "chain": TAG_CHAIN, "expr": expr}}})
        })
        .collect()
}

/// The rule that puts each network's frames (by bridge) into a conntrack zone of their own;
/// none without ports.
fn zone_rule(fw: &HostFirewall) -> Option<Value> {
    let vnis: std::collections::BTreeSet<u32> = fw.ports.iter().map(|p| p.vni).collect();
    if vnis.is_empty() {
        return None;
    }
    let zones: Vec<Value> = vnis
        .iter()
        .enumerate()
        .map(|(i, vni)| json!([Segment::tenant(*vni).bridge, i + 1]))
        .collect();
    let zone = json!({"mangle": {"key": {"ct": {"key": "zone"}}, "value": {"map": {
        "key": {"meta": {"key": "iifname"}}, "data": {"set": zones}}}}});
    Some(rule(ZONE, json!([zone])))
}

/// The inet forward chain's rules (the chain itself is made by [`skeleton`]).
fn forward_rules() -> Vec<Value> {
    let ct = || json!({"ct": {"key": "state"}});
    let unknown_out = UNKNOWN << 16;
    [
        json!([matches("==", mark(), json!(0)), {"accept": null}]),
        json!([matches("in", ct(), json!(["established", "related"])), {"accept": null}]),
        json!([matches("in", ct(), json!("invalid")), {"drop": null}]),
        json!([{"vmap": {"key": masked(0xffff_0000), "data": format!("@{OUT_MAP}")}}]),
        json!([matches("==", masked(0xffff_0000), json!(unknown_out)), {"drop": null}]),
        json!([{"vmap": {"key": masked(0xffff), "data": format!("@{IN_MAP}")}}]),
        json!([matches("==", masked(0xffff), json!(UNKNOWN)), {"drop": null}]),
    ]
    .into_iter()
    .map(|expr| rule(FORWARD, expr))
    .collect()
}

/// The tables, base chains and maps (made if missing, emptied), and the deletion of the port
/// chains and sets of the previous apply (`existing_*`: their names).
fn skeleton(existing_chains: &[String], existing_sets: &[String]) -> Vec<Value> {
    let (bfamily, btable) = (port_security::FAMILY, port_security::TABLE);
    let mut cmds = vec![
        json!({"add": {"chain": {"family": bfamily, "table": btable, "name": TAG_CHAIN,
            "type": "filter", "hook": "forward", "prio": -200, "policy": "accept"}}}),
        json!({"flush": {"chain": {"family": bfamily, "table": btable, "name": TAG_CHAIN}}}),
        json!({"add": {"table": {"family": FAMILY, "name": SG_TABLE}}}),
        json!({"add": {"chain": {"family": FAMILY, "table": SG_TABLE, "name": FORWARD,
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}),
        json!({"flush": obj("chain", FORWARD)}),
        json!({"add": {"chain": {"family": FAMILY, "table": SG_TABLE, "name": ZONE,
            "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}}}),
        json!({"flush": obj("chain", ZONE)}),
    ];
    for map in [IN_MAP, OUT_MAP] {
        cmds.push(
            json!({"add": {"map": {"family": FAMILY, "table": SG_TABLE, "name": map,
            "type": "mark", "map": "verdict"}}}),
        );
        cmds.push(json!({"flush": obj("map", map)}));
    }
    for chain in existing_chains {
        cmds.push(json!({"flush": obj("chain", chain)}));
    }
    for chain in existing_chains {
        cmds.push(json!({"delete": obj("chain", chain)}));
    }
    for set in existing_sets {
        cmds.push(json!({"delete": obj("set", set)}));
    }
    cmds
}

/// Names of the port chains and group sets now in the host's table (none without a table).
async fn existing(shell: &Shell) -> Result<(Vec<String>, Vec<String>), NetError> {
    let cmd = shell.nft(&["-j", "list", "table", FAMILY, SG_TABLE]);
    let done = cmd.output().await?;
    if !done.success {
        if done.stderr.contains("No such file or directory") {
            return Ok((Vec::new(), Vec::new()));
        }
        return Err(cmd.failed(&done));
    }
    let parsed: Value = serde_json::from_str(&done.stdout).map_err(|e| NetError::Output {
        command: format!("nft -j list table {FAMILY} {SG_TABLE}"),
        detail: e.to_string(),
    })?;
    let mut chains = Vec::new();
    let mut sets = Vec::new();
    for item in parsed["nftables"].as_array().into_iter().flatten() {
        if let Some(name) = item["chain"]["name"].as_str() {
            if name.starts_with(CHAIN_PREFIX) {
                chains.push(name.to_string());
            }
        }
        if let Some(name) = item["set"]["name"].as_str() {
            let ours = name
                .strip_prefix(SET_PREFIX)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
            if ours {
                sets.push(name.to_string());
            }
        }
    }
    Ok((chains, sets))
}

/// Makes the host's security-group rules exactly `fw`, in one transaction: on failure the
/// previous rules stay in force and the error is answered.
pub async fn apply(shell: &Shell, fw: &HostFirewall) -> Result<(), NetError> {
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
    let (chains, sets) = existing(shell).await?;
    cmds.extend(skeleton(&chains, &sets));
    cmds.extend(compile(fw)?);
    port_security::apply(shell, cmds).await
}

#[cfg(test)]
mod tests;
