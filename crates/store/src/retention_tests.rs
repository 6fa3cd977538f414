//! Retention in the store on SQLite and (with `NIMBUS_TEST_POSTGRES_URL`) PostgreSQL: the
//! roll-up keeps the first and last sample of each meter in each old hour (and every
//! sample of recent hours, and each meter's last sample: totals unchanged); finished
//! operations go with their steps, running or still-named ones stay.

use crate::testing::{new_instance, pick, stores};
use crate::{NewOperation, Scope, HOUR_MS};
use crate::{Store, UsageRow};
use nimbus_api::OperationKind;
use uuid::Uuid;

fn sample(meter: u128, seq: u64, sampled_ms: i64) -> UsageRow {
    UsageRow {
        meter_id: Uuid::from_u128(meter),
        seq,
        kind: "instance".into(),
        instance_id: Uuid::from_u128(meter),
        instance_name: "web1".into(),
        project: "default".into(),
        host: "host1".into(),
        started_ms: 0,
        sampled_ms,
        vcpus: 1,
        memory_mib: 256,
        running_ms: sampled_ms as u64,
        cpu_ns: seq * 1000,
        net_rx_bytes: seq,
        net_tx_bytes: seq,
        rss_bytes: 1,
        storage_bytes: 1,
        storage_kib_seconds: seq,
        last: false,
    }
}

async fn seqs(s: &Store, meter: u128) -> Vec<u64> {
    let rows = s.usage_samples(None, 0, i64::MAX).await.expect("samples");
    rows.iter()
        .filter(|r| r.meter_id == Uuid::from_u128(meter))
        .map(|r| r.seq)
        .collect()
}

#[tokio::test]
async fn old_hours_keep_the_first_and_last_sample_of_each_meter() {
    for (s, _d) in stores().await {
        // Meter 1: 10 samples in each of hours 0-3 (every 6 minutes). Meter 2: hour 1 only.
        for seq in 0..40u64 {
            let at = seq as i64 * HOUR_MS / 10 + 1000;
            s.insert_usage_sample(&sample(1, seq, at))
                .await
                .expect("insert");
        }
        for seq in 0..5u64 {
            let at = HOUR_MS + seq as i64 * 60_000;
            s.insert_usage_sample(&sample(2, seq, at))
                .await
                .expect("insert");
        }
        let totals = s.usage_totals().await.expect("totals");

        // Up to the middle of hour 2: hours 0 and 1 are rolled up, hours 2 and 3 are not.
        let removed = s
            .roll_up_usage(2 * HOUR_MS + HOUR_MS / 2)
            .await
            .expect("roll up");
        assert_eq!(removed, 8 + 8 + 3);
        let mut kept = vec![0, 9, 10, 19];
        kept.extend(20..40);
        assert_eq!(seqs(&s, 1).await, kept);
        assert_eq!(seqs(&s, 2).await, [0, 4]);
        assert_eq!(s.usage_totals().await.expect("totals"), totals);

        // Done hours are not read again; the next hours follow when they are old enough.
        assert_eq!(s.roll_up_usage(2 * HOUR_MS).await.expect("again"), 0);
        assert_eq!(s.roll_up_usage(10 * HOUR_MS).await.expect("later"), 16);
        assert_eq!(seqs(&s, 1).await, [0, 9, 10, 19, 20, 29, 30, 39]);
    }
}

#[tokio::test]
async fn finished_operations_go_with_their_steps_unless_still_named() {
    for (s, _d) in stores().await {
        let (inst, named) = new_instance("default", "web1");
        s.insert_instance(&inst, &named, pick)
            .await
            .expect("instance");
        let lone = NewOperation {
            id: Uuid::new_v4(),
            ..named.clone()
        };
        let running = NewOperation {
            id: Uuid::new_v4(),
            kind: OperationKind::InstanceStop,
            ..named.clone()
        };
        s.insert_operation(&lone).await.expect("op");
        s.insert_operation(&running).await.expect("op");
        for (op, state) in [
            (&named, "succeeded"),
            (&lone, "failed"),
            (&running, "running"),
        ] {
            sqlx::query("UPDATE operations SET state = $1 WHERE id = $2")
                .bind(state)
                .bind(op.id.to_string())
                .execute(s.pool())
                .await
                .expect("state");
        }
        let future = chrono::Utc::now() + chrono::Duration::days(1);
        assert_eq!(
            s.delete_finished_operations(future).await.expect("delete"),
            1
        );
        let all = Scope::All;
        assert!(
            s.get_operation(&all, lone.id).await.is_err(),
            "finished and unnamed: gone"
        );
        assert!(
            s.get_operation(&all, named.id).await.is_ok(),
            "named by its instance: kept"
        );
        assert!(
            s.get_operation(&all, running.id).await.is_ok(),
            "running: kept"
        );
        let steps: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM operation_steps WHERE operation_id = $1")
                .bind(lone.id.to_string())
                .fetch_one(s.pool())
                .await
                .map(|r| sqlx::Row::try_get(&r, "n").expect("n"))
                .expect("steps");
        assert_eq!(steps, 0);
    }
}
