//! API behaviour without agents: the real router and a real SQLite store, no socket. The
//! hosts here are registered through the internal route but no agent answers (nothing in
//! these tests needs one: they check validation, auth, errors and placement refusals).

mod common;

#[path = "api/groups.rs"]
mod groups;

use axum::http::StatusCode;
use common::{call, error, fixture, register};
use nimbus_api::{ErrorCode, FlavorView};

#[tokio::test]
async fn health_and_openapi_need_no_token() {
    let f = fixture().await;
    assert_eq!(
        call(&f, "GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
    let (s, body) = call(&f, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("/v1/instances"));
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_json() {
    let f = fixture().await;
    for token in [None, Some("nmb_nope")] {
        let (s, body) = call(&f, "GET", "/v1/instances", token, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(error(&body).code, ErrorCode::Unauthorized);
    }
    let (s, _) = call(
        &f,
        "POST",
        "/v1/internal/hosts/register",
        Some(&f.token),
        Some("{}"),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the admin token is not the agent token"
    );
}

#[tokio::test]
async fn malformed_json_and_unknown_routes_get_error_bodies() {
    let f = fixture().await;
    let (s, body) = call(&f, "POST", "/v1/flavors", Some(&f.token), Some("{not json")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error(&body).message.contains("invalid JSON"), "{body}");
    let (s, body) = call(
        &f,
        "POST",
        "/v1/flavors",
        Some(&f.token),
        Some("{\"name\": \"x\"}"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "missing fields: {body}");
    let (s, body) = call(&f, "GET", "/v1/nothing", Some(&f.token), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error(&body).code, ErrorCode::NotFound);
}

#[tokio::test]
async fn default_flavors_and_flavor_validation() {
    let f = fixture().await;
    let (_, body) = call(&f, "GET", "/v1/flavors", Some(&f.token), None).await;
    let flavors: Vec<FlavorView> = serde_json::from_str(&body).expect("flavors");
    let names: Vec<&str> = flavors.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["tiny", "small", "medium", "large"]);
    let bad = [
        r#"{"name":"Big","vcpus":1,"memory_mib":512,"disk_gib":1}"#,
        r#"{"name":"big","vcpus":0,"memory_mib":512,"disk_gib":1}"#,
        r#"{"name":"big","vcpus":1,"memory_mib":1,"disk_gib":1}"#,
    ];
    for b in bad {
        let (s, body) = call(&f, "POST", "/v1/flavors", Some(&f.token), Some(b)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}: {body}");
    }
    let (s, body) = call(
        &f,
        "POST",
        "/v1/flavors",
        Some(&f.token),
        Some(r#"{"name":"small","vcpus":1,"memory_mib":512,"disk_gib":1}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn create_without_hosts_or_capacity_is_refused_and_leaves_nothing() {
    let f = fixture().await;
    // An image needs real files; use this test binary as a stand-in kernel file.
    let exe = std::env::current_exe().expect("exe").display().to_string();
    let img = format!(r#"{{"name":"img","kernel":"{exe}"}}"#);
    let (s, body) = call(&f, "POST", "/v1/images", Some(&f.token), Some(&img)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, body) = call(
        &f,
        "POST",
        "/v1/images",
        Some(&f.token),
        Some(r#"{"name":"img2","kernel":"relative/path"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");

    let create = r#"{"name":"web1","flavor":"small","image":"img"}"#;
    let (s, body) = call(&f, "POST", "/v1/instances", Some(&f.token), Some(create)).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let e = error(&body);
    assert_eq!(e.code, ErrorCode::NoCapacity);
    assert!(
        e.message.contains("no host is up and enabled"),
        "{}",
        e.message
    );

    register(&f, "host1", 1024).await;
    let big = r#"{"name":"web1","flavor":"large","image":"img"}"#;
    let (s, body) = call(&f, "POST", "/v1/instances", Some(&f.token), Some(big)).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let msg = error(&body).message;
    assert!(
        msg.contains("no host has 4096 MiB of memory free; largest free: 8 vCPUs, 1024 MiB memory"),
        "{msg}"
    );

    let (s, body) = call(&f, "POST", "/v1/hosts/host1/disable", Some(&f.token), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = call(&f, "POST", "/v1/instances", Some(&f.token), Some(create)).await;
    assert_eq!(
        (s, error(&body).code),
        (StatusCode::CONFLICT, ErrorCode::NoCapacity)
    );

    let (_, body) = call(&f, "GET", "/v1/instances", Some(&f.token), None).await;
    assert_eq!(body, "[]");
    let (_, body) = call(&f, "GET", "/v1/operations", Some(&f.token), None).await;
    assert_eq!(body, "[]");
}

#[tokio::test]
async fn unknown_flavor_image_and_bad_names() {
    let f = fixture().await;
    let cases = [
        (
            r#"{"name":"web1","flavor":"nope","image":"img"}"#,
            StatusCode::NOT_FOUND,
            "flavor \"nope\" not found",
        ),
        (
            r#"{"name":"web1","flavor":"small","image":"nope"}"#,
            StatusCode::NOT_FOUND,
            "image \"nope\" not found",
        ),
        (
            r#"{"name":"-x","flavor":"small","image":"nope"}"#,
            StatusCode::BAD_REQUEST,
            "invalid instance name",
        ),
    ];
    for (body, status, text) in cases {
        let (s, resp) = call(&f, "POST", "/v1/instances", Some(&f.token), Some(body)).await;
        assert_eq!(s, status, "{resp}");
        assert!(error(&resp).message.contains(text), "{resp}");
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let f = fixture().await;
    register(&f, "host1", 2048).await;
    // They name every project and host: a token is needed, an admin's or a metrics one.
    let (s, body) = call(&f, "GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let (s, body) = call(
        &f,
        "POST",
        "/v1/tokens",
        Some(&f.token),
        Some(r#"{"role":"metrics"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let scraper: nimbus_api::CreatedToken = serde_json::from_str(&body).expect("token");
    let (s, body) = call(&f, "GET", "/v1/instances", Some(&scraper.secret), None).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a metrics token reads nothing else: {body}"
    );
    let (s, _) = call(&f, "GET", "/metrics", Some(&f.token), None).await;
    assert_eq!(s, StatusCode::OK, "an admin may read them");
    let (s, body) = call(&f, "GET", "/metrics", Some(&scraper.secret), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("nimbus_host_up{host=\"host1\"} 1"), "{body}");
    assert!(
        body.contains("nimbus_host_memory_mib{host=\"host1\"} 2048"),
        "{body}"
    );
}

#[tokio::test]
async fn snapshot_routes_answer_with_error_bodies() {
    let f = fixture().await;
    let (s, body) = call(&f, "GET", "/v1/snapshots", Some(&f.token), None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "[]"));
    let cases = [
        (
            "POST",
            "/v1/snapshots",
            Some(r#"{"instance":"nope"}"#),
            StatusCode::NOT_FOUND,
            "instance \"nope\" not found",
        ),
        (
            "GET",
            "/v1/snapshots?instance=nope",
            None,
            StatusCode::NOT_FOUND,
            "instance \"nope\" not found",
        ),
        (
            "GET",
            "/v1/snapshots/s1",
            None,
            StatusCode::NOT_FOUND,
            "nimbus snapshot list",
        ),
        (
            "POST",
            "/v1/snapshots/s1/restore",
            None,
            StatusCode::NOT_FOUND,
            "snapshot \"s1\" not found",
        ),
        (
            "DELETE",
            "/v1/snapshots/s1",
            None,
            StatusCode::NOT_FOUND,
            "snapshot \"s1\" not found",
        ),
        (
            "POST",
            "/v1/instances",
            Some(r#"{"name":"web2","from_snapshot":"s1"}"#),
            StatusCode::NOT_FOUND,
            "snapshot \"s1\" not found",
        ),
        (
            "POST",
            "/v1/instances",
            Some(r#"{"name":"web2"}"#),
            StatusCode::BAD_REQUEST,
            "needs a flavor and an image",
        ),
    ];
    for (method, uri, body, status, text) in cases {
        let (s, resp) = call(&f, method, uri, Some(&f.token), body).await;
        assert_eq!(s, status, "{method} {uri}: {resp}");
        assert!(
            error(&resp).message.contains(text),
            "{method} {uri}: {resp}"
        );
    }
}

#[tokio::test]
async fn an_operation_wait_longer_than_a_minute_is_refused_with_the_limit() {
    let f = fixture().await;
    let id = uuid::Uuid::new_v4();
    let uri = format!("/v1/operations/{id}?wait_secs=61");
    let (s, body) = call(&f, "GET", &uri, Some(&f.token), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(error(&body).message.contains("at most 60"), "{body}");
    // Within the limit, an unknown operation is 404 at once (nothing to wait for).
    let uri = format!("/v1/operations/{id}?wait_secs=60");
    let (s, _) = call(&f, "GET", &uri, Some(&f.token), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
