//! Security groups on SQLite and (with `NIMBUS_TEST_POSTGRES_URL`) PostgreSQL.

use crate::testing::{
    database_before, default_network, new_instance, old_project, pick, stores, upgraded,
};
use crate::{NewRule, Scope, Store, StoreError};
use nimbus_api::{Direction, Protocol, QuotaLimits};

async fn project(s: &Store, name: &str) {
    s.create_project(name, None, &QuotaLimits::UNLIMITED, &default_network())
        .await
        .expect("project");
}

fn tcp_from(port: u16, cidr: Option<&str>, group: Option<&str>) -> NewRule {
    NewRule {
        direction: Direction::Ingress,
        protocol: Protocol::Tcp,
        port_min: Some(port),
        port_max: Some(port),
        cidr: cidr.map(str::to_string),
        group: group.map(str::to_string),
    }
}

#[tokio::test]
async fn projects_get_a_default_group_open_to_its_members_and_all_outbound() {
    for (s, _d) in stores().await {
        project(&s, "acme").await;
        for p in ["default", "acme"] {
            let g = s
                .get_secgroup(&Scope::project(p), "default")
                .await
                .expect("default group");
            let rules: Vec<_> = g
                .rules
                .iter()
                .map(|r| {
                    (
                        r.direction,
                        r.protocol,
                        r.cidr.as_deref(),
                        r.group.as_deref(),
                    )
                })
                .collect();
            assert_eq!(
                rules,
                [
                    (Direction::Ingress, Protocol::Any, None, Some("default")),
                    (Direction::Egress, Protocol::Any, Some("0.0.0.0/0"), None),
                ],
                "{p}"
            );
        }
        // An instance created without groups is in `default`; after its delete, in none.
        let (a, a_op) = new_instance("acme", "web1");
        s.insert_instance(&a, &a_op, pick).await.expect("a");
        assert_eq!(
            s.instance_secgroups(a.id).await.expect("groups"),
            ["default"]
        );
        let g = s.get_secgroup(&Scope::project("acme"), "default").await;
        assert_eq!(g.expect("default").members, 1);
        s.delete_instance_row(a.id).await.expect("delete");
        assert!(s.instance_secgroups(a.id).await.expect("groups").is_empty());
    }
}

#[tokio::test]
async fn groups_and_rules_stay_inside_their_project() {
    for (s, _d) in stores().await {
        project(&s, "acme").await;
        project(&s, "globex").await;
        let web = s.create_secgroup("acme", "web").await.expect("web");
        // A new group: no inbound, all outbound.
        assert_eq!(web.rules.len(), 1);
        assert_eq!(web.rules[0].direction, Direction::Egress);
        s.create_secgroup("globex", "web")
            .await
            .expect("same name elsewhere");
        s.create_secgroup("globex", "db").await.expect("globex db");
        let again = s.create_secgroup("acme", "web").await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");

        let ssh = s
            .add_secgroup_rule("acme", "web", &tcp_from(22, Some("0.0.0.0/0"), None))
            .await
            .expect("ssh");
        assert_eq!(
            (ssh.port_min, ssh.cidr.as_deref()),
            (Some(22), Some("0.0.0.0/0"))
        );
        let from_web = s
            .add_secgroup_rule("acme", "web", &tcp_from(80, None, Some("web")))
            .await
            .expect("from web");
        assert_eq!(from_web.group.as_deref(), Some("web"));
        // Another project's group is not found, as a remote group and as the group itself.
        let foreign = s
            .add_secgroup_rule("acme", "web", &tcp_from(5432, None, Some("db")))
            .await;
        assert!(
            matches!(foreign, Err(StoreError::NotFound { .. })),
            "{foreign:?}"
        );
        let foreign = s
            .add_secgroup_rule("acme", "db", &tcp_from(5432, Some("10.0.0.0/8"), None))
            .await;
        assert!(
            matches!(foreign, Err(StoreError::NotFound { .. })),
            "{foreign:?}"
        );
        assert!(matches!(
            s.delete_secgroup_rule("globex", "web", ssh.id).await,
            Err(StoreError::NotFound { .. })
        ));
        let acme: Vec<String> = s
            .list_secgroups(&Scope::project("acme"))
            .await
            .expect("list")
            .into_iter()
            .map(|g| g.name)
            .collect();
        assert_eq!(acme, ["default", "web"]);

        s.delete_secgroup_rule("acme", "web", ssh.id)
            .await
            .expect("delete rule");
        let web = s
            .get_secgroup(&Scope::project("acme"), "web")
            .await
            .expect("web");
        assert!(web.rules.iter().all(|r| r.id != ssh.id));
        assert!(web.rules.iter().any(|r| r.id == from_web.id));
    }
}

