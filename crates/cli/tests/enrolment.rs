//! End to end: hosts enrol with one-time join tokens and talk to the controller over mutual
//! TLS only (issue 11, part 1).
//!
//! One cloud (`nimbus up`, which enrols its own host) with one real guest on host1, shared by
//! the scenarios:
//! - a second agent claiming host1's name is refused, the token it used stays usable, and
//!   host1 and its VM are untouched;
//! - a token enrols one host once (reuse refused), an expired one nothing, an agent
//!   advertising 0.0.0.0 is told to set --advertise-url, and one whose clock is far off is
//!   told to synchronise it (its token stays usable);
//! - a host's certificate registers only its own name at its own address; a certificate of
//!   another CA, no certificate with the old shared-token style bearer, and a removed
//!   (revoked) host's certificate get nothing; the agent API refuses any caller but the
//!   controller;
//! - every refusal is logged by the controller with its reason.
//!
//! The extra agents run the real `nimbus agent` command; each is given a port the test holds,
//! so it stops right after enrolment (it cannot serve) and never touches the host.

use nimbus_agent_api::{Accelerator, HostInventory, RegisterHost};
use nimbus_pki::{CloudCa, HostCredentials};
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{Cloud, CloudOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_enrol_once_and_speak_mutual_tls_only() {
    let opts = CloudOptions {
        hosts: 1,
        extra_args: Vec::new(),
    };
    let cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    create_instances(&cloud, &["real1"], "tiny").await;
    let client = cloud.client().expect("client");
    let real = instance(&client, "real1").await;
    let host1 = client.host("host1").await.expect("host1");
    let host1_url = host1.agent_url.clone();
    // The host's identity: the certificate of its state dir, enrolled by `nimbus up`.
    let cert = std::fs::read_to_string(cloud.host_dir("host1").join("host.crt")).expect("cert");
    let der = nimbus_pki::certs_from_pem(&cert).expect("pem");
    assert_eq!(
        host1.cert_fingerprint,
        Some(nimbus_pki::fingerprint(&der[0]))
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // Held for the whole test: the extra agents cannot listen here, so each stops right
    // after its enrolment.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let agent = Agents {
        cloud: &cloud,
        dir: dir.path(),
        port,
    };

    let token = join_token(&cloud, "1h");
    let out = agent.run("host1", &token, None);
    assert!(
        stderr(&out).contains("already enrolled"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        client.host("host1").await.expect("host1").agent_url,
        host1_url
    );

    // The refusal did not use the token up: it enrols host9, once.
    let out = agent.run("host9", &token, None);
    assert!(
        stderr(&out).contains("cannot listen"),
        "enrolled, then stopped: {}",
        stderr(&out)
    );
    let host9 = HostCredentials::new(&dir.path().join("host9"));
    assert!(host9.enrolled());
    let mode = std::fs::metadata(dir.path().join("host9/host.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the host key is private");
    let out = agent.run("host10", &token, None);
    assert!(stderr(&out).contains("already used"), "{}", stderr(&out));
    let expired = join_token(&cloud, "1s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = agent.run("host11", &expired, None);
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    let out = agent.run(
        "host12",
        &join_token(&cloud, "1h"),
        Some("https://0.0.0.0:7701"),
    );
    assert!(stderr(&out).contains("--advertise-url"), "{}", stderr(&out));
    // A host whose clock is 2 h behind is told to synchronise it; its token stays usable.
    let token = join_token(&cloud, "1h");
    let two_hours_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    let (status, message) =
        enrol_sent_at(&cloud, &dir.path().join("forged"), &token, two_hours_ago).await;
    assert_eq!(status, 400, "{message}");
    assert!(
        message.contains("7200 s behind") && message.contains("NTP"),
        "{message}"
    );
    let out = agent.run("host13", &token, None);
    assert!(
        stderr(&out).contains("cannot listen"),
        "enrolled: {}",
        stderr(&out)
    );

    certificates_speak_only_for_their_host(&cloud, &host9).await;
    only_the_controller_reaches_an_agent(&cloud, &host1_url).await;

    // The real host and its VM never noticed.
    let after = instance(&client, "real1").await;
    assert_eq!(after.host, real.host);
    assert_eq!(cloud.qemu_count(&real.id.to_string()), 1);
    assert_eq!(exec(&client, "real1", "echo alive").await.trim(), "alive");
    let log = cloud.log_tail(5000);
    for reason in [
        "enrolment refused",
        "already enrolled",
        "already used",
        "has expired",
        "synchronise the hosts' time",
        "agent call refused",
        "registration refused",
    ] {
        assert!(log.contains(reason), "the controller logs {reason:?}");
    }
}

/// Runs `nimbus agent` for extra hosts of the cloud.
struct Agents<'a> {
    cloud: &'a Cloud,
    dir: &'a Path,
    port: u16,
}

impl Agents<'_> {
    /// Runs an agent named `name` with `token` until it exits (bounded: it cannot serve).
    fn run(&self, name: &str, token: &str, advertise: Option<&str>) -> Output {
        let listen = format!("127.0.0.1:{}", self.port);
        let advertise = advertise.map_or_else(|| format!("https://{listen}"), str::to_string);
        let mut child = Command::new(BIN)
            .args(["agent", "--name", name, "--listen", &listen])
            .args(["--advertise-url", &advertise])
            .args(["--controller", &self.cloud.api()])
            .arg("--state-dir")
            .arg(self.dir.join(name))
            .env("NIMBUS_JOIN_TOKEN", token)
            .env("NIMBUS_ACCEL", "tcg")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nimbus agent");
        for _ in 0..600 {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("agent output");
        assert!(!out.status.success(), "the agent {name} stops: {out:?}");
        out
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn join_token(cloud: &Cloud, expires_in: &str) -> String {
    let out = cli_ok(cloud, &["host", "join-token", "--expires-in", expires_in]);
    out.trim().to_string()
}

/// An HTTP client of the cloud presenting `creds`' certificate (or none).
fn mtls(cloud: &Cloud, identity: Option<&nimbus_pki::TlsIdentity>) -> reqwest::Client {
    let ca = std::fs::read_to_string(cloud.ca_cert()).expect("ca");
    let tls = nimbus_pki::client_config(&ca, identity).expect("tls");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn registration(name: &str, agent_url: &str) -> RegisterHost {
    RegisterHost {
        agent_url: agent_url.into(),
        inventory: HostInventory {
            name: name.into(),
            cpus: 1,
            memory_mib: 1024,
            disk_gib: 10,
            accelerator: Accelerator::Tcg,
            qemu_version: "10.0.0".into(),
            agent_version: "test".into(),
            shared_storage: None,
            cpu_allocation_ratio: None,
            ram_allocation_ratio: None,
            ksm: None,
            image_cache: None,
            capabilities: nimbus_agent_api::capability::all(),
        },
    }
}

/// POSTs an enrolment of `host13` as if sent at `sent_at`; the status and the message.
async fn enrol_sent_at(
    cloud: &Cloud,
    dir: &Path,
    token: &str,
    sent_at: chrono::DateTime<chrono::Utc>,
) -> (u16, String) {
    std::fs::create_dir_all(dir).expect("state dir");
    let req = nimbus_agent_api::EnrolRequest {
        token: token.into(),
        name: "host13".into(),
        csr_pem: HostCredentials::new(dir)
            .new_request("host13")
            .expect("csr"),
        agent_url: "https://127.0.0.1:7701".into(),
        sent_at: Some(sent_at),
    };
    let url = format!("{}{}", cloud.api(), nimbus_agent_api::enrol::ENROL_PATH);
    let resp = mtls(cloud, None)
        .post(url)
        .json(&req)
        .send()
        .await
        .expect("enrol");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// POSTs a registration with `http`; the status, or `None` when TLS refused the client.
async fn register(cloud: &Cloud, http: &reqwest::Client, body: &RegisterHost) -> Option<u16> {
    let url = format!("{}/v1/internal/hosts/register", cloud.api());
    let resp = http
        .post(url)
        .bearer_auth("nmb_stolen_shared_agent_token")
        .json(body)
        .send()
        .await;
    resp.ok().map(|r| r.status().as_u16())
}

async fn certificates_speak_only_for_their_host(cloud: &Cloud, host9: &HostCredentials) {
    let own = mtls(cloud, Some(&host9.identity().expect("identity")));
    let own_url = "https://127.0.0.1:1".to_string();
    // Another host's name, or an address the certificate does not carry: forbidden.
    assert_eq!(
        register(cloud, &own, &registration("host1", &own_url)).await,
        Some(403)
    );
    let elsewhere = registration("host9", "https://10.9.9.9:7701");
    assert_eq!(register(cloud, &own, &elsewhere).await, Some(403));
    // A bearer token without a certificate (the old shared agent token): nothing.
    let anonymous = mtls(cloud, None);
    assert_eq!(
        register(
            cloud,
            &anonymous,
            &registration("host1", "https://127.0.0.1:1")
        )
        .await,
        Some(401)
    );
    // A certificate for host1 from another CA: the handshake or the call is refused.
    let other = tempfile::tempdir().expect("tempdir");
    let stranger_ca = CloudCa::load_or_create(other.path()).expect("ca");
    let stranger = HostCredentials::new(other.path());
    let csr = stranger.new_request("host1").expect("csr");
    let cert = stranger_ca
        .sign_host(&csr, "host1", &["127.0.0.1".into()])
        .expect("sign");
    stranger
        .save(&cert.cert_pem, stranger_ca.cert_pem())
        .expect("save");
    let forged = mtls(cloud, Some(&stranger.identity().expect("identity")));
    let status = register(cloud, &forged, &registration("host1", &own_url)).await;
    assert!(matches!(status, None | Some(401)), "{status:?}");
    // Removed: its certificate is revoked.
    cli_ok(cloud, &["host", "remove", "host9"]);
    let status = register(cloud, &own, &registration("host9", &own_url)).await;
    assert_eq!(status, Some(401), "a revoked certificate");
    let hosts = cloud
        .client()
        .expect("client")
        .list_hosts()
        .await
        .expect("hosts");
    assert_eq!(
        hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        ["host1"]
    );
}

/// The agent API answers the controller only: no plain HTTP, no TLS client without the
/// controller's certificate.
async fn only_the_controller_reaches_an_agent(cloud: &Cloud, agent_url: &str) {
    let plain = agent_url.replacen("https://", "http://", 1);
    let r = reqwest::Client::new()
        .get(format!("{plain}/agent/v1/vms"))
        .bearer_auth("nmb_stolen_shared_agent_token")
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP: {r:?}"
    );
    let r = mtls(cloud, None)
        .get(format!("{agent_url}/agent/v1/vms"))
        .send()
        .await;
    assert!(
        r.is_err(),
        "TLS without the controller's certificate: {r:?}"
    );
}
