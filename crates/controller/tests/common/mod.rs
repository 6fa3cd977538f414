//! A controller without agents for API tests: the real router and a real SQLite store in a
//! temporary directory, called without a socket.
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nimbus_agent_api::{Accelerator, HostInventory, RegisterHost};
use nimbus_api::{CreatedToken, ErrorBody, ErrorCode};
use nimbus_controller::http::peer::ClientCert;
use nimbus_controller::{http::router, App, ControllerConfig};
use std::net::SocketAddr;
use tower::ServiceExt;

pub struct Fixture {
    pub app: App,
    pub token: String,
    pub dir: tempfile::TempDir,
}

pub async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ControllerConfig::new(dir.path().to_path_buf());
    let app = App::open(config).await.expect("open");
    app.bootstrap().await.expect("bootstrap");
    let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("token");
    Fixture { app, token, dir }
}

pub async fn call(
    f: &Fixture,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, String) {
    let r = call_from(f, None, method, uri, token, body).await;
    (r.status, r.body)
}

/// A response with what the tenancy tests look at.
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
    pub retry_after: Option<String>,
    /// The `next-page-token` header of a paged listing.
    pub next_page_token: Option<String>,
}

/// Calls the router as if from the TCP peer `peer` (as `axum::serve` with connect info
/// tells the handlers).
pub async fn call_from(
    f: &Fixture,
    peer: Option<SocketAddr>,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    call_with(f, peer, None, method, uri, token, body).await
}

/// Calls the router as host `host`'s agent: with the identity its client certificate
/// would give after the TLS handshake (no handshake in-process).
pub async fn call_as_host(
    f: &Fixture,
    host: &str,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, String) {
    let cert = ClientCert::host(host, &["127.0.0.1"]);
    let r = call_with(f, None, Some(cert), method, uri, None, body).await;
    (r.status, r.body)
}

async fn call_with(
    f: &Fixture,
    peer: Option<SocketAddr>,
    cert: Option<ClientCert>,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    if let Some(p) = peer {
        req.extensions_mut().insert(ConnectInfo(p));
    }
    if let Some(c) = cert {
        req.extensions_mut().insert(c);
    }
    let resp = router(f.app.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    // A block, so the closure's borrow of `resp` ends before the body is awaited.
    let (retry_after, next_page_token) = {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (
            header("retry-after"),
            header(nimbus_api::NEXT_PAGE_TOKEN_HEADER),
        )
    };
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        body: String::from_utf8_lossy(&bytes).to_string(),
        retry_after,
        next_page_token,
    }
}

pub fn error(body: &str) -> ErrorBody {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an error body ({e}): {body}"))
}

pub async fn register(f: &Fixture, name: &str, memory_mib: u64) {
    let reg = RegisterHost {
        agent_url: "https://127.0.0.1:9".into(),
        inventory: HostInventory {
            name: name.into(),
            cpus: 2,
            memory_mib,
            disk_gib: 50,
            accelerator: Accelerator::Tcg,
            qemu_version: "10.0.2".into(),
            agent_version: "test".into(),
            shared_storage: None,
            cpu_allocation_ratio: None,
            ram_allocation_ratio: None,
            ksm: None,
            image_cache: None,
            capabilities: nimbus_agent_api::capability::all(),
        },
    };
    let body = serde_json::to_string(&reg).expect("json");
    let (s, b) = call_as_host(f, name, "POST", "/v1/internal/hosts/register", Some(&body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// Sends `body` (a stream of chunks) to the router as an image upload announcing
/// `length` bytes.
pub async fn upload_stream(
    f: &Fixture,
    uri: &str,
    token: &str,
    length: u64,
    body: Body,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/octet-stream")
        .header("content-length", length.to_string())
        .body(body)
        .expect("request");
    let resp = router(f.app.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).to_string())
}

/// Uploads `bytes` whole.
pub async fn upload(f: &Fixture, uri: &str, token: &str, bytes: &[u8]) -> (StatusCode, String) {
    let body = Body::from(bytes.to_vec());
    upload_stream(f, uri, token, bytes.len() as u64, body).await
}

/// A GET by host `host`'s agent whose answer is bytes (an image).
pub async fn get_bytes_as_host(f: &Fixture, uri: &str, host: &str) -> (StatusCode, Vec<u8>) {
    get_bytes_as(f, uri, ClientCert::host(host, &["127.0.0.1"])).await
}

/// GET `uri` on a connection whose verified client certificate is `cert`.
pub async fn get_bytes_as(f: &Fixture, uri: &str, cert: ClientCert) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder()
        .method("GET")
        .uri(uri)
        .body(Body::empty())
        .expect("request");
    req.extensions_mut().insert(cert);
    let resp = router(f.app.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, bytes.to_vec())
}

/// A controller with one host, image `img` and projects `acme` and `globex`.
pub async fn setup() -> Fixture {
    let f = fixture().await;
    register(&f, "host1", 65536).await;
    let exe = std::env::current_exe().expect("exe").display().to_string();
    let img = format!(r#"{{"name":"img","kernel":"{exe}"}}"#);
    let (s, body) = call(&f, "POST", "/v1/images", Some(&f.token), Some(&img)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    for p in ["acme", "globex"] {
        let (s, b) = call(
            &f,
            "POST",
            "/v1/projects",
            Some(&f.token),
            Some(&format!(r#"{{"name":"{p}"}}"#)),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    f
}

/// A new token of `project` with `role`.
pub async fn member(f: &Fixture, project: &str, role: &str) -> String {
    let uri = format!("/v1/tokens?project={project}");
    let body = format!(r#"{{"role":"{role}"}}"#);
    let (s, b) = call(f, "POST", &uri, Some(&f.token), Some(&body)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    serde_json::from_str::<CreatedToken>(&b)
        .expect("token")
        .secret
}

/// Calls and expects `status`; for errors also `code`. Answers the body.
pub async fn expect(
    f: &Fixture,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<&str>,
    status: StatusCode,
    code: Option<ErrorCode>,
) -> String {
    let (s, b) = call(f, method, uri, Some(token), body).await;
    assert_eq!(s, status, "{method} {uri} {body:?}: {b}");
    if let Some(code) = code {
        assert_eq!(error(&b).code, code, "{b}");
    }
    b
}
