//! Tenant networks and the ports (NICs) of instances on them.
//!
//! A network's VNI is its key and is allocated here, in the insert transaction: the next
//! above the highest in use (or the lowest free one once the 24-bit space is used up to its
//! top); two controllers that pick the same one collide on the primary key and the loser
//! retries. Changes of one project's networks are serialised by [`crate::locks::lock_project`], so the
//! overlap check and the in-use check of a delete see every committed change.

use crate::locks::lock_project;
use crate::page::{KeyColumn, Keyset, Page, PageRequest};
use crate::{time, Scope, Store, StoreError};
use chrono::{DateTime, Utc};
use nimbus_api::NetworkView;
use sqlx::{Any, Row, Transaction};

/// VNIs of tenant networks start above this (4200 was the single flat network's).
pub const FIRST_VNI: u32 = 4201;
/// VNIs are 24-bit.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Attempts at a VNI when concurrent creates take the same one.
const VNI_ATTEMPTS: usize = 5;
/// The most networks a project may have, its `default` one included: each takes a VNI of
/// the cloud's 24-bit space, and a segment, router and servers on every host with one of its
/// ports, so no tenant may create them without bound.
pub const MAX_NETWORKS_PER_PROJECT: usize = 100;

/// A network row, with the number of ports on it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRecord {
    pub vni: u32,
    pub project: String,
    pub name: String,
    pub cidr: String,
    pub gateway: String,
    pub ports: u64,
    pub created_at: DateTime<Utc>,
}

impl NetworkRecord {
    /// The public view.
    pub fn view(&self) -> NetworkView {
        NetworkView {
            name: self.name.clone(),
            project: self.project.clone(),
            cidr: self.cidr.clone(),
            gateway: self.gateway.clone(),
            vni: self.vni,
            ports: self.ports,
            created_at: self.created_at,
        }
    }
}

/// A network to create (validated by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct NewNetwork {
    pub name: String,
    pub cidr: String,
    pub gateway: String,
}

const SELECT: &str = "SELECT n.*, (SELECT COUNT(*) FROM ports p WHERE p.network_vni = n.vni) \
                      AS port_count FROM networks n";

fn from_row(r: &sqlx::any::AnyRow) -> Result<NetworkRecord, StoreError> {
    Ok(NetworkRecord {
        vni: u32::try_from(r.try_get::<i64, _>("vni")?)
            .map_err(|e| StoreError::Corrupt(format!("vni: {e}")))?,
        project: r.try_get("project")?,
        name: r.try_get("name")?,
        cidr: r.try_get("cidr")?,
        gateway: r.try_get("gateway")?,
        ports: r.try_get::<i64, _>("port_count")?.max(0) as u64,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
    })
}

