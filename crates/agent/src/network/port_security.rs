//! Port security: what a guest may send into its network, enforced by the host's nftables
//! (bridge family, before the frame is switched), outside the guest's reach. On by default
//! for every VM port:
//!
//! ```text
//! table bridge nimbus
//!   map ports: tap name -> jump port_<tap>
//!   chain prerouting (hook prerouting, priority filter):
//!       iifname vmap @ports          each VM tap to its own chain
//!       iifname "nt*" drop           a tap without its chain sends nothing (fail closed)
//!   chain port_<tap>:
//!       ether saddr != MAC drop                       only its own MAC
//!       arp saddr ether != MAC drop                   ARP only as itself
//!       arp saddr ip != { IP, 0.0.0.0 } drop          (0.0.0.0: address probes)
//!       ether type arp accept
//!       ether type 0x8035 accept                      RARP: QEMU's announce after migration
//!       udp sport 67 drop                             never a DHCP server
//!       ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept   a DHCP client before its lease
//!       ip saddr != IP drop                           only its own IP
//!       ether type ip accept
//!       drop                                          the rest: IPv6 (router advertisements
//!                                                     included), VLAN tags, other types
//! ```
//! Every change is one nftables transaction (`nft -j -f -` of a JSON batch made here with
//! serde): a VM's chains and map entries appear or go all at once, and a failed change
//! leaves the previous rules. A plugged port whose rules could not be applied drops all it
//! sends (the wildcard rule), so a failure never leaves an open port.

use super::command::Shell;
use super::error::NetError;
use nimbus_agent_api::NicSpec;
use serde_json::{json, Value};

/// The host's table (bridge family).
pub const TABLE: &str = "nimbus";
/// The map from tap name to its chain.
const PORTS_MAP: &str = "ports";
pub const FAMILY: &str = "bridge";
/// Ethertype of RARP.
const ETHERTYPE_RARP: u16 = 0x8035;

/// One NIC's tap and the addresses it may send as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub tap: String,
    pub mac: String,
    /// Its IPv4 address, without prefix.
    pub ip: String,
}

impl Port {
    /// The port of `nic` on tap `tap`.
    pub fn of(tap: String, nic: &NicSpec) -> Self {
        let ip = nic.ip.split('/').next().unwrap_or_default().to_string();
        Self {
            tap,
            mac: nic.mac.to_ascii_lowercase(),
            ip,
        }
    }

    fn chain(&self) -> String {
        format!("port_{}", self.tap)
    }
}

pub(super) fn rule(chain: &str, expr: Value) -> Value {
    json!({"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr}}})
}

pub(super) fn field(protocol: &str, name: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": name}})
}

pub(super) fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

/// The table, the map and the base chain with its two rules (made once per host).
pub fn base() -> Vec<Value> {
    let iifname = json!({"meta": {"key": "iifname"}});
    vec![
        json!({"add": {"table": {"family": FAMILY, "name": TABLE}}}),
        json!({"add": {"map": {"family": FAMILY, "table": TABLE, "name": PORTS_MAP,
            "type": "ifname", "map": "verdict"}}}),
        json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": "prerouting",
            "type": "filter", "hook": "prerouting", "prio": -200, "policy": "accept"}}}),
        rule(
            "prerouting",
            json!([{"vmap": {"key": iifname, "data": format!("@{PORTS_MAP}")}}]),
        ),
        rule(
            "prerouting",
            json!([matches("==", iifname, json!(format!("{}*", super::tap::TAP_PREFIX))), {"drop": null}]),
        ),
    ]
}

/// The commands that (re)make `port`'s chain and map entry.
pub fn add_port(port: &Port) -> Vec<Value> {
    let chain = port.chain();
    let drop = json!({"drop": null});
    let accept = json!({"accept": null});
    let (mac, ip) = (json!(port.mac), json!(port.ip));
    let obj = json!({"family": FAMILY, "table": TABLE, "name": chain});
    let rules = [
        json!([matches("!=", field("ether", "saddr"), mac.clone()), drop]),
        json!([matches("!=", field("arp", "saddr ether"), mac), drop]),
        json!([
            matches(
                "!=",
                field("arp", "saddr ip"),
                json!({"set": [ip.clone(), "0.0.0.0"]})
            ),
            drop
        ]),
        json!([matches("==", field("ether", "type"), json!("arp")), accept]),
        // QEMU's announce after a migration (RARP, from the NIC's MAC): the network learns
        // where the VM is now.
        json!([
            matches("==", field("ether", "type"), json!(ETHERTYPE_RARP)),
            accept
        ]),
        json!([matches("==", field("udp", "sport"), json!(67)), drop]),
        json!([
            matches("==", field("ip", "saddr"), json!("0.0.0.0")),
            matches("==", field("udp", "sport"), json!(68)),
            matches("==", field("udp", "dport"), json!(67)),
            accept
        ]),
        json!([matches("!=", field("ip", "saddr"), ip), drop]),
        json!([matches("==", field("ether", "type"), json!("ip")), accept]),
        json!([drop]),
    ];
    let mut cmds = vec![
        json!({"add": {"chain": obj.clone()}}),
        json!({"flush": {"chain": obj}}),
    ];
    cmds.extend(rules.into_iter().map(|r| rule(&chain, r)));
    cmds.push(
        json!({"add": {"element": {"family": FAMILY, "table": TABLE, "name": PORTS_MAP,
        "elem": [[port.tap, {"jump": {"target": chain}}]]}}}),
    );
    cmds
}

