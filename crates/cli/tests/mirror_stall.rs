//! End to end: a live migration of a local disk whose link is cut while the disk is being
//! mirrored (issue 14, part 3). The hosts keep reaching the controller; only their traffic to
//! each other is dropped. The migration gives up within its stall bound, the guest runs on at
//! its source with its disk intact, and nothing is left on the target.

use nimbus_api::{InstanceState, MigrateInstance, OperationState, StepState};
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{Cloud, CloudOptions};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
/// The default stall bound (`MigrationPolicy::stall_timeout_secs`) and what the abort may
/// take beyond it (the mirror's cancel, the controller's next poll, the target's removal).
const STALL_BOUND: Duration = Duration::from_secs(10);
const ABORT_SLACK: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_link_during_the_disk_mirror_aborts_within_the_stall_bound() {
    let cloud = Cloud::start(Path::new(BIN), CloudOptions::default())
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    create_instances(&cloud, &["mir1"], "small").await;
    let before = instance(&client, "mir1").await;
    let id = before.id.to_string();
    let src = before.host.clone().expect("placed");
    let dst = if src == "host1" { "host2" } else { "host1" };
    // ~96 MiB of data the disk overlay must carry: at 10 MB/s the mirror takes ~10 s.
    exec(
        &client,
        "mir1",
        "dd if=/dev/urandom of=/data/blob bs=1M count=96 2>/dev/null && sync && md5sum /data/blob > /data/blob.md5",
    )
    .await;
    let slow = cloud.throttle_link(&src, dst, 10).expect("throttle");
    let op = client
        .migrate_instance("mir1", &MigrateInstance::default())
        .await
        .expect("migrate");
    let op_id = op.id.to_string();
    wait_for_step(&client, &op_id, "transfer", |s| s == StepState::Running).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cut = cloud.cut_link(&src, dst).expect("cut");
    let t0 = Instant::now();
    let done = client
        .wait_operation(&op_id, Duration::from_secs(120), |_| {})
        .await
        .expect("wait");
    let took = t0.elapsed();
    eprintln!(
        "link cut during the disk mirror: aborted {:.1} s after the cut: {:?}",
        took.as_secs_f64(),
        done.error
    );
    assert_eq!(done.state, OperationState::Failed, "{done:?}");
    let error = done.error.clone().unwrap_or_default();
    assert!(error.contains("no progress"), "the reason: {error}");
    assert!(
        took <= STALL_BOUND + ABORT_SLACK,
        "aborted {took:?} after the cut (bound {STALL_BOUND:?} + {ABORT_SLACK:?})"
    );
    let after = instance(&client, "mir1").await;
    assert_eq!(
        (after.state, after.host.as_deref()),
        (InstanceState::Running, Some(src.as_str()))
    );
    assert_eq!(cloud.qemu_count(&id), 1, "no copy on the target");
    assert!(!cloud.host_dir(dst).join("vms").join(&id).exists());
    exec(
        &client,
        "mir1",
        "md5sum -c /data/blob.md5 && touch /data/after && sync",
    )
    .await;
    drop(cut);
    drop(slow);
}