impl Store {
    /// Creates network `new` in `project`. `overlaps(cidr)` tells whether an existing CIDR of
    /// the project overlaps the new one; it is asked inside the transaction, after the
    /// project is locked, so two concurrent creates cannot both pass it.
    pub async fn create_network(
        &self,
        project: &str,
        new: &NewNetwork,
        overlaps: impl Fn(&str) -> bool,
    ) -> Result<NetworkRecord, StoreError> {
        for attempt in 1..=VNI_ATTEMPTS {
            let mut tx = self.begin().await?;
            lock_project(&mut tx, project).await?;
            let existing = sqlx::query("SELECT name, cidr FROM networks WHERE project = $1")
                .bind(project)
                .fetch_all(&mut *tx)
                .await?;
            for row in &existing {
                let (name, cidr): (String, String) = (row.try_get("name")?, row.try_get("cidr")?);
                if name == new.name {
                    return Err(StoreError::Conflict(format!(
                        "network {name:?} already exists in project {project:?}"
                    )));
                }
                if overlaps(&cidr) {
                    return Err(StoreError::Conflict(format!(
                        "{} overlaps network {name:?} ({cidr}) of project {project:?}; \
                         networks of one project need disjoint CIDRs",
                        new.cidr
                    )));
                }
            }
            if existing.len() >= MAX_NETWORKS_PER_PROJECT {
                return Err(StoreError::Conflict(format!(
                    "project {project:?} has {} networks, the most a project may have; \
                     delete one it no longer uses first",
                    existing.len()
                )));
            }
            let vni = next_vni(&mut tx).await?;
            match insert_network(&mut tx, project, new, vni).await {
                Ok(()) => {
                    tx.commit().await?;
                    return self.get_network(&Scope::project(project), &new.name).await;
                }
                Err(StoreError::Conflict(msg)) if attempt < VNI_ATTEMPTS => {
                    tracing::debug!(vni, attempt, msg, "VNI taken concurrently; retrying");
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(
            "could not allocate a segment id for the network; try again".into(),
        ))
    }

    /// Network `name` of the project `scope` names.
    pub async fn get_network(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<NetworkRecord, StoreError> {
        let sql = format!(
            "{SELECT} WHERE n.name = $1 AND {}",
            scope.condition("n.project", 2)
        );
        let rows = scope
            .bind(sqlx::query(&sql).bind(name))
            .fetch_all(&self.pool)
            .await?;
        match rows.as_slice() {
            [] => Err(StoreError::not_found("network", name)),
            [row] => from_row(row),
            _ => Err(StoreError::Conflict(format!(
                "several projects have a network named {name:?}; name the project"
            ))),
        }
    }

    /// Networks `scope` sees, by project and name.
    pub async fn list_networks(&self, scope: &Scope) -> Result<Vec<NetworkRecord>, StoreError> {
        let sql = format!(
            "{SELECT} WHERE {} ORDER BY n.project, n.name",
            scope.condition("n.project", 1)
        );
        let rows = scope.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// One page of the networks `scope` sees, by project and name.
    pub async fn list_networks_page(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<NetworkRecord>, StoreError> {
        const KEY: Keyset =
            Keyset::ascending(&[KeyColumn::text("n.project"), KeyColumn::text("n.name")]);
        let filter = scope.condition("n.project", 1);
        let rows = KEY
            .fetch(&self.pool, page, SELECT, &filter, &scope.values())
            .await?;
        rows.try_map(from_row)
    }

    /// Deletes network `name` of `project`; refused while a port is on it.
    pub async fn delete_network(&self, project: &str, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        lock_project(&mut tx, project).await?;
        let row = sqlx::query(&format!("{SELECT} WHERE n.project = $1 AND n.name = $2"))
            .bind(project)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::not_found("network", name))?;
        let net = from_row(&row)?;
        if net.ports > 0 {
            return Err(StoreError::Conflict(format!(
                "network {name:?} still has {} instance port(s); delete those instances first",
                net.ports
            )));
        }
        sqlx::query("DELETE FROM networks WHERE vni = $1")
            .bind(i64::from(net.vni))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Inserts network `new` of `project` with `vni` inside `tx`.
pub(crate) async fn insert_network(
    tx: &mut Transaction<'_, Any>,
    project: &str,
    new: &NewNetwork,
    vni: u32,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO networks (vni, project, name, cidr, gateway, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(i64::from(vni))
    .bind(project)
    .bind(&new.name)
    .bind(&new.cidr)
    .bind(&new.gateway)
    .bind(time::now())
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        StoreError::unique_or(e, || {
            format!("network {:?} or segment id {vni} is taken", new.name)
        })
    })?;
    Ok(())
}

/// The VNI a new network gets: above the highest in use, else the lowest free one.
pub(crate) async fn next_vni(tx: &mut Transaction<'_, Any>) -> Result<u32, StoreError> {
    let top: Option<i64> = sqlx::query("SELECT MAX(vni) AS top FROM networks")
        .fetch_one(&mut **tx)
        .await?
        .try_get("top")?;
    let next = top.map_or(i64::from(FIRST_VNI), |t| (t + 1).max(i64::from(FIRST_VNI)));
    if next <= i64::from(MAX_VNI) {
        return Ok(next as u32);
    }
    let gap: Option<i64> = sqlx::query(
        "SELECT MIN(n.vni + 1) AS gap FROM networks n WHERE n.vni + 1 <= $1 \
         AND NOT EXISTS (SELECT 1 FROM networks m WHERE m.vni = n.vni + 1)",
    )
    .bind(i64::from(MAX_VNI))
    .fetch_one(&mut **tx)
    .await?
    .try_get("gap")?;
    gap.map(|g| g as u32)
        .ok_or_else(|| StoreError::Conflict("every network segment id is in use".into()))
}

#[cfg(test)]
mod tests;
