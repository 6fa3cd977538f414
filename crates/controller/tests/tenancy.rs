//! Tenancy at the API edge, without agents: roles, cross-project isolation (404, never 403),
//! quotas under 20 concurrent creates, token revocation and expiry, throttling of failed
//! authentications, the body size limit and the audit log. Creates here are accepted and
//! recorded but no VM boots (no agent answers): what runs after acceptance is covered by
//! `crates/cli/tests/tenancy.rs` with a real guest.

mod common;

use axum::http::StatusCode;
use common::{call, call_from, error, fixture, register, Fixture};
use nimbus_api::{AuditEntry, CreatedToken, ErrorCode, InstanceView, OperationView, QuotaView};
use nimbus_store::Scope;
use std::net::SocketAddr;

/// Registers a host with room for everything and an image whose "kernel" is this binary.
async fn pool(f: &Fixture) {
    register(f, "host1", 65536).await;
    let exe = std::env::current_exe().expect("exe").display().to_string();
    let img = format!(r#"{{"name":"img","kernel":"{exe}"}}"#);
    let (s, body) = call(f, "POST", "/v1/images", Some(&f.token), Some(&img)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
}

async fn project(f: &Fixture, name: &str) {
    let body = format!(r#"{{"name":"{name}"}}"#);
    let (s, b) = call(f, "POST", "/v1/projects", Some(&f.token), Some(&body)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

/// A new token of `project` with `role`; returns its secret.
async fn token(f: &Fixture, project: &str, role: &str, extra: &str) -> CreatedToken {
    let body = format!(r#"{{"role":"{role}"{extra}}}"#);
    let uri = format!("/v1/tokens?project={project}");
    let (s, b) = call(f, "POST", &uri, Some(&f.token), Some(&body)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    serde_json::from_str(&b).expect("created token")
}

fn create_body(name: &str) -> String {
    format!(r#"{{"name":"{name}","flavor":"tiny","image":"img"}}"#)
}

async fn create(f: &Fixture, token: &str, name: &str) -> OperationView {
    let (s, b) = call(
        f,
        "POST",
        "/v1/instances",
        Some(token),
        Some(&create_body(name)),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    serde_json::from_str(&b).expect("operation")
}

/// Expects `status` and, for errors, `code`.
async fn expect(
    f: &Fixture,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<&str>,
    status: StatusCode,
) -> String {
    let (s, b) = call(f, method, uri, Some(token), body).await;
    assert_eq!(s, status, "{method} {uri}: {b}");
    if !s.is_success() {
        let e = error(&b);
        assert_eq!(e.code.http_status(), s.as_u16(), "{b}");
        for leak in ["/work/", "/tmp/", ".rs:", "panicked", "sqlx"] {
            assert!(!e.message.contains(leak), "internal detail in {b}");
        }
    }
    b
}

/// (method, uri, body, status for an admin, for a member, for a reader)
type Case = (
    &'static str,
    String,
    Option<String>,
    StatusCode,
    StatusCode,
    StatusCode,
);

#[tokio::test]
async fn role_matrix() {
    let f = fixture().await;
    pool(&f).await;
    project(&f, "acme").await;
    let admin = f.token.trim().to_string();
    let member = token(&f, "acme", "member", "").await.secret;
    let reader = token(&f, "acme", "reader", "").await.secret;
    use StatusCode as S;
    // (method, uri, body, admin, member, reader)
    let flavor = r#"{"name":"f1","vcpus":1,"memory_mib":256,"disk_gib":1}"#;
    let cases: Vec<Case> = vec![
        ("GET", "/v1/instances".into(), None, S::OK, S::OK, S::OK),
        ("GET", "/v1/operations".into(), None, S::OK, S::OK, S::OK),
        ("GET", "/v1/flavors".into(), None, S::OK, S::OK, S::OK),
        ("GET", "/v1/images".into(), None, S::OK, S::OK, S::OK),
        (
            "GET",
            "/v1/projects/acme/quota".into(),
            None,
            S::OK,
            S::OK,
            S::OK,
        ),
        (
            "GET",
            "/v1/hosts".into(),
            None,
            S::OK,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "GET",
            "/v1/hosts/host1".into(),
            None,
            S::OK,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "GET",
            "/v1/projects".into(),
            None,
            S::OK,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "GET",
            "/v1/tokens".into(),
            None,
            S::OK,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "GET",
            "/v1/audit".into(),
            None,
            S::OK,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/instances".into(),
            Some(create_body("w1")),
            S::ACCEPTED,
            S::ACCEPTED,
            S::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/flavors".into(),
            Some(flavor.into()),
            S::CREATED,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "DELETE",
            "/v1/flavors/f1".into(),
            None,
            S::NO_CONTENT,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/images".into(),
            Some(r#"{"name":"i2","kernel":"/bin/sh"}"#.into()),
            S::CREATED,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        // Members may delete their project's images (tests/images.rs); i2 is gone by then.
        (
            "DELETE",
            "/v1/images/i2".into(),
            None,
            S::NO_CONTENT,
            S::NOT_FOUND,
            S::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/hosts/host1/disable".into(),
            None,
            S::OK,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/hosts/host1/enable".into(),
            None,
            S::OK,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/hosts/nohost/drain".into(),
            None,
            S::NOT_FOUND,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/instances/w1/migrate".into(),
            Some("{}".into()),
            S::CONFLICT,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/projects".into(),
            Some(r#"{"name":"p2"}"#.into()),
            S::CREATED,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "PUT",
            "/v1/projects/acme/quota".into(),
            Some("{}".into()),
            S::OK,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/tokens".into(),
            Some(r#"{"role":"reader"}"#.into()),
            S::CREATED,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
        (
            "DELETE",
            "/v1/projects/p2".into(),
            None,
            S::NO_CONTENT,
            S::FORBIDDEN,
            S::FORBIDDEN,
        ),
    ];
    for (method, uri, body, a, m, r) in &cases {
        // The admin acts in acme too, so that "w1" exists for it where members see it.
        let admin_uri = if uri.contains('?') {
            uri.clone()
        } else {
            format!("{uri}?project=acme")
        };
        expect(&f, &admin, method, &admin_uri, body.as_deref(), *a).await;
        let body_m = body.as_deref().map(|b| b.replace("\"w1\"", "\"w2\""));
        expect(&f, &member, method, uri, body_m.as_deref(), *m).await;
        let body_r = body.as_deref().map(|b| b.replace("\"w1\"", "\"w3\""));
        expect(&f, &reader, method, uri, body_r.as_deref(), *r).await;
    }
    // Readers may not act on instances either.
    for action in ["start", "stop", "reboot"] {
        let uri = format!("/v1/instances/w2/{action}");
        let b = expect(&f, &reader, "POST", &uri, None, S::FORBIDDEN).await;
        assert!(
            error(&b).message.contains("reader token may only read"),
            "{b}"
        );
    }
    expect(
        &f,
        &reader,
        "DELETE",
        "/v1/instances/w2",
        None,
        S::FORBIDDEN,
    )
    .await;
    expect(
        &f,
        &reader,
        "POST",
        "/v1/instances/w2/exec",
        Some(r#"{"command":"true"}"#),
        S::FORBIDDEN,
    )
    .await;
    // A member may not act in another project; naming its own is fine.
    let b = expect(
        &f,
        &member,
        "GET",
        "/v1/instances?project=default",
        None,
        S::FORBIDDEN,
    )
    .await;
    assert!(error(&b).message.contains("only an admin"), "{b}");
    expect(
        &f,
        &member,
        "GET",
        "/v1/instances?project=acme",
        None,
        S::OK,
    )
    .await;
    expect(
        &f,
        &admin,
        "GET",
        "/v1/instances?project=nope",
        None,
        S::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn another_projects_resources_are_404_for_every_verb() {
    let f = fixture().await;
    pool(&f).await;
    project(&f, "acme").await;
    project(&f, "beta").await;
    let acme = token(&f, "acme", "member", "").await.secret;
    let beta = token(&f, "beta", "member", "").await.secret;
    let op = create(&f, &acme, "web1").await;
    let inst: InstanceView = serde_json::from_str(
        &expect(&f, &acme, "GET", "/v1/instances/web1", None, StatusCode::OK).await,
    )
    .expect("instance");
    let id = inst.id.to_string();
    let op_id = op.id.to_string();

    use StatusCode as S;
    for target in ["web1", id.as_str()] {
        let cases: Vec<(&str, String, Option<&str>)> = vec![
            ("GET", format!("/v1/instances/{target}"), None),
            ("DELETE", format!("/v1/instances/{target}"), None),
            ("POST", format!("/v1/instances/{target}/start"), None),
            ("POST", format!("/v1/instances/{target}/stop"), None),
            ("POST", format!("/v1/instances/{target}/reboot"), None),
            (
                "POST",
                format!("/v1/instances/{target}/exec"),
                Some(r#"{"command":"true"}"#),
            ),
            ("GET", format!("/v1/instances/{target}/console/log"), None),
        ];
        for (method, uri, body) in cases {
            let b = expect(&f, &beta, method, &uri, body, S::NOT_FOUND).await;
            assert!(!b.contains("acme"), "the owner leaks: {b}");
        }
    }
    expect(
        &f,
        &beta,
        "GET",
        &format!("/v1/operations/{op_id}"),
        None,
        S::NOT_FOUND,
    )
    .await;
    expect(
        &f,
        &beta,
        "POST",
        &format!("/v1/operations/{op_id}/cancel"),
        None,
        S::NOT_FOUND,
    )
    .await;
    expect(
        &f,
        &beta,
        "GET",
        &format!("/v1/migrations/{op_id}"),
        None,
        S::NOT_FOUND,
    )
    .await;
    assert_eq!(
        expect(&f, &beta, "GET", "/v1/instances", None, S::OK).await,
        "[]"
    );
    assert_eq!(
        expect(&f, &beta, "GET", "/v1/operations", None, S::OK).await,
        "[]"
    );
    expect(&f, &beta, "GET", "/v1/projects/acme", None, S::NOT_FOUND).await;
    expect(
        &f,
        &beta,
        "GET",
        "/v1/projects/acme/quota",
        None,
        S::NOT_FOUND,
    )
    .await;
    expect(&f, &beta, "GET", "/v1/projects/beta", None, S::OK).await;

    // Nothing of acme changed, and its owner still sees it all.
    let op_now: OperationView = serde_json::from_str(
        &expect(
            &f,
            &acme,
            "GET",
            &format!("/v1/operations/{op_id}"),
            None,
            S::OK,
        )
        .await,
    )
    .expect("op");
    assert!(
        !op_now.cancel_requested,
        "beta's cancel reached acme's operation"
    );
    assert!(f
        .app
        .store()
        .get_instance(&Scope::project("acme"), "web1")
        .await
        .is_ok());
    // Names are per project: beta may have its own web1.
    create(&f, &beta, "web1").await;
    assert_eq!(
        f.app
            .store()
            .list_instances(&Scope::All)
            .await
            .expect("all")
            .len(),
        2
    );

    // The admin acts in its own project by default and in others with ?project=.
    let admin = f.token.trim();
    expect(&f, admin, "GET", "/v1/instances/web1", None, S::NOT_FOUND).await;
    expect(
        &f,
        admin,
        "GET",
        "/v1/instances/web1?project=acme",
        None,
        S::OK,
    )
    .await;
    expect(
        &f,
        admin,
        "GET",
        &format!("/v1/operations/{op_id}"),
        None,
        S::OK,
    )
    .await;
    // A project that owns instances cannot be deleted; the default one never.
    let b = expect(&f, admin, "DELETE", "/v1/projects/acme", None, S::CONFLICT).await;
    assert!(error(&b).message.contains("still owns 1 instance"), "{b}");
    expect(
        &f,
        admin,
        "DELETE",
        "/v1/projects/default",
        None,
        S::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn twenty_concurrent_creates_at_the_quota_edge() {
    let f = fixture().await;
    pool(&f).await;
    project(&f, "acme").await;
    let admin = f.token.trim().to_string();
    let q = r#"{"instances":3,"vcpus":null,"memory_mib":null,"disk_gib":null,"snapshots":5}"#;
    expect(
        &f,
        &admin,
        "PUT",
        "/v1/projects/acme/quota",
        Some(q),
        StatusCode::OK,
    )
    .await;
    let member = token(&f, "acme", "member", "").await.secret;
    let f = std::sync::Arc::new(f);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (f, member) = (f.clone(), member.clone());
            tokio::spawn(async move {
                call(
                    &f,
                    "POST",
                    "/v1/instances",
                    Some(&member),
                    Some(&create_body(&format!("vm{i}"))),
                )
                .await
            })
        })
        .collect();
    let mut accepted = 0;
    let mut refused = Vec::new();
    for t in tasks {
        let (s, b) = t.await.expect("task");
        match s {
            StatusCode::ACCEPTED => accepted += 1,
            _ => refused.push((s, error(&b))),
        }
    }
    assert_eq!(accepted, 3, "{refused:?}");
    assert_eq!(refused.len(), 17);
    for (s, e) in &refused {
        assert_eq!(
            (*s, e.code),
            (StatusCode::FORBIDDEN, ErrorCode::QuotaExceeded)
        );
        assert_eq!(
            e.message,
            "project acme: instances quota 3 reached (3 in use); ask an admin to raise it with `nimbus quota set acme`"
        );
    }
    let rows = f
        .app
        .store()
        .list_instances(&Scope::project("acme"))
        .await
        .expect("list");
    assert_eq!(rows.len(), 3, "the database holds exactly the quota");
    let quota: QuotaView = serde_json::from_str(
        &expect(
            &f,
            &member,
            "GET",
            "/v1/projects/acme/quota",
            None,
            StatusCode::OK,
        )
        .await,
    )
    .expect("quota");
    assert_eq!(
        (
            quota.usage.instances,
            quota.usage.vcpus,
            quota.usage.memory_mib
        ),
        (3, 3, 768)
    );
    assert_eq!(
        (quota.limits.instances, quota.limits.snapshots),
        (Some(3), Some(5))
    );
    // A new project gets the documented defaults; the default project is unlimited.
    project(&f, "fresh").await;
    let fresh: QuotaView = serde_json::from_str(
        &expect(
            &f,
            &admin,
            "GET",
            "/v1/projects/fresh/quota",
            None,
            StatusCode::OK,
        )
        .await,
    )
    .expect("quota");
    assert_eq!(fresh.limits, nimbus_api::QuotaLimits::NEW_PROJECT);
    let default: QuotaView = serde_json::from_str(
        &expect(
            &f,
            &admin,
            "GET",
            "/v1/projects/default/quota",
            None,
            StatusCode::OK,
        )
        .await,
    )
    .expect("quota");
    assert_eq!(default.limits, nimbus_api::QuotaLimits::UNLIMITED);
}

#[tokio::test]
async fn revoked_and_expired_tokens_are_refused_at_once() {
    let f = fixture().await;
    project(&f, "acme").await;
    let admin = f.token.trim().to_string();
    let t = token(&f, "acme", "member", r#","name":"alice""#).await;
    assert!(t.secret.starts_with("nmb_"));
    expect(&f, &t.secret, "GET", "/v1/instances", None, StatusCode::OK).await;
    let listed = expect(
        &f,
        &admin,
        "GET",
        "/v1/tokens?project=acme",
        None,
        StatusCode::OK,
    )
    .await;
    assert!(
        listed.contains("alice") && !listed.contains(&t.secret),
        "{listed}"
    );
    let uri = format!("/v1/tokens/{}", t.token.id);
    expect(&f, &admin, "DELETE", &uri, None, StatusCode::OK).await;
    let b = expect(
        &f,
        &t.secret,
        "GET",
        "/v1/instances",
        None,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(error(&b).message.contains("revoked"), "{b}");

    let short = token(&f, "acme", "reader", r#","expires_in_secs":1"#).await;
    expect(
        &f,
        &short.secret,
        "GET",
        "/v1/instances",
        None,
        StatusCode::OK,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let b = expect(
        &f,
        &short.secret,
        "GET",
        "/v1/instances",
        None,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(error(&b).message.contains("expired"), "{b}");

    // Deleting a project revokes its tokens.
    let other = token(&f, "acme", "member", "").await.secret;
    expect(
        &f,
        &admin,
        "DELETE",
        "/v1/projects/acme",
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    expect(
        &f,
        &other,
        "GET",
        "/v1/instances",
        None,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    expect(
        &f,
        &admin,
        "DELETE",
        "/v1/tokens/tok-nope",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn repeated_auth_failures_from_one_address_are_throttled() {
    let f = fixture().await;
    let bad: SocketAddr = "10.1.1.1:40000".parse().expect("addr");
    let good: SocketAddr = "10.1.1.2:40000".parse().expect("addr");
    let admin = f.token.trim().to_string();
    for i in 0..10 {
        let r = call_from(
            &f,
            Some(bad),
            "GET",
            "/v1/instances",
            Some("nmb_guess"),
            None,
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "attempt {i}: {}",
            r.body
        );
    }
    // A valid token from that address is still served: a bad client next to the operator
    // (or behind the same proxy) cannot lock the operator out.
    let r = call_from(&f, Some(bad), "GET", "/v1/instances", Some(&admin), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // More bad tokens from it are refused with 429 now, 20 in all.
    for _ in 10..19 {
        let r = call_from(&f, Some(bad), "GET", "/v1/instances", Some("nmb_x"), None).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    }
    let r = call_from(&f, Some(bad), "GET", "/v1/instances", Some("nmb_x"), None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(error(&r.body).code, ErrorCode::TooManyRequests);
    let wait: u64 = r
        .retry_after
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    let r = call_from(&f, Some(good), "GET", "/v1/instances", Some(&admin), None).await;
    assert_eq!(r.status, StatusCode::OK, "other addresses are served");
    let r = call_from(&f, Some(bad), "GET", "/v1/instances", Some(&admin), None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "after 20 failures the valid token still works"
    );
}

#[tokio::test]
async fn oversized_bodies_get_413_json() {
    let f = fixture().await;
    let admin = f.token.trim().to_string();
    let big = format!(
        r#"{{"name":"x","description":"{}"}}"#,
        "a".repeat(2 * 1024 * 1024)
    );
    for uri in ["/v1/projects", "/v1/instances", "/v1/flavors"] {
        let (s, b) = call(&f, "POST", uri, Some(&admin), Some(&big)).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        assert_eq!(error(&b).code, ErrorCode::PayloadTooLarge, "{b}");
    }
    let ok = format!(r#"{{"name":"x","description":"{}"}}"#, "a".repeat(1000));
    expect(
        &f,
        &admin,
        "POST",
        "/v1/projects",
        Some(&ok),
        StatusCode::CREATED,
    )
    .await;
}

#[tokio::test]
async fn every_mutating_call_is_audited() {
    let f = fixture().await;
    let admin = f.token.trim().to_string();
    let peer: SocketAddr = "10.9.9.9:5000".parse().expect("addr");
    let r = call_from(
        &f,
        Some(peer),
        "POST",
        "/v1/projects",
        Some(&admin),
        Some(r#"{"name":"acme"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let member = token(&f, "acme", "member", r#","name":"bob""#).await.secret;
    expect(
        &f,
        &member,
        "DELETE",
        "/v1/flavors/tiny",
        None,
        StatusCode::FORBIDDEN,
    )
    .await;
    call(
        &f,
        "POST",
        "/v1/projects",
        Some("nmb_wrong"),
        Some(r#"{"name":"evil"}"#),
    )
    .await;
    expect(&f, &admin, "GET", "/v1/instances", None, StatusCode::OK).await;
    // A member trying another project is recorded with its token.
    expect(
        &f,
        &member,
        "POST",
        "/v1/instances?project=default",
        Some(&create_body("sneaky")),
        StatusCode::FORBIDDEN,
    )
    .await;

    let all: Vec<AuditEntry> =
        serde_json::from_str(&expect(&f, &admin, "GET", "/v1/audit", None, StatusCode::OK).await)
            .expect("audit");
    assert_eq!(all.len(), 5, "reads are not audited: {all:#?}");
    let sneaky = all
        .iter()
        .find(|e| e.target.as_deref() == Some("sneaky"))
        .expect("cross-project attempt");
    assert_eq!(
        (
            sneaky.status,
            sneaky.token_name.as_deref(),
            sneaky.project.as_deref()
        ),
        (403, Some("bob"), Some("acme"))
    );
    let created = all
        .iter()
        .find(|e| e.action == "POST /v1/projects" && e.status == 201)
        .expect("create");
    assert_eq!(created.target.as_deref(), Some("acme"));
    assert_eq!(created.token_id.as_deref(), Some("admin"));
    assert_eq!(created.project.as_deref(), Some("default"));
    assert_eq!(created.client_ip.as_deref(), Some("10.9.9.9"));
    let denied = all
        .iter()
        .find(|e| e.status == 403 && e.method == "DELETE")
        .expect("denied");
    assert_eq!(denied.action, "DELETE /v1/flavors/{flavor}");
    assert_eq!(
        (denied.target.as_deref(), denied.token_name.as_deref()),
        (Some("tiny"), Some("bob"))
    );
    assert_eq!(denied.project.as_deref(), Some("acme"));
    let anon = all
        .iter()
        .find(|e| e.status == 401)
        .expect("unauthenticated");
    assert_eq!(
        (anon.token_id.as_deref(), anon.target.as_deref()),
        (None, Some("evil"))
    );
    let token_create = all
        .iter()
        .find(|e| e.action == "POST /v1/tokens")
        .expect("token");
    assert_eq!(token_create.project.as_deref(), Some("acme"));

    let acme: Vec<AuditEntry> = serde_json::from_str(
        &expect(
            &f,
            &admin,
            "GET",
            "/v1/audit?project=acme",
            None,
            StatusCode::OK,
        )
        .await,
    )
    .expect("audit");
    assert_eq!(acme.len(), 3, "{acme:#?}");
    let later = (chrono::Utc::now() + chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let none = expect(
        &f,
        &admin,
        "GET",
        &format!("/v1/audit?since={later}"),
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(none, "[]");
}
