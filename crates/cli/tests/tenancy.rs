//! End to end: tenancy through the real binary. One cloud with one host and one real guest
//! (TCG here) owned by project acme; another project's token must not see or touch it with
//! any verb. Quota, roles, revocation, expiry, audit, body limit and throttling are checked
//! at the API edge of the same cloud. The quota race's accepted creates use an image QEMU
//! refuses at once, so they end in `error` without booting: what the race proves is the
//! count of rows the controller accepted, read from its database.

use futures::StreamExt;
use nimbus_api::{
    AuditEntry, CreateInstance, CreatedToken, ErrorBody, ErrorCode, ImportImage, InstanceView,
    OperationView, ProjectView, QuotaView, TokenView,
};
use nimbus_client::{Client, ClientError};
use nimbus_store::{Scope, Store};
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{Cloud, CloudOptions};
use std::path::Path;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

fn json<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not the JSON expected ({e}): {text}"))
}

fn token(cloud: &Cloud, project: &str, role: &str, extra: &[&str]) -> CreatedToken {
    let mut args = vec![
        "token",
        "create",
        "--project",
        project,
        "--role",
        role,
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    json(&cli_ok(cloud, &args))
}

fn is_404(r: Result<impl std::fmt::Debug, ClientError>) -> bool {
    matches!(&r, Err(e) if e.status() == Some(404) && e.code() == Some(ErrorCode::NotFound))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_end_to_end() {
    let cloud = Cloud::start(
        Path::new(BIN),
        CloudOptions {
            hosts: 1,
            ..Default::default()
        },
    )
    .await
    .expect("start the cloud");
    let admin = cloud.client().expect("client");

    // An admin sets up two tenants.
    cli_ok(
        &cloud,
        &["project", "create", "acme", "--description", "ACME Corp"],
    );
    cli_ok(&cloud, &["project", "create", "beta"]);
    let projects: Vec<ProjectView> = json(&cli_ok(&cloud, &["project", "list", "-o", "json"]));
    let names: Vec<&str> = projects.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["acme", "beta", "default"]);
    let alice = token(&cloud, "acme", "member", &["--name", "alice"]);
    let viewer = token(&cloud, "acme", "reader", &[]);
    let bob = token(&cloud, "beta", "member", &[]);
    assert!(alice.secret.starts_with("nmb_"));
    let listed = cli_ok(&cloud, &["token", "list", "--project", "acme"]);
    assert!(
        listed.contains("alice") && !listed.contains(&alice.secret),
        "{listed}"
    );
    cli_ok(
        &cloud,
        &[
            "quota",
            "set",
            "acme",
            "--instances",
            "3",
            "--vcpus",
            "16",
            "--memory-mib",
            "32768",
            "--disk-gib",
            "200",
            "--snapshots",
            "20",
        ],
    );
    let q: QuotaView = json(&cli_ok_as(
        &cloud,
        &alice.secret,
        &["quota", "show", "acme", "-o", "json"],
    ));
    assert_eq!(
        (q.limits.instances, q.limits.vcpus, q.limits.snapshots),
        (Some(3), Some(16), Some(20))
    );
    assert_eq!(q.usage.instances, 0);

    // The tenant boots a real guest and uses it.
    cli_ok_as(
        &cloud,
        &alice.secret,
        &[
            "instance", "create", "web1", "--flavor", "tiny", "--image", "default", "--wait",
        ],
    );
    let acme = cloud.client_as(&alice.secret);
    assert_eq!(
        exec(&acme, "web1", "echo hi-$((6*7))").await.trim(),
        "hi-42"
    );
    let web1 = acme.instance("web1").await.expect("web1");
    assert_eq!(web1.project, "acme");

    other_tenant_sees_and_touches_nothing(&cloud, &web1).await;
    roles_are_enforced(&cloud, &alice, &viewer, &bob).await;
    quota_race_at_the_edge(&cloud, &admin, &alice).await;
    revocation_and_expiry_take_effect_at_once(&cloud, &viewer).await;
    mutating_calls_are_audited(&cloud).await;
    oversized_body_is_413_json(&cloud).await;
    projects_with_instances_cannot_be_deleted(&cloud, &alice).await;
    // Last: it blocks this address for a minute.
    auth_failures_are_throttled(&cloud).await;
}

async fn other_tenant_sees_and_touches_nothing(cloud: &Cloud, web1: &InstanceView) {
    let acme = cloud
        .client()
        .expect("admin")
        .with_project(Some("acme".into()));
    let op = acme.list_operations(10).await.expect("ops")[0]
        .id
        .to_string();
    let bob_token = token(cloud, "beta", "member", &[]).secret;
    let bob = cloud.client_as(&bob_token);
    let id = web1.id.to_string();
    for target in ["web1", id.as_str()] {
        assert!(is_404(bob.instance(target).await), "show {target}");
        for action in ["start", "stop", "reboot"] {
            assert!(
                is_404(bob.instance_action(target, action).await),
                "{action} {target}"
            );
        }
        assert!(is_404(bob.exec(target, "true").await), "exec {target}");
        assert!(is_404(bob.console_log(target, 0).await), "log {target}");
        assert!(is_404(bob.delete_instance(target).await), "delete {target}");
        // The console websocket is refused before any upgrade.
        let mut req = bob
            .console_url(target)
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {bob_token}").parse().expect("header"),
        );
        let connector = nimbus_test_utils::console_connector(&bob);
        match tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
            .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 404, "console {target}")
            }
            other => panic!(
                "console of another project's instance: {:?}",
                other.map(|_| ())
            ),
        }
    }
    assert!(is_404(bob.operation(&op).await), "operation show");
    assert!(is_404(bob.cancel_operation(&op).await), "operation cancel");
    assert!(is_404(bob.migration(&op).await), "migration show");
    assert!(bob.list_instances().await.expect("list").is_empty());
    assert!(bob.list_operations(50).await.expect("ops").is_empty());
    let e = cli_err_as(cloud, &bob_token, &["instance", "show", "web1"]);
    assert!(e.contains("not found") && !e.contains("acme"), "{e}");

    // Nothing happened to it: still running, no cancel, same guest.
    let still = acme.instance("web1").await.expect("web1");
    assert_eq!((still.state, still.operation), (web1.state, None));
    assert!(!acme.operation(&op).await.expect("op").cancel_requested);
    assert_eq!(exec(&acme, "web1", "echo alive").await.trim(), "alive");
}

