//! The nftables JSON of the security-group objects: rule chains' rules, the base chains'
//! fixed rules and the per-port tagging (see the module documentation of [`super`]).

use super::{FAMILY, FORWARD, IN_MAP, OUT_MAP, SG_TABLE, TAG_CHAIN, TAG_IN_MAP, TAG_OUT_MAP};
use super::{UNKNOWN, ZONE};
use crate::network::port_security::{self, field, matches};
use crate::network::segment::Segment;
use crate::network::tap::TAP_PREFIX;
use nimbus_agent_api::{FirewallRule, PortFirewall, Remote};
use nimbus_api::{Direction, Protocol};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// An object of the inet table (`{"chain": {...}}`, `{"set": {...}}`, `{"map": {...}}`).
pub(super) fn obj(kind: &str, name: &str) -> Value {
    json!({kind: {"family": FAMILY, "table": SG_TABLE, "name": name}})
}

/// An object of the host's bridge table.
pub(super) fn bridge_obj(kind: &str, name: &str) -> Value {
    json!({kind: {"family": port_security::FAMILY, "table": port_security::TABLE, "name": name}})
}

/// `add rule` to `chain` of the inet table.
pub(super) fn rule(chain: &str, expr: Value) -> Value {
    json!({"add": {"rule": {"family": FAMILY, "table": SG_TABLE, "chain": chain, "expr": expr}}})
}

/// `add rule` to `chain` of the bridge table.
pub(super) fn bridge_rule(chain: &str, expr: Value) -> Value {
    json!({"add": {"rule": {"family": port_security::FAMILY, "table": port_security::TABLE,
        "chain": chain, "expr": expr}}})
}

/// `add element` / `delete element` (`verb`) of `elems` in set or map `name` of `table`
/// (`obj` or `bridge_obj` gives the family and table).
pub(super) fn elements(
    verb: &str,
    owner: fn(&str, &str) -> Value,
    name: &str,
    elems: Value,
) -> Value {
    let mut element = owner("element", name);
    element["element"]["elem"] = elems;
    json!({ verb: element })
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

/// The rules (expressions) of `port`'s chain for `direction`: one per rule of that
/// direction (ingress ones accept, egress ones return to the forward chain), then a drop.
pub(super) fn chain_rules(
    port: &PortFirewall,
    direction: Direction,
    sets: &BTreeMap<(u32, String), String>,
) -> Vec<Value> {
    let verdict = match direction {
        Direction::Ingress => json!({"accept": null}),
        Direction::Egress => json!({"return": null}),
    };
    let mut rules: Vec<Value> = port
        .rules
        .iter()
        .filter(|r| r.direction == direction)
        .filter_map(|r| rule_matches(r, port.vni, sets))
        .map(|mut expr| {
            expr.push(verdict.clone());
            json!(expr)
        })
        .collect();
    rules.push(json!([{"drop": null}]));
    rules
}

/// The rule that puts each network's frames (by bridge) into its conntrack zone; none
/// without networks.
pub(super) fn zone_rule(zones: &BTreeMap<u32, u16>) -> Option<Value> {
    if zones.is_empty() {
        return None;
    }
    let elems: Vec<Value> = zones
        .iter()
        .map(|(vni, zone)| json!([Segment::tenant(*vni).bridge, zone]))
        .collect();
    let zone = json!({"mangle": {"key": {"ct": {"key": "zone"}}, "value": {"map": {
        "key": {"meta": {"key": "iifname"}}, "data": {"set": elems}}}}});
    Some(rule(ZONE, json!([zone])))
}

/// The inet forward chain's rules (the same for every firewall).
pub(super) fn forward_rules() -> Vec<Value> {
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

/// The bridge tag chain's rules (the same for every firewall): clear the mark, mark VM
/// ports as unknown, then let each known port's own chain put its id in.
pub(super) fn tag_rules() -> Vec<Value> {
    let taps = json!(format!("{TAP_PREFIX}*"));
    let (iif, oif) = (
        json!({"meta": {"key": "iifname"}}),
        json!({"meta": {"key": "oifname"}}),
    );
    [
        json!([{"mangle": {"key": mark(), "value": 0}}]),
        json!([
            matches("==", iif.clone(), taps.clone()),
            set_mark(0xffff, UNKNOWN << 16)
        ]),
        json!([
            matches("==", oif.clone(), taps),
            set_mark(0xffff_0000, UNKNOWN)
        ]),
        json!([{"vmap": {"key": iif, "data": format!("@{TAG_IN_MAP}")}}]),
        json!([{"vmap": {"key": oif, "data": format!("@{TAG_OUT_MAP}")}}]),
    ]
    .into_iter()
    .map(|expr| bridge_rule(TAG_CHAIN, expr))
    .collect()
}

/// The bridge chains of a port (`in`, `out`): each puts the port's `id` into its half of
/// the mark.
pub(super) fn tag_chain_names(tap: &str) -> (String, String) {
    (format!("sg_ti_{tap}"), format!("sg_to_{tap}"))
}

/// The commands that make the tag chains and map entries of port `tap` with mark id `id`.
pub(super) fn add_tag(tap: &str, id: u32) -> Vec<Value> {
    let (tin, tout) = tag_chain_names(tap);
    let jump = |chain: &str| json!({"jump": {"target": chain}});
    vec![
        json!({"add": bridge_obj("chain", &tin)}),
        bridge_rule(&tin, json!([set_mark(0xffff, id << 16)])),
        json!({"add": bridge_obj("chain", &tout)}),
        bridge_rule(&tout, json!([set_mark(0xffff_0000, id)])),
        elements("add", bridge_obj, TAG_IN_MAP, json!([[tap, jump(&tin)]])),
        elements("add", bridge_obj, TAG_OUT_MAP, json!([[tap, jump(&tout)]])),
    ]
}

/// The commands that remove the tag map entries and chains of port `tap`.
pub(super) fn remove_tag(tap: &str) -> Vec<Value> {
    let (tin, tout) = tag_chain_names(tap);
    vec![
        elements("delete", bridge_obj, TAG_IN_MAP, json!([tap])),
        elements("delete", bridge_obj, TAG_OUT_MAP, json!([tap])),
        json!({"flush": bridge_obj("chain", &tin)}),
        json!({"delete": bridge_obj("chain", &tin)}),
        json!({"flush": bridge_obj("chain", &tout)}),
        json!({"delete": bridge_obj("chain", &tout)}),
    ]
}
