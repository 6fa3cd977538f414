//! End to end: a whole host dies (issue 14, part 4). Two hosts on shared storage
//! (`nimbus up --shared-storage`); an HA instance and a plain one packed on one host. The host
//! is killed: every QEMU of its state directory is killed by pid and its agent is frozen
//! (SIGSTOP: a killed agent would be revived by `nimbus up`'s supervisor, a frozen one is
//! silent like a dead machine). Then:
//! - the restart priorities given at create (`--ha-priority high`) and later (`instance set`)
//!   are shown;
//! - the host is `down` after the documented 30 s; the HA instance runs again on the other
//!   host with its disk content, one copy only; the time from the kill to its guest being
//!   ready there is printed (the figure of docs/hosts.md);
//! - the plain instance is `error` with the reason;
//! - the host revived (SIGCONT) does not run the old copy;
//! - then the host now running the HA instance is cut off from the controller but stays
//!   alive (nftables drops its traffic to and from the controller): its agent fences itself
//!   (stops the VM, records it in `fence.log`) before the controller restarts the instance on
//!   the other host; at no sample (every 200 ms) do two copies run; once the link is back
//!   the fenced copy stays stopped.

use nimbus_api::InstanceState;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_s_ha_instance_runs_again_elsewhere() {
    let opts = CloudOptions {
        hosts: 2,
        extra_args: vec!["--shared-storage".into()],
    };
    let cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    cli_ok(
        &cloud,
        &["placement-group", "create", "g", "--policy", "pack"],
    );
    for (name, ha) in [("db1", true), ("web1", false)] {
        let mut args = vec![
            "instance",
            "create",
            name,
            "--flavor",
            "small",
            "--image",
            "default",
            "--placement-group",
            "g",
            "--wait",
        ];
        if ha {
            args.extend(["--ha", "restart", "--ha-priority", "high"]);
        }
        cli_ok(&cloud, &args);
    }
    let show = cli_ok(&cloud, &["instance", "show", "db1"]);
    assert!(show.contains("restart (priority high)"), "{show}");
    // Settable later; web1 keeps no HA (it must stay `error` below).
    cli_ok(&cloud, &["instance", "set", "web1", "--ha-priority", "low"]);
    let web = instance(&client, "web1").await;
    assert_eq!(
        (web.ha, web.ha_priority),
        (None, nimbus_api::HA_PRIORITY_LOW)
    );
    let db = instance(&client, "db1").await;
    assert_eq!(db.ha_priority, nimbus_api::HA_PRIORITY_HIGH);
    let dead = db.host.clone().expect("placed");
    assert_eq!(instance(&client, "web1").await.host, Some(dead.clone()));
    exec(&client, "db1", "echo ha-data > /data/kept && sync").await;

    let killed = Instant::now();
    let agent = cloud.kill_host(&dead).expect("kill the host");
    let id = db.id.to_string();
    let back = wait_running_elsewhere(&client, "db1", &dead, Duration::from_secs(150)).await;
    let restart = killed.elapsed();
    println!(
        "HA restart from host death to guest ready elsewhere: {:.1} s (goal 60 s; Proxmox documents about 120 s)",
        restart.as_secs_f64()
    );
    assert_ne!(back.host, Some(dead.clone()));
    assert_eq!(
        exec(&client, "db1", "cat /data/kept").await.trim(),
        "ha-data"
    );
    assert_eq!(cloud.qemu_count(&id), 1, "one copy");

    let web = instance(&client, "web1").await;
    assert_eq!(web.state, InstanceState::Error);
    let reason = web.reason.unwrap_or_default();
    assert!(
        reason.contains(&format!("its host {dead} is down since")),
        "{reason}"
    );
    let show = cli_ok(&cloud, &["host", "show", &dead]);
    assert!(show.contains("fenced, 1 instances restarted"), "{show}");

    // Revived: it reports again and never runs the old copy.
    kill(Pid::from_raw(agent), Signal::SIGCONT).expect("thaw the agent");
    wait_host_up(&client, &dead).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(cloud.qemu_count(&id), 1, "still one copy");
    assert_eq!(instance(&client, "db1").await.host, back.host);
    assert_eq!(
        exec(&client, "db1", "cat /data/kept").await.trim(),
        "ha-data"
    );

    // Partition: the host running db1 loses the controller, nothing else.
    let running_on = back.host.clone().expect("placed");
    let cut_at = Instant::now();
    let cut = cloud
        .cut_controller(&running_on)
        .expect("cut the controller link");
    let mut max_copies = 0;
    let mut fenced_after = None;
    let moved = wait_until(
        "db1 restarted after the partition",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let copies = cloud.qemu_count(&id);
            max_copies = max_copies.max(copies);
            if copies == 0 && fenced_after.is_none() {
                fenced_after = Some(cut_at.elapsed());
            }
            let client = &client;
            let running_on = running_on.clone();
            async move {
                let i = instance(client, "db1").await;
                (i.state == InstanceState::Running
                    && i.host.as_deref() != Some(running_on.as_str()))
                .then_some(i)
            }
        },
    )
    .await
    .expect("db1 restarted elsewhere");
    let restarted_after = cut_at.elapsed();
    println!(
        "partition: fenced after {:.1} s, running elsewhere after {:.1} s",
        fenced_after.map_or(f64::NAN, |d| d.as_secs_f64()),
        restarted_after.as_secs_f64()
    );
    assert!(max_copies <= 1, "two copies of db1 ran at once");
    let fenced_after = fenced_after.expect("the cut-off host stopped its copy first");
    assert!(
        fenced_after >= Duration::from_secs(15),
        "not fenced before the timeout: {fenced_after:?}"
    );
    let log =
        std::fs::read_to_string(cloud.host_dir(&running_on).join("fence.log")).unwrap_or_default();
    assert!(log.contains(&id), "fence.log records db1: {log:?}");
    assert_ne!(moved.host, back.host);
    assert_eq!(
        exec(&client, "db1", "cat /data/kept").await.trim(),
        "ha-data"
    );
    cut.restore().expect("restore the link");
    wait_host_up(&client, &running_on).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(cloud.qemu_count(&id), 1, "the fenced copy stays stopped");
    assert_eq!(instance(&client, "db1").await.host, moved.host);
}