async fn roles_are_enforced(
    cloud: &Cloud,
    alice: &CreatedToken,
    viewer: &CreatedToken,
    bob: &CreatedToken,
) {
    let reader = &viewer.secret;
    assert!(cli_ok_as(cloud, reader, &["instance", "list"]).contains("web1"));
    cli_ok_as(cloud, reader, &["instance", "log", "web1"]);
    let e = cli_err_as(cloud, reader, &["instance", "stop", "web1"]);
    assert!(e.contains("reader token may only read"), "{e}");
    let e = cli_err_as(cloud, reader, &["instance", "exec", "web1", "--", "true"]);
    assert!(e.contains("reader token may only read"), "{e}");
    let e = cli_err_as(
        cloud,
        reader,
        &[
            "instance", "create", "r1", "--flavor", "tiny", "--image", "default",
        ],
    );
    assert!(e.contains("reader token may only read"), "{e}");

    let member = &alice.secret;
    cli_ok_as(cloud, member, &["flavor", "list"]);
    cli_ok_as(cloud, member, &["image", "list"]);
    for args in [
        &[
            "flavor",
            "create",
            "x",
            "--vcpus",
            "1",
            "--memory-mib",
            "256",
            "--disk-gib",
            "1",
        ][..],
        &["flavor", "delete", "tiny"],
        &["host", "list"],
        &["host", "disable", "host1"],
        &["instance", "migrate", "web1"],
        &["project", "create", "mine"],
        &["project", "list"],
        &["token", "create", "--role", "admin"],
        &["quota", "set", "acme", "--instances", "100"],
        &["audit", "list"],
    ] {
        let e = cli_err_as(cloud, member, args);
        assert!(e.contains("needs an admin token"), "{args:?}: {e}");
    }
    // A public image of another project is visible to members, not deletable by them.
    let e = cli_err_as(cloud, member, &["image", "delete", "default"]);
    assert!(
        e.contains("only its project or an admin may delete it"),
        "{e}"
    );
    let e = cli_err_as(cloud, member, &["instance", "list", "--project", "beta"]);
    assert!(
        e.contains("only an admin token may act in another project"),
        "{e}"
    );
    let e = cli_err_as(cloud, &bob.secret, &["quota", "show", "acme"]);
    assert!(e.contains("not found"), "{e}");
    // An admin acts in acme with --project.
    let listed: Vec<InstanceView> = json(&cli_ok(
        cloud,
        &["instance", "list", "--project", "acme", "-o", "json"],
    ));
    assert_eq!(listed.len(), 1);
    assert!(
        cli_ok(cloud, &["instance", "list"]).lines().count() == 1,
        "the admin's own project is empty"
    );
}

