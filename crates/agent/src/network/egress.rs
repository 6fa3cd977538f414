//! The host's side of the tenant gateways ([`super::router`]): what the routers may reach,
//! the masquerade to the host's uplink, and the filter that keeps each host's gateway local.
//!
//! ```text
//! table ip nimbus_egress             (replaced as a whole, one transaction)
//!   chain input  (hook input):      iifname "nu*" drop         never the host itself (agent
//!                                                               API, anything it listens on)
//!   chain forward (hook forward):   iifname "nu*" ct state established,related accept
//!                                                               (replies to the outside)
//!                                   iifname "nu*" oifname "nu*" ip daddr @floating accept
//!                                                               (a floating IP held here:
//!                                                               public, as from outside)
//!                                   iifname "nu*" oifname "nu*" drop   never another router:
//!                                                               no path between networks
//!                                   iifname "nu*" ip daddr @hosts drop  never another host
//!                                                               (agent APIs, VXLAN)
//!                                   iifname "nu*" ip daddr C tcp dport P drop   nor the
//!                                                               controller's API
//!   chain postrouting (nat):        ip saddr 100.64.0.0/10 oifname != "nu*" masquerade
//! table bridge nimbus_gw
//!   chain from_overlay (prerouting): iifname "nx*" ether saddr|daddr GATEWAY_MAC drop
//!   chain to_overlay (forward):      oifname "nx*" ether saddr|daddr GATEWAY_MAC drop
//! ```
//! Gateway frames never cross the VXLAN: each guest's ARP for its gateway is answered by its
//! own host's router only (a remote router's answer is dropped where it would leave its host,
//! and again before the bridge here could learn the gateway's MAC behind the VXLAN device).

use super::command::Shell;
use super::error::NetError;
use super::port_security::{apply, field, list_json, matches};
use super::router::{GATEWAY_MAC, TRANSIT_BASE, TRANSIT_PREFIX, UPLINK_PREFIX};
use super::segment::VXLAN_PREFIX;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const TABLE: &str = "nimbus_egress";
const BRIDGE_TABLE: &str = "nimbus_gw";
const HOSTS_SET: &str = "hosts";
const FLOATING_SET: &str = "floating";

/// What tenant traffic must never reach: the other hosts, the controller's API; and the one
/// exception to "never another router": the floating IPs held here, public addresses that
/// every guest reaches as the outside does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protected {
    pub hosts: BTreeSet<IpAddr>,
    pub controller: Option<SocketAddr>,
    pub floating: BTreeSet<Ipv4Addr>,
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn rule(family: &str, table: &str, chain: &str, expr: Value) -> Value {
    json!({"add": {"rule": {"family": family, "table": table, "chain": chain, "expr": expr}}})
}

fn base_chain(family: &str, table: &str, name: &str, hook: &str, prio: i32, kind: &str) -> Value {
    json!({"add": {"chain": {"family": family, "table": table, "name": name, "type": kind,
        "hook": hook, "prio": prio, "policy": "accept"}}})
}

/// Replaces table `family table` with `body` in the same transaction.
fn replace(family: &str, table: &str, body: Vec<Value>) -> Vec<Value> {
    let t = json!({"family": family, "name": table});
    let mut cmds = vec![
        json!({"add": {"table": t.clone()}}),
        json!({"delete": {"table": t.clone()}}),
        json!({"add": {"table": t}}),
    ];
    cmds.extend(body);
    cmds
}

/// The routed part: input and forward filters, masquerade.
pub fn routed(protected: &Protected) -> Vec<Value> {
    let r = |chain: &str, expr: Value| rule("ip", TABLE, chain, expr);
    let from_router = matches("==", meta("iifname"), json!(format!("{UPLINK_PREFIX}*")));
    let to_router = |op: &str| matches(op, meta("oifname"), json!(format!("{UPLINK_PREFIX}*")));
    let drop = json!({"drop": null});
    let mut body = vec![
        base_chain("ip", TABLE, "input", "input", -10, "filter"),
        r("input", json!([from_router.clone(), drop.clone()])),
        json!({"add": {"set": {"family": "ip", "table": TABLE, "name": HOSTS_SET,
            "type": "ipv4_addr"}}}),
        json!({"add": {"set": {"family": "ip", "table": TABLE, "name": FLOATING_SET,
            "type": "ipv4_addr"}}}),
        base_chain("ip", TABLE, "forward", "forward", -10, "filter"),
        r(
            "forward",
            json!([
                from_router.clone(),
                {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                    "right": ["established", "related"]}},
                {"accept": null}
            ]),
        ),
        r(
            "forward",
            json!([
                from_router.clone(),
                to_router("=="),
                matches("==", field("ip", "daddr"), json!(format!("@{FLOATING_SET}"))),
                {"accept": null}
            ]),
        ),
        r(
            "forward",
            json!([from_router.clone(), to_router("=="), drop.clone()]),
        ),
        r(
            "forward",
            json!([
                from_router.clone(),
                matches("==", field("ip", "daddr"), json!(format!("@{HOSTS_SET}"))),
                drop.clone()
            ]),
        ),
        base_chain("ip", TABLE, "postrouting", "postrouting", 100, "nat"),
        r(
            "postrouting",
            json!([
                matches(
                    "==",
                    field("ip", "saddr"),
                    json!({"prefix": {"addr": TRANSIT_BASE.to_string(), "len": TRANSIT_PREFIX}})
                ),
                to_router("!="),
                {"masquerade": null}
            ]),
        ),
    ];
    let hosts: Vec<String> = protected
        .hosts
        .iter()
        .filter(|a| a.is_ipv4())
        .map(IpAddr::to_string)
        .collect();
    if !hosts.is_empty() {
        body.push(json!({"add": {"element": {"family": "ip", "table": TABLE,
            "name": HOSTS_SET, "elem": hosts}}}));
    }
    let floating: Vec<String> = protected.floating.iter().map(Ipv4Addr::to_string).collect();
    if !floating.is_empty() {
        body.push(json!({"add": {"element": {"family": "ip", "table": TABLE,
            "name": FLOATING_SET, "elem": floating}}}));
    }
    if let Some(c) = protected.controller.filter(|c| c.is_ipv4()) {
        body.push(r(
            "forward",
            json!([
                from_router,
                matches("==", field("ip", "daddr"), json!(c.ip().to_string())),
                matches("==", field("tcp", "dport"), json!(c.port())),
                drop
            ]),
        ));
    }
    replace("ip", TABLE, body)
}

