//! Keyset paging of listings on SQLite and (with `NIMBUS_TEST_POSTGRES_URL`) PostgreSQL:
//! every row exactly once while rows come and go between pages, in a stable order, and
//! never another project's rows.

use crate::testing::{new_instance, pick, project, stores};
use crate::{KeyPart, Page, PageKey, PageRequest, Scope, Store, StoreError};
use std::collections::HashSet;
use uuid::Uuid;

async fn add_instance(s: &Store, project: &str, name: &str) -> Uuid {
    let (inst, op) = new_instance(project, name);
    s.insert_instance(&inst, &op, pick).await.expect("insert");
    inst.id
}

async fn instance_page(s: &Store, scope: &Scope, page: &PageRequest) -> Page<Uuid> {
    s.list_instances_page(scope, page)
        .await
        .expect("page")
        .map(|i| i.id)
}

#[tokio::test]
async fn pages_cover_every_row_once_while_rows_come_and_go() {
    for (s, _d) in stores().await {
        project(&s, "acme").await;
        project(&s, "beta").await;
        let mut expected = Vec::new();
        for i in 0..23 {
            expected.push(add_instance(&s, "acme", &format!("a{i}")).await);
        }
        let foreign: HashSet<Uuid> = [
            add_instance(&s, "beta", "b0").await,
            add_instance(&s, "beta", "b1").await,
        ]
        .into();
        let acme = Scope::project("acme");

        let mut seen = Vec::new();
        let mut page = PageRequest::first(4);
        let mut pages = 0;
        loop {
            let got = instance_page(&s, &acme, &page).await;
            assert!(got.items.len() <= 4, "a page holds at most its limit");
            seen.extend(got.items.iter().copied());
            pages += 1;
            // Between pages: a new instance (it sorts last: it must be listed once), and
            // the deletion of one not yet listed (it must simply not appear).
            if pages == 2 {
                expected.push(add_instance(&s, "acme", "late").await);
                let gone = expected.remove(20);
                s.delete_instance_row(gone).await.expect("delete");
            }
            match got.next {
                Some(k) => page.after = Some(k),
                None => break,
            }
            assert!(pages < 100, "paging does not end");
        }
        assert_eq!(seen, expected, "every row once, oldest first");
        assert!(seen.iter().all(|id| !foreign.contains(id)), "scoped");

        // The whole listing of every project in one page; a page as long as what is left
        // says there is nothing more.
        let all = instance_page(&s, &Scope::All, &PageRequest::first(1000)).await;
        assert_eq!(all.items.len(), expected.len() + foreign.len());
        assert_eq!(all.next, None);
        let exact = instance_page(&s, &acme, &PageRequest::first(expected.len() as u32)).await;
        assert_eq!(exact.next, None);
    }
}

#[tokio::test]
async fn a_forged_key_is_refused_before_the_database() {
    for (s, _d) in stores().await {
        for key in [
            vec![KeyPart::Int(1), KeyPart::Text("x".into())],
            vec![KeyPart::Text("2026-01-01T00:00:00Z".into())],
        ] {
            let page = PageRequest {
                limit: 10,
                after: Some(PageKey(key)),
            };
            let err = s.list_instances_page(&Scope::All, &page).await;
            assert!(matches!(err, Err(StoreError::BadPageKey)), "{err:?}");
        }
    }
}
