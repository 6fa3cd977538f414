use crate::snapshots::tests::{instance, snapshot};
use crate::testing::{host_record, stores};
use crate::{HostRecord, Store};

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
            .latest_replicated_snapshot(ha.id)
            .await
            .expect("latest")
            .is_none());

        s.mark_snapshot_replicated(s1, 1234).await.expect("mark");
        assert!(s.instances_to_replicate().await.expect("list").is_empty());
        let got = s.get_snapshot_by_id(s1).await.expect("get");
        let at = got.replicated_at.expect("replicated");
        assert_eq!(got.view().replica_bytes, 1234);
        // Marking again keeps the first time.
        s.mark_snapshot_replicated(s1, 1).await.expect("again");
        let again = s.get_snapshot_by_id(s1).await.expect("get");
        assert_eq!((again.replicated_at, again.replica_bytes), (Some(at), 1234));

        // A newer snapshot not replicated yet is not what a restart uses.
        let s2 = snapshot(&s, &ha, "s2").await;
        let latest = s.latest_replicated_snapshot(ha.id).await.expect("latest");
        assert_eq!(latest.map(|l| l.id), Some(s1));
        s.mark_snapshot_replicated(s2, 10).await.expect("mark");
        let latest = s.latest_replicated_snapshot(ha.id).await.expect("latest");
        assert_eq!(latest.map(|l| l.id), Some(s2));
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
