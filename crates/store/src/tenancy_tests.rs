//! Tenancy in the store: scoping of every project-owned query, quotas under concurrency,
//! token expiry and revocation, project deletion. Run on SQLite and (with
//! `NIMBUS_TEST_POSTGRES_URL`) PostgreSQL.

use crate::testing::{new_instance, pick, stores};
use crate::{NewMigration, NewToken, QuotaExceeded, Scope, Store, StoreError};
use chrono::{Duration, Utc};
use nimbus_api::{AuditEntry, QuotaLimits};
use uuid::Uuid;

async fn project(s: &Store, name: &str, limits: QuotaLimits) {
    s.create_project(name, None, &limits, &crate::testing::default_network())
        .await
        .expect("project");
}

#[tokio::test]
async fn every_project_owned_query_is_scoped() {
    for (s, _d) in stores().await {
        project(&s, "acme", QuotaLimits::UNLIMITED).await;
        project(&s, "beta", QuotaLimits::UNLIMITED).await;
        let (a, a_op) = new_instance("acme", "web1");
        let (b, b_op) = new_instance("beta", "web1");
        s.insert_instance(&a, &a_op, pick).await.expect("insert a");
        s.insert_instance(&b, &b_op, pick).await.expect("insert b");
        let acme = Scope::project("acme");
        let beta = Scope::project("beta");

        // Same name in two projects: each sees its own, by name and by id.
        assert_eq!(s.get_instance(&acme, "web1").await.expect("a").id, a.id);
        assert_eq!(s.get_instance(&beta, "web1").await.expect("b").id, b.id);
        let cross = s.get_instance(&acme, &b.id.to_string()).await;
        assert!(
            matches!(cross, Err(StoreError::NotFound { .. })),
            "{cross:?}"
        );
        assert!(s.get_instance_by_id(&beta, a.id).await.is_err());
        assert!(matches!(
            s.get_instance(&Scope::All, "web1").await,
            Err(StoreError::Conflict(_))
        ));
        let listed: Vec<Uuid> = s
            .list_instances(&acme)
            .await
            .expect("list")
            .iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(listed, [a.id]);
        assert_eq!(s.list_instances(&Scope::All).await.expect("all").len(), 2);

        // Operations: show, list, cancel.
        assert!(s.get_operation(&acme, a_op.id).await.is_ok());
        assert!(s.get_operation(&acme, b_op.id).await.is_err());
        let ops: Vec<Uuid> = s
            .list_operations(&beta, 10)
            .await
            .expect("ops")
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(ops, [b_op.id]);
        assert!(matches!(
            s.request_cancel(&acme, b_op.id).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(
            !s.get_operation(&Scope::All, b_op.id)
                .await
                .expect("op")
                .cancel_requested
        );

        // Migrations.
        let m = NewMigration {
            id: Uuid::new_v4(),
            instance_id: a.id,
            project: "acme".into(),
            source: "host1".into(),
            target: "host2".into(),
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 2,
            max_downtime_ms: 50,
        };
        s.insert_migration(&m).await.expect("migration");
        assert!(s.get_migration(&acme, m.id).await.is_ok());
        assert!(s.get_migration(&beta, m.id).await.is_err());
        assert!(s.migrations_of(&beta, a.id).await.expect("of").is_empty());
        assert_eq!(s.migrations_of(&acme, a.id).await.expect("of").len(), 1);

        // Audit entries.
        for p in ["acme", "beta"] {
            s.insert_audit(&AuditEntry {
                id: Uuid::new_v4(),
                at: Utc::now(),
                token_id: Some("t".into()),
                token_name: None,
                project: Some(p.into()),
                method: "POST".into(),
                path: "/v1/instances".into(),
                action: "POST /v1/instances".into(),
                target: Some("web1".into()),
                status: 202,
                client_ip: None,
            })
            .await
            .expect("audit");
        }
        let seen = s.list_audit(&acme, None, 100).await.expect("audit");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].project.as_deref(), Some("acme"));
        assert_eq!(
            s.list_audit(&Scope::All, None, 100)
                .await
                .expect("all")
                .len(),
            2
        );
        let future = Utc::now() + Duration::hours(1);
        assert!(s
            .list_audit(&Scope::All, Some(future), 100)
            .await
            .expect("since")
            .is_empty());
    }
}