#[tokio::test]
async fn groups_in_use_are_not_deleted() {
    for (s, _d) in stores().await {
        project(&s, "acme").await;
        s.create_secgroup("acme", "web").await.expect("web");
        s.create_secgroup("acme", "db").await.expect("db");
        s.add_secgroup_rule("acme", "db", &tcp_from(5432, None, Some("web")))
            .await
            .expect("db from web");
        let (mut a, a_op) = new_instance("acme", "web1");
        a.secgroups = vec!["web".into()];
        s.insert_instance(&a, &a_op, pick).await.expect("a");
        // An unknown group refuses the create and leaves nothing behind.
        let (mut b, b_op) = new_instance("acme", "web2");
        b.secgroups = vec!["nope".into()];
        let bad = s.insert_instance(&b, &b_op, pick).await;
        assert!(matches!(bad, Err(StoreError::NotFound { .. })), "{bad:?}");
        assert!(s.get_instance_by_id(&Scope::All, b.id).await.is_err());

        let busy = s.delete_secgroup("acme", "web").await;
        assert!(matches!(busy, Err(StoreError::Conflict(_))), "{busy:?}");
        s.set_instance_secgroups("acme", a.id, &["default".into(), "db".into()])
            .await
            .expect("set");
        assert_eq!(
            s.instance_secgroups(a.id).await.expect("groups"),
            ["db", "default"]
        );
        // Still named by a rule of db.
        let named = s.delete_secgroup("acme", "web").await;
        assert!(matches!(named, Err(StoreError::Conflict(_))), "{named:?}");
        let rule = s
            .get_secgroup(&Scope::project("acme"), "db")
            .await
            .expect("db")
            .rules;
        let from_web = rule.iter().find(|r| r.group.is_some()).expect("rule");
        s.delete_secgroup_rule("acme", "db", from_web.id)
            .await
            .expect("rule");
        s.delete_secgroup("acme", "web").await.expect("delete web");
        assert!(matches!(
            s.get_secgroup(&Scope::project("acme"), "web").await,
            Err(StoreError::NotFound { .. })
        ));
        // Another project cannot set this instance's groups, nor use its own groups on it.
        project(&s, "globex").await;
        let foreign = s.set_instance_secgroups("globex", a.id, &[]).await;
        assert!(
            matches!(foreign, Err(StoreError::NotFound { .. })),
            "{foreign:?}"
        );
        let unknown = s
            .set_instance_secgroups("acme", a.id, &["web".into()])
            .await;
        assert!(
            matches!(unknown, Err(StoreError::NotFound { .. })),
            "{unknown:?}"
        );
        assert_eq!(
            s.instance_secgroups(a.id).await.expect("groups"),
            ["db", "default"],
            "a refused set changes nothing"
        );
    }
}

/// The upgrade: a database at migration 0007 with an instance of project `acme`; after 0012
/// the project has its `default` group and the instance is in it (SQLite; the SQL is the
/// same on PostgreSQL).
#[tokio::test]
async fn the_upgrade_puts_existing_instances_in_their_default_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = database_before(dir.path(), "0012").await;
    old_project(&pool, "acme").await;
    let id = "00000000-0000-0000-0000-000000000007";
    sqlx::query(
        "INSERT INTO instances (id, project, name, flavor, image, vcpus, memory_mib, disk_gib, \
         state, generation, agent_generation, created_at, updated_at, ip, mac) \
         VALUES ($1, 'acme', 'web1', 'small', 'default', 1, 512, 2, 'running', 1, 0, \
         '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', '10.200.0.10/16', \
         '52:54:0a:c8:00:0a')",
    )
    .bind(id)
    .execute(&pool)
    .await
    .expect("instance");

    let s = upgraded(pool, dir.path()).await;
    let id = uuid::Uuid::parse_str(id).expect("uuid");
    assert_eq!(s.instance_secgroups(id).await.expect("groups"), ["default"]);
    let g = s
        .get_secgroup(&Scope::project("acme"), "default")
        .await
        .expect("default group");
    assert_eq!((g.members, g.rules.len()), (1, 2));
    assert_eq!(g.rules[0].group.as_deref(), Some("default"));
    // Ids allocated after the migration's continue above them.
    s.create_secgroup("acme", "web").await.expect("web");
    let web = s
        .add_secgroup_rule("acme", "web", &tcp_from(22, Some("0.0.0.0/0"), None))
        .await;
    assert!(web.expect("rule").id > g.rules[1].id);
}
