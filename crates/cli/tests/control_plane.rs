//! End to end: three `nimbus controller` processes over one real PostgreSQL (issue 12).
//!
//! The operation held in flight is a host drain of a host with no instances (its agent is
//! not started: only the controllers are the subject here, so no guest is needed); a
//! failpoint keeps its first step in flight on the controller that owns it:
//! - `nimbus controller list` (through the binary) shows the three, each answering for any;
//! - kill -9 of the owner mid-step: another controller takes the operation over within the
//!   lease and finishes it;
//! - SIGSTOP of the owner past its lease: another takes it over and finishes it; after
//!   SIGCONT none of the stalled owner's writes lands (the epoch fence) and it says it gave
//!   the operation up;
//! - a controller whose port is busy exits without joining (not listed as live);
//! - a second controller on one SQLite database is refused, saying to use PostgreSQL.
//!
//! Needs `NIMBUS_TEST_POSTGRES_URL` (CI sets it; `bash scripts/ci-postgres.sh` prints one):
//! fails clearly without it.

use nimbus_api::{OperationState, OperationView, StepState};
use nimbus_client::Client;
use nimbus_test_utils::controllers::{ControllerProcess, TestDatabase};
use nimbus_test_utils::wait_until;
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
/// Lease TTL of the controllers (seconds): short, so takeovers are quick.
const TTL: u64 = 3;
/// How long the owner's step stays in flight (longer than the lease).
const HOLD: &str = "drain.disable_host:12";

fn client(c: &ControllerProcess, dir: &Path) -> Client {
    let token = std::fs::read_to_string(dir.join("admin.token")).expect("admin token");
    let ca = std::fs::read(dir.join(nimbus_pki::CA_CERT_FILE)).expect("the cloud's CA");
    Client::new(&c.api, Some(token.trim().to_string()))
        .with_root_ca(&ca)
        .expect("a client trusting the cloud's CA")
}

/// Registers host `name` the way an agent does, with a host certificate of the cloud's CA
/// (signed here from the shared data dir, as enrolment would: the agent is not the subject
/// and never runs, so nothing calls it).
async fn register_host(c: &ControllerProcess, dir: &Path, name: &str) {
    let ca = nimbus_pki::CloudCa::load_or_create(dir).expect("the cloud's CA");
    let host_dir = dir.join(format!("host-{name}"));
    std::fs::create_dir_all(&host_dir).expect("host dir");
    let creds = nimbus_pki::HostCredentials::new(&host_dir);
    let csr = creds.new_request(name).expect("csr");
    let cert = ca
        .sign_host(&csr, name, &["127.0.0.1".into()])
        .expect("sign");
    creds.save(&cert.cert_pem, ca.cert_pem()).expect("save");
    let identity = creds.identity().expect("identity");
    let tls = nimbus_pki::client_config(ca.cert_pem(), Some(&identity)).expect("tls");
    let body = serde_json::json!({
        "agent_url": "https://127.0.0.1:1",
        "inventory": {
            "name": name, "cpus": 4, "memory_mib": 4096, "disk_gib": 50,
            "accelerator": "tcg", "qemu_version": "10", "agent_version": "test"
        }
    });
    let r = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .expect("client")
        .post(format!("{}/v1/internal/hosts/register", c.api))
        .json(&body)
        .send()
        .await
        .expect("register");
    assert!(r.status().is_success(), "register: {}", r.status());
}

async fn operation(client: &Client, id: &str) -> OperationView {
    client.operation(id).await.expect("operation")
}

