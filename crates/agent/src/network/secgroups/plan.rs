//! What changes between the rules in force and the wanted ones: the agent remembers what it
//! put into the kernel ([`Tables`]) and sends only the difference, so a rule change is a
//! small transaction whatever the number of ports.
//!
//! Ports with the same compiled rules share one rule chain; when a group's rules change, the
//! chain its ports share is rewritten in place (their map entries stay), and when a group's
//! members change, only its set's elements do.

use super::compile::{self, chain_rules, elements, obj, rule};
use super::{IN_MAP, MAX_PORTS, OUT_MAP, RULE_CHAIN_PREFIX, SET_PREFIX, ZONE};
use crate::network::error::NetError;
use crate::network::tap::tap_name;
use nimbus_agent_api::{HostFirewall, PortFirewall};
use nimbus_api::Direction;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The security-group objects in the kernel, as this agent made them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tables {
    /// Tap -> its mark id and rule chains.
    ports: BTreeMap<String, PortState>,
    /// Rule chains by number (`sg_c<n>`).
    chains: BTreeMap<u32, RuleChain>,
    /// The number of the next new rule chain (never reused while the table lives, so a
    /// chain deleted and one made in the same transaction never share a name).
    next_chain: u32,
    /// Group sets by (network, group).
    sets: BTreeMap<(u32, String), GroupSet>,
    /// Conntrack zone per network (VNI).
    zones: BTreeMap<u32, u16>,
    /// Whether the inet table is being made anew (its zone rule too).
    fresh: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct PortState {
    id: u32,
    ingress: u32,
    egress: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct RuleChain {
    direction: Direction,
    /// The serialised rules (what identifies the chain's content).
    key: String,
    rules: Vec<Value>,
    /// The taps whose map entries jump here.
    taps: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct GroupSet {
    name: String,
    addresses: BTreeSet<String>,
}

fn chain_name(n: u32) -> String {
    format!("{RULE_CHAIN_PREFIX}{n}")
}

/// The lowest of `1..=max` not in `taken`.
fn lowest_free(taken: &BTreeSet<u32>, max: u32) -> Option<u32> {
    (1..=max).find(|n| !taken.contains(n))
}

/// The commands that turn `old` into `fw`, and the tables they leave. Commands are ordered
/// so that nothing is deleted while something still refers to it.
pub fn plan(old: &Tables, fw: &HostFirewall) -> Result<(Vec<Value>, Tables), NetError> {
    if fw.ports.len() > MAX_PORTS {
        return Err(NetError::Invalid {
            what: "number of ports with security groups on one host",
            value: fw.ports.len().to_string(),
        });
    }
    let mut new = Tables {
        next_chain: old.next_chain,
        ..Tables::default()
    };
    let mut cmds = Vec::new();
    let mut late = Vec::new();
    plan_sets(old, fw, &mut new, &mut cmds);
    plan_zones(old, fw, &mut new, &mut cmds);
    let names: BTreeMap<(u32, String), String> = new
        .sets
        .iter()
        .map(|(k, s)| (k.clone(), s.name.clone()))
        .collect();
    // Ids: kept by the ports that stay, the lowest free ones for new ports.
    let taps: Vec<String> = fw
        .ports
        .iter()
        .map(|p| tap_name(p.instance_id, p.nic))
        .collect();
    let wanted: BTreeSet<&String> = taps.iter().collect();
    if wanted.len() != taps.len() {
        return Err(NetError::Invalid {
            what: "firewall (a port is sent twice)",
            value: format!("{} ports, {} distinct", taps.len(), wanted.len()),
        });
    }
    let mut ids: BTreeSet<u32> = BTreeSet::new();
    for (tap, port) in &old.ports {
        if wanted.contains(tap) {
            ids.insert(port.id);
        } else {
            cmds.extend(unmap(port));
            cmds.extend(compile::remove_tag(tap));
        }
    }
    // Ports of the same groups send the same rules: each distinct (network, rules) is
    // compiled once, however many ports have it.
    let mut kinds: HashMap<String, usize> = HashMap::new();
    let mut representatives: Vec<&PortFirewall> = Vec::new();
    let kind_of: Vec<usize> = fw
        .ports
        .iter()
        .map(|port| {
            let key = serde_json::to_string(&(port.vni, &port.rules)).unwrap_or_default();
            *kinds.entry(key).or_insert_with(|| {
                representatives.push(port);
                representatives.len() - 1
            })
        })
        .collect();
    let mut chains_of: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for direction in [Direction::Ingress, Direction::Egress] {
        let compiled: Vec<(String, Vec<Value>)> = representatives
            .iter()
            .map(|port| {
                let rules = chain_rules(port, direction, &names);
                (serde_json::to_string(&rules).unwrap_or_default(), rules)
            })
            .collect();
        let mut by_rules: BTreeMap<String, (Vec<Value>, BTreeSet<String>)> = BTreeMap::new();
        for (kind, tap) in kind_of.iter().zip(&taps) {
            let (key, rules) = &compiled[*kind];
            by_rules
                .entry(key.clone())
                .or_insert_with(|| (rules.clone(), BTreeSet::new()))
                .1
                .insert(tap.clone());
        }
        for (tap, n) in plan_chains(old, direction, by_rules, &mut new, &mut cmds) {
            let entry = chains_of.entry(tap).or_insert((0, 0));
            match direction {
                Direction::Ingress => entry.0 = n,
                Direction::Egress => entry.1 = n,
            }
        }
    }
    for tap in &taps {
        let (ingress, egress) = chains_of.get(tap).copied().unwrap_or_default();
        let kept = old.ports.get(tap);
        let id = match kept {
            Some(p) => p.id,
            None => {
                let id = lowest_free(&ids, MAX_PORTS as u32).ok_or(NetError::Invalid {
                    what: "number of ports with security groups on one host",
                    value: fw.ports.len().to_string(),
                })?;
                ids.insert(id);
                late.extend(compile::add_tag(tap, id));
                id
            }
        };
        let port = PortState {
            id,
            ingress,
            egress,
        };
        if kept != Some(&port) {
            if let Some(k) = kept {
                cmds.extend(unmap(k));
            }
            late.extend(map(&port));
        }
        new.ports.insert(tap.clone(), port);
    }
    // Map entries first, then the chains no entry jumps to any more go.
    let mut tail = Vec::new();
    for n in old.chains.keys() {
        if !new.chains.contains_key(n) {
            tail.push(json!({"flush": obj("chain", &chain_name(*n))}));
            tail.push(json!({"delete": obj("chain", &chain_name(*n))}));
        }
    }
    cmds.extend(late);
    cmds.extend(tail);
    cmds.extend(
        old.sets
            .iter()
            .filter(|(k, _)| !new.sets.contains_key(*k))
            .map(|(_, s)| json!({"delete": obj("set", &s.name)})),
    );
    Ok((cmds, new))
}

/// The map entries of `port` (both directions).
fn map(port: &PortState) -> Vec<Value> {
    let jump = |n: u32| json!({"jump": {"target": chain_name(n)}});
    vec![
        elements("add", obj, IN_MAP, json!([[port.id, jump(port.ingress)]])),
        elements(
            "add",
            obj,
            OUT_MAP,
            json!([[port.id << 16, jump(port.egress)]]),
        ),
    ]
}

fn unmap(port: &PortState) -> Vec<Value> {
    vec![
        elements("delete", obj, IN_MAP, json!([port.id])),
        elements("delete", obj, OUT_MAP, json!([port.id << 16])),
    ]
}

/// Sets: made for new groups, their elements changed for groups that stay (removed sets are
/// deleted at the end, once no rule refers to them).
fn plan_sets(old: &Tables, fw: &HostFirewall, new: &mut Tables, cmds: &mut Vec<Value>) {
    let wanted: BTreeSet<(u32, String)> =
        fw.groups.iter().map(|g| (g.vni, g.group.clone())).collect();
    let mut numbers: BTreeSet<u32> = old
        .sets
        .iter()
        .filter(|(k, _)| wanted.contains(*k))
        .filter_map(|(_, s)| s.name.rsplit('_').next()?.parse().ok())
        .collect();
    for g in &fw.groups {
        let key = (g.vni, g.group.clone());
        let addresses: BTreeSet<String> = g.addresses.iter().cloned().collect();
        if new.sets.contains_key(&key) {
            continue;
        }
        let (name, before) = match old.sets.get(&key) {
            Some(s) => (s.name.clone(), s.addresses.clone()),
            None => {
                let n = lowest_free(&numbers, u32::MAX).unwrap_or_default();
                numbers.insert(n);
                let name = format!("{SET_PREFIX}{}_{n}", g.vni);
                cmds.push(json!({"add": {"set": {"family": super::FAMILY,
                    "table": super::SG_TABLE, "name": name, "type": "ipv4_addr"}}}));
                (name, BTreeSet::new())
            }
        };
        let gone: Vec<&String> = before.difference(&addresses).collect();
        let added: Vec<&String> = addresses.difference(&before).collect();
        if !gone.is_empty() {
            cmds.push(elements("delete", obj, &name, json!(gone)));
        }
        if !added.is_empty() {
            cmds.push(elements("add", obj, &name, json!(added)));
        }
        new.sets.insert(key, GroupSet { name, addresses });
    }
}

/// Zones: a network keeps its zone while it has ports here (a tracked connection keeps its
/// zone), a new one takes the lowest free.
fn plan_zones(old: &Tables, fw: &HostFirewall, new: &mut Tables, cmds: &mut Vec<Value>) {
    let vnis: BTreeSet<u32> = fw.ports.iter().map(|p| p.vni).collect();
    new.zones = old
        .zones
        .iter()
        .filter(|(vni, _)| vnis.contains(vni))
        .map(|(v, z)| (*v, *z))
        .collect();
    for vni in &vnis {
        if !new.zones.contains_key(vni) {
            let taken: BTreeSet<u32> = new.zones.values().map(|z| u32::from(*z)).collect();
            let zone = lowest_free(&taken, u32::from(u16::MAX)).unwrap_or_default();
            new.zones
                .insert(*vni, u16::try_from(zone).unwrap_or(u16::MAX));
        }
    }
    if new.zones != old.zones || old.fresh {
        cmds.push(json!({"flush": obj("chain", ZONE)}));
        cmds.extend(compile::zone_rule(&new.zones));
    }
}

/// Rule chains of one direction: one per distinct rule list. A chain whose rules are
/// unchanged stays; one whose rules changed is rewritten in place when an old chain served
/// (most of) the same ports; otherwise a chain is made. Answers each tap's chain number.
fn plan_chains(
    old: &Tables,
    direction: Direction,
    by_rules: BTreeMap<String, (Vec<Value>, BTreeSet<String>)>,
    new: &mut Tables,
    cmds: &mut Vec<Value>,
) -> Vec<(String, u32)> {
    let mut unused: BTreeMap<u32, &RuleChain> = old
        .chains
        .iter()
        .filter(|(_, c)| c.direction == direction)
        .map(|(n, c)| (*n, c))
        .collect();
    let mut pending = Vec::new();
    let mut assigned = Vec::new();
    for (key, (rules, taps)) in by_rules {
        let same = unused.iter().find(|(_, c)| c.key == key).map(|(n, _)| *n);
        match same {
            Some(n) => {
                unused.remove(&n);
                assigned.push((n, key, rules, taps));
            }
            None => pending.push((key, rules, taps)),
        }
    }
    for (key, rules, taps) in pending {
        let closest = unused
            .iter()
            .map(|(n, c)| (c.taps.intersection(&taps).count(), *n))
            .filter(|(overlap, _)| *overlap > 0)
            .max()
            .map(|(_, n)| n);
        let n = match closest {
            Some(n) => {
                unused.remove(&n);
                cmds.push(json!({"flush": obj("chain", &chain_name(n))}));
                n
            }
            None => {
                let n = new.next_chain;
                new.next_chain += 1;
                cmds.push(json!({"add": obj("chain", &chain_name(n))}));
                n
            }
        };
        cmds.extend(rules.iter().map(|r| rule(&chain_name(n), r.clone())));
        assigned.push((n, key, rules, taps));
    }
    let mut of_tap = Vec::new();
    for (n, key, rules, taps) in assigned {
        of_tap.extend(taps.iter().map(|t| (t.clone(), n)));
        new.chains.insert(
            n,
            RuleChain {
                direction,
                key,
                rules,
                taps,
            },
        );
    }
    of_tap
}

/// The objects a rebuild starts from: the zones recovered from the kernel (tracked
/// connections keep theirs), nothing else.
pub fn recovered(zones: BTreeMap<u32, u16>) -> Tables {
    Tables {
        zones,
        fresh: true,
        ..Tables::default()
    }
}
