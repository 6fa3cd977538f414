//! Usage samples (migration 0004): stored once per `(meter_id, seq)`, read back for reports.

use crate::{time, Store, StoreError};
use sqlx::Row;
use uuid::Uuid;

/// A stored usage sample (see the agent API's `UsageSample`), with the project and name of
/// its instance as known when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub meter_id: Uuid,
    pub seq: u64,
    /// `instance` or `snapshot`.
    pub kind: String,
    pub instance_id: Uuid,
    pub instance_name: String,
    pub project: String,
    pub host: String,
    pub started_ms: i64,
    pub sampled_ms: i64,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub running_ms: u64,
    pub cpu_ns: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub rss_bytes: u64,
    pub storage_bytes: u64,
    /// Storage held since the meter opened, KiB x seconds (cumulative).
    pub storage_kib_seconds: u64,
    pub last: bool,
}

/// Sums of the cumulative counters of every meter of one kind of one project.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageTotals {
    pub project: String,
    pub kind: String,
    pub vcpu_ms: f64,
    pub memory_mib_ms: f64,
    pub cpu_ns: f64,
    pub net_rx_bytes: f64,
    pub net_tx_bytes: f64,
    pub storage_kib_seconds: f64,
}

const COLUMNS: &str = "meter_id, seq, kind, instance_id, instance_name, project, host, \
                       started_ms, sampled_ms, vcpus, memory_mib, running_ms, cpu_ns, \
                       net_rx_bytes, net_tx_bytes, rss_bytes, storage_bytes, storage_kib_s, is_last";

/// Counters are stored as BIGINT; values beyond i64 (never reached in practice) saturate.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(r: &sqlx::any::AnyRow, col: &str) -> Result<u64, StoreError> {
    Ok(u64::try_from(r.try_get::<i64, _>(col)?).unwrap_or(0))
}

