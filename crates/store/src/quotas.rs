//! Quotas: per-project limits and the atomic check at creation.
//!
//! A create runs, in one transaction: [`check_quota`]: [`lock_quota`] (a no-op `UPDATE` of
//! the project's quota row, which holds the row lock on PostgreSQL and the write lock on
//! SQLite until commit), then counts what the project holds of the resources the request
//! takes and a limit bounds, then [`admit`]s the request; then inserts. A second create of the same project waits at the lock and counts after the
//! first committed, so concurrent creates never overshoot the quota. A project without a
//! quota row is unlimited and takes no lock.
//!
//! Snapshots and images use the same hook inside their insert transaction
//! ([`Store::begin_snapshot`](crate::Store::begin_snapshot)); every snapshot row counts,
//! whatever its state, until its delete finishes.

use crate::{time, Store, StoreError};
use nimbus_api::{QuotaLimits, QuotaUsage};
use sqlx::{Any, Row, Transaction};

/// Why a request was refused by a quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("project {project}: {resource} quota {limit} {}; ask an admin to raise it with `nimbus quota set {project}`",
    if .in_use >= .limit { format!("reached ({} in use)", .in_use) }
    else { format!("would be exceeded ({} in use + {} requested)", .in_use, .requested) })]
pub struct QuotaExceeded {
    pub project: String,
    /// `instances`, `vcpus`, `memory_mib`, `disk_gib`, `snapshots`, `image_mib` or
    /// `floating_ips`.
    pub resource: &'static str,
    pub limit: u64,
    pub in_use: u64,
    pub requested: u64,
}

/// Checks that `in_use + want` stays within `limits` on every resource.
pub fn admit(
    project: &str,
    limits: &QuotaLimits,
    in_use: &QuotaUsage,
    want: &QuotaUsage,
) -> Result<(), QuotaExceeded> {
    let checks = [
        (
            "instances",
            limits.instances,
            in_use.instances,
            want.instances,
        ),
        ("vcpus", limits.vcpus, in_use.vcpus, want.vcpus),
        (
            "memory_mib",
            limits.memory_mib,
            in_use.memory_mib,
            want.memory_mib,
        ),
        ("disk_gib", limits.disk_gib, in_use.disk_gib, want.disk_gib),
        (
            "snapshots",
            limits.snapshots,
            in_use.snapshots,
            want.snapshots,
        ),
        (
            "image_mib",
            limits.image_mib,
            in_use.image_mib,
            want.image_mib,
        ),
        (
            "floating_ips",
            limits.floating_ips,
            in_use.floating_ips,
            want.floating_ips,
        ),
    ];
    for (resource, limit, used, requested) in checks {
        if let Some(limit) = limit {
            if requested > 0 && used.saturating_add(requested) > limit {
                return Err(QuotaExceeded {
                    project: project.to_string(),
                    resource,
                    limit,
                    in_use: used,
                    requested,
                });
            }
        }
    }
    Ok(())
}

fn limit(r: &sqlx::any::AnyRow, col: &str) -> Result<Option<u64>, StoreError> {
    Ok(r.try_get::<Option<i64>, _>(col)?.map(|v| v.max(0) as u64))
}

fn limits_from_row(r: &sqlx::any::AnyRow) -> Result<QuotaLimits, StoreError> {
    Ok(QuotaLimits {
        instances: limit(r, "instances")?,
        vcpus: limit(r, "vcpus")?,
        memory_mib: limit(r, "memory_mib")?,
        disk_gib: limit(r, "disk_gib")?,
        snapshots: limit(r, "snapshots")?,
        image_mib: limit(r, "image_mib")?,
        floating_ips: limit(r, "floating_ips")?,
    })
}

/// Locks the project's quota row until `tx` ends and returns its limits (one statement);
/// `None` when the project has no quota (unlimited, nothing locked).
pub(crate) async fn lock_quota(
    tx: &mut Transaction<'_, Any>,
    project: &str,
) -> Result<Option<QuotaLimits>, StoreError> {
    let row =
        sqlx::query("UPDATE quotas SET updated_at = updated_at WHERE project = $1 RETURNING *")
            .bind(project)
            .fetch_optional(&mut **tx)
            .await?;
    row.as_ref().map(limits_from_row).transpose()
}

