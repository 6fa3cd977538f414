//! End to end: a scaling group through the real binary and real TCG guests. One cloud, one
//! group, shared by the phases: it scales out when its guest burns CPU (and stops at the
//! pool's capacity, saying so), scales back in when the load stops, replaces a member whose
//! QEMU is killed, and converges to exactly `desired` across a controller restart in the
//! middle of a scale-out. Window and cooldown are 10 s to keep the suite short.

use nimbus_api::{GroupView, InstanceState};
use nimbus_client::Client;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

async fn group(client: &Client) -> GroupView {
    client.group("web").await.expect("group show")
}

/// Members that count (not being deleted).
fn live(g: &GroupView) -> Vec<&nimbus_api::GroupMember> {
    g.instances
        .iter()
        .filter(|m| m.state != InstanceState::Deleting)
        .collect()
}

/// The group's latest event of `kind`; panics if there is none.
fn latest<'a>(g: &'a GroupView, kind: &str) -> &'a nimbus_api::GroupEvent {
    g.events
        .iter()
        .find(|e| e.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} event: {:#?}", g.events))
}

fn running(g: &GroupView) -> Vec<String> {
    g.instances
        .iter()
        .filter(|m| m.state == InstanceState::Running)
        .map(|m| m.name.clone())
        .collect()
}

