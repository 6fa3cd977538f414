//! Paged listings at the API edge, without agents: following `next-page-token` lists every
//! row once while rows are added between pages, never another project's rows; bad limits
//! and tokens (garbage, another listing's) are refused with 400 and a message that says
//! what to do; the OpenAPI document declares the parameters and the header.

mod common;

use axum::http::StatusCode as S;
use common::{call_from, error, expect, member, setup, Fixture};
use nimbus_api::{ErrorCode, SecurityGroupView};

/// Every page of `uri` (which already has a `?`), `limit` rows at a time; `between` runs
/// after the first page.
async fn follow(
    f: &Fixture,
    token: &str,
    uri: &str,
    limit: u32,
    mut between: impl AsyncFnMut(),
) -> Vec<SecurityGroupView> {
    let mut all = Vec::new();
    let mut page_token: Option<String> = None;
    for pages in 1.. {
        let mut u = format!("{uri}&limit={limit}");
        if let Some(t) = &page_token {
            u.push_str(&format!("&page_token={t}"));
        }
        let r = call_from(f, None, "GET", &u, Some(token), None).await;
        assert_eq!(r.status, S::OK, "{u}: {}", r.body);
        let page: Vec<SecurityGroupView> = serde_json::from_str(&r.body).expect("page");
        assert!(
            page.len() <= limit as usize,
            "a page holds at most its limit"
        );
        all.extend(page);
        if pages == 1 {
            between().await;
        }
        match r.next_page_token {
            Some(t) => page_token = Some(t),
            None => return all,
        }
        assert!(pages < 50, "paging does not end");
    }
    unreachable!()
}

