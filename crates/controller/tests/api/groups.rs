//! Scaling groups through the API, and the autoscaler's convergence from the store (agents
//! do not answer here: members stay `building`, which is what a restart mid scale-out sees).

use super::*;
use crate::common::Fixture;
use nimbus_api::{GroupView, OperationKind, OperationView};
use nimbus_controller::app::App;
use nimbus_controller::background::autoscaler;
use nimbus_controller::ControllerConfig;

async fn with_image(f: &Fixture) {
    let exe = std::env::current_exe().expect("exe").display().to_string();
    let img = format!(r#"{{"name":"img","kernel":"{exe}"}}"#);
    let (s, body) = call(f, "POST", "/v1/images", Some(&f.token), Some(&img)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
}

fn view(body: &str) -> GroupView {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a group ({e}): {body}"))
}

async fn show(f: &Fixture, name: &str) -> GroupView {
    let (s, body) = call(
        f,
        "GET",
        &format!("/v1/groups/{name}"),
        Some(&f.token),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    view(&body)
}

#[tokio::test]
async fn group_validation_and_changes() {
    let f = fixture().await;
    with_image(&f).await;
    let bad = [
        (
            r#"{"name":"web","flavor":"tiny","image":"img","min":3,"max":2,"target_cpu":60}"#,
            StatusCode::BAD_REQUEST,
            "min 3 is above max 2",
        ),
        (
            r#"{"name":"web","flavor":"tiny","image":"img","min":1,"max":2,"desired":5,"target_cpu":60}"#,
            StatusCode::BAD_REQUEST,
            "desired 5 is outside",
        ),
        (
            r#"{"name":"web","flavor":"tiny","image":"img","min":1,"max":2,"target_cpu":0}"#,
            StatusCode::BAD_REQUEST,
            "target CPU",
        ),
        (
            r#"{"name":"web","flavor":"tiny","image":"img","min":1,"max":2,"target_cpu":60,"policy":"step"}"#,
            StatusCode::BAD_REQUEST,
            "needs at least one step",
        ),
        (
            r#"{"name":"web","flavor":"nope","image":"img","min":1,"max":2,"target_cpu":60}"#,
            StatusCode::NOT_FOUND,
            "flavor \"nope\" not found",
        ),
        (
            r#"{"name":"Web","flavor":"tiny","image":"img","min":1,"max":2,"target_cpu":60}"#,
            StatusCode::BAD_REQUEST,
            "invalid group name",
        ),
    ];
    for (body, status, text) in bad {
        let (s, resp) = call(&f, "POST", "/v1/groups", Some(&f.token), Some(body)).await;
        assert_eq!(s, status, "{body}: {resp}");
        assert!(error(&resp).message.contains(text), "{resp}");
    }
    let create = r#"{"name":"web","flavor":"tiny","image":"img","min":1,"max":4,"desired":2,"target_cpu":60,"window_secs":10,"cooldown_secs":10}"#;
    let (s, body) = call(&f, "POST", "/v1/groups", Some(&f.token), Some(create)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let g = view(&body);
    assert_eq!((g.min, g.max, g.desired, g.current), (1, 4, 2, 0));
    assert_eq!((g.window_secs, g.cooldown_secs), (10, 10));
    assert_eq!(g.events[0].kind, "created");
    let (s, _) = call(&f, "POST", "/v1/groups", Some(&f.token), Some(create)).await;
    assert_eq!(s, StatusCode::CONFLICT);

    let (s, body) = call(
        &f,
        "PATCH",
        "/v1/groups/web",
        Some(&f.token),
        Some(r#"{"desired":5}"#),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    // Raising min moves desired with it, at once.
    let (s, body) = call(
        &f,
        "PATCH",
        "/v1/groups/web",
        Some(&f.token),
        Some(r#"{"min":3}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let g = view(&body);
    assert_eq!((g.min, g.desired), (3, 3));
    assert!(
        g.last_scaled_at.is_some(),
        "a changed desired size starts a cooldown"
    );
    assert_eq!(g.events[0].kind, "set");
    assert_eq!(
        g.events[0].message,
        "set by user: desired 2 -> 3, min 1 -> 3"
    );
    assert_eq!(g.events[0].delta, 1);
    let (s, body) = call(&f, "GET", "/v1/groups/nope", Some(&f.token), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let (_, body) = call(&f, "GET", "/v1/groups", Some(&f.token), None).await;
    let all: Vec<GroupView> = serde_json::from_str(&body).expect("list");
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn the_autoscaler_converges_from_the_store_and_stops_at_capacity() {
    let f = fixture().await;
    with_image(&f).await;
    // Room for two tiny (256 MiB) instances.
    register(&f, "host1", 600).await;
    let create = r#"{"name":"web","flavor":"tiny","image":"img","min":1,"max":4,"desired":3,"target_cpu":60}"#;
    let (s, body) = call(&f, "POST", "/v1/groups", Some(&f.token), Some(create)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");

    autoscaler::pass(&f.app).await.expect("pass");
    let g = show(&f, "web").await;
    assert_eq!((g.desired, g.current), (3, 2), "{g:?}");
    assert!(
        g.instances.iter().all(|m| m.name.starts_with("web-")),
        "{g:?}"
    );
    let refusals = |g: &GroupView| -> Vec<String> {
        g.events
            .iter()
            .filter(|e| e.kind == "refused")
            .map(|e| e.message.clone())
            .collect()
    };
    let r = refusals(&g);
    assert_eq!(r.len(), 1, "{g:?}");
    assert!(
        r[0].starts_with("scale-out stopped: no host has 256 MiB of memory free"),
        "{r:?}"
    );

    // Again, and again after a restart (a new App over the same store): nothing is
    // duplicated, the refusal is not repeated.
    autoscaler::pass(&f.app).await.expect("pass");
    let config = ControllerConfig::new(f.dir.path().to_path_buf());
    let restarted = App::open(config).await.expect("reopen");
    autoscaler::pass(&restarted).await.expect("pass");
    let g = show(&f, "web").await;
    assert_eq!(
        (g.desired, g.current, g.instances.len()),
        (3, 2, 2),
        "{g:?}"
    );
    assert_eq!(refusals(&g).len(), 1, "{g:?}");

    // Deleting: 202 with an operation; the group then refuses changes.
    let (s, body) = call(&f, "DELETE", "/v1/groups/web", Some(&f.token), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let op: OperationView = serde_json::from_str(&body).expect("operation");
    assert_eq!(op.kind, OperationKind::GroupDelete);
    assert_eq!(show(&f, "web").await.state, "deleting");
    let (s, body) = call(
        &f,
        "PATCH",
        "/v1/groups/web",
        Some(&f.token),
        Some(r#"{"desired":2}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, _) = call(&f, "DELETE", "/v1/groups/web", Some(&f.token), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "already being deleted");
}
