//! End to end: an agent killed with SIGKILL is back at once (issue 14, part 7). One host, one
//! tiny guest that runs through everything:
//! - the agent is killed with -9: the supervisor of `nimbus up` restarts it, it takes the
//!   accelerator from the cached probe answer (no 30 s probe boot), re-adopts the guest and
//!   serves again; the time from the kill to a command run in the guest through the new agent
//!   is printed;
//! - the agent is killed with -9 and `nimbus up` itself is killed and started again right away
//!   (what crates/cli/tests/metering.rs does): the host comes back and no agent ever fails
//!   for want of its port (the old agent, stopped mid-start, used to keep it for the probe's
//!   30 s);
//! - the guest's QEMU ran all along.

use nimbus_client::Client;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_is_back_at_once() {
    let opts = CloudOptions {
        hosts: 1,
        extra_args: Vec::new(),
    };
    let mut cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    create_instances(&cloud, &["r1"], "tiny").await;
    let qemu_before = cloud.qemu_pids();
    assert_eq!(qemu_before.len(), 1, "{qemu_before:?}");

    let back = kill_agent(&cloud).await;
    let client = cloud.client().expect("client");
    let served = guest_answers(&client).await;
    eprintln!(
        "agent restart after kill -9: {:.3} s to a new agent, {:.3} s to a command in the guest",
        back.as_secs_f64(),
        served.as_secs_f64()
    );

    kill_agent_now(&cloud);
    cloud.restart_up().await.expect("nimbus up restarted");
    let client = cloud.client().expect("client");
    guest_answers(&client).await;
    let log =
        std::fs::read_to_string(cloud.host_dir("host1").join("agent.log")).expect("agent log");
    assert!(
        !log.contains("Address already in use"),
        "an agent found its port taken:\n{log}"
    );
    assert_eq!(
        cloud.qemu_pids(),
        qemu_before,
        "the guest's QEMU ran all along"
    );
}

/// Kills the agent of host1 with SIGKILL; returns its pid.
fn kill_agent_now(cloud: &Cloud) -> i32 {
    let pid = cloud.agent_pid("host1").expect("agent pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the agent");
    pid
}

/// Kills the agent with -9 and waits until another one runs; returns how long that took.
async fn kill_agent(cloud: &Cloud) -> Duration {
    let t0 = Instant::now();
    let old = kill_agent_now(cloud);
    wait_until(
        "the agent to restart",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            let pid = cloud.agent_pid("host1").ok()?;
            (pid != old).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cloud.log_tail(20)));
    t0.elapsed()
}

/// Waits until a command runs in r1 (through the agent); returns how long that took.
async fn guest_answers(client: &Client) -> Duration {
    let t0 = Instant::now();
    wait_until(
        "a command to run in r1",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            let out = client.exec("r1", "echo alive").await.ok()?;
            (out.exit_code == 0 && out.output.contains("alive")).then_some(())
        },
    )
    .await
    .expect("the guest answers through the restarted agent");
    t0.elapsed()
}