async fn create_group(f: &Fixture, token: &str, name: &str) {
    let body = format!(r#"{{"name":"{name}"}}"#);
    expect(
        f,
        token,
        "POST",
        "/v1/secgroups",
        Some(&body),
        S::CREATED,
        None,
    )
    .await;
}

#[tokio::test]
async fn pages_list_every_row_once_and_only_the_projects_own() {
    let f = setup().await;
    let acme = member(&f, "acme", "member").await;
    let globex = member(&f, "globex", "member").await;
    for i in 0..11 {
        create_group(&f, &acme, &format!("g{i:02}")).await;
    }
    create_group(&f, &globex, "theirs").await;

    // A group created after the first page sorts last (by name): it is listed once.
    let listed = follow(&f, &acme, "/v1/secgroups?", 4, async || {
        create_group(&f, &acme, "zz-late").await;
    })
    .await;
    let names: Vec<&str> = listed.iter().map(|g| g.name.as_str()).collect();
    let mut expected: Vec<String> = (0..11).map(|i| format!("g{i:02}")).collect();
    expected.extend(["default".into(), "zz-late".into()]);
    expected.sort();
    assert_eq!(names, expected, "every group once, by name");
    assert!(listed.iter().all(|g| g.project == "acme"), "{listed:?}");

    // Without a limit: one page of at most 100; the admin in acme sees the same.
    let r = call_from(&f, None, "GET", "/v1/secgroups", Some(&acme), None).await;
    assert_eq!(r.next_page_token, None, "13 rows fit the default page");
    let admin = follow(&f, &f.token, "/v1/secgroups?project=acme", 5, async || {}).await;
    assert_eq!(admin.len(), 13);

    // A token of acme's listing gives globex its own rows only (a token is a position,
    // not a right).
    let first = call_from(&f, None, "GET", "/v1/secgroups?limit=1", Some(&acme), None).await;
    let token = first.next_page_token.expect("more pages");
    let uri = format!("/v1/secgroups?page_token={token}");
    let body = expect(&f, &globex, "GET", &uri, None, S::OK, None).await;
    let theirs: Vec<SecurityGroupView> = serde_json::from_str(&body).expect("page");
    assert!(theirs.iter().all(|g| g.project == "globex"), "{theirs:?}");
}

#[tokio::test]
async fn bad_limits_and_tokens_are_refused_with_what_to_do() {
    let f = setup().await;
    let acme = member(&f, "acme", "member").await;
    create_group(&f, &acme, "web").await;
    for uri in [
        "/v1/secgroups?limit=0",
        "/v1/secgroups?limit=1001",
        "/v1/instances?limit=0",
    ] {
        let b = expect(
            &f,
            &acme,
            "GET",
            uri,
            None,
            S::BAD_REQUEST,
            Some(ErrorCode::BadRequest),
        )
        .await;
        assert!(
            error(&b).message.contains("between 1 and 1000"),
            "{uri}: {b}"
        );
    }
    let b = expect(
        &f,
        &acme,
        "GET",
        "/v1/operations?limit=x",
        None,
        S::BAD_REQUEST,
        None,
    )
    .await;
    assert!(error(&b).message.contains("limit"), "{b}");

    for token in ["garbage!", "e30", "eyJsaXN0aW5nIjoxfQ"] {
        let uri = format!("/v1/instances?page_token={token}");
        let b = expect(
            &f,
            &acme,
            "GET",
            &uri,
            None,
            S::BAD_REQUEST,
            Some(ErrorCode::BadRequest),
        )
        .await;
        assert!(
            error(&b).message.contains("not a token of this API"),
            "{token}: {b}"
        );
    }

    // A real token of another listing, and one whose key does not fit this listing.
    let first = call_from(&f, None, "GET", "/v1/secgroups?limit=1", Some(&acme), None).await;
    let token = first.next_page_token.expect("two groups: more pages");
    let uri = format!("/v1/networks?page_token={token}");
    let b = expect(
        &f,
        &acme,
        "GET",
        &uri,
        None,
        S::BAD_REQUEST,
        Some(ErrorCode::BadRequest),
    )
    .await;
    assert!(
        error(&b)
            .message
            .contains("belongs to the listing of secgroups"),
        "{b}"
    );
    // {"listing":"instances","after":[1,2,3]}: the right listing, a forged key.
    let forged = "eyJsaXN0aW5nIjoiaW5zdGFuY2VzIiwiYWZ0ZXIiOlsxLDIsM119";
    let uri = format!("/v1/instances?page_token={forged}");
    let b = expect(
        &f,
        &acme,
        "GET",
        &uri,
        None,
        S::BAD_REQUEST,
        Some(ErrorCode::BadRequest),
    )
    .await;
    assert!(error(&b).message.contains("start again without one"), "{b}");
}

#[test]
fn the_openapi_document_declares_paging_on_every_listing() {
    let doc: serde_json::Value =
        serde_json::from_str(&nimbus_controller::http::openapi::document()).expect("json");
    let listings = [
        "/v1/instances",
        "/v1/flavors",
        "/v1/images",
        "/v1/keypairs",
        "/v1/hosts",
        "/v1/orphans",
        "/v1/operations",
        "/v1/snapshots",
        "/v1/projects",
        "/v1/tokens",
        "/v1/groups",
        "/v1/networks",
        "/v1/placement-groups",
        "/v1/secgroups",
        "/v1/audit",
    ];
    for path in listings {
        let get = &doc["paths"][path]["get"];
        let params: Vec<&str> = get["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: no parameters"))
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(
            params.contains(&"limit") && params.contains(&"page_token"),
            "{path}: {params:?}"
        );
        assert!(
            get["responses"]["200"]["headers"]["next-page-token"].is_object(),
            "{path}: no next-page-token header"
        );
        assert!(get["responses"]["400"].is_object(), "{path}: no 400");
    }
}

/// The typed client (what the CLI uses) over a real socket: `list_all` follows pages past
/// the largest page, `list_up_to` stops at what it was asked for.
#[tokio::test]
async fn the_client_follows_pages() {
    let f = setup().await;
    let defaults = f.app.store().list_flavors().await.expect("flavors").len();
    for i in 0..1005 {
        let name = format!("f{i:04}");
        f.app
            .store()
            .create_flavor(&name, 1, 64 + i, 1)
            .await
            .expect("flavor");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = nimbus_controller::http::router(f.app.clone())
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = nimbus_client::Client::new(&format!("http://{addr}"), Some(f.token.clone()));

    let all = client.list_flavors().await.expect("all flavors");
    assert_eq!(
        all.len(),
        defaults + 1005,
        "two pages of up to 1000, followed"
    );
    let mut names: Vec<&str> = all.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all.len(), "no flavor twice");
    let some: Vec<nimbus_api::FlavorView> = client
        .list_up_to("/v1/flavors", &[], 1003)
        .await
        .expect("some");
    assert_eq!(some.len(), 1003);
    assert_eq!(some[..], all[..1003], "the same order");
    server.abort();
}
