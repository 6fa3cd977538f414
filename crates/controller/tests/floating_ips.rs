//! Floating IPs at the API edge, without agents or pool: a cloud without a pool refuses to
//! allocate and says how to get one; addresses are validated; unknown addresses answer 404;
//! readers may not allocate. (With a pool: the store tests and the end-to-end test
//! `crates/cli/tests/gateway.rs`.)

mod common;

use axum::http::StatusCode as S;
use common::{error, expect, member, setup};
use nimbus_api::{ErrorCode, FloatingIpView};

#[tokio::test]
async fn without_a_pool_nothing_is_allocated_and_bad_addresses_are_refused() {
    let f = setup().await;
    let acme = member(&f, "acme", "member").await;
    let reader = member(&f, "acme", "reader").await;
    let uri = "/v1/floating-ips";
    let b = expect(&f, &acme, "POST", uri, Some("{}"), S::CONFLICT, None).await;
    assert!(error(&b).message.contains("--floating-ip-pool"), "{b}");
    expect(&f, &reader, "POST", uri, Some("{}"), S::FORBIDDEN, None).await;
    let b = expect(&f, &acme, "GET", uri, None, S::OK, None).await;
    let none: Vec<FloatingIpView> = serde_json::from_str(&b).expect("list");
    assert!(none.is_empty());
    let attach = r#"{"instance":"web1"}"#;
    let bad = "/v1/floating-ips/not-an-ip/attach";
    expect(
        &f,
        &acme,
        "POST",
        bad,
        Some(attach),
        S::BAD_REQUEST,
        Some(ErrorCode::BadRequest),
    )
    .await;
    let unknown = "/v1/floating-ips/192.0.2.1";
    expect(
        &f,
        &acme,
        "DELETE",
        unknown,
        None,
        S::NOT_FOUND,
        Some(ErrorCode::NotFound),
    )
    .await;
    let detach = "/v1/floating-ips/192.0.2.1/detach";
    expect(&f, &acme, "POST", detach, Some("{}"), S::NOT_FOUND, None).await;
}