/// The quota check of a create that takes `want` in `project`, inside its transaction `tx`:
/// locks the project's quota row (see the module doc) and refuses (`QuotaExceeded`) what
/// would go over a limit. Only the resources the request takes and a limit bounds are
/// counted: an instance create counts no snapshots, images or floating IPs, and a project
/// without limits counts nothing.
pub(crate) async fn check_quota(
    tx: &mut Transaction<'_, Any>,
    project: &str,
    want: &QuotaUsage,
) -> Result<(), StoreError> {
    let Some(limits) = lock_quota(tx, project).await? else {
        return Ok(());
    };
    let bounded = |limit: Option<u64>, requested: u64| limit.is_some() && requested > 0;
    let counted = Counted {
        instances: bounded(limits.instances, want.instances)
            || bounded(limits.vcpus, want.vcpus)
            || bounded(limits.memory_mib, want.memory_mib)
            || bounded(limits.disk_gib, want.disk_gib),
        snapshots: bounded(limits.snapshots, want.snapshots),
        image_mib: bounded(limits.image_mib, want.image_mib),
        floating_ips: bounded(limits.floating_ips, want.floating_ips),
    };
    let in_use = count_usage(tx, project, counted).await?;
    admit(project, &limits, &in_use, want)?;
    Ok(())
}

/// Which of a project's holdings to count (what is not counted reads 0).
#[derive(Clone, Copy)]
struct Counted {
    /// Instances, and their vCPUs, memory and disk.
    instances: bool,
    snapshots: bool,
    image_mib: bool,
    floating_ips: bool,
}

/// What `project` holds now (every instance row until its delete finishes).
pub(crate) async fn usage_in(
    tx: &mut Transaction<'_, Any>,
    project: &str,
) -> Result<QuotaUsage, StoreError> {
    let all = Counted {
        instances: true,
        snapshots: true,
        image_mib: true,
        floating_ips: true,
    };
    count_usage(tx, project, all).await
}

async fn count_usage(
    tx: &mut Transaction<'_, Any>,
    project: &str,
    counted: Counted,
) -> Result<QuotaUsage, StoreError> {
    let mut usage = QuotaUsage::default();
    if counted.instances {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) AS vcpus, \
             CAST(COALESCE(SUM(memory_mib), 0) AS BIGINT) AS memory_mib, \
             CAST(COALESCE(SUM(disk_gib), 0) AS BIGINT) AS disk_gib \
             FROM instances WHERE project = $1",
        )
        .bind(project)
        .fetch_one(&mut **tx)
        .await?;
        usage.instances = r.try_get::<i64, _>("n")? as u64;
        usage.vcpus = r.try_get::<i64, _>("vcpus")? as u64;
        usage.memory_mib = r.try_get::<i64, _>("memory_mib")? as u64;
        usage.disk_gib = r.try_get::<i64, _>("disk_gib")? as u64;
    }
    if counted.snapshots {
        usage.snapshots = count_snapshots(tx, project).await?;
    }
    if counted.image_mib {
        usage.image_mib = image_mib(tx, project).await?;
    }
    if counted.floating_ips {
        usage.floating_ips = crate::floating_ips::count_floating(tx, project).await?;
    }
    Ok(usage)
}

/// MiB of images `project` owns, rounded up (rows appear only once their bytes are stored).
async fn image_mib(tx: &mut Transaction<'_, Any>, project: &str) -> Result<u64, StoreError> {
    let r = sqlx::query(
        "SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) AS n FROM images WHERE project = $1",
    )
    .bind(project)
    .fetch_one(&mut **tx)
    .await?;
    Ok((r.try_get::<i64, _>("n")?.max(0) as u64).div_ceil(1 << 20))
}

async fn count_snapshots(tx: &mut Transaction<'_, Any>, project: &str) -> Result<u64, StoreError> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM snapshots WHERE project = $1")
        .bind(project)
        .fetch_one(&mut **tx)
        .await?;
    Ok(r.try_get::<i64, _>("n")? as u64)
}