/// Waits (bounded) until `check` accepts the group; returns it.
async fn wait_group(
    cloud: &Cloud,
    client: &Client,
    what: &str,
    secs: u64,
    check: impl Fn(&GroupView) -> bool,
) -> GroupView {
    let res = wait_until(
        what,
        Duration::from_secs(secs),
        Duration::from_secs(1),
        || async { client.group("web").await.ok().filter(|g| check(g)) },
    )
    .await;
    match res {
        Ok(g) => g,
        Err(e) => panic!(
            "{e}\ngroup: {:#?}\n--- nimbus up log ---\n{}",
            client.group("web").await.ok(),
            cloud.log_tail(60)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_end_to_end() {
    // Room for one tiny (1 vCPU) member per host: each host offers 1.5 vCPUs, so the pool
    // (2 hosts) holds two members and a third is refused for capacity.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let opts = CloudOptions {
        hosts: 2,
        extra_args: vec!["--cpu-ratio".into(), format!("{}", 1.5 / cpus as f64)],
    };
    let mut cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    let t0 = Instant::now();

    let first = scale_out_on_load_stops_at_capacity(&cloud, &client).await;
    eprintln!("scale-out phase done at {:?}", t0.elapsed());
    scale_in_when_the_load_stops(&cloud, &client, &first).await;
    eprintln!("scale-in phase done at {:?}", t0.elapsed());
    killed_member_is_replaced(&cloud, &client, &first).await;
    eprintln!("replacement phase done at {:?}", t0.elapsed());
    restart_mid_scale_out_converges_to_desired(&mut cloud).await;
    eprintln!("restart phase done at {:?}", t0.elapsed());
    let client = cloud.client().expect("client");
    silent_member_is_replaced(&cloud, &client).await;
    eprintln!("heartbeat phase done at {:?}", t0.elapsed());
    delete_removes_the_group_and_its_instances(&cloud, &client).await;
    eprintln!("groups end to end took {:?}", t0.elapsed());
}

/// Returns the name of the group's first member.
async fn scale_out_on_load_stops_at_capacity(cloud: &Cloud, client: &Client) -> String {
    let hosts = client.list_hosts().await.expect("hosts");
    for h in &hosts {
        let offered = f64::from(h.cpus) * h.cpu_allocation_ratio;
        assert!((1.0..2.0).contains(&offered), "one tiny per host: {h:?}");
    }
    let e = cli_err(
        cloud,
        &[
            "group", "create", "web", "--flavor", "tiny", "--image", "default", "--min", "3",
            "--max", "2",
        ],
    );
    assert!(e.contains("min 3 is above max 2"), "{e}");
    let out = cli_ok(
        cloud,
        &[
            "group",
            "create",
            "web",
            "--flavor",
            "tiny",
            "--image",
            "default",
            "--min",
            "1",
            "--max",
            "3",
            "--desired",
            "1",
            "--target-cpu",
            "25",
            "--window-secs",
            "10",
            "--cooldown-secs",
            "10",
        ],
    );
    assert!(out.contains("created: min 1, max 3, desired 1"), "{out}");
    let g = wait_group(cloud, client, "the first member to run", 240, |g| {
        running(g).len() == 1
    })
    .await;
    let first = running(&g)[0].clone();
    assert!(first.starts_with("web-"), "{first}");

    exec(client, &first, "burn-cpu 900 </dev/null >/dev/null 2>&1 &").await;
    let g = wait_group(cloud, client, "a scale-out on CPU load", 120, |g| {
        g.desired >= 2
    })
    .await;
    let out = latest(&g, "scale_out");
    assert!(
        out.message.starts_with("avg CPU ") && out.message.contains("over 10 s > 25% target: +"),
        "{out:?}"
    );
    assert!(out.delta >= 1, "{out:?}");
    let g = wait_group(cloud, client, "the second member to run", 240, |g| {
        running(g).len() == 2
    })
    .await;
    let hosts: std::collections::HashSet<_> =
        g.instances.iter().filter_map(|m| m.host.clone()).collect();
    assert_eq!(hosts.len(), 2, "spread over both hosts: {g:#?}");

    // A third member does not fit: the scale-out stops there and says so.
    if g.desired < 3 {
        cli_ok(cloud, &["group", "set", "web", "--desired", "3"]);
    }
    let g = wait_group(cloud, client, "the refused scale-out event", 30, |g| {
        g.events.iter().any(|e| e.kind == "refused")
    })
    .await;
    let refused = latest(&g, "refused");
    assert!(
        refused
            .message
            .starts_with("scale-out stopped: no host has"),
        "{refused:?}"
    );
    assert_eq!(
        (g.desired, g.current, g.instances.len()),
        (3, 2, 2),
        "{g:#?}"
    );
    let shown = cli_ok(cloud, &["group", "show", "web"]);
    assert!(shown.contains("scale-out stopped"), "{shown}");
    first
}

async fn scale_in_when_the_load_stops(cloud: &Cloud, client: &Client, first: &str) {
    exec(client, first, "killall burn-cpu; true").await;
    let g = wait_group(
        cloud,
        client,
        "a scale-in after the load stopped",
        120,
        |g| g.desired == 1 && live(g).len() == 1,
    )
    .await;
    let event = latest(&g, "scale_in");
    assert!(event.message.contains("< 25% target: -"), "{event:?}");
    // Scale-in removes the newest member.
    assert_eq!(live(&g)[0].name, first, "{g:#?}");
}

/// Sends `signal` to the QEMU process of instance `name` (only that process).
async fn signal_qemu(cloud: &Cloud, client: &Client, name: &str, signal: nix::sys::signal::Signal) {
    let id = instance(client, name).await.id.to_string();
    let pids: Vec<i32> = cloud
        .qemu_pids()
        .into_iter()
        .filter(|(dir, _)| dir.ends_with(&id))
        .map(|(_, pid)| pid)
        .collect();
    assert_eq!(pids.len(), 1, "one QEMU for {name}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), signal).expect("signal QEMU");
}

async fn killed_member_is_replaced(cloud: &Cloud, client: &Client, first: &str) {
    signal_qemu(cloud, client, first, nix::sys::signal::Signal::SIGKILL).await;
    let g = wait_group(cloud, client, "the killed member's replacement", 240, |g| {
        g.replacements == 1
            && g.instances.len() == 1
            && g.instances[0].name != first
            && g.instances[0].state == InstanceState::Running
    })
    .await;
    let event = latest(&g, "replace");
    assert!(
        event
            .message
            .starts_with(&format!("replacing {first}: it is in error")),
        "{event:?}"
    );
    assert!(client.instance(first).await.is_err(), "{first} is gone");
}

async fn restart_mid_scale_out_converges_to_desired(cloud: &mut Cloud) {
    let client = cloud.client().expect("client");
    // min 2 raises desired to 2 at once (and keeps the idle policy from scaling in).
    cli_ok(cloud, &["group", "set", "web", "--min", "2"]);
    wait_group(cloud, &client, "the scale-out to start", 30, |g| {
        g.instances
            .iter()
            .any(|m| m.state == InstanceState::Building)
    })
    .await;
    cloud.kill_up().expect("kill nimbus up");
    cloud.restart_up().await.expect("restart");
    let client = cloud.client().expect("client");
    let g = wait_group(
        cloud,
        &client,
        "two running members after the restart",
        240,
        |g| running(g).len() == 2,
    )
    .await;
    assert_eq!(g.desired, 2);
    // A few more autoscaler ticks change nothing: exactly desired, one QEMU each.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let g = group(&client).await;
    assert_eq!(
        (g.desired, g.current, g.instances.len()),
        (2, 2, 2),
        "{g:#?}"
    );
    assert_eq!(cloud.qemu_pids().len(), 2, "{:?}", cloud.qemu_pids());
    let all = client.list_instances().await.expect("instances");
    assert_eq!(all.len(), 2, "{all:#?}");
}

/// A member whose guest stops answering (its QEMU frozen with SIGSTOP: the process lives,
/// the heartbeat stops) is replaced after the heartbeat timeout.
async fn silent_member_is_replaced(cloud: &Cloud, client: &Client) {
    let g = group(client).await;
    let frozen = g.instances[0].name.clone();
    signal_qemu(cloud, client, &frozen, nix::sys::signal::Signal::SIGSTOP).await;
    let g = wait_group(cloud, client, "the silent member's replacement", 120, |g| {
        g.replacements == 2 && running(g).len() == 2 && g.instances.iter().all(|m| m.name != frozen)
    })
    .await;
    let event = latest(&g, "replace");
    assert!(
        event.message.starts_with(&format!(
            "replacing {frozen}: its guest sent no heartbeat for"
        )),
        "{event:?}"
    );
    // Replacements wait for the capacity their failed member releases; only the scale-out
    // of the first phase was refused.
    let refused = g.events.iter().filter(|e| e.kind == "refused").count();
    assert_eq!(refused, 1, "{:#?}", g.events);
}

async fn delete_removes_the_group_and_its_instances(cloud: &Cloud, client: &Client) {
    let out = cli_ok(cloud, &["group", "delete", "web", "--wait"]);
    assert!(out.contains("group_delete web: succeeded"), "{out}");
    assert!(client.group("web").await.is_err());
    assert!(client.list_groups().await.expect("groups").is_empty());
    assert!(client.list_instances().await.expect("instances").is_empty());
    wait_until(
        "every QEMU of the group to exit",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async { cloud.qemu_pids().is_empty().then_some(()) },
    )
    .await
    .expect("no QEMU left");
}
