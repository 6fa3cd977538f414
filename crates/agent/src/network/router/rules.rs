//! The router's own nftables rules (table `ip nimbus_router`, replaced as a whole in one
//! transaction): what it forwards, its 1:1 NATs of floating IPs, and what it drops of the
//! connections it translated for a floating IP it no longer translates that way.

use super::{ROUTER_GATEWAY, ROUTER_UPLINK, TABLE, TRANSIT_BASE, TRANSIT_PREFIX};
use serde_json::{json, Value};
use std::net::Ipv4Addr;

fn chain(name: &str, hook: &str, prio: i32, policy: &str, kind: &str) -> Value {
    json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": name, "type": kind,
        "hook": hook, "prio": prio, "policy": policy}}})
}

fn rule(chain: &str, expr: Value) -> Value {
    json!({"add": {"rule": {"family": "ip", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn is(key: &str, value: &str) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": value}})
}

fn ct_state(states: &[&str]) -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": states}})
}

/// A floating IP (`floating`) translated 1:1 to a guest's address (`private`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Nat {
    pub floating: Ipv4Addr,
    pub private: Ipv4Addr,
}

fn ip_is(field: &str, addr: Ipv4Addr) -> Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": field}},
        "right": addr.to_string()}})
}

/// `ct <dir> ip <key>`.
fn ct_addr(dir: &str, key: &str) -> Value {
    json!({"ct": {"key": format!("ip {key}"), "dir": dir}})
}

/// The rules that drop the tracked connections of translations this router no longer makes
/// (a floating IP detached, or attached to another guest since): their conntrack entries
/// stay until they expire, and would otherwise carry traffic between the address's old
/// guest and its peers. Inbound: destination-translated connections whose (floating IP,
/// guest) is not one of `nats`; outbound: source-translated ones (not the masquerade to the
/// transit address) whose (guest, floating IP) is not.
fn stale_translations(nats: &[Nat]) -> Vec<Value> {
    let status =
        |s: &str| json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": s}});
    let not_one_of = |left: Value, pairs: Vec<Value>| json!({"match": {"op": "!=", "left": {"concat": left}, "right": {"set": pairs}}});
    let drop = json!({"drop": null});
    let mut inbound = vec![status("dnat")];
    let mut outbound = vec![
        status("snat"),
        json!({"match": {"op": "!=", "left": ct_addr("reply", "daddr"),
            "right": {"prefix": {"addr": TRANSIT_BASE.to_string(), "len": TRANSIT_PREFIX}}}}),
    ];
    if !nats.is_empty() {
        let pairs = |f: fn(&Nat) -> [String; 2]| -> Vec<Value> {
            nats.iter().map(|n| json!({"concat": f(n)})).collect()
        };
        inbound.push(not_one_of(
            json!([ct_addr("original", "daddr"), ct_addr("reply", "saddr")]),
            pairs(|n| [n.floating.to_string(), n.private.to_string()]),
        ));
        outbound.push(not_one_of(
            json!([ct_addr("original", "saddr"), ct_addr("reply", "daddr")]),
            pairs(|n| [n.private.to_string(), n.floating.to_string()]),
        ));
    }
    inbound.push(drop.clone());
    outbound.push(drop);
    vec![
        rule("forward", json!(inbound)),
        rule("forward", json!(outbound)),
    ]
}

