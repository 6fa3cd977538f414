//! End to end: the foundation of the cloud through the real binary, real QEMU guests (TCG
//! here), hosts in network namespaces (as root). One cloud is shared by the phases so that
//! the suite boots as few guests as it can while each phase still asserts what a user sees.

use nimbus_api::{ErrorCode, HostView, InstanceState, InstanceView, OperationState};
use nimbus_client::{Client, ClientError};
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

async fn host(client: &Client, name: &str) -> HostView {
    client.host(name).await.expect("get host")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foundation_end_to_end() {
    let mut cloud = Cloud::start(Path::new(BIN), CloudOptions::default())
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");

    bad_input_is_refused_cleanly(&cloud, &client).await;
    let names = three_instances_spread_over_both_hosts(&cloud, &client).await;
    guests_boot_and_run_commands(&cloud, &client, &names).await;
    lifecycle_stop_start_reboot(&cloud, &client).await;
    agent_crash_keeps_vms_running(&cloud, &client).await;
    controller_restart_mid_create_completes(&mut cloud).await;
    let client = cloud.client().expect("client");
    qemu_failure_reaches_the_user_and_leaves_nothing(&cloud, &client).await;
    delete_frees_capacity_and_disk(&cloud, &client).await;
}

async fn bad_input_is_refused_cleanly(cloud: &Cloud, client: &Client) {
    let anon = cloud.client_with(None).expect("client");
    let err = anon.list_instances().await.expect_err("no token");
    assert_eq!(err.status(), Some(401));
    let wrong = cloud.client_with(Some("nmb_wrong".into())).expect("client");
    assert_eq!(
        wrong
            .list_instances()
            .await
            .expect_err("bad token")
            .status(),
        Some(401)
    );

    let e = cli_err(
        cloud,
        &[
            "instance", "create", "x1", "--flavor", "nope", "--image", "default",
        ],
    );
    assert!(e.contains("flavor \"nope\" not found"), "{e}");
    let e = cli_err(
        cloud,
        &[
            "instance", "create", "x1", "--flavor", "small", "--image", "nope",
        ],
    );
    assert!(e.contains("image \"nope\" not found"), "{e}");
    let e = cli_err(
        cloud,
        &[
            "instance", "create", "Bad_Name", "--flavor", "small", "--image", "default",
        ],
    );
    assert!(e.contains("invalid instance name"), "{e}");

    cli_ok(
        cloud,
        &[
            "flavor",
            "create",
            "huge",
            "--vcpus",
            "2",
            "--memory-mib",
            "1048576",
            "--disk-gib",
            "10",
        ],
    );
    let err = client
        .create_instance(&nimbus_api::CreateInstance {
            name: "x1".into(),
            flavor: Some("huge".into()),
            image: Some("default".into()),
            from_snapshot: None,
            ..Default::default()
        })
        .await
        .expect_err("cannot fit");
    assert_eq!(err.code(), Some(ErrorCode::NoCapacity));
    assert!(
        err.to_string()
            .contains("no host has 1048576 MiB of memory free; largest free:"),
        "{err}"
    );
    cli_ok(cloud, &["flavor", "delete", "huge"]);

    let (status, body) = client
        .raw(reqwest::Method::POST, "/v1/instances", Some("{\"name\": "))
        .await
        .expect("raw");
    assert_eq!(status, 400, "{body}");
    let parsed: nimbus_api::ErrorBody = serde_json::from_str(&body).expect("error body is JSON");
    assert_eq!(parsed.code, ErrorCode::BadRequest);

    assert!(
        client.list_instances().await.expect("list").is_empty(),
        "bad input left instances behind"
    );
    assert!(cloud.qemu_pids().is_empty(), "bad input started QEMU");
}

async fn three_instances_spread_over_both_hosts(cloud: &Cloud, client: &Client) -> Vec<String> {
    let names: Vec<String> = (1..=3).map(|i| format!("web{i}")).collect();
    // web1 through the CLI with --wait, the others through the API concurrently.
    cli_ok(
        cloud,
        &[
            "instance", "create", "web1", "--flavor", "small", "--image", "default", "--wait",
        ],
    );
    create_instances(cloud, &["web2", "web3"], "small").await;
    let dup = cli_err(
        cloud,
        &[
            "instance", "create", "web1", "--flavor", "small", "--image", "default",
        ],
    );
    assert!(dup.contains("already exists"), "{dup}");

    let listed: Vec<InstanceView> =
        serde_json::from_str(&cli_ok(cloud, &["instance", "list", "-o", "json"])).expect("json");
    assert_eq!(listed.len(), 3);
    let mut per_host = std::collections::BTreeMap::new();
    for i in &listed {
        assert_eq!(i.state, InstanceState::Running, "{i:?}");
        *per_host
            .entry(i.host.clone().expect("placed"))
            .or_insert(0u32) += 1;
    }
    assert_eq!(
        per_host.len(),
        2,
        "spread placement uses both hosts: {per_host:?}"
    );
    for (h, n) in &per_host {
        let hv = host(client, h).await;
        assert_eq!(hv.instances, *n);
        assert_eq!(
            hv.memory_mib_allocated,
            512 * *n as u64,
            "memory accounting on {h}"
        );
        assert_eq!(hv.vcpus_allocated, *n);
    }
    assert_eq!(cloud.qemu_pids().len(), 3, "one QEMU per instance");
    names
}

async fn guests_boot_and_run_commands(cloud: &Cloud, client: &Client, names: &[String]) {
    for name in names {
        let log = cli_ok(cloud, &["instance", "log", name]);
        assert!(log.contains("nimbus-guest ready"), "{name} console:\n{log}");
        let out = client
            .exec(name, "cat /data/hello.txt; hostname")
            .await
            .expect("exec");
        assert_eq!(out.exit_code, 0);
        assert!(
            out.output.contains("nimbus default image"),
            "{}",
            out.output
        );
        assert!(
            out.output.contains(name.as_str()),
            "guest hostname is the instance name: {}",
            out.output
        );
    }
    let out = client.exec("web1", "exit 3").await.expect("exec");
    assert_eq!(out.exit_code, 3);
    console_is_interactive(client).await;
}

/// The serial console through the API's websocket (what `nimbus instance console` uses):
/// a command typed there runs in the guest's shell.
async fn console_is_interactive(client: &Client) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let mut req = client
        .console_url("web1")
        .into_client_request()
        .expect("request");
    let auth = format!("Bearer {}", client.token().expect("token"))
        .parse()
        .expect("header");
    req.headers_mut().insert("authorization", auth);
    let connector = nimbus_test_utils::console_connector(client);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
            .await
            .expect("console websocket");
    ws.send(Message::Binary(b"echo console-$((6*7))\n".to_vec().into()))
        .await
        .expect("send");
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Binary(b) = msg {
                seen.push_str(&String::from_utf8_lossy(&b));
                if seen.contains("console-42") {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "console output: {seen:?}");
}

async fn lifecycle_stop_start_reboot(cloud: &Cloud, client: &Client) {
    // A file on the instance disk survives stop/start (the overlay is kept).
    client
        .exec("web2", "echo persisted > /data/mark && sync")
        .await
        .expect("exec");
    cli_ok(cloud, &["instance", "stop", "web2", "--wait"]);
    assert_eq!(instance(client, "web2").await.state, InstanceState::Stopped);
    let web2_id = instance(client, "web2").await.id.to_string();
    let running = cloud.qemu_count(&web2_id);
    assert_eq!(running, 0, "stopped instance has no QEMU");
    let err = client
        .exec("web2", "true")
        .await
        .expect_err("exec on stopped");
    assert_eq!(err.code(), Some(ErrorCode::Conflict));
    cli_ok(cloud, &["instance", "start", "web2", "--wait"]);
    assert_eq!(instance(client, "web2").await.state, InstanceState::Running);
    let out = client.exec("web2", "cat /data/mark").await.expect("exec");
    assert!(out.output.contains("persisted"), "{}", out.output);

    // /run is a tmpfs: a file there is gone after a reboot, while /data (the disk) stays.
    client
        .exec("web2", "echo up > /run/booted-once")
        .await
        .expect("exec");
    cli_ok(cloud, &["instance", "reboot", "web2", "--wait"]);
    let after = client
        .exec("web2", "ls /run/booted-once 2>/dev/null; cat /data/mark")
        .await
        .expect("exec");
    assert!(
        !after.output.contains("/run/booted-once") && after.output.contains("persisted"),
        "the guest rebooted (tmpfs cleared) and kept its disk: {}",
        after.output
    );
    let e = cli_err(cloud, &["instance", "start", "web2"]);
    assert!(
        e.contains("cannot start instance web2: it is running"),
        "{e}"
    );
}

async fn agent_crash_keeps_vms_running(cloud: &Cloud, client: &Client) {
    let web1 = instance(client, "web1").await;
    let h = web1.host.clone().expect("placed");
    let before = cloud.qemu_pids();
    let old_agent = cloud.agent_pid(&h).expect("agent pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill agent");
    // The supervisor of `nimbus up` restarts the agent, which re-adopts its VMs.
    wait_until(
        "the agent to restart",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let pid = cloud.agent_pid(&h).ok()?;
            (pid != old_agent).then_some(())
        },
    )
    .await
    .expect("restart");
    let out = wait_until(
        "exec through the restarted agent",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async { client.exec("web1", "echo still-here").await.ok() },
    )
    .await
    .expect("exec");
    assert!(out.output.contains("still-here"));
    let mut after = cloud.qemu_pids();
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(
        before, after,
        "same QEMU processes, none restarted or duplicated"
    );
    for i in client.list_instances().await.expect("list") {
        assert_eq!(i.state, InstanceState::Running, "{i:?}");
    }
}

