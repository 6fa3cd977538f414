//! Background task leases on every backend: one holder at a time, renewal, the move after the
//! holder's death or stall, the fence refusing a stale holder's transactions, and (on
//! PostgreSQL) many controllers racing for one free task.

use crate::testing::{controller, new_instance, stores};
use crate::{Scope, Store, StoreError, TaskLease};
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(300);

/// A second controller: registered on PostgreSQL; on SQLite (one controller only) an id
/// without a row, which is all the lease needs.
async fn other(s: &Store, ttl: Duration) -> Uuid {
    if s.is_shared() {
        controller(s, ttl).await
    } else {
        Uuid::new_v4()
    }
}

fn lease(task: &str, epoch: i64) -> Option<TaskLease> {
    Some(TaskLease {
        task: task.into(),
        epoch,
    })
}

#[tokio::test]
async fn one_holder_at_a_time_and_the_holder_keeps_its_epoch() {
    for (s, _d) in stores().await {
        let a = controller(&s, LONG).await;
        let b = other(&s, LONG).await;
        let got = s.acquire_task("autoscaler", a, LONG).await.expect("a");
        assert_eq!(got, lease("autoscaler", 1));
        assert_eq!(
            s.acquire_task("autoscaler", b, LONG).await.expect("b"),
            None
        );
        // Tasks are independent.
        let r = s.acquire_task("reconciler", b, LONG).await.expect("b");
        assert_eq!(r, lease("reconciler", 1));
        // The holder acquires again every tick at the same epoch.
        let again = s
            .acquire_task("autoscaler", a, LONG)
            .await
            .expect("a again");
        assert_eq!(again, lease("autoscaler", 1));
        let holders = s.task_holders().await.expect("holders");
        let of = |t: &str| holders.iter().find(|h| h.task == t).map(|h| h.holder);
        assert_eq!(of("autoscaler"), Some(a));
        assert_eq!(of("reconciler"), Some(b));
    }
}

#[tokio::test]
async fn a_stalled_holder_loses_the_task_and_its_fenced_writes_are_refused() {
    for (s, _d) in stores().await {
        let a = controller(&s, SHORT).await;
        let held = s
            .acquire_task("autoscaler", a, SHORT)
            .await
            .expect("a")
            .expect("free");
        let stale = s.fenced(held.clone());
        let (_, op1) = new_instance("default", "vm-1");
        stale.insert_operation(&op1).await.expect("holder writes");
        // A stalls (no heartbeat, no tick) past its lease; B acquires at the next epoch.
        tokio::time::sleep(SHORT * 2).await;
        // (On SQLite too: A's heartbeat is older than the TTL, so B may register.)
        let b = controller(&s, SHORT).await;
        let moved = s.acquire_task("autoscaler", b, SHORT).await.expect("b");
        assert_eq!(moved, lease("autoscaler", 2));
        // A wakes up: its transaction is refused before it writes anything.
        let (_, op2) = new_instance("default", "vm-2");
        match stale.insert_operation(&op2).await {
            Err(StoreError::TaskLeaseLost { task, epoch }) => {
                assert_eq!((task.as_str(), epoch), ("autoscaler", 1))
            }
            other => panic!("a stale holder wrote: {other:?}"),
        }
        let gone = s.get_operation(&Scope::All, op2.id).await;
        assert!(matches!(gone, Err(StoreError::NotFound { .. })), "{gone:?}");
        // ... and it does not get the task back while B holds it.
        assert_eq!(
            s.acquire_task("autoscaler", a, SHORT).await.expect("a"),
            None
        );
        // B's fenced writes go through.
        let (_, op3) = new_instance("default", "vm-3");
        let fresh = s.fenced(moved.expect("b holds"));
        fresh
            .insert_operation(&op3)
            .await
            .expect("new holder writes");
    }
}

#[tokio::test]
async fn the_heartbeat_keeps_a_long_pass_its_task() {
    for (s, _d) in stores().await {
        let a = controller(&s, SHORT).await;
        s.acquire_task("retention", a, SHORT)
            .await
            .expect("a")
            .expect("free");
        // A pass longer than the lease, during which only the heartbeat runs.
        for _ in 0..4 {
            tokio::time::sleep(SHORT / 2).await;
            s.heartbeat(a, SHORT).await.expect("heartbeat");
        }
        let b = other(&s, SHORT).await;
        assert_eq!(
            s.acquire_task("retention", b, SHORT).await.expect("b"),
            None
        );
    }
}

#[tokio::test]
async fn a_dead_holders_task_moves_at_once() {
    for (s, _d) in stores().await {
        if !s.is_shared() {
            continue; // SQLite serves one controller.
        }
        let a = controller(&s, LONG).await;
        let b = controller(&s, LONG).await;
        s.acquire_task("reconciler", a, LONG)
            .await
            .expect("a")
            .expect("free");
        assert_eq!(
            s.acquire_task("reconciler", b, LONG).await.expect("b"),
            None
        );
        // A's row is gone (clean shutdown, or a later run at its address replaced it).
        s.unregister_controller(a).await.expect("unregister");
        let got = s.acquire_task("reconciler", b, LONG).await.expect("b");
        assert_eq!(got, lease("reconciler", 2));
    }
}

#[tokio::test]
async fn many_controllers_racing_for_a_free_task_one_wins() {
    for (s, _d) in stores().await {
        if !s.is_shared() {
            continue;
        }
        let mut ids = Vec::new();
        for _ in 0..12 {
            ids.push(controller(&s, LONG).await);
        }
        let racers: Vec<_> = ids
            .iter()
            .map(|id| {
                let s = s.clone();
                let id = *id;
                tokio::spawn(async move { s.acquire_task("autoscaler", id, LONG).await })
            })
            .collect();
        let mut winners = Vec::new();
        for r in racers {
            if let Some(l) = r.await.expect("join").expect("acquire") {
                winners.push(l);
            }
        }
        assert_eq!(
            winners,
            vec![TaskLease {
                task: "autoscaler".into(),
                epoch: 1
            }]
        );
    }
}