/// The router's own rules, in one transaction that replaces the previous ones: forward only
/// from the network to the uplink (and the replies), and from the uplink to the guests of its
/// floating IPs (`nats`: destination rewritten on the way in, source on the way out);
/// masquerade everything else to the transit address; answer nothing but ICMP echo on its own
/// addresses.
pub fn filter(nats: &[Nat]) -> Vec<Value> {
    let accept = json!({"accept": null});
    let mut cmds = vec![
        json!({"add": {"table": {"family": "ip", "name": TABLE}}}),
        json!({"delete": {"table": {"family": "ip", "name": TABLE}}}),
        json!({"add": {"table": {"family": "ip", "name": TABLE}}}),
        chain("input", "input", 0, "drop", "filter"),
        rule("input", json!([is("iifname", "lo"), accept])),
        rule(
            "input",
            json!([ct_state(&["established", "related"]), accept]),
        ),
        rule(
            "input",
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "icmp", "field": "type"}},
                    "right": "echo-request"}},
                accept
            ]),
        ),
        // The network's DNS server (crate::network::dns) and the metadata service, from the
        // network's side only.
        rule(
            "input",
            json!([
                is("iifname", ROUTER_GATEWAY),
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                    "right": {"set": ["udp", "tcp"]}}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                    "right": crate::network::dns::PORT}},
                accept
            ]),
        ),
        rule(
            "input",
            json!([
                is("iifname", ROUTER_GATEWAY),
                ip_is("daddr", crate::network::metadata::ADDRESS),
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                    "right": crate::network::metadata::PORT}},
                accept
            ]),
        ),
        chain("forward", "forward", 0, "drop", "filter"),
    ];
    cmds.extend(stale_translations(nats));
    cmds.extend([
        rule(
            "forward",
            json!([ct_state(&["established", "related"]), accept]),
        ),
        rule(
            "forward",
            json!([
                is("iifname", ROUTER_GATEWAY),
                is("oifname", ROUTER_UPLINK),
                accept
            ]),
        ),
        rule(
            "forward",
            json!([
                is("iifname", ROUTER_UPLINK),
                is("oifname", ROUTER_GATEWAY),
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                accept
            ]),
        ),
        chain("prerouting", "prerouting", -100, "accept", "nat"),
        chain("postrouting", "postrouting", 100, "accept", "nat"),
    ]);
    for nat in nats {
        cmds.push(rule(
            "prerouting",
            json!([is("iifname", ROUTER_UPLINK), ip_is("daddr", nat.floating),
                {"dnat": {"addr": nat.private.to_string()}}]),
        ));
        cmds.push(rule(
            "postrouting",
            json!([is("oifname", ROUTER_UPLINK), ip_is("saddr", nat.private),
                {"snat": {"addr": nat.floating.to_string()}}]),
        ));
    }
    cmds.push(rule(
        "postrouting",
        json!([is("oifname", ROUTER_UPLINK), {"masquerade": null}]),
    ));
    cmds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_router_forwards_only_to_its_uplink() {
        let text = serde_json::to_string(&filter(&[])).expect("json");
        assert!(text.contains(r#""policy":"drop""#), "{text}");
        assert!(text.contains(r#"{"masquerade":null}"#), "{text}");
        // The only new connections forwarded go from the network to the uplink.
        let cmds = filter(&[]);
        let forwards = cmds
            .iter()
            .filter(|c| c["add"]["rule"]["chain"] == "forward")
            .count();
        assert_eq!(
            forwards, 5,
            "stale translations (in, out), replies, out, and in to a floating IP's guest"
        );
    }

    #[test]
    fn floating_ips_are_translated_both_ways_before_the_masquerade() {
        let nat = Nat {
            floating: Ipv4Addr::new(10, 249, 7, 193),
            private: Ipv4Addr::new(10, 10, 0, 11),
        };
        let cmds = filter(&[nat]);
        let post: Vec<&Value> = cmds
            .iter()
            .filter(|c| c["add"]["rule"]["chain"] == "postrouting")
            .map(|c| &c["add"]["rule"]["expr"])
            .collect();
        assert_eq!(post[0][2]["snat"]["addr"], "10.249.7.193");
        assert_eq!(post[1][1], json!({"masquerade": null}));
        let text = serde_json::to_string(&cmds).expect("json");
        assert!(text.contains(r#"{"dnat":{"addr":"10.10.0.11"}}"#), "{text}");
    }

    #[test]
    fn translations_no_longer_made_are_dropped_before_tracked_ones_pass() {
        let nat = Nat {
            floating: Ipv4Addr::new(10, 249, 7, 193),
            private: Ipv4Addr::new(10, 10, 0, 11),
        };
        let cmds = filter(&[nat]);
        let forward: Vec<String> = cmds
            .iter()
            .filter(|c| c["add"]["rule"]["chain"] == "forward")
            .map(|c| c["add"]["rule"]["expr"].to_string())
            .collect();
        assert!(
            forward[0].contains(r#"{"concat":["10.249.7.193","10.10.0.11"]}"#),
            "{}",
            forward[0]
        );
        assert!(
            forward[1].contains(r#"{"concat":["10.10.0.11","10.249.7.193"]}"#),
            "{}",
            forward[1]
        );
        assert!(
            forward[1].contains("100.64.0.0"),
            "the masquerade is not a stale one"
        );
        assert!(forward[2].contains("established"), "{}", forward[2]);
        // Without floating IPs every translated connection is stale (but the masquerade).
        let none = filter(&[]);
        let first = none
            .iter()
            .find(|c| c["add"]["rule"]["chain"] == "forward")
            .expect("rule");
        assert_eq!(
            first["add"]["rule"]["expr"].as_array().map(Vec::len),
            Some(2)
        );
    }
}
