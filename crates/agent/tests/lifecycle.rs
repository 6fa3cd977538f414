//! VM lifecycle through the agent API with the real QEMU, but no guest OS: the VM runs only
//! its firmware (no bootable disk), which needs no image. Covers start (idempotent), crash
//! detection, a stop the guest ignores (escalated to quit), re-adoption by a new agent,
//! a VM whose QEMU vanished while no agent ran, forced stop, delete.

mod common;

use common::{qemu_pids_for, wait_for, wait_pid_gone, QemuReaper, TestAgent};
use nimbus_agent_api::{StopRequest, VmRunState, VmSpec};
use std::time::Duration;
use uuid::Uuid;

fn firmware_only_spec(id: Uuid, base: &std::path::Path) -> VmSpec {
    let mut spec =
        nimbus_test_utils::specs::blank_vm_spec(id, &format!("fw-{}", &id.to_string()[..8]));
    spec.memory_mib = 64;
    spec.image.name = "blank".into();
    spec.image.base_disk = Some(base.to_path_buf());
    spec
}

fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_vm_lifecycle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(tmp.path().to_path_buf());
    let state_dir = tmp.path().join("state");
    let base = tmp.path().join("base.qcow2");
    nimbus_qemu::img::create_blank(&base, 32 << 20)
        .await
        .expect("base disk");

    let agent = TestAgent::start(&state_dir).await;
    let c = agent.client.clone();
    let id = Uuid::new_v4();
    let spec = firmware_only_spec(id, &base);
    let defined = c.define_vm(&spec).await.expect("define");
    assert_eq!(defined.state, VmRunState::Stopped);
    assert_eq!(
        c.define_vm(&spec).await.expect("define again").generation,
        defined.generation
    );

    // Start, idempotently.
    let running = c.start_vm(id).await.expect("start");
    assert_eq!(running.state, VmRunState::Running);
    assert!(running.generation > defined.generation);
    let pid = running.pid.expect("pid");
    assert!(running.started_at.is_some());
    assert!(running.rss_bytes > 0);
    assert_eq!(c.start_vm(id).await.expect("start again").pid, Some(pid));
    assert_eq!(c.list_vms().await.expect("list").len(), 1);
    assert_eq!(
        c.reboot_vm(id).await.expect("reboot").state,
        VmRunState::Running
    );

    // QEMU dies without being asked: crashed, with a reason.
    kill9(pid);
    let crashed = wait_for(&c, id, Duration::from_secs(10), "crashed", |s| {
        s.state == VmRunState::Crashed
    })
    .await;
    let reason = crashed.reason.expect("reason");
    assert!(reason.contains("QEMU exited unexpectedly"), "{reason}");
    assert_eq!(crashed.pid, None);
    wait_pid_gone(pid).await;

    // Start again; the firmware ignores the power button, so the stop escalates to quit.
    let pid = c.start_vm(id).await.expect("restart").pid.expect("pid");
    let t0 = std::time::Instant::now();
    let req = StopRequest {
        force: false,
        timeout_secs: 1,
    };
    let stopped = c.stop_vm(id, &req).await.expect("stop");
    assert_eq!(stopped.state, VmRunState::Stopped);
    assert_eq!(stopped.reason, None);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    wait_pid_gone(pid).await;
    assert_eq!(
        c.stop_vm(id, &req).await.expect("stop again").state,
        VmRunState::Stopped
    );
    let err = c.reboot_vm(id).await.expect_err("must fail");
    assert!(
        matches!(err, nimbus_agent_api::AgentError::Api { status: 409, .. }),
        "{err}"
    );

    // The agent goes away; QEMU stays; a new agent adopts it.
    let pid = c.start_vm(id).await.expect("start").pid.expect("pid");
    let generation = c.vm(id).await.expect("status").generation;
    agent.shutdown().await;
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU outlives the agent"
    );
    let agent = TestAgent::start(&state_dir).await;
    let c = agent.client.clone();
    let adopted = c.vm(id).await.expect("status");
    assert_eq!(
        (adopted.state, adopted.pid),
        (VmRunState::Running, Some(pid))
    );
    assert!(adopted.generation > generation, "generation continues");
    assert_eq!(c.start_vm(id).await.expect("start adopted").pid, Some(pid));
    assert_eq!(qemu_pids_for(&state_dir).len(), 1, "never a second QEMU");

    // QEMU dies while no agent runs: the next agent reports why.
    agent.shutdown().await;
    kill9(pid);
    wait_pid_gone(pid).await;
    let agent = TestAgent::start(&state_dir).await;
    let c = agent.client.clone();
    let gone = c.vm(id).await.expect("status");
    assert_eq!(gone.state, VmRunState::Crashed);
    assert_eq!(
        gone.reason.as_deref(),
        Some("QEMU process exited while the agent was down")
    );

    // Forced stop, then delete (twice: the second is a 404 the client counts as done).
    let pid = c.start_vm(id).await.expect("start").pid.expect("pid");
    let forced = c
        .stop_vm(
            id,
            &StopRequest {
                force: true,
                timeout_secs: 60,
            },
        )
        .await
        .expect("force stop");
    assert_eq!(forced.state, VmRunState::Stopped);
    wait_pid_gone(pid).await;
    let pid = c.start_vm(id).await.expect("start").pid.expect("pid");
    c.delete_vm(id).await.expect("delete running VM");
    c.delete_vm(id).await.expect("delete again");
    wait_pid_gone(pid).await;
    assert!(c.vm(id).await.expect_err("must fail").is_not_found());
    assert!(!state_dir.join("vms").join(id.to_string()).exists());
    assert!(qemu_pids_for(&state_dir).is_empty());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_failure_is_reported_with_qemu_stderr() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(tmp.path().to_path_buf());
    let state_dir = tmp.path().join("state");
    let base = tmp.path().join("base.qcow2");
    nimbus_qemu::img::create_blank(&base, 32 << 20)
        .await
        .expect("base disk");
    let agent = TestAgent::start(&state_dir).await;
    let c = agent.client.clone();
    let id = Uuid::new_v4();
    let mut spec = firmware_only_spec(id, &base);
    spec.memory_mib = 1 << 30; // 1 PiB: QEMU refuses it
    c.define_vm(&spec).await.expect("define");
    let err = c.start_vm(id).await.expect_err("must fail");
    match &err {
        nimbus_agent_api::AgentError::Api {
            status,
            code,
            message,
        } => {
            assert_eq!((*status, code.as_str()), (500, "qemu_failed"));
            assert!(message.contains("qemu-system"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
    let status = c.vm(id).await.expect("status");
    assert_eq!(status.state, VmRunState::Crashed);
    assert!(status.reason.is_some());
    c.delete_vm(id).await.expect("delete");
    agent.shutdown().await;
}

/// A delete is not held up by a stop the guest ignores: the stop in progress fails with
/// 409 and QEMU is gone at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cuts_through_a_slow_stop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(tmp.path().to_path_buf());
    let state_dir = tmp.path().join("state");
    let base = tmp.path().join("base.qcow2");
    nimbus_qemu::img::create_blank(&base, 32 << 20)
        .await
        .expect("base disk");
    let agent = TestAgent::start(&state_dir).await;
    let c = agent.client.clone();
    let id = Uuid::new_v4();
    c.define_vm(&firmware_only_spec(id, &base))
        .await
        .expect("define");
    let pid = c.start_vm(id).await.expect("start").pid.expect("pid");
    let stopper = {
        let c = c.clone();
        tokio::spawn(async move {
            let req = StopRequest {
                force: false,
                timeout_secs: 60,
            };
            c.stop_vm(id, &req).await
        })
    };
    wait_for(&c, id, Duration::from_secs(5), "stopping", |s| {
        s.state == VmRunState::Stopping
    })
    .await;
    let t0 = std::time::Instant::now();
    c.delete_vm(id).await.expect("delete");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let stop_result = stopper.await.expect("join");
    assert!(
        matches!(
            stop_result,
            Err(nimbus_agent_api::AgentError::Api { status: 409, .. })
        ),
        "{stop_result:?}"
    );
    wait_pid_gone(pid).await;
    assert!(!state_dir.join("vms").join(id.to_string()).exists());
    agent.shutdown().await;
}
