//! What nimbus made in a host's network namespace, read the way an operator would (`ip`,
//! `nft -j`, `/proc/net/nf_conntrack`): to compare a host before and after its agent
//! restarts, and to find what is left of VMs and networks after they are deleted.

use serde_json::Value;
use std::process::Command;

/// The name prefixes of the links nimbus makes on a host: taps, tenant bridges and VXLAN
/// devices, routers' ports and uplinks, the flat network's bridge and VXLAN device.
const LINK_PREFIXES: [&str; 6] = ["nt", "nb", "nx", "ng", "nu", "nimbus"];

/// A host's network state, one line per object (sorted): nimbus's links, the IPv4 routes,
/// the ARP proxy entries, every nftables object (rules, chains, sets and maps with their
/// elements; without handles and counters), and each router namespace of the host with the
/// same of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNet {
    pub lines: Vec<String>,
}

impl HostNet {
    /// Reads host namespace `ns` and its routers (`<ns>-r<vni>`).
    pub fn read(ns: &str) -> Self {
        let mut lines = links(ns);
        lines.extend(namespace(ns, ""));
        lines.extend(text(ns, &["neigh", "show", "proxy"]).map(|l| format!("proxy {l}")));
        for router in crate::routers(ns) {
            lines.push(format!("router {router}"));
            let tag = format!("{router}: ");
            lines.extend(namespace(&router, &tag));
            let addrs = text(&router, &["-4", "-o", "addr", "show"]);
            lines.extend(addrs.map(|l| format!("{tag}addr {}", strip_index(&l))));
        }
        lines.sort();
        Self { lines }
    }

    /// The lines that mention any of `needles` (each looked for as a whole word, so that
    /// 10.0.0.1 does not match 10.0.0.10).
    pub fn mentioning(&self, needles: &[String]) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| needles.iter().any(|n| mentions(l, n)))
            .map(String::as_str)
            .collect()
    }

    /// What is only in `self` (`-`) and only in `other` (`+`), for a failure message.
    pub fn diff(&self, other: &Self) -> String {
        let only = |a: &Self, b: &Self, sign: char| -> Vec<String> {
            a.lines
                .iter()
                .filter(|l| !b.lines.contains(l))
                .map(|l| format!("{sign} {l}"))
                .collect()
        };
        let mut out = only(self, other, '-');
        out.extend(only(other, self, '+'));
        out.join("\n")
    }
}

/// The conntrack entries of namespace `ns` (`/proc/net/nf_conntrack`) that mention any of
/// `needles` and are still in use: not closing, not closed.
pub fn live_conntrack(ns: &str, needles: &[String]) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/nf_conntrack"])
        .output()
        .expect("read conntrack");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| needles.iter().any(|n| mentions(l, n)))
        .filter(|l| {
            !["TIME_WAIT", "CLOSE", "FIN_WAIT", "LAST_ACK"]
                .iter()
                .any(|s| l.contains(s))
        })
        .map(str::to_string)
        .collect()
}

fn mentions(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + needle.len()..].chars().next();
        let word =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
        !word(before) && !word(after)
    })
}

/// `ip -n ns ARGS`, line by line.
fn text(ns: &str, args: &[&str]) -> impl Iterator<Item = String> {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect::<Vec<_>>()
        .into_iter()
}

/// `3: eth0 ...` without the interface index.
fn strip_index(line: &str) -> &str {
    line.split_once(": ").map_or(line, |(_, rest)| rest)
}

/// nimbus's links of `ns`: name, kind, master, MTU, MAC.
fn links(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-d", "-j", "link", "show"])
        .output()
        .expect("ip link");
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    all.iter()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?;
            LINK_PREFIXES.iter().any(|p| name.starts_with(p)).then(|| {
                format!(
                    "link {name} kind={} master={} mtu={} mac={}",
                    l["linkinfo"]["info_kind"], l["master"], l["mtu"], l["address"]
                )
            })
        })
        .collect()
}

/// The routes and nftables objects of namespace `ns`, each line prefixed with `tag`.
fn namespace(ns: &str, tag: &str) -> Vec<String> {
    let mut lines: Vec<String> = text(ns, &["-4", "route", "show", "table", "all"])
        .filter(|l| !l.starts_with("local ") && !l.starts_with("broadcast "))
        .map(|l| format!("{tag}route {l}"))
        .collect();
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-j", "list", "ruleset"])
        .output()
        .expect("nft");
    let ruleset: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    for obj in ruleset["nftables"].as_array().into_iter().flatten() {
        if obj.get("metainfo").is_some() {
            continue;
        }
        let mut obj = obj.clone();
        normalize(&mut obj, false);
        lines.push(format!("{tag}nft {obj}"));
    }
    lines
}

/// Drops what a rebuild of the same rules may change without changing what they do:
/// handles, counters, the numbers the agent gives its security-group rule chains and group
/// sets (`sg_c<n>`, `g<vni>_<n>`) and ports (the mark ids in `sg_t*` chains and the
/// `sg_in`/`sg_out` maps); sorts set and map elements.
fn normalize(v: &mut Value, ids: bool) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            if let Some(c) = map.get_mut("counter") {
                *c = Value::Null;
            }
            let named = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let (chain, name) = (named("chain"), named("name"));
            let ids = ids
                || chain.starts_with("sg_t")
                || name.starts_with("sg_t")
                || ["sg_in", "sg_out"].contains(&name.as_str());
            for (_, child) in map.iter_mut() {
                normalize(child, ids);
            }
            if let Some(Value::Array(elems)) = map.get_mut("elem") {
                elems.sort_by_key(|e| e.to_string());
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| normalize(i, ids)),
        Value::String(s) => *s = renumbered(s),
        Value::Number(n) if ids => *n = serde_json::Number::from(0),
        _ => {}
    }
}

/// `sg_c12` -> `sg_c#`, `g4201_3` -> `g4201_#` (with or without a leading `@`).
fn renumbered(s: &str) -> String {
    let (at, bare) = s.strip_prefix('@').map_or(("", s), |b| ("@", b));
    if let Some(n) = bare.strip_prefix("sg_c") {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return format!("{at}sg_c#");
        }
    }
    if let Some((vni, n)) = bare.strip_prefix('g').and_then(|r| r.split_once('_')) {
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if digits(vni) && digits(n) {
            return format!("{at}g{vni}_#");
        }
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_a_rebuild_do_not_count() {
        assert_eq!(renumbered("sg_c17"), "sg_c#");
        assert_eq!(renumbered("@g4201_3"), "@g4201_#");
        assert_eq!(renumbered("sg_out"), "sg_out");
        assert_eq!(renumbered("nt0123456789"), "nt0123456789");
        let mut a = serde_json::json!({"map": {"name": "sg_out", "handle": 7,
            "elem": [[196608, {"jump": {"target": "sg_c3"}}]]}});
        let mut b = serde_json::json!({"map": {"name": "sg_out", "handle": 9,
            "elem": [[65536, {"jump": {"target": "sg_c1"}}]]}});
        normalize(&mut a, false);
        normalize(&mut b, false);
        assert_eq!(a, b);
    }

    #[test]
    fn addresses_are_whole_words() {
        assert!(mentions("dst=10.0.0.1 sport", "10.0.0.1"));
        assert!(!mentions("dst=10.0.0.10 sport", "10.0.0.1"));
        assert!(mentions("\"10.0.0.1\"", "10.0.0.1"));
    }
}
