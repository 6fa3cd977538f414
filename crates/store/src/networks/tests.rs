//! Networks and ports on SQLite and (with `NIMBUS_TEST_POSTGRES_URL`) PostgreSQL.

use crate::testing::{
    database_before, default_network, new_instance, old_project, pick, stores, upgraded,
};
use crate::{NewNetwork, NicPlan, Scope, Store, StoreError, FIRST_VNI};
use nimbus_api::QuotaLimits;

fn net(name: &str, cidr: &str) -> NewNetwork {
    NewNetwork {
        name: name.into(),
        cidr: cidr.into(),
        gateway: cidr.replace(".0/", ".1/"),
    }
}

async fn project(s: &Store, name: &str) {
    s.create_project(name, None, &QuotaLimits::UNLIMITED, &default_network())
        .await
        .expect("project");
}

#[tokio::test]
async fn the_migration_gives_the_default_project_its_default_network() {
    for (s, _d) in stores().await {
        let nets = s
            .list_networks(&Scope::project("default"))
            .await
            .expect("list");
        assert_eq!(nets.len(), 1);
        assert_eq!(
            (nets[0].name.as_str(), nets[0].cidr.as_str()),
            ("default", "10.200.0.0/16")
        );
        assert_eq!(nets[0].vni, FIRST_VNI);
    }
}

#[tokio::test]
async fn networks_are_per_project_with_unique_vnis() {
    for (s, _d) in stores().await {
        project(&s, "acme").await;
        project(&s, "globex").await;
        let no_overlap = |_: &str| false;
        let a = s
            .create_network("acme", &net("backend", "10.10.0.0/24"), no_overlap)
            .await
            .expect("acme backend");
        // The same name and CIDR in another project is fine.
        let g = s
            .create_network("globex", &net("backend", "10.10.0.0/24"), no_overlap)
            .await
            .expect("globex backend");
        let all = s.list_networks(&Scope::All).await.expect("all");
        let mut vnis: Vec<u32> = all.iter().map(|n| n.vni).collect();
        vnis.sort_unstable();
        vnis.dedup();
        assert_eq!(vnis.len(), 5, "{all:?}");
        assert_ne!(a.vni, g.vni);
        let again = s
            .create_network("acme", &net("backend", "10.11.0.0/24"), no_overlap)
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        let overlap = s
            .create_network("acme", &net("front", "10.10.0.0/25"), |c| {
                c == "10.10.0.0/24"
            })
            .await;
        assert!(
            matches!(overlap, Err(StoreError::Conflict(_))),
            "{overlap:?}"
        );
        assert!(matches!(
            s.get_network(&Scope::project("globex"), "nope").await,
            Err(StoreError::NotFound { .. })
        ));
        let acme_nets = s
            .list_networks(&Scope::project("acme"))
            .await
            .expect("list");
        assert_eq!(acme_nets.len(), 2);
        assert!(acme_nets.iter().all(|n| n.project == "acme"));
        let missing = s
            .create_network("nobody", &net("x", "10.1.0.0/24"), no_overlap)
            .await;
        assert!(
            matches!(missing, Err(StoreError::NotFound { .. })),
            "{missing:?}"
        );
    }
}

