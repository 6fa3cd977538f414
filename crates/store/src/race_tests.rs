//! Races between concurrent callers (issue 11), 20 at a time, on every backend. On SQLite
//! the pool has one connection, so writes are serialised anyway; PostgreSQL (CI sets
//! `NIMBUS_TEST_POSTGRES_URL`) runs them truly in parallel, and these tests fail there
//! without the row locks of `locks`.

use crate::testing::{image, new_instance, pick, stores};
use crate::{Scope, Store, StoreError};
use nimbus_api::QuotaLimits;
use std::collections::HashSet;

const CALLERS: usize = 20;

/// Creates `CALLERS` instances of `project` at once; the results in order.
async fn create_many(s: &Store, project: &str, image_name: &str) -> Vec<Result<(), StoreError>> {
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let s = s.clone();
            let (mut n, op) = new_instance(project, &format!("vm{i}"));
            n.image = image_name.into();
            tokio::spawn(async move { s.insert_instance(&n, &op, pick).await.map(|_| ()) })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

/// Creates in one project whose quota row is gone (created before quotas, or its insert
/// lost): the project row orders them, and every create gets an address of its own (before,
/// two took the same address and one failed as "an instance named ... already exists").
#[tokio::test]
async fn concurrent_creates_get_distinct_addresses() {
    for (s, _d) in stores().await {
        s.create_project(
            "tenant",
            None,
            &QuotaLimits::UNLIMITED,
            &crate::testing::default_network(),
        )
        .await
        .expect("project");
        sqlx::query("DELETE FROM quotas WHERE project = $1")
            .bind("tenant")
            .execute(s.pool())
            .await
            .expect("drop quota");
        for r in create_many(&s, "tenant", "default").await {
            r.expect("every create succeeds");
        }
        let all = s
            .list_instances(&Scope::project("tenant"))
            .await
            .expect("list");
        let ips: HashSet<_> = all.iter().filter_map(|i| i.ip.clone()).collect();
        assert_eq!((all.len(), ips.len()), (CALLERS, CALLERS));
    }
}

/// Deleting a project while instances are created in it: either the delete is refused, or
/// no instance was created in the deleted project.
#[tokio::test]
async fn project_delete_and_creates_do_not_interleave() {
    for (s, _d) in stores().await {
        for round in 0..5 {
            let project = format!("race{round}");
            s.create_project(
                &project,
                None,
                &QuotaLimits::UNLIMITED,
                &crate::testing::default_network(),
            )
            .await
            .expect("project");
            // A project without a quota row (created before quotas, or its quota insert
            // lost): then nothing but the project row can order the two.
            sqlx::query("DELETE FROM quotas WHERE project = $1")
                .bind(&project)
                .execute(s.pool())
                .await
                .expect("drop quota");
            let deleter = {
                let (s, p) = (s.clone(), project.clone());
                tokio::spawn(async move { s.delete_project(&p).await })
            };
            let _ = create_many(&s, &project, "default").await;
            let deleted = deleter.await.expect("join").is_ok();
            let left = s
                .list_instances(&Scope::project(&project))
                .await
                .expect("list");
            if deleted {
                assert!(
                    left.is_empty(),
                    "round {round}: {} instance(s) in a deleted project",
                    left.len()
                );
            }
        }
    }
}

/// Deleting an image while instances are created from it: either the delete is refused,
/// or no instance uses the deleted image.
#[tokio::test]
async fn image_delete_and_creates_do_not_interleave() {
    for (s, _d) in stores().await {
        for round in 0..5 {
            let name = format!("img{round}");
            s.create_image(&image(&name), 0).await.expect("image");
            let project = format!("p{round}");
            s.create_project(
                &project,
                None,
                &QuotaLimits::UNLIMITED,
                &crate::testing::default_network(),
            )
            .await
            .expect("project");
            let deleter = {
                let (s, n) = (s.clone(), name.clone());
                tokio::spawn(async move { s.delete_image(&n, &Scope::All).await })
            };
            let _ = create_many(&s, &project, &name).await;
            let deleted = deleter.await.expect("join").is_ok();
            let users = s
                .list_instances(&Scope::All)
                .await
                .expect("list")
                .into_iter()
                .filter(|i| i.image == name)
                .count();
            if deleted {
                assert_eq!(users, 0, "round {round}: instances of a deleted image");
            }
        }
    }
}
