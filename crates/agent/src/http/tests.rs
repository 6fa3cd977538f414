//! Router tests without sockets: auth, error bodies, host inventory, define validation,
//! define and delete with shared storage.

use super::*;
use crate::AgentConfig;
use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use http_body_util::BodyExt;
use nimbus_agent_api::{AgentErrorBody, HostInventory};
use tower::ServiceExt;

async fn test_agent(dir: &std::path::Path) -> Agent {
    Agent::start(&config(dir)).await.expect("agent")
}

fn config(dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        advertise_url: "http://127.0.0.1:1".into(),
        ..AgentConfig::in_process(
            "h1",
            "127.0.0.1:0".parse().expect("addr"),
            dir.to_path_buf(),
            "secret",
        )
    }
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Vec<u8>) {
    let mut req = HttpRequest::builder()
        .method(method)
        .uri(format!("{AGENT_API_PREFIX}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, bytes.to_vec())
}

fn error_body(bytes: &[u8]) -> AgentErrorBody {
    serde_json::from_slice(bytes).expect("JSON error body")
}

#[tokio::test]
async fn auth_errors_and_inventory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = test_agent(dir.path()).await;
    let app = router(agent.clone());

    let (status, body) = call(&app, "GET", "/host", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_body(&body).code, "unauthorized");
    let (status, _) = call(&app, "GET", "/host", Some("wrong"), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = call(&app, "GET", "/host", Some("secret"), "").await;
    assert_eq!(status, StatusCode::OK);
    let inv: HostInventory = serde_json::from_slice(&body).expect("inventory");
    assert_eq!(inv.name, "h1");
    assert_eq!(inv.accelerator, nimbus_agent_api::Accelerator::Tcg);
    assert!(inv.cpus >= 1 && inv.memory_mib > 0);
    assert!(inv.qemu_version.starts_with(|c: char| c.is_ascii_digit()));

    let (status, body) = call(&app, "GET", "/vms", Some("secret"), "").await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, b"[]".as_slice())
    );

    let id = uuid::Uuid::new_v4();
    let (status, body) = call(&app, "GET", &format!("/vms/{id}"), Some("secret"), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_body(&body).code, "not_found");
    let (status, _) = call(&app, "DELETE", &format!("/vms/{id}"), Some("secret"), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = call(&app, "GET", "/vms/not-a-uuid", Some("secret"), "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_body(&body).code, "bad_request");

    let (status, body) = call(
        &app,
        "PUT",
        &format!("/vms/{id}"),
        Some("secret"),
        "{\"id\": 1}",
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(error_body(&body).code, "bad_request");

    let (status, body) = call(&app, "POST", &format!("/vms/{id}/stop"), Some("secret"), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_body(&body).code, "not_found");

    agent.shutdown().await;
}

/// With shared storage the disk lives in `<shared>/<id>/`, linked from the VM directory; a
/// delete keeping the disk leaves it there, a plain delete removes it.
/// `PUT /firewall` on an agent without host networking (loopback, as here): authenticated,
/// validated, and answered as not enforced (its VMs have no NICs). Enforcement itself is
/// tested on real namespaces in `tests/secgroups.rs`.
#[tokio::test]
async fn firewall_is_accepted_and_says_whether_it_is_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = router(test_agent(dir.path()).await);
    let fw = r#"{"ports":[{"instance_id":"0a1b2c3d-4e00-0000-0000-000000000000","nic":0,"vni":4201,"rules":[{"direction":"ingress",
        "protocol":"tcp","port_min":22,"port_max":22,"remote":{"cidr":"0.0.0.0/0"}}]}],
        "groups":[]}"#;
    let (status, _) = call(&app, "PUT", "/firewall", None, fw).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(&app, "PUT", "/firewall", Some("secret"), fw).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let applied: nimbus_agent_api::FirewallApplied = serde_json::from_slice(&body).expect("json");
    assert_eq!((applied.ports, applied.enforced), (1, false));
    let bad = fw.replace("ingress", "sideways");
    let (status, _) = call(&app, "PUT", "/firewall", Some("secret"), &bad).await;
    assert!(status.is_client_error(), "{status}");
}