#[tokio::test]
async fn ports_claim_addresses_per_network_and_block_deletes() {
    for (s, _d) in stores().await {
        project(&s, "acme").await;
        project(&s, "globex").await;
        s.create_network("acme", &net("backend", "10.10.0.0/24"), |_| false)
            .await
            .expect("backend");
        // Two projects' default networks overlap: the same address in each.
        let (a, a_op) = new_instance("acme", "web1");
        let (g, g_op) = new_instance("globex", "web1");
        let a = s.insert_instance(&a, &a_op, pick).await.expect("a");
        let g = s.insert_instance(&g, &g_op, pick).await.expect("g");
        assert_eq!(a.ip, g.ip);
        // A fixed address, then the same one again: refused, and nothing is left behind.
        let (mut b, b_op) = new_instance("acme", "db1");
        b.nics = vec![
            NicPlan {
                network: "backend".into(),
                address: Some(("10.10.0.20/24".into(), "52:54:0a:0a:00:14".into())),
            },
            NicPlan {
                network: "default".into(),
                address: None,
            },
        ];
        let b_rec = s.insert_instance(&b, &b_op, pick).await.expect("b");
        assert_eq!(b_rec.ip.as_deref(), Some("10.10.0.20/24"));
        let ports = s.instance_ports(b.id).await.expect("ports");
        assert_eq!(ports.len(), 2);
        assert_eq!((ports[0].network.as_str(), ports[0].nic), ("backend", 0));
        assert_eq!(ports[1].network, "default");
        let (mut c, c_op) = new_instance("acme", "db2");
        c.nics = vec![b.nics[0].clone()];
        let taken = s.insert_instance(&c, &c_op, pick).await;
        assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
        assert!(s.get_instance_by_id(&Scope::All, c.id).await.is_err());
        // Another project's network is not found.
        c.nics = vec![NicPlan {
            network: "backend".into(),
            address: None,
        }];
        c.project = "globex".into();
        let foreign = s.insert_instance(&c, &c_op, pick).await;
        assert!(
            matches!(foreign, Err(StoreError::NotFound { .. })),
            "{foreign:?}"
        );
        // In use: not deleted; free again after the instance goes.
        let busy = s.delete_network("acme", "backend").await;
        assert!(matches!(busy, Err(StoreError::Conflict(_))), "{busy:?}");
        s.delete_instance_row(b.id).await.expect("delete b");
        assert!(s.instance_ports(b.id).await.expect("ports").is_empty());
        s.delete_network("acme", "backend").await.expect("delete");
        assert!(matches!(
            s.delete_network("acme", "backend").await,
            Err(StoreError::NotFound { .. })
        ));
        let acme_ports = s.list_ports(&Scope::project("acme")).await.expect("ports");
        assert_eq!(acme_ports.len(), 1);
        assert_eq!(acme_ports[0].instance_id, a.id);
        let view = a.view_with(&acme_ports);
        assert_eq!(view.nics.len(), 1);
        assert_eq!(view.nics[0].network, "default");
    }
}

/// The upgrade: a database at migration 0006 with instances of two projects on the flat
/// network; after 0007 each project has its default network and each instance a port on it
/// with its IP and MAC (SQLite; the SQL is the same on PostgreSQL).
#[tokio::test]
async fn the_upgrade_moves_instances_onto_their_default_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = database_before(dir.path(), "0007").await;
    old_project(&pool, "acme").await;
    for (id, project, ip) in [
        (
            "00000000-0000-0000-0000-000000000001",
            "default",
            "10.200.0.10/16",
        ),
        (
            "00000000-0000-0000-0000-000000000002",
            "acme",
            "10.200.0.11/16",
        ),
    ] {
        sqlx::query(
            "INSERT INTO instances (id, project, name, flavor, image, vcpus, memory_mib, disk_gib, \
             state, generation, agent_generation, created_at, updated_at, ip, mac) \
             VALUES ($1, $2, 'web1', 'small', 'default', 1, 512, 2, 'running', 1, 0, \
             '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', $3, '52:54:0a:c8:00:0a')",
        )
        .bind(id)
        .bind(project)
        .bind(ip)
        .execute(&pool)
        .await
        .expect("instance");
    }

    let s = upgraded(pool, dir.path()).await;
    let ports = s.list_ports(&Scope::All).await.expect("ports");
    let got: Vec<(&str, &str, &str)> = ports
        .iter()
        .map(|p| (p.network.as_str(), p.ip.as_str(), p.mac.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("default", "10.200.0.10/16", "52:54:0a:c8:00:0a"),
            ("default", "10.200.0.11/16", "52:54:0a:c8:00:0a")
        ]
    );
    let acme = s.list_ports(&Scope::project("acme")).await.expect("acme");
    assert_eq!(acme.len(), 1);
    let nets = s.list_networks(&Scope::All).await.expect("networks");
    assert_eq!(nets.len(), 2);
    assert_ne!(nets[0].vni, nets[1].vni);
    assert!(nets
        .iter()
        .all(|n| n.ports == 1 && n.cidr == "10.200.0.0/16"));
}
