//! End to end: security groups through the real binary (`nimbus up`, one host, no guests):
//! the commands a user types, their output as JSON, and the errors of bad input. Enforcement
//! is tested on real namespaces in `crates/agent/tests/secgroups.rs`; pushing rules to agents
//! (and with it the reachability between real guests) is not built yet.

use nimbus_api::{Direction, SecurityGroupView, SecurityRuleView};
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{Cloud, CloudOptions};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secgroup_commands_end_to_end() {
    if !nix::unistd::geteuid().is_root() {
        panic!("nimbus up runs its hosts in network namespaces: needs root");
    }
    let opts = CloudOptions {
        hosts: 1,
        ..CloudOptions::default()
    };
    let cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    let acme = project_member(&cloud, "acme");
    let globex = project_member(&cloud, "globex");
    let ok = |token: &str, args: &[&str]| cli_ok_as(&cloud, token, args);
    let err = |token: &str, args: &[&str]| cli_err_as(&cloud, token, args);

    let groups: Vec<SecurityGroupView> = json(&ok(&acme, &["secgroup", "list", "-o", "json"]));
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["default"], "every project has its default group");

    let web: SecurityGroupView = json(&ok(&acme, &["secgroup", "create", "web", "-o", "json"]));
    assert_eq!(web.rules.len(), 1, "a new group: all outbound only");
    assert_eq!(web.rules[0].direction, Direction::Egress);
    let add = |token: &str, extra: &[&str]| {
        let mut args = vec!["secgroup", "rule", "add", "web"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", "json"]);
        ok(token, &args)
    };
    let range: Vec<SecurityRuleView> = json(&add(
        &acme,
        &[
            "--ingress",
            "--proto",
            "tcp",
            "--port",
            "8000-8080",
            "--cidr",
            "0.0.0.0/0",
        ],
    ));
    assert_eq!(
        (range[0].port_min, range[0].port_max),
        (Some(8000), Some(8080))
    );
    let members: Vec<SecurityRuleView> = json(&add(
        &acme,
        &["--ingress", "--proto", "any", "--group", "web"],
    ));
    assert_eq!(members[0].group.as_deref(), Some("web"));

    // Bad input: refused with a message that says why.
    let rule = ["secgroup", "rule", "add", "web", "--ingress"];
    let bad = |extra: &[&str]| err(&acme, &[&rule[..], extra].concat());
    assert!(
        bad(&["--proto", "icmp", "--port", "22", "--cidr", "0.0.0.0/0"]).contains("tcp and udp")
    );
    assert!(
        bad(&["--proto", "tcp", "--port", "80-22", "--cidr", "0.0.0.0/0"]).contains("port range")
    );
    assert!(bad(&["--proto", "tcp", "--cidr", "10.0.0.1/8"]).contains("network address"));
    assert!(bad(&["--proto", "tcp", "--port", "http", "--cidr", "0.0.0.0/0"]).contains("--port"));
    assert!(bad(&["--proto", "gre", "--cidr", "0.0.0.0/0"]).contains("gre"));
    // Another project's group is not found, as a remote group and as a group.
    ok(&globex, &["secgroup", "create", "db"]);
    assert!(bad(&["--proto", "tcp", "--port", "5432", "--group", "db"]).contains("not found"));
    assert!(err(&acme, &["secgroup", "show", "db"]).contains("not found"));
    assert!(err(&globex, &["secgroup", "show", "web"]).contains("not found"));

    // In use: not deleted; instance set needs an instance (none here: 404).
    let id = range[0].id.to_string();
    ok(&acme, &["secgroup", "rule", "delete", "web", &id]);
    let shown: SecurityGroupView = json(&ok(&acme, &["secgroup", "show", "web", "-o", "json"]));
    assert!(shown.rules.iter().all(|r| r.id != range[0].id));
    let e = err(&acme, &["instance", "set", "nope", "--secgroup", "web"]);
    assert!(e.contains("not found"), "{e}");
    assert!(err(&acme, &["secgroup", "delete", "default"]).contains("stays"));
    ok(&acme, &["secgroup", "delete", "web"]);
    assert!(err(&acme, &["secgroup", "show", "web"]).contains("not found"));
}
