use super::*;
use nimbus_agent_api::{GroupMembers, PortFirewall};

fn tcp_in(port: u16, remote: Remote) -> FirewallRule {
    FirewallRule {
        direction: Direction::Ingress,
        protocol: Protocol::Tcp,
        port_min: Some(port),
        port_max: Some(port),
        remote,
    }
}

fn firewall() -> HostFirewall {
    HostFirewall {
        ports: vec![PortFirewall {
            instance_id: uuid::Uuid::from_u128(0x0a1b2c3d4e << 88),
            nic: 0,
            vni: 4201,
            rules: vec![
                tcp_in(22, Remote::Cidr("0.0.0.0/0".into())),
                tcp_in(80, Remote::Group("web".into())),
                tcp_in(5432, Remote::Group("unknown".into())),
                FirewallRule {
                    direction: Direction::Egress,
                    protocol: Protocol::Any,
                    port_min: None,
                    port_max: None,
                    remote: Remote::Cidr("0.0.0.0/0".into()),
                },
            ],
        }],
        groups: vec![GroupMembers {
            vni: 4201,
            group: "web".into(),
            addresses: vec!["10.200.0.10".into(), "10.200.0.11".into()],
        }],
        floating: Vec::new(),
        names: Vec::new(),
    }
}

#[test]
fn rules_compile_to_per_port_chains_that_end_in_drop() {
    let cmds = compile(&firewall()).expect("compile");
    let text = serde_json::to_string(&cmds).expect("json");
    let rules_of = |chain: &str| -> Vec<&Value> {
        cmds.iter()
            .filter(|c| c["add"]["rule"]["chain"] == chain)
            .map(|c| &c["add"]["rule"]["expr"])
            .collect()
    };
    let ingress = rules_of("sg_ingress_nt0a1b2c3d4e");
    // ssh from anywhere, http from the web group's set; the unknown group matches nobody.
    assert_eq!(ingress.len(), 3, "{text}");
    assert_eq!(ingress[0][1]["match"]["right"], 22);
    assert_eq!(ingress[1][2]["match"]["right"], "@g4201_0");
    assert_eq!(ingress[2], &json!([{"drop": null}]));
    let egress = rules_of("sg_egress_nt0a1b2c3d4e");
    assert_eq!(egress.len(), 2);
    assert_eq!(egress[0][1], json!({"return": null}));
    // Stateful: tracked connections pass before any port's rules.
    let forward = rules_of("forward");
    assert_eq!(forward[0][0]["match"]["right"], 0, "no VM port: not ours");
    assert_eq!(
        forward[1][0]["match"]["right"],
        json!(["established", "related"])
    );
    assert!(
        text.contains(r#""elem":["10.200.0.10","10.200.0.11"]"#),
        "{text}"
    );
}

#[test]
fn a_new_apply_replaces_the_previous_objects() {
    let cmds = skeleton(&["sg_ingress_ntold".into()], &["g4201_3".into()]);
    assert!(cmds
        .iter()
        .any(|c| c["delete"]["chain"]["name"] == "sg_ingress_ntold"));
    assert!(cmds.iter().any(|c| c["delete"]["set"]["name"] == "g4201_3"));
    assert!(cmds.iter().any(|c| c["flush"]["chain"]["name"] == FORWARD));
}
