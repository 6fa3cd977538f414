//! `nimbus_agent::run` as the CLI calls it: listens, serves, registers with the controller
//! (bearer token = the agent token), and returns on shutdown.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use nimbus_agent::{run, AgentConfig};
use nimbus_agent_api::{Accelerator, AgentClient, RegisterHost};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Seen = Arc<Mutex<Vec<(String, RegisterHost)>>>;

async fn register(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<RegisterHost>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    seen.lock().expect("lock").push((auth, body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_registers_and_stops() {
    let seen: Seen = Arc::default();
    let controller = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let controller_url = format!("http://{}", controller.local_addr().expect("addr"));
    let app = Router::new()
        .route("/v1/internal/hosts/register", post(register))
        .with_state(seen.clone());
    let fake_controller = tokio::spawn(async move {
        let _ = axum::serve(controller, app).await;
    });

    // A free port for the agent (bound and released; the race is harmless here).
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = AgentConfig {
        controller_url: Some(controller_url),
        ..AgentConfig::in_process("run-test", listen, tmp.path().join("state"), "tok")
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run(config, async {
        let _ = stopped.await;
    }));

    let client = AgentClient::new(&format!("http://{listen}"), "tok");
    let mut inventory = None;
    for _ in 0..100 {
        if let Ok(inv) = client.host().await {
            inventory = Some(inv);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inventory = inventory.expect("agent API answers");
    assert_eq!(inventory.name, "run-test");

    for _ in 0..100 {
        if !seen.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (auth, body) = seen
        .lock()
        .expect("lock")
        .first()
        .cloned()
        .expect("registered");
    assert_eq!(auth, "Bearer tok");
    assert_eq!(body.agent_url, format!("http://{listen}"));
    assert_eq!(body.inventory.name, "run-test");
    assert_eq!(body.inventory.accelerator, Accelerator::Tcg);

    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("run returns on shutdown")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
    fake_controller.abort();
}

/// The cause of agents failing to restart (issue 14): an agent told to stop while its
/// accelerator probe runs (up to 30 s on a host whose /dev/kvm cannot boot a kernel) must stop
/// at once, with its probe QEMU, and free its port for the next agent. The probe here boots the
/// default kernel with an init that does not exist, so it would run to its timeout on any host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_the_accelerator_probe_frees_the_port_at_once() {
    let image = nimbus_agent::ImageManifest::load(&nimbus_agent::ImageManifest::default_dir())
        .expect("the default image (guest/build.sh)")
        .probe_image();
    let (kernel, initrd, cmdline) = image;
    let hanging = format!("{cmdline} init=/nimbus-no-such-init panic=0");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let tmp = tempfile::tempdir().expect("tempdir");
    let state_dir = tmp.path().join("state");
    let config = AgentConfig {
        accelerator: None,
        probe_image: Some((kernel, initrd, hanging)),
        probe_cache: Some(tmp.path().join("accel-probe.json")),
        image_cache_gib: 1,
        ..AgentConfig::in_process("probe-stop", listen, state_dir.clone(), "tok")
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run(config, async {
        let _ = stopped.await;
    }));
    let scratch = state_dir.join(format!("kvm-probe-{}", std::process::id()));
    let pid_file = scratch.join("qemu.pid");
    let mut probe_pid = None;
    for _ in 0..200 {
        probe_pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if probe_pid.is_some() || agent.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(probe_pid) = probe_pid else {
        // Without a usable /dev/kvm the probe answers TCG without starting QEMU.
        assert!(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_err(),
            "the probe started no QEMU although /dev/kvm opens"
        );
        eprintln!("no usable /dev/kvm: no probe to interrupt");
        let _ = stop.send(());
        return;
    };
    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("run returns at once when stopped mid-probe, not after the probe's 30 s")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
    std::net::TcpListener::bind(listen).expect("the port is free for the next agent");
    let mut alive = true;
    for _ in 0..100 {
        alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(probe_pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{probe_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "));
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive, "the probe's QEMU {probe_pid} outlived the agent");
    assert!(
        !tmp.path().join("accel-probe.json").exists(),
        "an interrupted probe caches no answer"
    );
}
