//! End to end: the stall bound on the receiving side (issue 14). A live migration runs over
//! a slowed link (the setup of `migration_stall.rs`); then the source host's agent is frozen
//! (SIGSTOP: it cannot give the migration up, and the controller, which asks it for progress,
//! waits) and the link between the hosts is cut. Nothing tells the target the migration is
//! over, so the target's own bound must: its waiting QEMU is killed twice the stall bound
//! (20 s) after the last byte arrived, while the guest runs on at its source all along. Once
//! the source agent is thawed, the migration fails with the reason and the guest is unharmed
//! (memcheck).

#[path = "stall/slow.rs"]
mod slow;

use nimbus_api::{InstanceState, OperationState};
use nimbus_test_utils::guest::*;
use nimbus_test_utils::wait_until;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use slow::{slow_migration, SlowMigration};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
/// The target's bound: twice the default stall bound (`MigrationPolicy::stall_timeout_secs`).
const TARGET_BOUND: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_whose_stream_stops_gives_up_by_itself() {
    let SlowMigration {
        cloud,
        client,
        id,
        src,
        dst,
        verified_before,
        slow,
        op_id,
    } = slow_migration(BIN, "rx1").await;
    let agent = cloud.agent_pid(&src).expect("source agent pid");
    kill(Pid::from_raw(agent), Signal::SIGSTOP).expect("freeze the source agent");
    let cut = cloud.cut_link(&src, dst).expect("cut the link");
    let t0 = Instant::now();
    let dst_vm = cloud.host_dir(dst).join("vms").join(&id);
    let on = |dir: &Path| {
        cloud
            .qemu_pids()
            .iter()
            .filter(|(d, _)| d.as_path() == dir)
            .count()
    };
    // Nothing may panic while the source agent is frozen: checked once it is thawed.
    let waiting = on(&dst_vm);
    let src_vm = cloud.host_dir(&src).join("vms").join(&id);
    let mut source_ran = true;
    let gone = wait_until(
        "the target gives up",
        TARGET_BOUND + Duration::from_secs(25),
        Duration::from_millis(200),
        || {
            source_ran &= on(&src_vm) == 1;
            let left = on(&dst_vm);
            async move { (left == 0).then_some(()) }
        },
    )
    .await;
    let took = t0.elapsed();
    kill(Pid::from_raw(agent), Signal::SIGCONT).expect("thaw the source agent");
    cut.restore().expect("restore the link");
    slow.restore().expect("full speed");
    eprintln!(
        "receiving side: the target gave up {:.1} s after the cut (bound {} s)",
        took.as_secs_f64(),
        TARGET_BOUND.as_secs()
    );
    assert_eq!(waiting, 1, "the target waited for the VM");
    gone.expect("the target's QEMU was killed within its bound");
    assert!(
        took >= TARGET_BOUND - Duration::from_secs(2),
        "given up before its bound: {took:?}"
    );
    assert!(source_ran, "the source QEMU ran all along");
    // The target's own doing, not the controller's unwind (which waits for the frozen
    // source agent).
    let log = std::fs::read_to_string(cloud.host_dir(dst).join("agent.log")).unwrap_or_default();
    assert!(
        log.contains("incoming migration given up"),
        "the target agent logged why"
    );

    let done = client
        .wait_operation(&op_id, Duration::from_secs(120), |_| {})
        .await
        .expect("wait");
    assert_eq!(done.state, OperationState::Failed, "{done:?}");
    let after = instance(&client, "rx1").await;
    assert_eq!(
        (after.state, after.host.as_deref()),
        (InstanceState::Running, Some(src.as_str())),
        "the guest runs on its source"
    );
    assert_eq!(cloud.qemu_count(&id), 1, "one copy");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (verified, stale) = memcheck(&client, "rx1").await.expect("memcheck status");
    assert_eq!(stale, 0, "memory intact on the source");
    assert!(verified > verified_before, "memcheck runs on");
}