/// The bridge part: no gateway frame crosses a VXLAN device.
pub fn local_gateways() -> Vec<Value> {
    let overlay = json!(format!("{VXLAN_PREFIX}*"));
    let mut body = vec![
        base_chain(
            "bridge",
            BRIDGE_TABLE,
            "from_overlay",
            "prerouting",
            -300,
            "filter",
        ),
        base_chain(
            "bridge",
            BRIDGE_TABLE,
            "to_overlay",
            "forward",
            -300,
            "filter",
        ),
    ];
    for (chain, dev) in [("from_overlay", "iifname"), ("to_overlay", "oifname")] {
        for addr in ["saddr", "daddr"] {
            body.push(rule(
                "bridge",
                BRIDGE_TABLE,
                chain,
                json!([
                    matches("==", meta(dev), overlay.clone()),
                    matches("==", field("ether", addr), json!(GATEWAY_MAC)),
                    {"drop": null}
                ]),
            ));
        }
    }
    replace("bridge", BRIDGE_TABLE, body)
}

/// The protections in force now (what a previous run of the agent left): the hosts and
/// floating IPs of their sets; empty without the table. A restarted agent keeps them until
/// the controller tells it again, so that no restart opens a path a router must not have.
pub async fn in_force(shell: &Shell) -> Result<Protected, NetError> {
    let mut kept = Protected::default();
    for name in [HOSTS_SET, FLOATING_SET] {
        let listing = list_json(shell, &["set", "ip", TABLE, name]).await?;
        let sets = listing.as_ref().and_then(|l| l["nftables"].as_array());
        let addrs = sets
            .into_iter()
            .flatten()
            .filter_map(|item| item["set"]["elem"].as_array())
            .flatten()
            .filter_map(|e| e.as_str()?.parse::<Ipv4Addr>().ok());
        for addr in addrs {
            if name == HOSTS_SET {
                kept.hosts.insert(IpAddr::V4(addr));
            } else {
                kept.floating.insert(addr);
            }
        }
    }
    Ok(kept)
}

/// Makes the host's egress rules exactly these (both tables, one transaction).
pub async fn ensure(shell: &Shell, protected: &Protected) -> Result<(), NetError> {
    let mut cmds = routed(protected);
    cmds.extend(local_gateways());
    apply(shell, cmds).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routers_reach_neither_each_other_nor_hosts_nor_the_controller() {
        let p = Protected {
            hosts: ["10.249.0.12".parse().expect("ip")].into(),
            controller: Some("10.249.0.1:7700".parse().expect("addr")),
            floating: ["10.249.0.193".parse().expect("ip")].into(),
        };
        let text = serde_json::to_string(&routed(&p)).expect("json");
        assert!(text.contains(r#""elem":["10.249.0.12"]"#), "{text}");
        assert!(text.contains(r#""elem":["10.249.0.193"]"#), "{text}");
        assert!(text.contains(r#""right":7700"#), "{text}");
        assert!(text.contains(r#""right":"nu*""#), "{text}");
        assert!(text.contains(r#"{"masquerade":null}"#), "{text}");
        let none = serde_json::to_string(&routed(&Protected::default())).expect("json");
        assert!(!none.contains("elem"), "{none}");
    }

    #[test]
    fn gateway_frames_stay_off_the_overlay() {
        let cmds = local_gateways();
        let rules: Vec<&Value> = cmds
            .iter()
            .filter(|c| c["add"]["rule"].is_object())
            .collect();
        assert_eq!(rules.len(), 4);
        for r in rules {
            let expr = &r["add"]["rule"]["expr"];
            assert_eq!(expr[0]["match"]["right"], "nx*");
            assert_eq!(expr[1]["match"]["right"], GATEWAY_MAC);
        }
    }
}
