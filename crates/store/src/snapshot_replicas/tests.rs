use crate::snapshots::tests::{instance, snapshot};
use crate::testing::controller;
use crate::testing::{host_record, stores};
use crate::{HostRecord, Store};
use nimbus_api::SnapshotState;
use std::time::Duration;
use uuid::Uuid;

async fn replicated(s: &Store, vm: Uuid) -> Vec<Uuid> {
    let got = s.replicated_snapshots(vm).await.expect("replicated");
    got.into_iter().map(|r| r.id).collect()
}

fn host(name: &str, shared: Option<&str>) -> HostRecord {
    HostRecord {
        shared_storage: shared.map(str::to_string),
        ..host_record(name, 4, 4096)
    }
}

async fn on_local_host(s: &Store) {
    s.upsert_host(&host("host1", None)).await.expect("host");
}

#[tokio::test]
async fn only_ha_instances_on_local_disks_are_replicated_and_the_latest_replica_wins() {
    for (s, _) in stores().await {
        on_local_host(&s).await;
        let ha = instance(&s, "db1").await;
        let plain = instance(&s, "web1").await;
        s.set_instance_ha(ha.id, true, 500).await.expect("ha");
        let s1 = snapshot(&s, &ha, "s1").await;
        snapshot(&s, &plain, "p1").await;
        assert_eq!(
            s.instances_to_replicate().await.expect("list"),
            vec![(ha.id, "host1".to_string())],
            "the HA instance only"
        );
        assert!(s
            .replicated_snapshots(ha.id)
            .await
            .expect("replicated")
            .is_empty());

        s.mark_snapshot_replicated(s1, 1234).await.expect("mark");
        assert!(s.instances_to_replicate().await.expect("list").is_empty());
        let got = s.get_snapshot_by_id(s1).await.expect("get");
        let at = got.replicated_at.expect("replicated");
        assert_eq!(got.view().replica_bytes, 1234);
        // Marking again keeps the first time.
        s.mark_snapshot_replicated(s1, 1).await.expect("again");
        let again = s.get_snapshot_by_id(s1).await.expect("get");
        assert_eq!((again.replicated_at, again.replica_bytes), (Some(at), 1234));

        // A newer snapshot not replicated yet is not what a restart chooses from; once
        // replicated it comes first.
        let s2 = snapshot(&s, &ha, "s2").await;
        assert_eq!(replicated(&s, ha.id).await, [s1]);
        s.mark_snapshot_replicated(s2, 10).await.expect("mark");
        assert_eq!(replicated(&s, ha.id).await, [s2, s1]);
        assert_eq!(s.all_snapshot_ids().await.expect("ids").len(), 3);

        // Not from a host that is down; on shared storage nothing is replicated.
        snapshot(&s, &ha, "s3").await;
        assert_eq!(s.instances_to_replicate().await.expect("list").len(), 1);
        s.mark_host_down("host1", chrono::Utc::now())
            .await
            .expect("down");
        assert!(s.instances_to_replicate().await.expect("list").is_empty());
        s.mark_host_back("host1").await.expect("back");
        assert_eq!(s.instances_to_replicate().await.expect("list").len(), 1);
        s.upsert_host(&host("host1", Some("/shared")))
            .await
            .expect("host");
        assert!(s.instances_to_replicate().await.expect("list").is_empty());
    }
}

/// What an HA restart chooses from: the replicated snapshots newest first, each with its live
/// holders; a holder whose controller died counts no more. After the restart, the snapshots
/// not sent to the new host go `error`, the others stay.
#[tokio::test]
async fn a_restart_sees_which_replicas_live_controllers_hold_and_fails_the_snapshots_left_behind() {
    const TTL: Duration = Duration::from_secs(30);
    for (s, _) in stores().await {
        on_local_host(&s).await;
        let ha = instance(&s, "db1").await;
        s.set_instance_ha(ha.id, true, 500).await.expect("ha");
        let (s1, s2) = (snapshot(&s, &ha, "s1").await, snapshot(&s, &ha, "s2").await);
        let s3 = snapshot(&s, &ha, "s3").await;
        for id in [s1, s2] {
            s.mark_snapshot_replicated(id, 10).await.expect("mark");
        }
        assert_eq!(replicated(&s, ha.id).await, [s2, s1], "s3 has no replica");
        let a = controller(&s, TTL).await;
        s.add_replica_holder(s1, a).await.expect("a holds s1");
        s.add_replica_holder(s2, a).await.expect("a holds s2");
        let holders = |id| {
            let s = s.clone();
            async move {
                s.live_replica_holders(id, TTL)
                    .await
                    .expect("holders")
                    .len()
            }
        };
        assert_eq!((holders(s2).await, holders(s1).await), (1, 1));
        // a dies; b (on SQLite: the one controller after a) holds only s1: s2 has no live
        // holder, s1 one.
        s.unregister_controller(a).await.expect("a gone");
        let b = controller(&s, TTL).await;
        s.add_replica_holder(s1, b).await.expect("b holds s1");
        assert_eq!((holders(s2).await, holders(s1).await), (0, 1));

        // Restarted from s1 (the set sent: s1 only).
        assert_eq!(
            s.fail_snapshots_not_sent(ha.id, &[s1]).await.expect("fail"),
            2
        );
        let state = |id| {
            let s = s.clone();
            async move { s.get_snapshot_by_id(id).await.expect("get").state }
        };
        assert_eq!(state(s1).await, SnapshotState::Available);
        assert_eq!(state(s2).await, SnapshotState::Error);
        assert_eq!(state(s3).await, SnapshotState::Error);
        assert_eq!(replicated(&s, ha.id).await, [s1]);
        assert_eq!(
            s.fail_snapshots_not_sent(ha.id, &[s1])
                .await
                .expect("again"),
            0,
            "idempotent"
        );
    }
}
