//! End to end: a live migration whose link is cut mid-transfer (issue 14, part 3). The two
//! hosts keep reaching the controller; only the traffic between them is dropped (nftables in
//! the source host's namespace), as a failed switch port would. The migration must give up
//! within its stall bound (10 s by default, not the 300 s overall timeout), leave the guest
//! running on its source with its memory intact (memcheck) and no copy on the target, and
//! the guest must migrate normally once the link is back.
#[path = "stall/slow.rs"]
mod slow;

use nimbus_api::{InstanceState, MigrateInstance, OperationState};
use nimbus_test_utils::guest::*;
use slow::{slow_migration, SlowMigration};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
/// The default stall bound (`MigrationPolicy::stall_timeout_secs`).
const STALL_BOUND: Duration = Duration::from_secs(10);
/// What the abort may take beyond the bound: QEMU's cancel, the controller's next poll, the
/// target's removal.
const ABORT_SLACK: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_link_aborts_the_migration_within_the_stall_bound() {
    let SlowMigration {
        cloud,
        client,
        id,
        src,
        dst,
        verified_before,
        slow,
        op_id,
    } = slow_migration(BIN, "cut1").await;
    let cut = cloud.cut_link(&src, dst).expect("cut the link");
    let t0 = Instant::now();
    let done = client
        .wait_operation(&op_id, Duration::from_secs(120), |_| {})
        .await
        .expect("wait");
    let took = t0.elapsed();
    eprintln!(
        "link cut mid-transfer: migration aborted {:.1} s after the cut: {:?}",
        took.as_secs_f64(),
        done.error
    );
    assert_eq!(done.state, OperationState::Failed, "{done:?}");
    let error = done.error.clone().unwrap_or_default();
    assert!(error.contains("no progress"), "the reason: {error}");
    assert!(
        took <= STALL_BOUND + ABORT_SLACK,
        "aborted {took:?} after the cut, beyond the stall bound {STALL_BOUND:?} (+{ABORT_SLACK:?})"
    );

    let after = instance(&client, "cut1").await;
    assert_eq!(
        (after.state, after.host.as_deref()),
        (InstanceState::Running, Some(src.as_str())),
        "the guest runs on its source"
    );
    assert_eq!(cloud.qemu_count(&id), 1, "no copy on the target");
    assert!(
        !cloud.host_dir(dst).join("vms").join(&id).exists(),
        "the target's VM directory is gone"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (verified, stale) = memcheck(&client, "cut1").await.expect("memcheck status");
    assert_eq!(stale, 0, "memory intact on the source");
    assert!(
        verified > verified_before,
        "memcheck runs on ({verified_before} -> {verified})"
    );

    // The link back, the same guest moves.
    cut.restore().expect("restore the link");
    slow.restore().expect("full speed");
    exec(&client, "cut1", "killall memcheck; true").await;
    let (op, _) = migrate_and_wait(&client, "cut1", MigrateInstance::default()).await;
    assert_eq!(
        op.state,
        OperationState::Succeeded,
        "{:?}\n{}",
        op.error,
        cloud.log_tail(30)
    );
    assert_eq!(instance(&client, "cut1").await.host.as_deref(), Some(dst));
}