/// The commands that remove `port`'s map entry and chain.
pub fn remove_port(port_tap: &str) -> Vec<Value> {
    let chain = format!("port_{port_tap}");
    vec![
        json!({"delete": {"element": {"family": FAMILY, "table": TABLE, "name": PORTS_MAP,
            "elem": [port_tap]}}}),
        json!({"delete": {"chain": {"family": FAMILY, "table": TABLE, "name": chain}}}),
    ]
}

/// Whether the host's table exists.
pub async fn table_exists(shell: &Shell) -> Result<bool, NetError> {
    nft_table_exists(shell, FAMILY, TABLE).await
}

/// `nft -j list ...`, parsed; `None` when the object does not exist.
pub async fn list_json(shell: &Shell, what: &[&str]) -> Result<Option<Value>, NetError> {
    let mut args = vec!["-j", "list"];
    args.extend_from_slice(what);
    let cmd = shell.nft(&args);
    let done = cmd.output().await?;
    if !done.success {
        if done.stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(cmd.failed(&done));
    }
    let parsed = serde_json::from_str(&done.stdout).map_err(|e| NetError::Output {
        command: format!("nft {}", args.join(" ")),
        detail: e.to_string(),
    })?;
    Ok(Some(parsed))
}

/// Whether nftables table `family name` exists where `shell` runs.
pub async fn nft_table_exists(shell: &Shell, family: &str, name: &str) -> Result<bool, NetError> {
    let cmd = shell.nft(&["list", "table", family, name]);
    let done = cmd.output().await?;
    if done.success {
        return Ok(true);
    }
    if done.stderr.contains("No such file or directory") {
        return Ok(false);
    }
    Err(cmd.failed(&done))
}

/// Applies `commands` as one transaction: all of them, or none.
pub async fn apply(shell: &Shell, commands: Vec<Value>) -> Result<(), NetError> {
    let batch = json!({ "nftables": commands }).to_string();
    shell.nft(&["-j", "-f", "-"]).run_with_input(&batch).await?;
    Ok(())
}

/// Secures `ports` in one transaction (making the table first if the host has none).
pub async fn secure(shell: &Shell, ports: &[Port]) -> Result<(), NetError> {
    if ports.is_empty() {
        return Ok(());
    }
    let mut cmds = if table_exists(shell).await? {
        Vec::new()
    } else {
        base()
    };
    cmds.extend(ports.iter().flat_map(add_port));
    apply(shell, cmds).await
}

/// Removes the rules of `taps` in one transaction; taps without rules are fine.
pub async fn release(shell: &Shell, taps: &[String]) -> Result<(), NetError> {
    if taps.is_empty() || !table_exists(shell).await? {
        return Ok(());
    }
    let chains = shell.nft(&["-j", "list", "chains", FAMILY]).run().await?;
    let present: Vec<&String> = taps
        .iter()
        .filter(|t| chains.contains(&format!("\"port_{t}\"")))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    apply(
        shell,
        present.into_iter().flat_map(|t| remove_port(t)).collect(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> Port {
        Port::of(
            "nt0a1b2c3d4e".into(),
            &NicSpec {
                mac: "52:54:0A:1E:00:01".into(),
                ip: "10.30.0.1/24".into(),
                gateway: None,
                vni: Some(4201),
            },
        )
    }

    #[test]
    fn a_port_may_send_only_as_itself() {
        let cmds = add_port(&port());
        let text = serde_json::to_string(&cmds).expect("json");
        assert!(text.contains(r#""right":"52:54:0a:1e:00:01""#), "{text}");
        assert!(text.contains(r#""right":"10.30.0.1""#), "{text}");
        // chain, flush, 10 rules, map entry; the chain ends with a drop.
        assert_eq!(cmds.len(), 13);
        let last_rule = &cmds[11]["add"]["rule"];
        assert_eq!(last_rule["chain"], "port_nt0a1b2c3d4e");
        assert_eq!(last_rule["expr"], json!([{"drop": null}]));
        assert_eq!(
            cmds[12]["add"]["element"]["elem"][0][1]["jump"]["target"],
            "port_nt0a1b2c3d4e"
        );
    }

    #[test]
    fn unknown_taps_are_dropped() {
        let base = base();
        let last = &base[4]["add"]["rule"]["expr"];
        assert_eq!(last[0]["match"]["right"], "nt*");
        assert_eq!(last[1], json!({"drop": null}));
        assert_eq!(remove_port("ntx").len(), 2);
    }
}
