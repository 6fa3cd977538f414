//! Capacity claims from 20 concurrent callers at the edge, on every backend (PostgreSQL runs
//! them truly in parallel; without the host lock of `check_room` these tests fail there).

use crate::testing::{host_record, new_instance, pick, stores};
use crate::{Allocation, HostClaim, HostRecord, NewMigration, Store, StoreError};
use nimbus_api::{PlacementPolicy, QuotaLimits};
use uuid::Uuid;

const CALLERS: usize = 20;
/// Room for exactly this many of `new_instance`'s instances (1 vCPU, 512 MiB, 2 GiB).
const ROOM: usize = 5;

fn host(name: &str) -> HostRecord {
    host_record(name, 64, 512 * ROOM as u64)
}

fn claim(host: &str, spread_group: Option<Uuid>) -> HostClaim {
    HostClaim {
        host: host.into(),
        offered: Allocation {
            vcpus: 64,
            memory_mib: 512 * ROOM as u64,
            disk_gib: 1000,
            instances: 0,
        },
        spread_group,
    }
}

/// A project with `CALLERS` unplaced instances (members of `group` if given); their ids.
async fn instances(s: &Store, group: Option<Uuid>) -> Vec<Uuid> {
    s.create_project(
        "tenant",
        None,
        &QuotaLimits::UNLIMITED,
        &crate::testing::default_network(),
    )
    .await
    .ok();
    let mut ids = Vec::new();
    for i in 0..CALLERS {
        let (mut n, op) = new_instance("tenant", &format!("vm{i}-{}", Uuid::new_v4().simple()));
        n.placement_group = group;
        ids.push(s.insert_instance(&n, &op, pick).await.expect("insert").id);
    }
    ids
}

/// Runs the claims at once; how many succeeded, and that every other one said `NoRoom`.
async fn count_claimed<F, Fut>(ids: &[Uuid], f: F) -> usize
where
    F: Fn(Uuid) -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
{
    let tasks: Vec<_> = ids.iter().map(|id| tokio::spawn(f(*id))).collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(()) => ok += 1,
            Err(StoreError::NoRoom { .. }) => {}
            Err(e) => panic!("a claim failed otherwise than NoRoom: {e}"),
        }
    }
    ok
}

async fn held(s: &Store, host: &str) -> Allocation {
    s.allocations()
        .await
        .expect("allocations")
        .get(host)
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_placements_never_overfill_a_host() {
    for (s, _d) in stores().await {
        s.upsert_host(&host("h1")).await.expect("host");
        let ids = instances(&s, None).await;
        let ok = count_claimed(&ids, |id| {
            let s = s.clone();
            async move { s.claim_placement(id, &claim("h1", None)).await }
        })
        .await;
        assert_eq!(ok, ROOM);
        assert_eq!(held(&s, "h1").await.memory_mib, 512 * ROOM as u64);
        // A claim that succeeded is idempotent: running it again changes nothing.
        let placed = s
            .list_instances(&crate::Scope::All)
            .await
            .expect("list")
            .into_iter()
            .find(|i| i.host.is_some())
            .expect("one placed");
        s.claim_placement(placed.id, &claim("h1", None))
            .await
            .expect("replayed claim");
        assert_eq!(held(&s, "h1").await.instances, ROOM as u32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_never_overfill_their_target() {
    for (s, _d) in stores().await {
        for h in ["h1", "h2"] {
            s.upsert_host(&host(h)).await.expect("host");
        }
        let ids = instances(&s, None).await;
        for id in &ids {
            s.reserve_host(*id, "elsewhere").await.expect("place");
        }
        let ok = count_claimed(&ids, |id| {
            let s = s.clone();
            async move {
                let m = NewMigration {
                    id: Uuid::new_v4(),
                    instance_id: id,
                    project: "tenant".into(),
                    source: "elsewhere".into(),
                    target: "h2".into(),
                    vcpus: 1,
                    memory_mib: 512,
                    disk_gib: 2,
                    max_downtime_ms: 300,
                };
                s.claim_migration(&m, &claim("h2", None)).await
            }
        })
        .await;
        assert_eq!(ok, ROOM);
        assert_eq!(held(&s, "h2").await.memory_mib, 512 * ROOM as u64);
        // Moves (restarts elsewhere) compete with the migrations' reservations: none fits.
        let r = s.claim_move(ids[0], "elsewhere", &claim("h2", None)).await;
        assert!(matches!(r, Err(StoreError::NoRoom { .. })), "{r:?}");
        let ok = count_claimed(&ids, |id| {
            let s = s.clone();
            async move { s.claim_move(id, "elsewhere", &claim("h1", None)).await }
        })
        .await;
        assert_eq!(ok, ROOM);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_members_of_a_spread_group_take_distinct_hosts() {
    for (s, _d) in stores().await {
        s.upsert_host(&host("h1")).await.expect("host");
        s.create_project(
            "tenant",
            None,
            &QuotaLimits::UNLIMITED,
            &crate::testing::default_network(),
        )
        .await
        .expect("project");
        let g = s
            .insert_placement_group("tenant", "web", PlacementPolicy::Spread)
            .await
            .expect("group");
        let ids = instances(&s, Some(g.id)).await;
        let ok = count_claimed(&ids, |id| {
            let s = s.clone();
            async move { s.claim_placement(id, &claim("h1", Some(g.id))).await }
        })
        .await;
        assert_eq!(ok, 1, "exactly one member of the spread group on h1");
    }
}
