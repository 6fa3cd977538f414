//! End to end with the default guest image (skipped, saying so, when it is not built):
//! define + start a VM (1 vCPU, 256 MiB, TCG), wait for the ready marker, exec, heartbeat,
//! console log and websocket, reboot, re-adoption by a new agent, graceful stop, delete.
//!
//! The image is `${NIMBUS_IMAGE_CACHE:-/var/cache/nimbus}/images/default` (guest/build.sh).

mod common;

use common::{qemu_pids_for, wait_for, wait_pid_gone, QemuReaper, TestAgent, TOKEN};
use futures::{SinkExt, StreamExt};
use nimbus_agent::ImageManifest;
use nimbus_agent_api::{AgentError, DiskSpec, ExecRequest, StopRequest, VmRunState, VmSpec};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use uuid::Uuid;

const BOOT_LIMIT: Duration = Duration::from_secs(90);

fn exec_req(command: &str, timeout_secs: u64) -> ExecRequest {
    ExecRequest {
        command: command.into(),
        timeout_secs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_image_end_to_end() {
    let image_dir = ImageManifest::default_dir();
    if !image_dir.join("image.json").is_file() {
        eprintln!(
            "SKIPPED default_image_end_to_end: no guest image at {} (build it with guest/build.sh)",
            image_dir.display()
        );
        return;
    }
    let manifest = ImageManifest::load(&image_dir).expect("image manifest");
    let tmp = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(tmp.path().to_path_buf());
    let state_dir = tmp.path().join("state");
    let agent = TestAgent::start(&state_dir).await;
    let c = agent.client.clone();

    let id = Uuid::new_v4();
    let spec = VmSpec {
        id,
        name: "e2e-guest".into(),
        vcpus: 1,
        memory_mib: 256,
        image: manifest.guest_image(),
        disk: DiskSpec { size_gib: 1 },
        ha: false,
        nics: Vec::new(),
        seed: None,
    };
    c.define_vm(&spec).await.expect("define");
    let t0 = Instant::now();
    let started = c.start_vm(id).await.expect("start");
    assert_eq!(started.state, VmRunState::Running);
    let pid = started.pid.expect("pid");
    assert!(!started.guest_ready);
    wait_for(&c, id, BOOT_LIMIT, "guest ready", |s| s.guest_ready).await;
    eprintln!("guest ready {:?} after start", t0.elapsed());

    // Exec through the guest's serial channel.
    let hello = c
        .exec(id, &exec_req("cat /data/hello.txt", 30))
        .await
        .expect("exec");
    assert_eq!(hello.exit_code, 0);
    assert_eq!(hello.output.trim(), "nimbus default image");
    let failing = c
        .exec(id, &exec_req("echo oops >&2; exit 3", 30))
        .await
        .expect("exec");
    assert_eq!((failing.exit_code, failing.output.as_str()), (3, "oops\n"));
    assert_eq!(
        c.exec(id, &exec_req("hostname", 30))
            .await
            .expect("exec")
            .output
            .trim(),
        "e2e-guest"
    );

    // Heartbeat arrives every 50 ms.
    let beating = wait_for(&c, id, Duration::from_secs(10), "heartbeat", |s| {
        s.heartbeat_age_ms.is_some_and(|a| a < 2000)
    })
    .await;
    assert!(beating.cpu_time_ns > 0 && beating.rss_bytes > 0 && beating.disk_allocated_bytes > 0);
    let hb_log = std::fs::read_to_string(state_dir.join(format!("vms/{id}/heartbeat.log")))
        .expect("heartbeat.log");
    assert!(
        hb_log.lines().any(|l| l.contains(" hb ")),
        "heartbeat.log has beats"
    );

    // Console log and websocket (one client at a time).
    let log = c.console_log(id, 0).await.expect("console log");
    assert!(log.data.contains("nimbus-guest ready"));
    let tail = c
        .console_log(id, log.next_offset)
        .await
        .expect("console log tail");
    assert_eq!(tail.offset, log.next_offset);
    console_round_trip(&agent, id).await;

    // Reboot: not ready until the marker appears again.
    let rebooted = c.reboot_vm(id).await.expect("reboot");
    assert!(!rebooted.guest_ready);
    assert_eq!(rebooted.pid, Some(pid));
    wait_for(&c, id, BOOT_LIMIT, "guest ready after reboot", |s| {
        s.guest_ready
    })
    .await;

    // A command that outlives its timeout answers 504 `timeout`.
    let err = c
        .exec(id, &exec_req("sleep 3", 1))
        .await
        .expect_err("must time out");
    assert!(
        matches!(err, AgentError::Api { status: 504, ref code, .. } if code == "timeout"),
        "{err}"
    );

    // A new agent on the same state directory adopts the running VM.
    agent.shutdown().await;
    let agent = TestAgent::start(&state_dir).await;
    let c = agent.client.clone();
    let adopted = c.vm(id).await.expect("status");
    assert_eq!(
        (adopted.state, adopted.pid),
        (VmRunState::Running, Some(pid))
    );
    wait_for(
        &c,
        id,
        Duration::from_secs(10),
        "ready and beating after adoption",
        |s| s.guest_ready && s.heartbeat_age_ms.is_some_and(|a| a < 2000),
    )
    .await;
    let hello = c
        .exec(id, &exec_req("cat /data/hello.txt", 30))
        .await
        .expect("exec after adoption");
    assert_eq!(hello.output.trim(), "nimbus default image");

    // Graceful stop: the guest powers off on the ACPI power button.
    let t0 = Instant::now();
    let stopped = c
        .stop_vm(
            id,
            &StopRequest {
                force: false,
                timeout_secs: 30,
            },
        )
        .await
        .expect("stop");
    eprintln!("graceful stop took {:?}", t0.elapsed());
    assert_eq!(
        (stopped.state, stopped.reason.clone()),
        (VmRunState::Stopped, None)
    );
    wait_pid_gone(pid).await;

    // A guest that powers itself off is stopped, not crashed.
    let pid = c.start_vm(id).await.expect("start again").pid.expect("pid");
    wait_for(&c, id, BOOT_LIMIT, "guest ready again", |s| s.guest_ready).await;
    // The guest goes away before it can answer; any outcome of the exec itself is fine.
    let _ = c.exec(id, &exec_req("poweroff -f", 5)).await;
    let off = wait_for(&c, id, Duration::from_secs(20), "guest power-off", |s| {
        s.state != VmRunState::Running
    })
    .await;
    assert_eq!(off.state, VmRunState::Stopped, "{off:?}");
    assert_eq!(off.reason.as_deref(), Some("guest powered off"));
    wait_pid_gone(pid).await;

    c.delete_vm(id).await.expect("delete");
    assert!(!state_dir.join("vms").join(id.to_string()).exists());
    assert!(qemu_pids_for(tmp.path()).is_empty(), "no QEMU left");
    agent.shutdown().await;
}

/// Types a command on the serial console through the websocket and reads its output; a
/// second client meanwhile is refused with 409.
async fn console_round_trip(agent: &TestAgent, id: Uuid) {
    let url = format!("ws://{}/agent/v1/vms/{id}/console", agent.addr);
    let request = || {
        let mut req = url.as_str().into_client_request().expect("ws request");
        let auth = format!("Bearer {TOKEN}").parse().expect("header");
        req.headers_mut().insert("authorization", auth);
        req
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(request())
        .await
        .expect("websocket");
    match tokio_tungstenite::connect_async(request()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 409)
        }
        other => panic!(
            "second console client was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    ws.send(Message::binary(b"echo console-$((6*7))\n".to_vec()))
        .await
        .expect("send");
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.contains("console-42") {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("console answered in time")
            .expect("console open")
            .expect("console message");
        if let Message::Binary(b) = msg {
            seen.push_str(&String::from_utf8_lossy(&b));
        }
    }
    ws.close(None).await.expect("close");
    drop(ws);
    // The console is free again once the first client left.
    for _ in 0..50 {
        if tokio_tungstenite::connect_async(request()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("console stayed busy after the client left");
}

/// The accelerator probe boots the image's kernel under KVM: KVM only if the guest reaches
/// its ready marker. (On hosts whose /dev/kvm cannot boot Linux it must answer TCG.)
#[tokio::test]
async fn accelerator_probe_boots_the_image_kernel() {
    let image_dir = ImageManifest::default_dir();
    let Ok(manifest) = ImageManifest::load(&image_dir) else {
        eprintln!("SKIPPED accelerator_probe_boots_the_image_kernel: no guest image");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(tmp.path().to_path_buf());
    let opts = nimbus_qemu::probe::ProbeOptions {
        program: nimbus_qemu::qemu_binary(),
        boot: Some(nimbus_qemu::probe::ProbeBoot {
            kernel: manifest.kernel.clone(),
            initrd: Some(manifest.initrd.clone()),
            cmdline: manifest.cmdline.clone(),
            markers: vec![manifest.ready_marker.clone()],
        }),
        timeout: Duration::from_secs(30),
        scratch_parent: tmp.path().to_path_buf(),
    };
    let t0 = Instant::now();
    let outcome = nimbus_qemu::probe::probe_accel(&opts).await;
    eprintln!(
        "probe answered {:?} in {:?}: {}",
        outcome.accel,
        t0.elapsed(),
        outcome.detail
    );
    if outcome.accel == nimbus_qemu::Accel::Kvm {
        assert!(
            outcome.detail.contains(&manifest.ready_marker),
            "{}",
            outcome.detail
        );
    }
    assert_eq!(
        std::fs::read_dir(tmp.path()).expect("ls").count(),
        0,
        "probe cleaned up"
    );
    assert!(qemu_pids_for(tmp.path()).is_empty());
}