async fn quota_race_at_the_edge(cloud: &Cloud, admin: &Client, alice: &CreatedToken) {
    let bogus = cloud.data_dir().join("not-a-kernel");
    std::fs::write(&bogus, b"not a kernel").expect("write");
    admin
        .import_image(&ImportImage {
            name: "broken".into(),
            kernel: Some(bogus.display().to_string()),
            initrd: None,
            cmdline: None,
            disk: None,
            ready_marker: None,
        })
        .await
        .expect("import");
    // acme holds 1 of 3 instances: of 20 concurrent creates exactly 2 may pass.
    let acme = cloud.client_as(&alice.secret);
    let creates = (0..20).map(|i| {
        let acme = acme.clone();
        async move {
            acme.create_instance(&CreateInstance {
                name: format!("race{i}"),
                flavor: Some("tiny".into()),
                image: Some("broken".into()),
                from_snapshot: None,
                ..Default::default()
            })
            .await
        }
    });
    let results: Vec<Result<OperationView, ClientError>> = futures::stream::iter(creates)
        .buffer_unordered(20)
        .collect()
        .await;
    let accepted: Vec<&OperationView> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(accepted.len(), 2, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(
                (e.status(), e.code()),
                (Some(403), Some(ErrorCode::QuotaExceeded)),
                "{e}"
            );
            assert_eq!(
                e.to_string(),
                "project acme: instances quota 3 reached (3 in use); ask an admin to raise it with `nimbus quota set acme`"
            );
        }
    }
    let db = format!("sqlite://{}/nimbus.db", cloud.data_dir().display());
    let store = Store::connect(&db)
        .await
        .expect("open the controller's database");
    let rows = store
        .list_instances(&Scope::project("acme"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 3, "the database holds exactly the quota");
    let q: QuotaView = json(&cli_ok(cloud, &["quota", "show", "acme", "-o", "json"]));
    assert_eq!(q.usage.instances, 3);
    for op in accepted {
        acme.wait_operation(&op.id.to_string(), Duration::from_secs(120), |_| {})
            .await
            .expect("create ends");
        cli_ok_as(
            cloud,
            &alice.secret,
            &["instance", "delete", &op.target_name, "--wait"],
        );
    }
    assert_eq!(
        store
            .list_instances(&Scope::project("acme"))
            .await
            .expect("rows")
            .len(),
        1
    );
}