#[tokio::test]
async fn twenty_concurrent_creates_never_overshoot_the_quota() {
    for (s, _d) in stores().await {
        let limits = QuotaLimits {
            instances: Some(5),
            ..QuotaLimits::UNLIMITED
        };
        project(&s, "acme", limits).await;
        let creates = (0..20).map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let (n, op) = new_instance("acme", &format!("vm{i}"));
                s.insert_instance(&n, &op, pick).await
            })
        });
        let results = futures_join(creates).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let refused: Vec<&QuotaExceeded> = results
            .iter()
            .filter_map(|r| match r {
                Err(StoreError::QuotaExceeded(q)) => Some(q),
                _ => None,
            })
            .collect();
        assert_eq!(ok, 5, "{results:?}");
        assert_eq!(refused.len(), 15, "{results:?}");
        assert!(refused
            .iter()
            .all(|q| q.resource == "instances" && q.in_use == 5));
        assert_eq!(
            s.list_instances(&Scope::project("acme"))
                .await
                .expect("list")
                .len(),
            5
        );
        assert_eq!(s.quota_usage("acme").await.expect("usage").instances, 5);
        // Refused creates left no operation behind.
        assert_eq!(
            s.list_operations(&Scope::project("acme"), 100)
                .await
                .expect("ops")
                .len(),
            5
        );

        // vCPUs are counted too, and raising the limit lets the next one in.
        s.set_quota(
            "acme",
            &QuotaLimits {
                instances: Some(10),
                vcpus: Some(5),
                ..QuotaLimits::UNLIMITED
            },
        )
        .await
        .expect("set");
        let (n, op) = new_instance("acme", "vm-more");
        let e = s.insert_instance(&n, &op, pick).await;
        assert!(
            matches!(&e, Err(StoreError::QuotaExceeded(q)) if q.resource == "vcpus"),
            "{e:?}"
        );
        s.set_quota(
            "acme",
            &QuotaLimits {
                vcpus: Some(6),
                ..QuotaLimits::UNLIMITED
            },
        )
        .await
        .expect("set");
        s.insert_instance(&n, &op, pick).await.expect("fits now");
        assert_eq!(s.quota("acme").await.expect("quota").vcpus, Some(6));

        // The default project has no quota row: unlimited.
        assert_eq!(
            s.quota("default").await.expect("quota"),
            QuotaLimits::UNLIMITED
        );
    }
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn instances_need_an_existing_project() {
    for (s, _d) in stores().await {
        let (n, op) = new_instance("ghost", "web1");
        let e = s.insert_instance(&n, &op, pick).await;
        assert!(
            matches!(
                e,
                Err(StoreError::NotFound {
                    kind: "project",
                    ..
                })
            ),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn tokens_expire_and_revoke_and_are_scoped() {
    for (s, _d) in stores().await {
        project(&s, "acme", QuotaLimits::UNLIMITED).await;
        let now = Utc::now();
        let t = s
            .insert_token(&NewToken {
                id: "tok-1",
                name: Some("alice"),
                hash: "h1",
                role: "member",
                project: "acme",
                expires_at: Some(now + Duration::hours(1)),
            })
            .await
            .expect("insert");
        assert!(t.is_valid_at(now));
        assert!(!t.is_valid_at(now + Duration::hours(2)), "expired");
        assert_eq!(
            s.token_by_hash("h1").await.expect("get").map(|t| t.id),
            Some("tok-1".into())
        );
        assert!(s
            .get_token(&Scope::project("default"), "tok-1")
            .await
            .is_err());
        assert!(s
            .revoke_token(&Scope::project("default"), "tok-1")
            .await
            .is_err());
        let revoked = s
            .revoke_token(&Scope::project("acme"), "tok-1")
            .await
            .expect("revoke");
        let when = revoked.revoked_at.expect("revoked");
        assert!(!revoked.is_valid_at(now));
        let again = s.revoke_token(&Scope::All, "tok-1").await.expect("again");
        assert_eq!(
            again.revoked_at,
            Some(when),
            "the first revocation time stays"
        );
        assert_eq!(
            s.list_tokens(&Scope::project("acme"))
                .await
                .expect("list")
                .len(),
            1
        );
        assert!(s
            .list_tokens(&Scope::project("default"))
            .await
            .expect("list")
            .is_empty());
    }
}

#[tokio::test]
async fn a_project_with_instances_cannot_be_deleted_and_deletion_revokes_tokens() {
    for (s, _d) in stores().await {
        project(&s, "acme", QuotaLimits::NEW_PROJECT).await;
        s.insert_token(&NewToken {
            id: "tok-2",
            name: None,
            hash: "h2",
            role: "reader",
            project: "acme",
            expires_at: None,
        })
        .await
        .expect("token");
        let (n, op) = new_instance("acme", "web1");
        s.insert_instance(&n, &op, pick).await.expect("insert");
        let e = s.delete_project("acme").await;
        assert!(
            matches!(&e, Err(StoreError::Conflict(m)) if m.contains("1 instance")),
            "{e:?}"
        );
        s.delete_instance_row(n.id).await.expect("delete");
        s.delete_project("acme").await.expect("delete project");
        assert!(s.get_project("acme").await.is_err());
        assert_eq!(
            s.quota("acme").await.expect("quota"),
            QuotaLimits::UNLIMITED
        );
        let t = s
            .token_by_hash("h2")
            .await
            .expect("get")
            .expect("kept for the record");
        assert!(t.revoked_at.is_some());
        let dup = s
            .create_project(
                "default",
                None,
                &QuotaLimits::UNLIMITED,
                &crate::testing::default_network(),
            )
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    }
}
