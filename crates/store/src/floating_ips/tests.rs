//! Floating IPs on SQLite and (with `NIMBUS_TEST_POSTGRES_URL`) PostgreSQL.

use crate::testing::{default_network, new_instance, pick, stores};
use crate::{PageRequest, Scope, Store, StoreError};
use nimbus_api::QuotaLimits;

fn pool() -> Box<dyn Iterator<Item = String>> {
    Box::new((1..=3).map(|i| format!("192.0.2.{i}")))
}

async fn project(s: &Store, name: &str, floating_ips: Option<u64>) {
    let limits = QuotaLimits {
        floating_ips,
        ..QuotaLimits::UNLIMITED
    };
    s.create_project(name, None, &limits, &default_network())
        .await
        .expect("project");
}

#[tokio::test]
async fn allocate_attach_detach_release_within_the_quota_and_the_project() {
    for (s, _d) in stores().await {
        project(&s, "acme", Some(2)).await;
        project(&s, "globex", None).await;
        let (web, op) = new_instance("acme", "web1");
        s.insert_instance(&web, &op, pick).await.expect("web1");
        let (other, op2) = new_instance("acme", "web2");
        s.insert_instance(&other, &op2, pick).await.expect("web2");
        let acme = Scope::project("acme");

        let a = s.allocate_floating_ip("acme", pool).await.expect("first");
        let b = s.allocate_floating_ip("acme", pool).await.expect("second");
        assert_eq!(
            (a.address.as_str(), b.address.as_str()),
            ("192.0.2.1", "192.0.2.2")
        );
        let over = s.allocate_floating_ip("acme", pool).await;
        assert!(
            matches!(over, Err(StoreError::QuotaExceeded(ref q)) if q.resource == "floating_ips"),
            "{over:?}"
        );
        let g = s
            .allocate_floating_ip("globex", pool)
            .await
            .expect("globex");
        assert_eq!(g.address, "192.0.2.3");
        let empty = s.allocate_floating_ip("globex", pool).await;
        assert!(matches!(empty, Err(StoreError::Conflict(ref m)) if m.contains("exhausted")));

        // Another project's address does not exist for acme.
        let theirs = s.attach_floating_ip(&acme, &g.address, web.id).await;
        assert!(
            matches!(theirs, Err(StoreError::NotFound { .. })),
            "{theirs:?}"
        );
        let f = s
            .attach_floating_ip(&acme, &a.address, web.id)
            .await
            .expect("attach");
        assert_eq!(f.instance.as_deref(), Some("web1"));
        assert_eq!(
            s.floating_ip_of(web.id).await.expect("of"),
            Some(a.address.clone())
        );
        // Attached elsewhere; an instance with one already; release while attached.
        let e = s.attach_floating_ip(&acme, &a.address, other.id).await;
        assert!(
            matches!(e, Err(StoreError::Conflict(ref m)) if m.contains("\"web1\"")),
            "{e:?}"
        );
        let e = s.attach_floating_ip(&acme, &b.address, web.id).await;
        assert!(
            matches!(e, Err(StoreError::Conflict(ref m)) if m.contains("has a floating IP")),
            "{e:?}"
        );
        let e = s.release_floating_ip(&acme, &a.address).await;
        assert!(matches!(e, Err(StoreError::Conflict(ref m)) if m.contains("detach it first")));
        s.attach_floating_ip(&acme, &a.address, web.id)
            .await
            .expect("again: no change");

        // Detach, release; deleting an instance detaches its address.
        s.detach_floating_ip(&acme, &a.address)
            .await
            .expect("detach");
        let e = s.detach_floating_ip(&acme, &a.address).await;
        assert!(matches!(e, Err(StoreError::Conflict(ref m)) if m.contains("not attached")));
        s.release_floating_ip(&acme, &a.address)
            .await
            .expect("release");
        s.attach_floating_ip(&acme, &b.address, other.id)
            .await
            .expect("attach b");
        s.delete_instance_row(other.id).await.expect("delete web2");
        let left = s.list_floating_ips(&acme).await.expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].address.as_str(), left[0].instance_id),
            ("192.0.2.2", None)
        );
        assert_eq!(s.quota_usage("acme").await.expect("usage").floating_ips, 1);
    }
}

#[tokio::test]
async fn pages_list_every_address_once_and_only_the_projects_own() {
    fn pool() -> Box<dyn Iterator<Item = String>> {
        Box::new((1..=9).map(|i| format!("192.0.2.{i}")))
    }
    for (s, _d) in stores().await {
        project(&s, "acme", None).await;
        project(&s, "globex", None).await;
        let mut mine = Vec::new();
        for i in 0..7 {
            let owner = if i % 3 == 1 { "globex" } else { "acme" };
            let f = s.allocate_floating_ip(owner, pool).await.expect("allocate");
            if owner == "acme" {
                mine.push(f.address);
            }
        }
        let acme = Scope::project("acme");
        let mut listed = Vec::new();
        let mut page = PageRequest::first(2);
        loop {
            let got = s.list_floating_ips_page(&acme, &page).await.expect("page");
            assert!(got.items.len() <= 2);
            listed.extend(got.items.into_iter().map(|f| f.address));
            match got.next {
                Some(after) => page.after = Some(after),
                None => break,
            }
            assert!(listed.len() <= mine.len(), "paging does not end");
        }
        assert_eq!(listed, mine, "every own address once, in address order");
        let all = s.list_floating_ips(&acme).await.expect("list");
        let unpaged: Vec<String> = all.into_iter().map(|f| f.address).collect();
        assert_eq!(listed, unpaged, "the same order as the full listing");
    }
}
