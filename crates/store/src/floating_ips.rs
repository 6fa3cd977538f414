//! Floating IPs: addresses of the operator's external pool. A project allocates one (within
//! its quota), attaches it to one of its instances (1:1 NAT to the instance's first NIC on its
//! host), detaches and releases it. The address is the key, so two allocations of one address
//! cannot both commit; an instance has at most one (a unique index), and deleting an instance
//! detaches its address.

use crate::locks::lock_project;
use crate::page::{KeyColumn, Keyset, Page, PageRequest};
use crate::quotas::check_quota;
use crate::{time, Scope, Store, StoreError};
use chrono::{DateTime, Utc};
use nimbus_api::QuotaUsage;
use sqlx::{Any, Row, Transaction};
use std::collections::HashSet;
use uuid::Uuid;

/// Attempts at an address when concurrent allocations take the same one.
const ALLOCATE_ATTEMPTS: usize = 5;

/// A floating IP row, with the instance it is attached to.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatingIpRecord {
    pub address: String,
    pub project: String,
    pub instance_id: Option<Uuid>,
    /// The instance's name, when attached.
    pub instance: Option<String>,
    pub created_at: DateTime<Utc>,
}

const SELECT: &str = "SELECT f.address, f.project, f.instance_id, f.created_at, i.name \
                      FROM floating_ips f LEFT JOIN instances i ON i.id = f.instance_id";

fn from_row(r: &sqlx::any::AnyRow) -> Result<FloatingIpRecord, StoreError> {
    let instance_id: Option<String> = r.try_get("instance_id")?;
    Ok(FloatingIpRecord {
        address: r.try_get("address")?,
        project: r.try_get("project")?,
        instance_id: instance_id
            .as_deref()
            .map(crate::instances::parse_uuid)
            .transpose()?,
        instance: r.try_get("name")?,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
    })
}

/// How many floating IPs `project` holds.
pub(crate) async fn count_floating(
    tx: &mut Transaction<'_, Any>,
    project: &str,
) -> Result<u64, StoreError> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM floating_ips WHERE project = $1")
        .bind(project)
        .fetch_one(&mut **tx)
        .await?;
    Ok(r.try_get::<i64, _>("n")?.max(0) as u64)
}