fn uuid(r: &sqlx::any::AnyRow, col: &str) -> Result<Uuid, StoreError> {
    let text: String = r.try_get(col)?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{col} {text:?}: {e}")))
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<UsageRow, StoreError> {
    Ok(UsageRow {
        meter_id: uuid(r, "meter_id")?,
        seq: uint(r, "seq")?,
        kind: r.try_get("kind")?,
        instance_id: uuid(r, "instance_id")?,
        instance_name: r.try_get("instance_name")?,
        project: r.try_get("project")?,
        host: r.try_get("host")?,
        started_ms: r.try_get("started_ms")?,
        sampled_ms: r.try_get("sampled_ms")?,
        vcpus: u32::try_from(uint(r, "vcpus")?).unwrap_or(u32::MAX),
        memory_mib: uint(r, "memory_mib")?,
        running_ms: uint(r, "running_ms")?,
        cpu_ns: uint(r, "cpu_ns")?,
        net_rx_bytes: uint(r, "net_rx_bytes")?,
        net_tx_bytes: uint(r, "net_tx_bytes")?,
        rss_bytes: uint(r, "rss_bytes")?,
        storage_bytes: uint(r, "storage_bytes")?,
        storage_kib_seconds: uint(r, "storage_kib_s")?,
        last: r.try_get::<i64, _>("is_last")? != 0,
    })
}

impl Store {
    /// Stores a sample unless one with its `(meter_id, seq)` exists; returns whether it was
    /// new.
    pub async fn insert_usage_sample(&self, s: &UsageRow) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "INSERT INTO usage_samples ({COLUMNS}, received_at) VALUES ($1, $2, $3, $4, $5, $6, \
             $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
             ON CONFLICT (meter_id, seq) DO NOTHING"
        ))
        .bind(s.meter_id.to_string())
        .bind(int(s.seq))
        .bind(&s.kind)
        .bind(s.instance_id.to_string())
        .bind(&s.instance_name)
        .bind(&s.project)
        .bind(&s.host)
        .bind(s.started_ms)
        .bind(s.sampled_ms)
        .bind(i64::from(s.vcpus))
        .bind(int(s.memory_mib))
        .bind(int(s.running_ms))
        .bind(int(s.cpu_ns))
        .bind(int(s.net_rx_bytes))
        .bind(int(s.net_tx_bytes))
        .bind(int(s.rss_bytes))
        .bind(int(s.storage_bytes))
        .bind(int(s.storage_kib_seconds))
        .bind(s.last as i64)
        .bind(time::now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The project and instance name an earlier sample of the meter was attributed to (for
    /// samples that arrive after their instance was deleted).
    pub async fn meter_owner(
        &self,
        meter_id: Uuid,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT project, instance_name FROM usage_samples WHERE meter_id = $1 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(meter_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("project")?, r.try_get("instance_name")?)))
            .transpose()
    }

    /// The samples that usage in `[from_ms, to_ms)` is derived from, of one project or all,
    /// ordered by meter and sequence: of every meter opened before `to_ms` and sampled at or
    /// after `from_ms`, its samples from `from_ms` on and the last one before (where the
    /// first interval in the period starts).
    pub async fn usage_samples(
        &self,
        project: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let filter = if project.is_some() {
            " AND s.project = $3"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM usage_samples s WHERE s.started_ms < $1{filter} \
             AND s.meter_id IN (SELECT meter_id FROM usage_samples WHERE sampled_ms >= $2) \
             AND (s.sampled_ms >= $2 OR s.seq = (SELECT MAX(p.seq) FROM usage_samples p \
                  WHERE p.meter_id = s.meter_id AND p.sampled_ms < $2)) \
             ORDER BY s.meter_id, s.seq"
        );
        let mut q = sqlx::query(&sql).bind(to_ms).bind(from_ms);
        if let Some(p) = project {
            q = q.bind(p);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// Usage since metering began, per project and meter kind, from the last sample of every
    /// meter (its counters are cumulative): one row per (project, kind).
    pub async fn usage_totals(&self) -> Result<Vec<UsageTotals>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.project AS project, s.kind AS kind, \
             CAST(SUM(CAST(s.vcpus AS DOUBLE PRECISION) * s.running_ms) AS DOUBLE PRECISION) AS vcpu_ms, \
             CAST(SUM(CAST(s.memory_mib AS DOUBLE PRECISION) * s.running_ms) AS DOUBLE PRECISION) AS memory_mib_ms, \
             CAST(SUM(CAST(s.cpu_ns AS DOUBLE PRECISION)) AS DOUBLE PRECISION) AS cpu_ns, \
             CAST(SUM(CAST(s.net_rx_bytes AS DOUBLE PRECISION)) AS DOUBLE PRECISION) AS net_rx, \
             CAST(SUM(CAST(s.net_tx_bytes AS DOUBLE PRECISION)) AS DOUBLE PRECISION) AS net_tx, \
             CAST(SUM(CAST(s.storage_kib_s AS DOUBLE PRECISION)) AS DOUBLE PRECISION) AS storage_kib_s \
             FROM usage_samples s \
             WHERE s.seq = (SELECT MAX(p.seq) FROM usage_samples p WHERE p.meter_id = s.meter_id) \
             GROUP BY s.project, s.kind ORDER BY s.project, s.kind",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageTotals {
                    project: r.try_get("project")?,
                    kind: r.try_get("kind")?,
                    vcpu_ms: r.try_get("vcpu_ms")?,
                    memory_mib_ms: r.try_get("memory_mib_ms")?,
                    cpu_ns: r.try_get("cpu_ns")?,
                    net_rx_bytes: r.try_get("net_rx")?,
                    net_tx_bytes: r.try_get("net_tx")?,
                    storage_kib_seconds: r.try_get("storage_kib_s")?,
                })
            })
            .collect()
    }

    /// Resident memory of the VMs running on each host: the sum, per host, of the latest
    /// sample of every meter still open and sampled since `since_ms`.
    pub async fn recent_rss_by_host(
        &self,
        since_ms: i64,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.host AS host, CAST(SUM(s.rss_bytes) AS BIGINT) AS rss FROM usage_samples s \
             WHERE s.sampled_ms >= $1 AND s.is_last = 0 AND s.kind = 'instance' \
             AND s.seq = (SELECT MAX(p.seq) FROM usage_samples p WHERE p.meter_id = s.meter_id) \
             GROUP BY s.host",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("host")?, uint(r, "rss")?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn row(meter: u128, seq: u64, sampled_ms: i64, project: &str) -> UsageRow {
        UsageRow {
            meter_id: Uuid::from_u128(meter),
            seq,
            kind: "instance".into(),
            instance_id: Uuid::from_u128(7),
            instance_name: "web1".into(),
            project: project.into(),
            host: "host1".into(),
            started_ms: 1_000,
            sampled_ms,
            vcpus: 2,
            memory_mib: 256,
            running_ms: (sampled_ms - 1_000) as u64,
            cpu_ns: 5,
            net_rx_bytes: 6,
            net_tx_bytes: 7,
            rss_bytes: 8,
            storage_bytes: 9,
            storage_kib_seconds: 10,
            last: false,
        }
    }

    #[tokio::test]
    async fn a_sample_is_stored_once_and_read_back_by_window_and_project() {
        for (store, _dir) in crate::testing::stores().await {
            let a0 = row(1, 0, 11_000, "default");
            assert!(store.insert_usage_sample(&a0).await.expect("insert"));
            let mut resent = a0.clone();
            resent.cpu_ns = 999;
            assert!(!store.insert_usage_sample(&resent).await.expect("resend"));
            store
                .insert_usage_sample(&row(1, 1, 21_000, "default"))
                .await
                .expect("insert");
            store
                .insert_usage_sample(&row(2, 0, 11_000, "acme"))
                .await
                .expect("insert");
            let all = store.usage_samples(None, 0, i64::MAX).await.expect("read");
            assert_eq!(all.len(), 3);
            assert_eq!(all[0], a0, "the first copy wins");
            let acme = store
                .usage_samples(Some("acme"), 0, i64::MAX)
                .await
                .expect("read");
            assert_eq!(acme.len(), 1);
            // A window after meter 2's last sample still needs meter 1's samples.
            let late = store
                .usage_samples(None, 15_000, 30_000)
                .await
                .expect("read");
            assert_eq!(late.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1]);
            assert!(store
                .usage_samples(None, 0, 500)
                .await
                .expect("read")
                .is_empty());
            // From 21 s on: meter 1's last sample and the one before it (its interval start).
            let tail = store
                .usage_samples(None, 21_000, 30_000)
                .await
                .expect("read");
            assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1]);
            let totals = store.usage_totals().await.expect("totals");
            assert_eq!(totals.len(), 2, "{totals:?}");
            let default = &totals[1];
            assert_eq!(
                (default.project.as_str(), default.kind.as_str()),
                ("default", "instance")
            );
            assert_eq!(default.vcpu_ms, 2.0 * 20_000.0, "meter 1's last sample");
            assert_eq!(default.storage_kib_seconds, 10.0);
            let rss = store.recent_rss_by_host(0).await.expect("rss");
            assert_eq!(
                rss.get("host1"),
                Some(&16),
                "the latest sample of each open meter"
            );
            assert_eq!(
                store.meter_owner(Uuid::from_u128(2)).await.expect("owner"),
                Some(("acme".into(), "web1".into()))
            );
        }
    }
}