async fn controller_restart_mid_create_completes(cloud: &mut Cloud) {
    let client = cloud.client().expect("client");
    let op = client
        .create_instance(&nimbus_api::CreateInstance {
            name: "web4".into(),
            flavor: Some("tiny".into()),
            image: Some("default".into()),
            from_snapshot: None,
            ..Default::default()
        })
        .await
        .expect("create");
    let id = op.id.to_string();
    wait_for_step(&client, &id, "wait_ready", |s| {
        s == nimbus_api::StepState::Running
    })
    .await;
    cloud.kill_up().expect("kill nimbus up");
    cloud.restart_up().await.expect("restart");
    let client = cloud.client().expect("client");
    let done = client
        .wait_operation(&id, Duration::from_secs(240), |_| {})
        .await
        .expect("wait");
    assert_eq!(
        done.state,
        OperationState::Succeeded,
        "{:?}\n{}",
        done.error,
        cloud.log_tail(40)
    );
    let web4 = instance(&client, "web4").await;
    assert_eq!(web4.state, InstanceState::Running);
    assert_eq!(cloud.qemu_count(&web4.id.to_string()), 1);
    let out = client.exec("web4", "echo ok").await.expect("exec");
    assert!(out.output.contains("ok"));
}

async fn qemu_failure_reaches_the_user_and_leaves_nothing(cloud: &Cloud, client: &Client) {
    // An image whose kernel is not a kernel: QEMU refuses it at start.
    let bogus = cloud.data_dir().join("bogus-kernel");
    std::fs::write(&bogus, b"not a kernel").expect("write");
    let default = client
        .list_images()
        .await
        .expect("images")
        .into_iter()
        .find(|i| i.name == "default")
        .expect("default image");
    client
        .import_image(&nimbus_api::ImportImage {
            name: "broken".into(),
            kernel: Some(bogus.display().to_string()),
            initrd: default.initrd.clone(),
            cmdline: default.cmdline.clone(),
            disk: default.disk.clone(),
            ready_marker: default.ready_marker.clone(),
        })
        .await
        .expect("import");
    let hosts_before = client.list_hosts().await.expect("hosts");
    let out = cloud
        .cli(&[
            "instance", "create", "bad1", "--flavor", "tiny", "--image", "broken", "--wait",
        ])
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("qemu"),
        "QEMU's error reaches the user: {stderr}"
    );
    let bad1 = instance(client, "bad1").await;
    assert_eq!(bad1.state, InstanceState::Error);
    assert!(bad1.host.is_none(), "capacity reservation released");
    assert!(
        bad1.reason.unwrap_or_default().contains("qemu"),
        "reason names QEMU"
    );
    let hosts_after = client.list_hosts().await.expect("hosts");
    let alloc = |hs: &[HostView]| hs.iter().map(|h| h.memory_mib_allocated).sum::<u64>();
    assert_eq!(alloc(&hosts_before), alloc(&hosts_after));
    for h in ["host1", "host2"] {
        assert!(
            !cloud
                .host_dir(h)
                .join("vms")
                .join(bad1.id.to_string())
                .exists(),
            "no VM dir left on {h}"
        );
    }
    cli_ok(cloud, &["instance", "delete", "bad1", "--wait"]);
    let err = client
        .delete_image("default")
        .await
        .expect_err("image in use");
    assert!(matches!(err, ClientError::Api { status: 409, .. }), "{err}");
}

async fn delete_frees_capacity_and_disk(cloud: &Cloud, client: &Client) {
    for i in client.list_instances().await.expect("list") {
        let dir = cloud
            .host_dir(i.host.as_deref().expect("placed"))
            .join("vms")
            .join(i.id.to_string());
        assert!(dir.exists());
        cli_ok(cloud, &["instance", "delete", &i.name, "--wait"]);
        assert!(!dir.exists(), "VM dir {} removed", dir.display());
    }
    assert!(client.list_instances().await.expect("list").is_empty());
    for h in client.list_hosts().await.expect("hosts") {
        assert_eq!(
            (h.instances, h.memory_mib_allocated, h.vcpus_allocated),
            (0, 0, 0),
            "{h:?}"
        );
    }
    assert!(cloud.qemu_pids().is_empty(), "no QEMU left");
}
