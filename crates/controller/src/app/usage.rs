//! Measured service: agents' usage samples in, usage reports out.
//!
//! - [`App::ingest_usage`]: stores each sample once (its key is `(meter_id, seq)`), with the
//!   project owning the instance when it arrives (for a sample of an instance deleted since:
//!   the project its earlier samples had).
//! - [`App::usage_report`]: usage per instance and in total over `[from, to)`, derived from
//!   the stored samples by [`derive`] (pure, unit-tested).
//! - [`App::usage_by_project`]: totals since the beginning, for `/metrics` counters.
//!
//! Snapshot storage is metered through the same table: samples of kind `snapshot` (a meter
//! per snapshot, `storage_bytes` its allocated size, `instance_id` its instance) become
//! `snapshot_gib_hours` of that instance; see [`App::ingest_usage`].

pub mod derive;

use crate::app::{App, AppError, Caller};
use chrono::{Duration, Utc};
use nimbus_agent_api::{UsageAck, UsageBatch, UsageSample};
use nimbus_api::Role;
use nimbus_api::{InstanceUsage, UsageQuery, UsageReport};
use nimbus_store::{StoreError, UsageRow};
use std::collections::BTreeMap;

/// The period a report covers when the query names no start.
pub const DEFAULT_PERIOD_HOURS: i64 = 24;

/// How recent the samples are that host memory use is computed from.
const RECENT_MS: i64 = 60_000;

impl App {
    /// Stores a batch of samples from an agent; a sample already stored is skipped.
    pub async fn ingest_usage(&self, batch: &UsageBatch) -> Result<UsageAck, AppError> {
        let mut ack = UsageAck::default();
        for s in &batch.samples {
            if !self.may_report(&batch.host, s).await? {
                tracing::warn!(instance_id = %s.instance_id, meter_id = %s.meter_id, host = batch.host,
                    "usage sample of an instance the host does not run dropped");
                continue;
            }
            let Some((project, name)) = self.owner_of(s).await? else {
                tracing::warn!(instance_id = %s.instance_id, meter_id = %s.meter_id, host = batch.host,
                    "usage sample of an unknown instance dropped");
                continue;
            };
            let row = to_row(s, &batch.host, project, name);
            if self.store().insert_usage_sample(&row).await? {
                ack.stored += 1;
            } else {
                ack.duplicates += 1;
            }
        }
        Ok(ack)
    }

    /// Whether `host` may report usage of the sample's instance: it is placed there, or a
    /// migration of it went from or to there (a source meters until the switch-over). An
    /// instance deleted since is checked by its meter (see [`Self::owner_of`]).
    async fn may_report(&self, host: &str, s: &UsageSample) -> Result<bool, AppError> {
        let inst = match self
            .store()
            .get_instance_by_id(&nimbus_store::Scope::All, s.instance_id)
            .await
        {
            Ok(i) => i,
            Err(StoreError::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        if inst.host.as_deref() == Some(host) {
            return Ok(true);
        }
        let moves = self
            .store()
            .migrations_of(&nimbus_store::Scope::All, inst.id)
            .await?;
        Ok(moves.iter().any(|m| m.source == host || m.target == host))
    }

    /// The project and name a sample is attributed to: its instance's now, else its meter's
    /// earlier samples'.
    async fn owner_of(&self, s: &UsageSample) -> Result<Option<(String, String)>, AppError> {
        match self
            .store()
            .get_instance_by_id(&nimbus_store::Scope::All, s.instance_id)
            .await
        {
            Ok(i) => Ok(Some((i.project, i.name))),
            Err(StoreError::NotFound { .. }) => Ok(self.store().meter_owner(s.meter_id).await?),
            Err(e) => Err(e.into()),
        }
    }

    /// Usage over a period, per instance and in total. Non-admin callers see their own
    /// project only (another project is `not_found`, so names do not leak).
    pub async fn usage_report(
        &self,
        caller: &Caller,
        q: &UsageQuery,
    ) -> Result<UsageReport, AppError> {
        // `?project=` was checked when the caller was resolved (a non-admin naming another
        // project is refused there); an admin who names none sees every project.
        let project = if caller.role == Role::Admin && !caller.explicit_project {
            q.project.clone()
        } else {
            Some(caller.project.clone())
        };
        let to = q.to.unwrap_or_else(Utc::now);
        let from = q.from.unwrap_or(to - Duration::hours(DEFAULT_PERIOD_HOURS));
        if from >= to {
            return Err(AppError::bad_request(format!(
                "the period is empty: from ({from}) must be before to ({to})"
            )));
        }
        let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
        let samples = self
            .store()
            .usage_samples(project.as_deref(), from_ms, to_ms)
            .await?;
        let rows = derive::per_instance(&samples, project.as_deref(), from_ms, to_ms);
        let total = derive::total(&rows).amounts();
        Ok(UsageReport {
            project,
            from,
            to,
            instances: rows
                .into_iter()
                .map(|r| InstanceUsage {
                    instance_id: r.instance_id,
                    instance: r.instance_name,
                    project: r.project,
                    running_seconds: r.used.running_s,
                    usage: r.used.amounts(),
                })
                .collect(),
            total,
        })
    }

    /// Usage of every project since metering began (monotonic: Prometheus counters), from
    /// the last sample of each meter, so its cost does not grow with the history.
    pub async fn usage_by_project(&self) -> Result<BTreeMap<String, derive::Clipped>, AppError> {
        let mut out: BTreeMap<String, derive::Clipped> = BTreeMap::new();
        for t in self.store().usage_totals().await? {
            out.entry(t.project.clone())
                .or_default()
                .add(&derive::totals_of(&t));
        }
        Ok(out)
    }

    /// Resident memory of the running VMs of each host, in bytes, from recent samples.
    pub async fn host_rss_bytes(&self) -> Result<BTreeMap<String, u64>, AppError> {
        let since = Utc::now().timestamp_millis() - RECENT_MS;
        Ok(self.store().recent_rss_by_host(since).await?)
    }
}

fn to_row(s: &UsageSample, host: &str, project: String, instance_name: String) -> UsageRow {
    let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    UsageRow {
        meter_id: s.meter_id,
        seq: s.seq,
        kind: s.kind.as_str().to_string(),
        instance_id: s.instance_id,
        instance_name,
        project,
        host: host.to_string(),
        started_ms: ms(s.started_unix_ms),
        sampled_ms: ms(s.sampled_unix_ms),
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        running_ms: s.running_ms,
        cpu_ns: s.cpu_ns,
        net_rx_bytes: s.net_rx_bytes,
        net_tx_bytes: s.net_tx_bytes,
        rss_bytes: s.rss_bytes,
        storage_bytes: s.storage_bytes,
        storage_kib_seconds: s.storage_kib_seconds,
        last: s.last,
    }
}