async fn revocation_and_expiry_take_effect_at_once(cloud: &Cloud, viewer: &CreatedToken) {
    let reader = cloud.client_as(&viewer.secret);
    reader.list_instances().await.expect("valid");
    cli_ok(cloud, &["token", "revoke", &viewer.token.id]);
    let e = reader.list_instances().await.expect_err("revoked");
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("revoked"), "{e}");
    let listed: Vec<TokenView> = json(&cli_ok(
        cloud,
        &["token", "list", "--project", "acme", "-o", "json"],
    ));
    assert!(listed
        .iter()
        .any(|t| t.id == viewer.token.id && t.revoked_at.is_some()));

    let short = token(cloud, "acme", "reader", &["--expires-in", "2s"]);
    let client = cloud.client_as(&short.secret);
    client.list_instances().await.expect("not expired yet");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let e = client.list_instances().await.expect_err("expired");
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("expired"), "{e}");
}

async fn mutating_calls_are_audited(cloud: &Cloud) {
    let entries: Vec<AuditEntry> = json(&cli_ok(
        cloud,
        &[
            "audit",
            "list",
            "--project",
            "acme",
            "--since",
            "1h",
            "-o",
            "json",
        ],
    ));
    let create = entries
        .iter()
        .find(|e| e.action == "POST /v1/instances" && e.target.as_deref() == Some("web1"))
        .expect("web1's create is audited");
    assert_eq!(
        (create.status, create.token_name.as_deref()),
        (202, Some("alice"))
    );
    assert_eq!(create.project.as_deref(), Some("acme"));
    assert_eq!(create.client_ip.as_deref(), Some("127.0.0.1"));
    assert!(entries
        .iter()
        .any(|e| e.status == 403 && e.action == "POST /v1/instances/{instance}/stop"));
    // 18 quota refusals of the race and the reader's create.
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.status == 403 && e.action == "POST /v1/instances")
            .count(),
        19
    );
    assert!(entries.iter().all(|e| e.project.as_deref() == Some("acme")));
    assert!(
        !entries.iter().any(|e| e.method == "GET"),
        "reads are not audited"
    );
    let table = cli_ok(cloud, &["audit", "list", "--limit", "5"]);
    assert_eq!(table.lines().count(), 6, "{table}");
}

async fn oversized_body_is_413_json(cloud: &Cloud) {
    let admin = cloud.client().expect("client");
    let big = format!(r#"{{"name":"x","description":"{}"}}"#, "a".repeat(2 << 20));
    let (status, body) = admin
        .raw(reqwest::Method::POST, "/v1/projects", Some(&big))
        .await
        .expect("raw");
    assert_eq!(status, 413);
    let e: ErrorBody = json(&body);
    assert_eq!(e.code, ErrorCode::PayloadTooLarge);
}

async fn projects_with_instances_cannot_be_deleted(cloud: &Cloud, alice: &CreatedToken) {
    let e = cli_err(cloud, &["project", "delete", "acme"]);
    assert!(e.contains("still owns 1 instance"), "{e}");
    cli_ok_as(
        cloud,
        &alice.secret,
        &["instance", "delete", "web1", "--wait"],
    );
    assert!(cloud.qemu_pids().is_empty(), "the guest is gone");
    cli_ok(cloud, &["project", "delete", "acme"]);
    let e = cloud
        .client_as(&alice.secret)
        .list_instances()
        .await
        .expect_err("revoked with its project");
    assert_eq!(e.status(), Some(401));
}

async fn auth_failures_are_throttled(cloud: &Cloud) {
    let http = cloud.http().expect("http client");
    let url = format!("{}/v1/instances", cloud.api());
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = http
            .get(&url)
            .bearer_auth("nmb_guess")
            .send()
            .await
            .expect("send");
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("secs");
            assert!((1..=60).contains(&wait), "{wait}");
            let e: ErrorBody = json(&r.text().await.expect("body"));
            assert_eq!(e.code, ErrorCode::TooManyRequests);
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses.len() <= 11,
        "at most 10 failures per minute: {statuses:?}"
    );
    // The admin's valid token is still served from this address: the throttle never
    // refuses a valid token, so a bad client cannot lock the operator out.
    let r = http
        .get(&url)
        .bearer_auth(cloud.token().expect("token"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
}
