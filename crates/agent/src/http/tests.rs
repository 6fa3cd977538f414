//! Router tests without sockets: auth, error bodies, host inventory, define validation.

use super::*;
use crate::AgentConfig;
use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use http_body_util::BodyExt;
use nimbus_agent_api::{AgentErrorBody, HostInventory};
use tower::ServiceExt;

async fn test_agent(dir: &std::path::Path) -> Agent {
    let config = AgentConfig {
        name: "h1".into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise_url: "http://127.0.0.1:1".into(),
        controller_url: None,
        token: "secret".into(),
        state_dir: dir.to_path_buf(),
        accelerator: Some(nimbus_agent_api::Accelerator::Tcg),
        probe_image: None,
    };
    Agent::start(&config).await.expect("agent")
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

#[test]
fn token_comparison() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
}
