//! Security groups at the API edge, without agents: validation of rules (protocols, ports,
//! CIDRs, one remote), 404 across projects (a rule naming another project's group, another
//! project's group or instance), the `default` group of instances created without
//! `secgroups`, `PUT /v1/instances/{i}/secgroups`, deletes refused while in use, the bounds on
//! rules per group and groups per instance.

mod common;

use axum::http::StatusCode as S;
use common::{expect, member, setup};
use nimbus_api::{ErrorCode, SecurityGroupView, SecurityRuleView, SetSecurityGroups};

fn rule(direction: &str, proto: &str, extra: &str) -> String {
    format!(r#"{{"direction":"{direction}","protocol":"{proto}"{extra}}}"#)
}

#[tokio::test]
async fn groups_and_rules_are_validated_and_scoped_to_their_project() {
    let f = setup().await;
    let acme = member(&f, "acme", "member").await;
    let globex = member(&f, "globex", "member").await;
    let reader = member(&f, "acme", "reader").await;
    let web = r#"{"name":"web"}"#;
    let b = expect(
        &f,
        &acme,
        "POST",
        "/v1/secgroups",
        Some(web),
        S::CREATED,
        None,
    )
    .await;
    let g: SecurityGroupView = serde_json::from_str(&b).expect("group");
    // EC2's new group: nothing inbound, everything outbound.
    assert_eq!(g.rules.len(), 1, "{b}");
    assert_eq!(g.rules[0].cidr.as_deref(), Some("0.0.0.0/0"));
    expect(
        &f,
        &globex,
        "POST",
        "/v1/secgroups",
        Some(web),
        S::CREATED,
        None,
    )
    .await;
    let db = r#"{"name":"db"}"#;
    expect(
        &f,
        &globex,
        "POST",
        "/v1/secgroups",
        Some(db),
        S::CREATED,
        None,
    )
    .await;
    let again = Some(ErrorCode::Conflict);
    expect(
        &f,
        &acme,
        "POST",
        "/v1/secgroups",
        Some(web),
        S::CONFLICT,
        again,
    )
    .await;
    let bad_name = Some(ErrorCode::BadRequest);
    let body = Some(r#"{"name":"Bad Name"}"#);
    expect(
        &f,
        &acme,
        "POST",
        "/v1/secgroups",
        body,
        S::BAD_REQUEST,
        bad_name,
    )
    .await;
    let forbidden = Some(ErrorCode::Forbidden);
    expect(
        &f,
        &reader,
        "POST",
        "/v1/secgroups",
        Some(db),
        S::FORBIDDEN,
        forbidden,
    )
    .await;

    let rules = "/v1/secgroups/web/rules";
    let ssh = rule("ingress", "tcp", r#","port_min":22,"cidr":"0.0.0.0/0""#);
    let b = expect(&f, &acme, "POST", rules, Some(&ssh), S::CREATED, None).await;
    let ssh: SecurityRuleView = serde_json::from_str(&b).expect("rule");
    assert_eq!((ssh.port_min, ssh.port_max), (Some(22), Some(22)));
    let members = rule("ingress", "any", r#","group":"web""#);
    expect(&f, &acme, "POST", rules, Some(&members), S::CREATED, None).await;
    for bad in [
        rule("ingress", "icmp", r#","port_min":22,"cidr":"0.0.0.0/0""#),
        rule("ingress", "tcp", r#","port_min":0,"cidr":"0.0.0.0/0""#),
        rule(
            "ingress",
            "tcp",
            r#","port_min":90,"port_max":80,"cidr":"0.0.0.0/0""#,
        ),
        rule("ingress", "tcp", r#","port_min":70000,"cidr":"0.0.0.0/0""#),
        rule("ingress", "tcp", r#","cidr":"10.0.0.1/8""#),
        rule("ingress", "tcp", r#","cidr":"10.0.0.0/33""#),
        rule("ingress", "tcp", r#","cidr":"10.0.0.0/8","group":"web""#),
        rule("ingress", "tcp", ""),
        rule("ingress", "sctp", r#","cidr":"0.0.0.0/0""#),
        rule("sideways", "tcp", r#","cidr":"0.0.0.0/0""#),
    ] {
        let (s, b) = common::call(&f, "POST", rules, Some(&acme), Some(&bad)).await;
        assert!(
            s == S::BAD_REQUEST || s == S::UNPROCESSABLE_ENTITY,
            "{bad}: {s} {b}"
        );
    }
    // Another project's group: 404 as a remote group, as the group, and on every route.
    let not_found = Some(ErrorCode::NotFound);
    let foreign = rule("ingress", "tcp", r#","port_min":5432,"group":"db""#);
    expect(
        &f,
        &acme,
        "POST",
        rules,
        Some(&foreign),
        S::NOT_FOUND,
        not_found,
    )
    .await;
    let db_rules = "/v1/secgroups/db/rules";
    let open = rule("ingress", "any", r#","cidr":"0.0.0.0/0""#);
    expect(
        &f,
        &acme,
        "POST",
        db_rules,
        Some(&open),
        S::NOT_FOUND,
        not_found,
    )
    .await;
    expect(
        &f,
        &acme,
        "GET",
        "/v1/secgroups/db",
        None,
        S::NOT_FOUND,
        not_found,
    )
    .await;
    expect(
        &f,
        &acme,
        "DELETE",
        "/v1/secgroups/db",
        None,
        S::NOT_FOUND,
        not_found,
    )
    .await;
    let ssh_uri = format!("/v1/secgroups/web/rules/{}", ssh.id);
    expect(
        &f,
        &globex,
        "DELETE",
        &ssh_uri,
        None,
        S::NOT_FOUND,
        not_found,
    )
    .await;
    let b = expect(&f, &acme, "GET", "/v1/secgroups", None, S::OK, None).await;
    let names: Vec<String> = serde_json::from_str::<Vec<SecurityGroupView>>(&b)
        .expect("list")
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["default", "web"]);

    expect(&f, &acme, "DELETE", &ssh_uri, None, S::NO_CONTENT, None).await;
    expect(&f, &acme, "DELETE", &ssh_uri, None, S::NOT_FOUND, not_found).await;
    let b = expect(&f, &acme, "GET", "/v1/secgroups/web", None, S::OK, None).await;
    let g: SecurityGroupView = serde_json::from_str(&b).expect("group");
    assert!(g.rules.iter().all(|r| r.id != ssh.id), "{b}");
}

#[tokio::test]
async fn instances_are_in_groups_that_cannot_go_while_used() {
    let f = setup().await;
    let acme = member(&f, "acme", "member").await;
    let globex = member(&f, "globex", "member").await;
    let create = |name: &str, extra: &str| {
        format!(r#"{{"name":"{name}","flavor":"tiny","image":"img"{extra}}}"#)
    };
    for g in ["web", "db"] {
        let body = format!(r#"{{"name":"{g}"}}"#);
        expect(
            &f,
            &acme,
            "POST",
            "/v1/secgroups",
            Some(&body),
            S::CREATED,
            None,
        )
        .await;
    }
    let body = create("web1", r#","secgroups":["web"]"#);
    expect(
        &f,
        &acme,
        "POST",
        "/v1/instances",
        Some(&body),
        S::ACCEPTED,
        None,
    )
    .await;
    let body = create("plain", "");
    expect(
        &f,
        &acme,
        "POST",
        "/v1/instances",
        Some(&body),
        S::ACCEPTED,
        None,
    )
    .await;
    let b = expect(&f, &acme, "GET", "/v1/secgroups/default", None, S::OK, None).await;
    let default: SecurityGroupView = serde_json::from_str(&b).expect("default");
    assert_eq!(
        default.members, 1,
        "an instance without secgroups is in default"
    );
    // Another project's group, or an unknown one: 404 and no instance.
    let not_found = Some(ErrorCode::NotFound);
    let body = create("web2", r#","secgroups":["web"]"#);
    expect(
        &f,
        &globex,
        "POST",
        "/v1/instances",
        Some(&body),
        S::NOT_FOUND,
        not_found,
    )
    .await;
    expect(
        &f,
        &globex,
        "GET",
        "/v1/instances/web2",
        None,
        S::NOT_FOUND,
        not_found,
    )
    .await;

    let conflict = Some(ErrorCode::Conflict);
    expect(
        &f,
        &acme,
        "DELETE",
        "/v1/secgroups/web",
        None,
        S::CONFLICT,
        conflict,
    )
    .await;
    let bad = Some(ErrorCode::BadRequest);
    expect(
        &f,
        &acme,
        "DELETE",
        "/v1/secgroups/default",
        None,
        S::BAD_REQUEST,
        bad,
    )
    .await;

    let set = "/v1/instances/web1/secgroups";
    let body = Some(r#"{"secgroups":["db","default"]}"#);
    let b = expect(&f, &acme, "PUT", set, body, S::OK, None).await;
    let now: SetSecurityGroups = serde_json::from_str(&b).expect("set");
    assert_eq!(now.secgroups, ["db", "default"]);
    expect(&f, &globex, "PUT", set, body, S::NOT_FOUND, not_found).await;
    let empty = Some(r#"{"secgroups":[]}"#);
    expect(&f, &acme, "PUT", set, empty, S::BAD_REQUEST, bad).await;
    let foreign = Some(r#"{"secgroups":["nope"]}"#);
    expect(&f, &acme, "PUT", set, foreign, S::NOT_FOUND, not_found).await;
    expect(
        &f,
        &acme,
        "DELETE",
        "/v1/secgroups/web",
        None,
        S::NO_CONTENT,
        None,
    )
    .await;
    let b = expect(&f, &acme, "GET", "/v1/secgroups/db", None, S::OK, None).await;
    let db: SecurityGroupView = serde_json::from_str(&b).expect("db");
    assert_eq!(db.members, 1);
}

/// An instance of `project` in `groups`, placed on `host` (no agent needed).
async fn placed(
    f: &common::Fixture,
    project: &str,
    name: &str,
    groups: &[&str],
    host: &str,
) -> String {
    let id = uuid::Uuid::new_v4();
    let new = nimbus_store::NewInstance {
        id,
        project: project.into(),
        name: name.into(),
        flavor: "tiny".into(),
        image: "img".into(),
        image_project: nimbus_store::PATH_IMAGE_PROJECT.into(),
        vcpus: 1,
        memory_mib: 128,
        disk_gib: 1,
        group_id: None,
        nics: Vec::new(),
        placement_group: None,
        ha_restart: false,
        ha_priority: nimbus_api::HA_PRIORITY_MEDIUM,
        seed: Default::default(),
        secgroups: groups.iter().map(|g| g.to_string()).collect(),
    };
    let op = nimbus_store::NewOperation {
        id: uuid::Uuid::new_v4(),
        kind: nimbus_api::OperationKind::InstanceCreate,
        project: project.into(),
        target_id: id,
        target_name: name.into(),
        params: serde_json::json!({}),
    };
    let store = f.app.store();
    let rec = store
        .insert_instance(&new, &op, |net, used| {
            nimbus_controller::app::network::pick_address(&net.cidr, used)
        })
        .await
        .expect("insert");
    store.reserve_host(id, host).await.expect("reserve");
    rec.ip
        .expect("ip")
        .split('/')
        .next()
        .expect("ip")
        .to_string()
}

/// What a host's agent is sent: its ports with the rules of their groups, and the members
/// (on any host) of the groups those rules name, per network; nothing of other hosts' ports,
/// and no member of another project even at the same address.
#[tokio::test]
async fn a_hosts_firewall_has_its_ports_and_the_members_their_rules_name() {
    let f = setup().await;
    common::register(&f, "host2", 65536).await;
    let acme = member(&f, "acme", "member").await;
    for g in ["web", "db"] {
        let body = format!(r#"{{"name":"{g}"}}"#);
        expect(
            &f,
            &acme,
            "POST",
            "/v1/secgroups",
            Some(&body),
            S::CREATED,
            None,
        )
        .await;
    }
    let from_web = rule("ingress", "tcp", r#","port_min":5432,"group":"web""#);
    let uri = "/v1/secgroups/db/rules";
    expect(&f, &acme, "POST", uri, Some(&from_web), S::CREATED, None).await;
    let web1 = placed(&f, "acme", "web1", &["web"], "host1").await;
    placed(&f, "acme", "db1", &["db"], "host1").await;
    let web2 = placed(&f, "acme", "web2", &["web"], "host2").await;
    let g1 = placed(&f, "globex", "g1", &[], "host1").await;
    assert_eq!(g1, web1, "overlapping default networks: the same address");

    let fw = f.app.host_firewall("host1").await.expect("firewall");
    assert_eq!(fw.ports.len(), 3, "{fw:?}");
    let acme_scope = nimbus_store::Scope::project("acme");
    let db = f.app.store().get_instance(&acme_scope, "db1").await;
    let db = db.expect("db1");
    let db_port = fw
        .ports
        .iter()
        .find(|p| p.instance_id == db.id)
        .expect("db1 port");
    let named: Vec<_> = db_port
        .rules
        .iter()
        .filter(|r| r.remote == nimbus_agent_api::Remote::Group("web".into()))
        .collect();
    assert_eq!(named.len(), 1, "{db_port:?}");
    let web = fw
        .groups
        .iter()
        .find(|g| g.group == "web")
        .expect("web members");
    let mut members = web.addresses.clone();
    members.sort();
    let mut want = vec![web1.clone(), web2];
    want.sort();
    assert_eq!(members, want, "members on every host, of acme only");
    assert_eq!(web.vni, db_port.vni);
    // globex's default group lets its members in: its own set, on its own network.
    let default = fw
        .groups
        .iter()
        .find(|g| g.group == "default")
        .expect("default");
    assert_eq!(default.addresses, [g1]);
    assert_ne!(default.vni, web.vni);
    let host2 = f.app.host_firewall("host2").await.expect("firewall");
    assert_eq!(host2.ports.len(), 1);
}

/// A group holds at most 100 rules (each is compiled into the chain of every port of the
/// group on every host) and an instance is in at most 5 groups: past the bound a clear
/// refusal that changes nothing.
#[tokio::test]
async fn rules_and_groups_of_an_instance_are_bounded() {
    let f = setup().await;
    let acme = member(&f, "acme", "member").await;
    for g in ["web", "g2", "g3", "g4", "g5", "g6"] {
        let body = format!(r#"{{"name":"{g}"}}"#);
        expect(
            &f,
            &acme,
            "POST",
            "/v1/secgroups",
            Some(&body),
            S::CREATED,
            None,
        )
        .await;
    }
    // A new group has its egress rule: 99 more make 100.
    let rules = "/v1/secgroups/web/rules";
    for port in 1..100 {
        let r = rule(
            "ingress",
            "tcp",
            &format!(r#","port_min":{port},"cidr":"0.0.0.0/0""#),
        );
        expect(&f, &acme, "POST", rules, Some(&r), S::CREATED, None).await;
    }
    let r = rule("ingress", "tcp", r#","port_min":100,"cidr":"0.0.0.0/0""#);
    let conflict = Some(ErrorCode::Conflict);
    let b = expect(&f, &acme, "POST", rules, Some(&r), S::CONFLICT, conflict).await;
    assert!(b.contains("100 rules, the most a group may have"), "{b}");
    let b = expect(&f, &acme, "GET", "/v1/secgroups/web", None, S::OK, None).await;
    let web: SecurityGroupView = serde_json::from_str(&b).expect("web");
    assert_eq!(web.rules.len(), 100);

    let six = r#""web","g2","g3","g4","g5","g6""#;
    let body = format!(r#"{{"name":"many","flavor":"tiny","image":"img","secgroups":[{six}]}}"#);
    let bad = Some(ErrorCode::BadRequest);
    let b = expect(
        &f,
        &acme,
        "POST",
        "/v1/instances",
        Some(&body),
        S::BAD_REQUEST,
        bad,
    )
    .await;
    assert!(b.contains("at most 5 security groups"), "{b}");
    let not_found = Some(ErrorCode::NotFound);
    expect(
        &f,
        &acme,
        "GET",
        "/v1/instances/many",
        None,
        S::NOT_FOUND,
        not_found,
    )
    .await;
    let body = r#"{"name":"few","flavor":"tiny","image":"img"}"#;
    expect(
        &f,
        &acme,
        "POST",
        "/v1/instances",
        Some(body),
        S::ACCEPTED,
        None,
    )
    .await;
    let set = "/v1/instances/few/secgroups";
    let body = format!(r#"{{"secgroups":[{six}]}}"#);
    expect(&f, &acme, "PUT", set, Some(&body), S::BAD_REQUEST, bad).await;
    let b = expect(&f, &acme, "GET", "/v1/secgroups/default", None, S::OK, None).await;
    let default: SecurityGroupView = serde_json::from_str(&b).expect("default");
    assert_eq!(default.members, 1, "few stays in default");
}
