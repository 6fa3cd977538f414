//! End to end: placement groups (issue 14, part 5) on two hosts, through the CLI.
//! - spread: two members land on distinct hosts; a third is refused with the reason; a
//!   member cannot be migrated onto another member's host, and a drain that would put two
//!   members together fails naming the group, leaving the member where it runs;
//! - pack: members land together;
//! - a group with members cannot be deleted; once empty it can.

use nimbus_api::InstanceState;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{Cloud, CloudOptions};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

/// `nimbus instance create NAME ... --placement-group GROUP [--wait]`.
fn member<'a>(name: &'a str, group: &'a str, wait: bool) -> Vec<&'a str> {
    let mut args = vec![
        "instance",
        "create",
        name,
        "--flavor",
        "tiny",
        "--image",
        "default",
        "--placement-group",
        group,
    ];
    if wait {
        args.push("--wait");
    }
    args
}

fn host_of(out: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(out).expect("instance JSON");
    v["host"].as_str().expect("placed").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_and_pack_are_honoured() {
    let cloud = Cloud::start(Path::new(BIN), CloudOptions::default())
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    cli_ok(
        &cloud,
        &["placement-group", "create", "g1", "--policy", "spread"],
    );
    cli_ok(
        &cloud,
        &["placement-group", "create", "g2", "--policy", "pack"],
    );
    for name in ["a1", "a2"] {
        cli_ok(&cloud, &member(name, "g1", true));
    }
    let h1 = host_of(&cli_ok(&cloud, &["-o", "json", "instance", "show", "a1"]));
    let h2 = host_of(&cli_ok(&cloud, &["-o", "json", "instance", "show", "a2"]));
    assert_ne!(h1, h2, "spread members on distinct hosts");
    let err = cli_err(&cloud, &member("a3", "g1", false));
    assert!(
        err.contains("placement group g1 (spread) already has a member on every host"),
        "{err}"
    );
    let list = cli_ok(&cloud, &["placement-group", "list"]);
    assert!(
        list.contains(&format!("a1@{h1}")) && list.contains(&format!("a2@{h2}")),
        "{list}"
    );

    // Never together: not by hand, not by a drain.
    let err = cli_err(&cloud, &["instance", "migrate", "a1", "--to", &h2]);
    assert!(err.contains("spread"), "{err}");
    let out = cloud
        .cli(&["host", "drain", &h1, "--wait"])
        .expect("run nimbus");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "the drain cannot keep g1 apart: {text}"
    );
    assert!(text.contains("a1") && text.contains("spread"), "{text}");
    let a1 = instance(&client, "a1").await;
    assert_eq!(
        (a1.state, a1.host.as_deref()),
        (InstanceState::Running, Some(h1.as_str())),
        "a1 stays where it runs"
    );
    cli_ok(&cloud, &["host", "enable", &h1]);

    for name in ["p1", "p2"] {
        cli_ok(&cloud, &member(name, "g2", true));
    }
    let p1 = host_of(&cli_ok(&cloud, &["-o", "json", "instance", "show", "p1"]));
    let p2 = host_of(&cli_ok(&cloud, &["-o", "json", "instance", "show", "p2"]));
    assert_eq!(p1, p2, "pack members together");

    let err = cli_err(&cloud, &["placement-group", "delete", "g1"]);
    assert!(err.contains("a1") && err.contains("a2"), "{err}");
    for name in ["a1", "a2", "p1", "p2"] {
        cli_ok(&cloud, &["instance", "delete", name, "--wait"]);
    }
    cli_ok(&cloud, &["placement-group", "delete", "g1"]);
    cli_ok(&cloud, &["placement-group", "delete", "g2"]);
    assert!(!cli_ok(&cloud, &["placement-group", "list"]).contains("g1"));
    assert!(cloud.qemu_pids().is_empty());
}
