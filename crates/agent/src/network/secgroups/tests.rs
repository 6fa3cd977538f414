use super::plan::{plan, Tables};
use super::*;
use nimbus_agent_api::{FirewallRule, GroupMembers, PortFirewall, Remote};
use nimbus_api::{Direction, Protocol};

fn tcp_in(port: u16, remote: Remote) -> FirewallRule {
    FirewallRule {
        direction: Direction::Ingress,
        protocol: Protocol::Tcp,
        port_min: Some(port),
        port_max: Some(port),
        remote,
    }
}

fn egress_all() -> FirewallRule {
    FirewallRule {
        direction: Direction::Egress,
        protocol: Protocol::Any,
        port_min: None,
        port_max: None,
        remote: Remote::Cidr("0.0.0.0/0".into()),
    }
}

fn port(n: u128, rules: Vec<FirewallRule>) -> PortFirewall {
    PortFirewall {
        instance_id: uuid::Uuid::from_u128((0x0a1b2c3d4e + n) << 88),
        nic: 0,
        vni: 4201,
        rules,
    }
}

fn web(addresses: Vec<String>) -> GroupMembers {
    GroupMembers {
        vni: 4201,
        group: "web".into(),
        addresses,
    }
}

fn firewall() -> HostFirewall {
    HostFirewall {
        ports: vec![port(
            0,
            vec![
                tcp_in(22, Remote::Cidr("0.0.0.0/0".into())),
                tcp_in(80, Remote::Group("web".into())),
                tcp_in(5432, Remote::Group("unknown".into())),
                egress_all(),
            ],
        )],
        groups: vec![web(vec!["10.200.0.10".into(), "10.200.0.11".into()])],
        floating: Vec::new(),
        names: Vec::new(),
    }
}

/// `n` ports in one group: ssh on `ssh` from anywhere, anything from the group, all egress.
fn many(n: u128, ssh: u16) -> HostFirewall {
    let rules = vec![
        tcp_in(ssh, Remote::Cidr("0.0.0.0/0".into())),
        tcp_in(80, Remote::Group("web".into())),
        egress_all(),
    ];
    HostFirewall {
        ports: (0..n).map(|i| port(i, rules.clone())).collect(),
        groups: vec![web((0..n)
            .map(|i| format!("10.9.{}.{}", i / 256, i % 256))
            .collect())],
        floating: Vec::new(),
        names: Vec::new(),
    }
}

/// Asserts the batch `text` maps mark id `key` to rule chain `chain`.
fn assert_jump(text: &str, key: u32, chain: &str) {
    let elem = format!(r#""elem":[[{key},{{"jump":{{"target":"{chain}"}}}}]]"#);
    assert!(text.contains(&elem), "no {elem} in {text}");
}

fn rules_of<'a>(cmds: &'a [Value], chain: &str) -> Vec<&'a Value> {
    cmds.iter()
        .filter(|c| c["add"]["rule"]["chain"] == chain)
        .map(|c| &c["add"]["rule"]["expr"])
        .collect()
}

