//! Ownership of operations on every backend: claims, renewal, takeover after expiry or the
//! owner's death, the epoch fence refusing a stale owner, concurrent scanners.

use crate::testing::{controller, new_instance, stores};
use crate::{OperationClaim, Store, StoreError};
use nimbus_api::{OperationState, StepState};
use nimbus_ops::{LogError, OperationLog};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);
/// A lease that expires within a test, yet long enough that a loaded machine (CI runs the
/// suite beside TCG guests) never lets it lapse between a claim and the next query: at 300 ms
/// the "nobody takes it while the lease runs" checks failed on PostgreSQL under load.
const SHORT: Duration = Duration::from_millis(1500);

async fn operation(s: &Store) -> Uuid {
    let (_, op) = new_instance("default", &format!("vm-{}", Uuid::new_v4().simple()));
    s.insert_operation(&op).await.expect("operation");
    op.id
}

#[tokio::test]
async fn a_stale_owner_can_write_nothing_after_a_takeover() {
    for (s, _d) in stores().await {
        let a = controller(&s, SHORT).await;
        let op = operation(&s).await;
        let claim = s
            .claim_operation(op, a, SHORT)
            .await
            .expect("claim")
            .expect("free");
        assert_eq!(claim.epoch, 1);
        let log_a = s.fenced_log(claim);
        log_a
            .init_steps(op, &["place", "boot"])
            .await
            .expect("init");
        log_a
            .set_step(op, 0, StepState::Running, None, None)
            .await
            .expect("owner writes");
        // Claimed already: nobody else claims it, and while the lease runs nobody takes it.
        let b = if s.is_shared() {
            controller(&s, SHORT).await
        } else {
            Uuid::new_v4()
        };
        assert_eq!(s.claim_operation(op, b, SHORT).await.expect("claim"), None);
        assert!(s
            .take_over_operations(b, SHORT, 10)
            .await
            .expect("scan")
            .is_empty());
        // A stalls past its lease (no heartbeat); B takes over, at the next epoch.
        tokio::time::sleep(SHORT * 2).await;
        if s.is_shared() {
            s.heartbeat(b, SHORT).await.expect("b alive");
        }
        let taken = s.take_over_operations(b, SHORT, 10).await.expect("scan");
        assert_eq!(
            taken,
            vec![OperationClaim {
                operation: op,
                epoch: 2
            }]
        );
        // A wakes up: every write of its is refused and changes nothing.
        let lost = LogError::LeaseLost { epoch: 1 };
        let out = serde_json::json!({"host": "h1"});
        assert_eq!(
            log_a
                .set_step(op, 0, StepState::Done, Some(&out), None)
                .await,
            Err(lost.clone())
        );
        assert_eq!(
            log_a.set_state(op, OperationState::Failed, Some("x")).await,
            Err(lost.clone())
        );
        assert_eq!(log_a.set_message(op, "stale").await, Err(lost.clone()));
        assert_eq!(log_a.check_owned(op).await, Err(lost.clone()));
        assert_eq!(log_a.init_steps(op, &["place", "boot"]).await, Err(lost));
        let snap = log_a.load(op).await.expect("load");
        assert_eq!(
            (snap.state, snap.steps[0].state),
            (OperationState::Running, StepState::Running)
        );
        // B carries on (its init of the steps keeps those recorded).
        let log_b = s.fenced_log(taken[0]);
        log_b
            .init_steps(op, &["place", "boot"])
            .await
            .expect("init again");
        log_b
            .set_step(op, 0, StepState::Done, Some(&out), None)
            .await
            .expect("new owner writes");
        let snap = log_b.load(op).await.expect("load");
        let names: Vec<&str> = snap.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["place", "boot"]);
        assert_eq!(
            (snap.steps[0].state, snap.steps[0].output.as_ref()),
            (StepState::Done, Some(&out))
        );
        assert_eq!(snap.steps[1].state, StepState::Pending);
        log_b
            .set_state(op, OperationState::Succeeded, None)
            .await
            .expect("ends it");
        // An ended operation is nobody's to take.
        tokio::time::sleep(SHORT * 2).await;
        assert!(s
            .take_over_operations(b, SHORT, 10)
            .await
            .expect("scan")
            .is_empty());
    }
}