#[tokio::test]
async fn shared_storage_define_and_delete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shared = tmp.path().join("shared");
    let mut cfg = config(&tmp.path().join("state"));
    cfg.shared_storage = Some(shared.clone());
    let err = Agent::start(&cfg)
        .await
        .err()
        .expect("missing directory refused");
    assert!(
        format!("{err:#}").contains(&shared.display().to_string()),
        "{err:#}"
    );
    std::fs::create_dir(&shared).expect("mkdir");
    let agent = Agent::start(&cfg).await.expect("agent");
    let app = router(agent.clone());
    assert_eq!(
        agent.inventory().shared_storage,
        Some(shared.display().to_string())
    );

    let base = tmp.path().join("base.qcow2");
    nimbus_qemu::img::create_blank(&base, 64 << 20)
        .await
        .expect("base");
    let define = |id: uuid::Uuid| {
        serde_json::json!({
            "id": id, "name": "t", "vcpus": 1, "memory_mib": 64,
            "image": { "name": "b", "base_disk": base },
            "disk": { "size_gib": 1 }, "nics": []
        })
        .to_string()
    };
    let vm_disk = |id: uuid::Uuid| tmp.path().join(format!("state/vms/{id}/disk.qcow2"));
    for keep_disk in [true, false] {
        let id = uuid::Uuid::new_v4();
        let path = format!("/vms/{id}");
        let (status, body) = call(&app, "PUT", &path, Some("secret"), &define(id)).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let status: nimbus_agent_api::VmStatus = serde_json::from_slice(&body).expect("status");
        let disk = shared.join(id.to_string()).join("disk.qcow2");
        assert_eq!(status.disk_path.as_deref(), Some(disk.as_path()));
        assert!(disk.is_file() && status.disk_allocated_bytes > 0);
        assert_eq!(std::fs::read_link(vm_disk(id)).expect("link"), disk);
        let info = nimbus_qemu::img::info(&disk).await.expect("info");
        assert_eq!(info.chain.len(), 2, "an overlay on the base");

        let query = if keep_disk { "?keep_disk=true" } else { "" };
        let (status, _) = call(
            &app,
            "DELETE",
            &format!("{path}{query}"),
            Some("secret"),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(!tmp.path().join(format!("state/vms/{id}")).exists());
        assert_eq!(disk.is_file(), keep_disk, "keep_disk={keep_disk}");
        assert_eq!(shared.join(id.to_string()).exists(), keep_disk);
        if keep_disk {
            // A disk in shared storage that no VM here links to may be another host's.
            let (status, body) = call(&app, "PUT", &path, Some("secret"), &define(id)).await;
            assert_eq!(status, StatusCode::CONFLICT);
            assert_eq!(error_body(&body).code, "conflict");
            assert!(disk.is_file(), "left alone");
            assert!(!tmp.path().join(format!("state/vms/{id}")).exists());
        }
    }
    agent.shutdown().await;
}

#[test]
fn token_comparison() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
}

/// A migration command of an older owner epoch than one already seen for the same operation
/// is refused as stale (another controller took the operation over); a newer one is not.
#[tokio::test]
async fn a_stale_owners_migration_command_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent = test_agent(&tmp.path().join("state")).await;
    let app = router(agent);
    let base = tmp.path().join("base.qcow2");
    nimbus_qemu::img::create_blank(&base, 64 << 20)
        .await
        .expect("base");
    let id = uuid::Uuid::new_v4();
    let define = serde_json::json!({
        "id": id, "name": "t", "vcpus": 1, "memory_mib": 64,
        "image": { "name": "b", "base_disk": base },
        "disk": { "size_gib": 1 }, "nics": []
    });
    let (status, body) = call(
        &app,
        "PUT",
        &format!("/vms/{id}"),
        Some("secret"),
        &define.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let op = uuid::Uuid::new_v4();
    let start = |epoch: u64| {
        serde_json::json!({
            "target": { "migration_uri": "tcp:127.0.0.1:1", "nbd": null },
            "policy": nimbus_agent_api::MigrationPolicy::default(),
            "migration_id": op, "owner_epoch": epoch
        })
        .to_string()
    };
    let path = format!("/vms/{id}/migration/start");
    // Epoch 2 passes the owner check (then fails: the VM is not running).
    let (status, body) = call(&app, "POST", &path, Some("secret"), &start(2)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        error_body(&body).message.contains("not running"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Epoch 1 of the same operation is a stale owner.
    let (status, body) = call(&app, "POST", &path, Some("secret"), &start(1)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        error_body(&body).message.contains("stale owner"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // A newer epoch still passes.
    let (_, body) = call(&app, "POST", &path, Some("secret"), &start(3)).await;
    assert!(
        error_body(&body).message.contains("not running"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    call(&app, "DELETE", &format!("/vms/{id}"), Some("secret"), "").await;
}