#[test]
fn rules_compile_to_shared_chains_that_end_in_drop() {
    let (cmds, _) = plan(&Tables::default(), &firewall()).expect("plan");
    let text = serde_json::to_string(&cmds).expect("json");
    // Chain 0: the ingress rules: ssh from anywhere, http from the web group's set; the
    // unknown group matches nobody.
    let ingress = rules_of(&cmds, "sg_c0");
    assert_eq!(ingress.len(), 3, "{text}");
    assert_eq!(ingress[0][1]["match"]["right"], 22);
    assert_eq!(ingress[1][2]["match"]["right"], "@g4201_1");
    assert_eq!(ingress[2], &json!([{"drop": null}]));
    let egress = rules_of(&cmds, "sg_c1");
    assert_eq!(egress.len(), 2);
    assert_eq!(egress[0][1], json!({"return": null}));
    assert!(
        text.contains(r#""elem":["10.200.0.10","10.200.0.11"]"#),
        "{text}"
    );
    // The port's tag chains put its id (1) into the mark; the maps jump to its chains.
    let tag_in = rules_of(&cmds, "sg_ti_nt0a1b2c3d4e");
    assert_eq!(tag_in[0][0]["mangle"]["value"]["|"][1], 1 << 16, "{text}");
    assert_jump(&text, 1, "sg_c0");
    assert_jump(&text, 65536, "sg_c1");
}

#[test]
fn the_same_firewall_again_changes_nothing() {
    let (_, tables) = plan(&Tables::default(), &many(50, 22)).expect("plan");
    let (cmds, again) = plan(&tables, &many(50, 22)).expect("plan");
    assert!(cmds.is_empty(), "{cmds:?}");
    assert_eq!(again, tables);
}

#[test]
fn a_rule_change_of_a_group_is_a_small_transaction_whatever_the_port_count() {
    let (_, tables) = plan(&Tables::default(), &many(1000, 22)).expect("plan");
    let (cmds, after) = plan(&tables, &many(1000, 2222)).expect("plan");
    // The one chain the 1,000 ports share is rewritten in place: flush + its 3 rules.
    assert_eq!(cmds.len(), 4, "{cmds:?}");
    assert_eq!(cmds[0]["flush"]["chain"]["name"], "sg_c0");
    assert_eq!(rules_of(&cmds, "sg_c0")[0][1]["match"]["right"], 2222);
    // And back, from what that left.
    let (back, _) = plan(&after, &many(1000, 22)).expect("plan");
    assert_eq!(back.len(), 4);
}

#[test]
fn a_new_member_adds_one_element_and_a_new_port_its_own_entries() {
    let (_, tables) = plan(&Tables::default(), &many(100, 22)).expect("plan");
    let (cmds, _) = plan(&tables, &many(101, 22)).expect("plan");
    let text = serde_json::to_string(&cmds).expect("json");
    // One set element, the two tag chains with their rule and entries, two map entries.
    assert!(text.contains(r#""elem":["10.9.0.100"]"#), "{text}");
    assert_eq!(cmds.len(), 1 + 6 + 2, "{text}");
    assert_jump(&text, 101, "sg_c0");
}

#[test]
fn a_removed_port_leaves_nothing_and_its_id_is_reused() {
    let (_, tables) = plan(&Tables::default(), &many(3, 22)).expect("plan");
    let mut two = many(3, 22);
    two.ports.remove(1);
    let (cmds, after) = plan(&tables, &two).expect("plan");
    let text = serde_json::to_string(&cmds).expect("json");
    assert!(
        cmds.iter().any(|c| c["delete"]["element"]["name"] == IN_MAP
            && c["delete"]["element"]["elem"] == json!([2])),
        "{text}"
    );
    let tap = tap_name_of(1);
    assert!(
        cmds.iter()
            .any(|c| c["delete"]["chain"]["name"] == format!("sg_ti_{tap}")),
        "{text}"
    );
    // Another new port takes id 2 again.
    let mut again = two.clone();
    again
        .ports
        .push(port(7, many(1, 22).ports[0].rules.clone()));
    let (cmds, _) = plan(&after, &again).expect("plan");
    let text = serde_json::to_string(&cmds).expect("json");
    assert_jump(&text, 2, "sg_c0");
}

fn tap_name_of(n: u128) -> String {
    crate::network::tap::tap_name(port(n, Vec::new()).instance_id, 0)
}

#[test]
fn a_port_that_leaves_a_group_moves_to_a_chain_of_its_own() {
    let (_, tables) = plan(&Tables::default(), &many(3, 22)).expect("plan");
    let mut fw = many(3, 22);
    fw.ports[2].rules = vec![tcp_in(443, Remote::Cidr("10.0.0.0/8".into())), egress_all()];
    let (cmds, _) = plan(&tables, &fw).expect("plan");
    let text = serde_json::to_string(&cmds).expect("json");
    // The two others keep chain 0 untouched; the third gets a new ingress chain.
    assert!(
        !cmds.iter().any(|c| c["flush"]["chain"]["name"] == "sg_c0"),
        "{text}"
    );
    assert_eq!(
        rules_of(&cmds, "sg_c2")[0][1]["match"]["right"],
        443,
        "{text}"
    );
    assert_jump(&text, 3, "sg_c2");
}

#[test]
fn a_port_sent_twice_is_refused() {
    let mut fw = many(2, 22);
    fw.ports[1].instance_id = fw.ports[0].instance_id;
    assert!(plan(&Tables::default(), &fw).is_err());
}

#[test]
fn zones_stay_with_their_network() {
    let mut fw = many(2, 22);
    fw.ports[1].vni = 4300;
    let (_, tables) = plan(&Tables::default(), &fw).expect("plan");
    // The first network leaves: the second keeps zone 2; a new one takes the free 1.
    fw.ports[0].vni = 4400;
    let (cmds, _) = plan(&tables, &fw).expect("plan");
    let zone = rules_of(&cmds, ZONE);
    assert_eq!(
        zone[0][0]["mangle"]["value"]["map"]["data"]["set"],
        json!([["nb4300", 2], ["nb4400", 1]])
    );
}

#[test]
fn the_zone_rule_is_read_back_from_a_listing() {
    let listing = json!({"nftables": [{"metainfo": {}}, {"rule": {"chain": "zone", "expr": [
        {"mangle": {"key": {"ct": {"key": "zone"}}, "value": {"map": {
            "key": {"meta": {"key": "iifname"}},
            "data": {"set": [["nb4201", 3], ["nb77", 1], ["other", 2]]}}}}}]}}]});
    assert_eq!(zones_of(&listing), BTreeMap::from([(4201, 3), (77, 1)]));
}

#[test]
fn a_rebuild_empties_both_tables() {
    let cmds = skeleton(&["sg_ti_ntold".into()]);
    assert!(cmds
        .iter()
        .any(|c| c["delete"]["chain"]["name"] == "sg_ti_ntold"));
    assert!(cmds
        .iter()
        .any(|c| c["delete"]["table"]["name"] == SG_TABLE));
    assert!(cmds
        .iter()
        .any(|c| c["flush"]["chain"]["name"] == TAG_CHAIN));
}