impl Store {
    /// The project's limits ([`QuotaLimits::UNLIMITED`] without a quota row).
    pub async fn quota(&self, project: &str) -> Result<QuotaLimits, StoreError> {
        let row = sqlx::query("SELECT * FROM quotas WHERE project = $1")
            .bind(project)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => limits_from_row(&r),
            None => Ok(QuotaLimits::UNLIMITED),
        }
    }

    /// What the project holds now, as quotas count it.
    pub async fn quota_usage(&self, project: &str) -> Result<QuotaUsage, StoreError> {
        let mut tx = self.begin().await?;
        let usage = usage_in(&mut tx, project).await?;
        tx.commit().await?;
        Ok(usage)
    }

    /// Sets (replaces) the project's limits. Lowering a limit below the current use is
    /// allowed: nothing is removed, new creates are refused until use falls below it.
    pub async fn set_quota(&self, project: &str, limits: &QuotaLimits) -> Result<(), StoreError> {
        let v = |x: Option<u64>| x.map(|n| n.min(i64::MAX as u64) as i64);
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE quotas SET instances = $1, vcpus = $2, memory_mib = $3, disk_gib = $4, \
             snapshots = $5, image_mib = $6, floating_ips = $7, updated_at = $8 \
             WHERE project = $9",
        )
        .bind(v(limits.instances))
        .bind(v(limits.vcpus))
        .bind(v(limits.memory_mib))
        .bind(v(limits.disk_gib))
        .bind(v(limits.snapshots))
        .bind(v(limits.image_mib))
        .bind(v(limits.floating_ips))
        .bind(time::now())
        .bind(project)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            sqlx::query(
                "INSERT INTO quotas (project, instances, vcpus, memory_mib, disk_gib, snapshots, \
                 image_mib, floating_ips, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(project)
            .bind(v(limits.instances))
            .bind(v(limits.vcpus))
            .bind(v(limits.memory_mib))
            .bind(v(limits.disk_gib))
            .bind(v(limits.snapshots))
            .bind(v(limits.image_mib))
            .bind(v(limits.floating_ips))
            .bind(time::now())
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                StoreError::unique_or(e, || {
                    format!("quota of {project} changed concurrently; retry")
                })
            })?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(instances: u64, vcpus: u64) -> QuotaUsage {
        QuotaUsage {
            instances,
            vcpus,
            memory_mib: instances * 512,
            disk_gib: instances * 2,
            snapshots: 0,
            image_mib: 0,
            floating_ips: 0,
        }
    }

    #[test]
    fn admit_counts_every_resource_up_to_the_limit_inclusive() {
        let limits = QuotaLimits {
            instances: Some(3),
            vcpus: Some(4),
            ..QuotaLimits::UNLIMITED
        };
        assert!(admit("p", &limits, &usage(2, 3), &usage(1, 1)).is_ok());
        let e = admit("p", &limits, &usage(3, 3), &usage(1, 1)).expect_err("instances");
        assert_eq!((e.resource, e.limit, e.in_use), ("instances", 3, 3));
        assert_eq!(
            e.to_string(),
            "project p: instances quota 3 reached (3 in use); ask an admin to raise it with `nimbus quota set p`"
        );
        let e = admit("p", &limits, &usage(1, 3), &usage(1, 2)).expect_err("vcpus");
        assert_eq!((e.resource, e.in_use, e.requested), ("vcpus", 3, 2));
        assert!(e
            .to_string()
            .contains("vcpus quota 4 would be exceeded (3 in use + 2 requested)"));
        assert!(admit(
            "p",
            &QuotaLimits::UNLIMITED,
            &usage(1000, 1000),
            &usage(1, 64)
        )
        .is_ok());
    }

    #[test]
    fn a_request_for_none_of_a_resource_passes_even_over_its_limit() {
        // A project already over a lowered snapshot limit may still create instances.
        let limits = QuotaLimits {
            snapshots: Some(0),
            ..QuotaLimits::UNLIMITED
        };
        let over = QuotaUsage {
            snapshots: 5,
            ..QuotaUsage::default()
        };
        assert!(admit("p", &limits, &over, &usage(1, 1)).is_ok());
        let one = QuotaUsage {
            snapshots: 1,
            ..QuotaUsage::default()
        };
        assert_eq!(
            admit("p", &limits, &over, &one)
                .expect_err("snapshots")
                .resource,
            "snapshots"
        );
    }
}