/// Detaches the floating IP of instance `id` (its delete), inside `tx`.
pub(crate) async fn detach_instance(
    tx: &mut Transaction<'_, Any>,
    id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE floating_ips SET instance_id = NULL WHERE instance_id = $1")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// Allocates to `project` the first address of `pool` that no project holds, within the
    /// project's quota.
    pub async fn allocate_floating_ip(
        &self,
        project: &str,
        pool: impl Fn() -> Box<dyn Iterator<Item = String>>,
    ) -> Result<FloatingIpRecord, StoreError> {
        for attempt in 1..=ALLOCATE_ATTEMPTS {
            let mut tx = self.begin().await?;
            let want = QuotaUsage {
                floating_ips: 1,
                ..QuotaUsage::default()
            };
            check_quota(&mut tx, project, &want).await?;
            lock_project(&mut tx, project).await?;
            let taken: HashSet<String> = sqlx::query("SELECT address FROM floating_ips")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("address"))
                .collect::<Result<_, _>>()?;
            let Some(address) = pool().find(|a| !taken.contains(a)) else {
                return Err(StoreError::Conflict(
                    "the floating IP pool is exhausted; release an address or ask an admin \
                     to enlarge the pool"
                        .into(),
                ));
            };
            let inserted = sqlx::query(
                "INSERT INTO floating_ips (address, project, created_at) VALUES ($1, $2, $3)",
            )
            .bind(&address)
            .bind(project)
            .bind(time::now())
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::unique_or(e, || format!("{address} taken concurrently")));
            match inserted {
                Ok(_) => {
                    tx.commit().await?;
                    return self
                        .get_floating_ip(&Scope::project(project), &address)
                        .await;
                }
                Err(StoreError::Conflict(msg)) if attempt < ALLOCATE_ATTEMPTS => {
                    tracing::debug!(attempt, msg, "floating IP taken concurrently; retrying");
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(
            "could not allocate a floating IP; try again".into(),
        ))
    }

    /// The floating IPs `scope` sees, by address.
    pub async fn list_floating_ips(
        &self,
        scope: &Scope,
    ) -> Result<Vec<FloatingIpRecord>, StoreError> {
        let sql = format!(
            "{SELECT} WHERE {} ORDER BY f.address",
            scope.condition("f.project", 1)
        );
        let rows = scope.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// One page of the floating IPs `scope` sees, by address (the order of
    /// [`Store::list_floating_ips`]).
    pub async fn list_floating_ips_page(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<FloatingIpRecord>, StoreError> {
        const KEY: Keyset = Keyset::ascending(&[KeyColumn::text("f.address")]);
        let filter = scope.condition("f.project", 1);
        let rows = KEY
            .fetch(&self.pool, page, SELECT, &filter, &scope.values())
            .await?;
        rows.try_map(from_row)
    }

    /// The floating IP attached to instance `id`, if any.
    pub async fn floating_ip_of(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT address FROM floating_ips WHERE instance_id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("address")).transpose()?)
    }

    /// Floating IP `address`, if `scope` sees it.
    pub async fn get_floating_ip(
        &self,
        scope: &Scope,
        address: &str,
    ) -> Result<FloatingIpRecord, StoreError> {
        let sql = format!(
            "{SELECT} WHERE f.address = $1 AND {}",
            scope.condition("f.project", 2)
        );
        let row = scope
            .bind(sqlx::query(&sql).bind(address))
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("floating IP", address))?;
        from_row(&row)
    }

    /// Attaches `address` to instance `instance` (of the same project, checked by the
    /// caller). Refused when the address is attached (to another instance) or the instance
    /// has another floating IP; attaching it again to its instance changes nothing.
    pub async fn attach_floating_ip(
        &self,
        scope: &Scope,
        address: &str,
        instance: Uuid,
    ) -> Result<FloatingIpRecord, StoreError> {
        let current = self.get_floating_ip(scope, address).await?;
        match (current.instance_id, &current.instance) {
            (Some(id), _) if id == instance => return Ok(current),
            (Some(_), name) => {
                return Err(StoreError::Conflict(format!(
                    "{address} is attached to instance {:?}; detach it first",
                    name.as_deref().unwrap_or("?")
                )))
            }
            (None, _) => {}
        }
        let sql = format!(
            "UPDATE floating_ips SET instance_id = $1 WHERE address = $2 \
             AND instance_id IS NULL AND {}",
            scope.condition("project", 3)
        );
        let updated = scope
            .bind(sqlx::query(&sql).bind(instance.to_string()).bind(address))
            .execute(&self.pool)
            .await
            .map_err(|e| {
                StoreError::unique_or(e, || {
                    "the instance has a floating IP already; detach it first".into()
                })
            })?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "{address} was attached concurrently; look with `nimbus ip list`"
            )));
        }
        self.get_floating_ip(scope, address).await
    }

    /// Detaches `address`; refused when it is not attached.
    pub async fn detach_floating_ip(
        &self,
        scope: &Scope,
        address: &str,
    ) -> Result<FloatingIpRecord, StoreError> {
        let current = self.get_floating_ip(scope, address).await?;
        if current.instance_id.is_none() {
            return Err(StoreError::Conflict(format!("{address} is not attached")));
        }
        let sql = format!(
            "UPDATE floating_ips SET instance_id = NULL WHERE address = $1 AND {}",
            scope.condition("project", 2)
        );
        scope
            .bind(sqlx::query(&sql).bind(address))
            .execute(&self.pool)
            .await?;
        self.get_floating_ip(scope, address).await
    }

    /// Releases `address` back to the pool; refused while it is attached.
    pub async fn release_floating_ip(
        &self,
        scope: &Scope,
        address: &str,
    ) -> Result<(), StoreError> {
        let current = self.get_floating_ip(scope, address).await?;
        if let Some(name) = current.instance {
            return Err(StoreError::Conflict(format!(
                "{address} is attached to instance {name:?}; detach it first"
            )));
        }
        let sql = format!(
            "DELETE FROM floating_ips WHERE address = $1 AND instance_id IS NULL AND {}",
            scope.condition("project", 2)
        );
        let deleted = scope
            .bind(sqlx::query(&sql).bind(address))
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "{address} was attached concurrently; detach it first"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