/// Waits until `owner` owns the drain `id` and is inside its held first step (not inside a
/// database write).
async fn wait_owned(client: &Client, owner: &ControllerProcess, id: &str) {
    wait_until(
        "the drain to be claimed",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let list = client.list_controllers().await.ok()?;
            let owned = list.iter().any(|c| c.url == owner.api && c.operations == 1);
            let op = client.operation(id).await.ok()?;
            let held = op
                .steps
                .first()
                .is_some_and(|s| s.state == StepState::Running);
            (owned && held).then_some(())
        },
    )
    .await
    .expect("claimed");
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn wait_succeeded(client: &Client, id: &str) -> OperationView {
    wait_until(
        "another controller to finish the operation",
        Duration::from_secs(40),
        Duration::from_millis(200),
        || async {
            let op = client.operation(id).await.ok()?;
            (op.state == OperationState::Succeeded).then_some(op)
        },
    )
    .await
    .expect("finished by another controller")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_take_over_and_fence_each_other() {
    let db = TestDatabase::create().expect("a PostgreSQL database");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let hold = [("NIMBUS_FAILPOINT_HOLD", HOLD)];
    let mut a = ControllerProcess::start(Path::new(BIN), dir, &db.url, TTL, &hold).expect("a");
    a.wait_healthy().await.expect("a up");
    let mut b = ControllerProcess::start(Path::new(BIN), dir, &db.url, TTL, &[]).expect("b");
    let mut c = ControllerProcess::start(Path::new(BIN), dir, &db.url, TTL, &[]).expect("c");
    b.wait_healthy().await.expect("b up");
    c.wait_healthy().await.expect("c up");
    let via_b = client(&b, dir);

    // A controller that cannot listen (its port is b's) exits before it joins: never listed
    // as live (its row would stay so for a TTL after its death) nor owning an operation.
    let mut busy = ControllerProcess::start_on(Path::new(BIN), dir, &db.url, b.port(), TTL, &[])
        .expect("a controller on a busy port");
    let code = busy
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("it exits");
    assert_ne!(code, Some(0));
    assert!(
        busy.log_text().contains("cannot listen on"),
        "{}",
        busy.log_text()
    );
    let live = via_b.list_controllers().await.expect("controllers");
    assert_eq!(live.len(), 3, "only a, b and c are live: {live:?}");

    // The CLI lists the three, from any of them.
    let token = std::fs::read_to_string(dir.join("admin.token")).expect("token");
    let out = std::process::Command::new(BIN)
        .args(["controller", "list"])
        .env("NIMBUS_API", &c.api)
        .env("NIMBUS_TOKEN", token.trim())
        .env("NIMBUS_CA_CERT", dir.join(nimbus_pki::CA_CERT_FILE))
        .output()
        .expect("nimbus controller list");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in [&a, &b, &c] {
        assert!(listed.contains(&p.api), "{} missing from:\n{listed}", p.api);
    }
    assert!(listed.contains("(answered)"), "{listed}");

    register_host(&a, dir, "h1").await;

    // kill -9 of the owner mid-step: another controller finishes the drain.
    let op = client(&a, dir).drain_host("h1").await.expect("drain");
    let id = op.id.to_string();
    wait_owned(&via_b, &a, &id).await;
    let port_a = a.port();
    a.kill9().expect("kill -9");
    let killed = Instant::now();
    let done = wait_succeeded(&via_b, &id).await;
    eprintln!(
        "kill -9: operation finished by another controller {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(done.steps_done, done.steps_total);
    let took = [&b, &c]
        .iter()
        .any(|p| p.log_text().contains("took the operation over"));
    assert!(took, "a live controller says it took the operation over");

    // SIGSTOP of the owner past its lease: taken over; after SIGCONT nothing it writes lands.
    via_b.host_action("h1", "enable").await.expect("enable");
    let mut a2 = ControllerProcess::start_on(Path::new(BIN), dir, &db.url, port_a, TTL, &hold)
        .expect("a again");
    a2.wait_healthy().await.expect("a again up");
    let op = client(&a2, dir)
        .drain_host("h1")
        .await
        .expect("drain again");
    let id = op.id.to_string();
    wait_owned(&via_b, &a2, &id).await;
    a2.signal(Signal::SIGSTOP).expect("SIGSTOP");
    let done = wait_succeeded(&via_b, &id).await;
    eprintln!("SIGSTOP: operation finished by another controller");
    a2.signal(Signal::SIGCONT).expect("SIGCONT");
    wait_until(
        "the stalled owner to give the operation up",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { a2.log_text().contains("lease lost").then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: the stalled owner's log:\n{}", a2.log_text()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = operation(&via_b, &id).await;
    assert_eq!(after.state, OperationState::Succeeded);
    assert_eq!(
        after.updated_at, done.updated_at,
        "no write of the stalled owner landed"
    );
    assert_eq!(after.steps, done.steps);
    let h1 = via_b.host("h1").await.expect("host");
    assert!(!h1.enabled, "the drain's effect stands");
    drop((a2, b, c));
}

#[tokio::test]
async fn a_second_controller_on_sqlite_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let url = format!("sqlite://{}/nimbus.db", dir.display());
    let mut first = ControllerProcess::start(Path::new(BIN), dir, &url, TTL, &[]).expect("first");
    first.wait_healthy().await.expect("first up");
    let mut second = ControllerProcess::start(Path::new(BIN), dir, &url, TTL, &[]).expect("second");
    let code = second
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the second one exits");
    assert_ne!(code, Some(0));
    let log = second.log_text();
    assert!(
        log.contains("use PostgreSQL") || log.contains("PostgreSQL"),
        "{log}"
    );
}
