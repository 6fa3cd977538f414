use crate::snapshots::tests::{instance, snapshot};
use crate::testing::{controller, host_record, stores};
use std::time::Duration;

const TTL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn replicated_snapshots_are_copied_from_live_holders_and_gone_ones_are_forgotten() {
    for (s, _) in stores().await {
        s.upsert_host(&host_record("host1", 4, 4096))
            .await
            .expect("host");
        let vm = instance(&s, "db1").await;
        let (s1, s2) = (snapshot(&s, &vm, "s1").await, snapshot(&s, &vm, "s2").await);
        let a = controller(&s, TTL).await;
        assert!(
            s.replicas_missing_on(a).await.expect("none").is_empty(),
            "a snapshot without a replica is not copied between controllers"
        );
        s.mark_snapshot_replicated(s1, 10).await.expect("s1");
        s.mark_snapshot_replicated(s2, 10).await.expect("s2");
        assert_eq!(
            s.replicas_missing_on(a).await.expect("a"),
            [(vm.id, s1.min(s2)), (vm.id, s1.max(s2))]
        );
        s.add_replica_holder(s1, a).await.expect("a holds s1");
        s.add_replica_holder(s1, a).await.expect("idempotent");
        assert_eq!(s.replicas_missing_on(a).await.expect("a"), [(vm.id, s2)]);
        let holders = s.live_replica_holders(s1, TTL).await.expect("holders");
        assert_eq!(holders.len(), 1);
        assert_eq!(holders[0].controller, a);
        assert!(s
            .live_replica_holders(s2, TTL)
            .await
            .expect("none")
            .is_empty());

        // A controller that stopped holds nothing; its rows are forgotten.
        s.unregister_controller(a).await.expect("a stops");
        assert!(s
            .live_replica_holders(s1, TTL)
            .await
            .expect("gone")
            .is_empty());
        assert_eq!(s.forget_gone_replica_holders().await.expect("forget"), 1);
        let b = controller(&s, TTL).await;
        s.add_replica_holder(s2, b).await.expect("b holds s2");
        s.remove_replica_holder(s1, b)
            .await
            .expect("nothing to remove");
        assert_eq!(s.forget_gone_replica_holders().await.expect("none"), 0);
    }
}