#[tokio::test]
async fn renewed_leases_are_kept_and_a_dead_owners_are_taken_at_once() {
    for (s, _d) in stores().await {
        let a = controller(&s, SHORT).await;
        let op = operation(&s).await;
        s.claim_operation(op, a, SHORT)
            .await
            .expect("claim")
            .expect("free");
        for _ in 0..6 {
            tokio::time::sleep(SHORT / 3).await;
            s.heartbeat(a, SHORT).await.expect("heartbeat renews");
            assert!(s
                .take_over_operations(Uuid::new_v4(), SHORT, 10)
                .await
                .expect("scan")
                .is_empty());
        }
        let listed = s.list_controllers(SHORT).await.expect("list");
        assert_eq!(
            listed
                .iter()
                .map(|c| (c.id, c.operations))
                .collect::<Vec<_>>(),
            vec![(a, 1)]
        );
        // A controller that is gone (its row removed at shutdown) holds nothing, lease or not.
        let op2 = operation(&s).await;
        s.claim_operation(op2, a, LONG)
            .await
            .expect("claim")
            .expect("free");
        s.unregister_controller(a).await.expect("unregister");
        let taken = s
            .take_over_operations(Uuid::new_v4(), LONG, 10)
            .await
            .expect("scan");
        let mut ids: Vec<_> = taken.iter().map(|c| c.operation).collect();
        ids.sort();
        let mut want = vec![op, op2];
        want.sort();
        assert_eq!(ids, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_scanners_take_each_operation_once() {
    for (s, _d) in stores().await {
        let ops: Vec<Uuid> = {
            let mut v = Vec::new();
            for _ in 0..10 {
                v.push(operation(&s).await);
            }
            v
        };
        // Live scanners (SQLite serves one controller: there, one scans 20 times at once).
        let one = controller(&s, LONG).await;
        let mut scanners = Vec::new();
        for _ in 0..20 {
            scanners.push(if s.is_shared() {
                controller(&s, LONG).await
            } else {
                one
            });
        }
        let tasks: Vec<_> = scanners
            .into_iter()
            .map(|me| {
                let s = s.clone();
                tokio::spawn(async move { s.take_over_operations(me, LONG, 3).await })
            })
            .collect();
        let mut owners: HashMap<Uuid, usize> = HashMap::new();
        for t in tasks {
            for c in t.await.expect("join").expect("scan") {
                assert_eq!(c.epoch, 1);
                *owners.entry(c.operation).or_default() += 1;
            }
        }
        assert_eq!(owners.len(), ops.len(), "every operation taken");
        assert!(owners.values().all(|n| *n == 1), "each once: {owners:?}");
    }
}

#[tokio::test]
async fn sqlite_serves_one_controller() {
    for (s, _d) in stores().await {
        controller(&s, LONG).await;
        let second = s
            .register_controller(Uuid::new_v4(), "http://127.0.0.1:1", "test", LONG)
            .await;
        if s.is_shared() {
            second.expect("PostgreSQL takes several");
        } else {
            let Err(StoreError::Conflict(msg)) = second else {
                panic!("a second controller on SQLite: {second:?}");
            };
            assert!(msg.contains("PostgreSQL"), "{msg}");
            // The same controller restarting (same address) replaces its earlier row.
            let url = s.list_controllers(LONG).await.expect("list")[0].url.clone();
            s.register_controller(Uuid::new_v4(), &url, "test", LONG)
                .await
                .expect("restart");
        }
    }
}

#[tokio::test]
async fn a_controller_refuses_a_newer_schema() {
    for (s, d) in stores().await {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, installed_on, success, \
             checksum, execution_time) VALUES (9999, 'from the future', CURRENT_TIMESTAMP, \
             TRUE, $1, 0)",
        )
        .bind(vec![0u8; 48])
        .execute(s.pool())
        .await
        .expect("a future migration");
        let url = match &d {
            crate::testing::Backing::Sqlite(dir) => {
                format!("sqlite://{}/test.db", dir.path().display())
            }
            crate::testing::Backing::Postgres { admin_url, name } => {
                format!("{}/{name}", admin_url.rsplit_once('/').expect("url").0)
            }
        };
        let err = Store::connect(&url).await.expect_err("refused");
        assert!(matches!(err, StoreError::NewerSchema(9999)), "{err}");
    }
}
