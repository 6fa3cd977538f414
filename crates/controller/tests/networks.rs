//! Tenant networks at the API edge, without agents: validation of CIDRs and addresses,
//! overlap inside a project and across projects, 404 across projects, NICs of instance
//! creates (`networks`, `ip`), deletes refused while in use, the bounds on networks per
//! project and NICs per instance. Creates are accepted and recorded; no VM boots (no agent
//! answers).

mod common;

use axum::http::StatusCode;
use common::{expect, member, setup, Fixture};
use nimbus_api::{ErrorCode, InstanceView, NetworkView};

fn net(name: &str, cidr: &str) -> String {
    format!(r#"{{"name":"{name}","cidr":"{cidr}"}}"#)
}

/// Creates a network (expecting 201); answers the body.
async fn create_net(f: &Fixture, token: &str, name: &str, cidr: &str) -> String {
    let body = net(name, cidr);
    let uri = "/v1/networks";
    expect(
        f,
        token,
        "POST",
        uri,
        Some(&body),
        StatusCode::CREATED,
        None,
    )
    .await
}

#[tokio::test]
async fn networks_are_validated_and_scoped_to_their_project() {
    let f = setup().await;
    let acme = member(&f, "acme", "member").await;
    let globex = member(&f, "globex", "member").await;
    let reader = member(&f, "acme", "reader").await;
    use StatusCode as S;

    // Every project starts with its default network.
    let b = expect(&f, &acme, "GET", "/v1/networks", None, S::OK, None).await;
    let nets: Vec<NetworkView> = serde_json::from_str(&b).expect("list");
    assert_eq!(nets.len(), 1);
    assert_eq!(
        (nets[0].name.as_str(), nets[0].project.as_str()),
        ("default", "acme")
    );

    let b = create_net(&f, &acme, "backend", "10.10.0.0/24").await;
    let backend: NetworkView = serde_json::from_str(&b).expect("view");
    assert_eq!(backend.gateway, "10.10.0.1");
    // The same CIDR in another project is fine, with its own segment id.
    let b = create_net(&f, &globex, "backend", "10.10.0.0/24").await;
    let theirs: NetworkView = serde_json::from_str(&b).expect("view");
    assert_ne!(theirs.vni, backend.vni);

    // Bad input: a clear error, nothing created.
    let bad = [
        (
            net("front", "10.10.0.128/25"),
            S::CONFLICT,
            ErrorCode::Conflict,
        ),
        (
            net("backend", "10.99.0.0/24"),
            S::CONFLICT,
            ErrorCode::Conflict,
        ),
        (
            net("pub", "8.8.8.0/24"),
            S::BAD_REQUEST,
            ErrorCode::BadRequest,
        ),
        (
            net("tiny", "10.50.0.0/29"),
            S::BAD_REQUEST,
            ErrorCode::BadRequest,
        ),
        (
            net("odd", "10.50.0.7/24"),
            S::BAD_REQUEST,
            ErrorCode::BadRequest,
        ),
        (net("junk", "ten/8"), S::BAD_REQUEST, ErrorCode::BadRequest),
        (
            net("Bad Name", "10.60.0.0/24"),
            S::BAD_REQUEST,
            ErrorCode::BadRequest,
        ),
    ];
    for (body, status, code) in bad {
        expect(
            &f,
            &acme,
            "POST",
            "/v1/networks",
            Some(&body),
            status,
            Some(code),
        )
        .await;
    }
    expect(
        &f,
        &reader,
        "POST",
        "/v1/networks",
        Some(&net("ro", "10.70.0.0/24")),
        S::FORBIDDEN,
        None,
    )
    .await;
    let b = expect(&f, &acme, "GET", "/v1/networks", None, S::OK, None).await;
    assert_eq!(
        serde_json::from_str::<Vec<NetworkView>>(&b)
            .expect("list")
            .len(),
        2
    );

    // Another project's network answers 404, whatever the call.
    let b = create_net(&f, &globex, "secret", "10.20.0.0/24").await;
    assert!(b.contains("secret"));
    for (method, uri) in [
        ("GET", "/v1/networks/secret"),
        ("DELETE", "/v1/networks/secret"),
    ] {
        expect(
            &f,
            &acme,
            method,
            uri,
            None,
            S::NOT_FOUND,
            Some(ErrorCode::NotFound),
        )
        .await;
    }
    let into_theirs = r#"{"name":"x","flavor":"tiny","image":"img","networks":["secret"]}"#;
    expect(
        &f,
        &acme,
        "POST",
        "/v1/instances",
        Some(into_theirs),
        S::NOT_FOUND,
        Some(ErrorCode::NotFound),
    )
    .await;
    expect(&f, &globex, "GET", "/v1/networks/secret", None, S::OK, None).await;
}

#[tokio::test]
async fn instances_get_one_nic_per_network_and_hold_their_addresses() {
    let f = setup().await;
    let acme = member(&f, "acme", "member").await;
    let globex = member(&f, "globex", "member").await;
    use StatusCode as S;
    create_net(&f, &acme, "backend", "10.10.0.0/24").await;
    let create = |name: &str, extra: &str| {
        format!(r#"{{"name":"{name}","flavor":"tiny","image":"img"{extra}}}"#)
    };
    let db = create(
        "db1",
        r#","networks":["backend","default"],"ip":"10.10.0.20""#,
    );
    expect(
        &f,
        &acme,
        "POST",
        "/v1/instances",
        Some(&db),
        S::ACCEPTED,
        None,
    )
    .await;
    let b = expect(&f, &acme, "GET", "/v1/instances/db1", None, S::OK, None).await;
    let view: InstanceView = serde_json::from_str(&b).expect("view");
    assert_eq!(view.ip.as_deref(), Some("10.10.0.20/24"));
    let nics: Vec<(&str, &str)> = view
        .nics
        .iter()
        .map(|n| (n.network.as_str(), n.ip.as_str()))
        .collect();
    assert_eq!(
        nics,
        [("backend", "10.10.0.20/24"), ("default", "10.200.0.10/16")]
    );
    assert_ne!(view.nics[0].mac, view.nics[1].mac);

    // Overlapping default networks of two projects: the same first address in each.
    let web = create("web1", "");
    expect(
        &f,
        &globex,
        "POST",
        "/v1/instances",
        Some(&web),
        S::ACCEPTED,
        None,
    )
    .await;
    let b = expect(&f, &globex, "GET", "/v1/instances/web1", None, S::OK, None).await;
    let view: InstanceView = serde_json::from_str(&b).expect("view");
    assert_eq!(view.ip.as_deref(), Some("10.200.0.10/16"));

    // Bad addresses and networks: refused, nothing recorded.
    let bad = [
        (
            r#","networks":["backend"],"ip":"10.10.0.20""#,
            S::CONFLICT,
            ErrorCode::Conflict,
        ),
        (
            r#","networks":["backend"],"ip":"10.10.1.20""#,
            S::BAD_REQUEST,
            ErrorCode::BadRequest,
        ),
        (
            r#","networks":["backend"],"ip":"10.10.0.1""#,
            S::BAD_REQUEST,
            ErrorCode::BadRequest,
        ),
        (
            r#","networks":["backend"],"ip":"banana""#,
            S::BAD_REQUEST,
            ErrorCode::BadRequest,
        ),
        (r#","networks":["nope"]"#, S::NOT_FOUND, ErrorCode::NotFound),
        (
            r#","networks":["backend","backend"]"#,
            S::BAD_REQUEST,
            ErrorCode::BadRequest,
        ),
    ];
    for (extra, status, code) in bad {
        let body = create("db2", extra);
        expect(
            &f,
            &acme,
            "POST",
            "/v1/instances",
            Some(&body),
            status,
            Some(code),
        )
        .await;
    }
    expect(
        &f,
        &acme,
        "GET",
        "/v1/instances/db2",
        None,
        S::NOT_FOUND,
        None,
    )
    .await;

    // A network in use, and the default network, stay.
    expect(
        &f,
        &acme,
        "DELETE",
        "/v1/networks/backend",
        None,
        S::CONFLICT,
        Some(ErrorCode::Conflict),
    )
    .await;
    expect(
        &f,
        &acme,
        "DELETE",
        "/v1/networks/default",
        None,
        S::BAD_REQUEST,
        Some(ErrorCode::BadRequest),
    )
    .await;
    let b = expect(&f, &acme, "GET", "/v1/networks/backend", None, S::OK, None).await;
    assert_eq!(
        serde_json::from_str::<NetworkView>(&b).expect("view").ports,
        1
    );
    create_net(&f, &acme, "spare", "192.168.7.0/24").await;
    expect(
        &f,
        &acme,
        "DELETE",
        "/v1/networks/spare",
        None,
        S::NO_CONTENT,
        None,
    )
    .await;
    expect(
        &f,
        &acme,
        "GET",
        "/v1/networks/spare",
        None,
        S::NOT_FOUND,
        None,
    )
    .await;
}

/// What a tenant creates is bounded where every host or the cloud's VNI space pays for it:
/// at most 100 networks per project (its default one included) and 8 NICs per instance.
/// Past the bound a clear refusal that changes nothing.
#[tokio::test]
async fn networks_and_nics_are_bounded() {
    let f = setup().await;
    let acme = member(&f, "acme", "member").await;
    use StatusCode as S;
    for i in 1..100 {
        create_net(&f, &acme, &format!("n{i}"), &format!("10.{i}.0.0/16")).await;
    }
    let body = net("one-more", "172.16.0.0/16");
    let conflict = Some(ErrorCode::Conflict);
    let uri = "/v1/networks";
    let b = expect(&f, &acme, "POST", uri, Some(&body), S::CONFLICT, conflict).await;
    assert!(
        b.contains("100 networks, the most a project may have"),
        "{b}"
    );
    let not_found = Some(ErrorCode::NotFound);
    let one_more = "/v1/networks/one-more";
    expect(&f, &acme, "GET", one_more, None, S::NOT_FOUND, not_found).await;

    let nets: Vec<String> = (1..=9).map(|i| format!(r#""n{i}""#)).collect();
    let body = format!(
        r#"{{"name":"wide","flavor":"tiny","image":"img","networks":[{}]}}"#,
        nets.join(",")
    );
    let bad = Some(ErrorCode::BadRequest);
    let uri = "/v1/instances";
    let b = expect(&f, &acme, "POST", uri, Some(&body), S::BAD_REQUEST, bad).await;
    assert!(b.contains("at most 8 NICs"), "{b}");
    expect(
        &f,
        &acme,
        "GET",
        "/v1/instances/wide",
        None,
        S::NOT_FOUND,
        not_found,
    )
    .await;
}
