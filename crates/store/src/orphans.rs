//! Orphans and tombstones: what the reconciler may and may not remove.
//!
//! A tombstone is written in the transaction that deletes an instance row: it is the proof
//! that nimbus deleted that instance, so a VM an agent still runs for it is a leftover to
//! remove. An orphan is a VM a host runs that the store does not account for: it is listed,
//! never removed without an operator's command.

use crate::instances::parse_uuid;
use crate::page::{KeyColumn, Keyset, Page, PageRequest};
use crate::{time, Store, StoreError};
use nimbus_api::{OrphanKind, OrphanView};
use sqlx::Row;
use uuid::Uuid;

/// An orphan as the reconciler sees it on one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenOrphan {
    pub vm_id: Uuid,
    pub kind: OrphanKind,
    pub vm_state: String,
    pub placed_on: Option<String>,
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<OrphanView, StoreError> {
    let kind: String = r.try_get("kind")?;
    Ok(OrphanView {
        host: r.try_get("host")?,
        vm_id: parse_uuid(&r.try_get::<String, _>("vm_id")?)?,
        kind: OrphanKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("orphan kind {kind:?}")))?,
        vm_state: r.try_get("vm_state")?,
        placed_on: r.try_get("placed_on")?,
        first_seen: time::parse(&r.try_get::<String, _>("first_seen")?)?,
        last_seen: time::parse(&r.try_get::<String, _>("last_seen")?)?,
    })
}

impl Store {
    /// Replaces the orphans of `host` by those seen on this pass (keeping when each was
    /// first seen), in one transaction. Returns the ids seen for the first time.
    pub async fn set_orphans(
        &self,
        host: &str,
        seen: &[SeenOrphan],
    ) -> Result<Vec<uuid::Uuid>, StoreError> {
        let now = time::now();
        let mut tx = self.begin().await?;
        let known: Vec<String> = sqlx::query("SELECT vm_id FROM orphans WHERE host = $1")
            .bind(host)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("vm_id"))
            .collect::<Result<_, _>>()?;
        for gone in known
            .iter()
            .filter(|id| !seen.iter().any(|o| o.vm_id.to_string() == **id))
        {
            sqlx::query("DELETE FROM orphans WHERE host = $1 AND vm_id = $2")
                .bind(host)
                .bind(gone)
                .execute(&mut *tx)
                .await?;
        }
        for o in seen {
            sqlx::query(
                "INSERT INTO orphans (host, vm_id, kind, vm_state, placed_on, first_seen, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (host, vm_id) DO UPDATE SET kind = $8, vm_state = $9, \
                 placed_on = $10, last_seen = $11",
            )
            .bind(host)
            .bind(o.vm_id.to_string())
            .bind(o.kind.as_str())
            .bind(&o.vm_state)
            .bind(o.placed_on.clone())
            .bind(&now)
            .bind(&now)
            .bind(o.kind.as_str())
            .bind(&o.vm_state)
            .bind(o.placed_on.clone())
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(seen
            .iter()
            .map(|o| o.vm_id)
            .filter(|id| !known.contains(&id.to_string()))
            .collect())
    }

    /// Orphans of `host` (all hosts if `None`), by host then first seen.
    pub async fn list_orphans(&self, host: Option<&str>) -> Result<Vec<OrphanView>, StoreError> {
        let rows = match host {
            Some(h) => {
                sqlx::query("SELECT * FROM orphans WHERE host = $1 ORDER BY first_seen, vm_id")
                    .bind(h)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM orphans ORDER BY host, first_seen, vm_id")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(from_row).collect()
    }

    /// One page of the orphans of `host` (all hosts if `None`), by host then first seen.
    pub async fn list_orphans_page(
        &self,
        host: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<OrphanView>, StoreError> {
        const KEY: Keyset = Keyset::ascending(&[
            KeyColumn::text("host"),
            KeyColumn::text("first_seen"),
            KeyColumn::text("vm_id"),
        ]);
        let (filter, binds) = match host {
            Some(h) => ("host = $1", vec![h.to_string()]),
            None => ("1 = 1", Vec::new()),
        };
        let rows = KEY
            .fetch(&self.pool, page, "SELECT * FROM orphans", filter, &binds)
            .await?;
        rows.try_map(from_row)
    }

    /// The orphan `vm_id` of `host`.
    pub async fn get_orphan(&self, host: &str, vm_id: Uuid) -> Result<OrphanView, StoreError> {
        let row = sqlx::query("SELECT * FROM orphans WHERE host = $1 AND vm_id = $2")
            .bind(host)
            .bind(vm_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("orphan", format!("{vm_id} on {host}")))?;
        from_row(&row)
    }

    /// Forgets an orphan (after its VM was deleted).
    pub async fn remove_orphan(&self, host: &str, vm_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM orphans WHERE host = $1 AND vm_id = $2")
            .bind(host)
            .bind(vm_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether nimbus deleted the instance `id` (a tombstone says so).
    pub async fn is_tombstoned(&self, id: Uuid) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT instance_id FROM tombstones WHERE instance_id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pick, stores};
    use crate::Scope;

    fn seen(kind: OrphanKind) -> SeenOrphan {
        SeenOrphan {
            vm_id: Uuid::new_v4(),
            kind,
            vm_state: "running".into(),
            placed_on: None,
        }
    }

    #[tokio::test]
    async fn orphans_are_replaced_per_host_and_keep_first_seen() {
        for (s, _d) in stores().await {
            let (a, b) = (seen(OrphanKind::Unknown), seen(OrphanKind::Misplaced));
            let new = s
                .set_orphans("host1", &[a.clone(), b.clone()])
                .await
                .expect("set");
            assert_eq!(new, [a.vm_id, b.vm_id], "both are new");
            s.set_orphans("host2", std::slice::from_ref(&a))
                .await
                .expect("set");
            let first = s.get_orphan("host1", a.vm_id).await.expect("get");
            let new = s
                .set_orphans("host1", std::slice::from_ref(&a))
                .await
                .expect("set");
            assert!(new.is_empty(), "seen before: {new:?}");
            let all = s.list_orphans(None).await.expect("list");
            assert_eq!(all.len(), 2, "{all:?}");
            let again = s.get_orphan("host1", a.vm_id).await.expect("get");
            assert_eq!(again.first_seen, first.first_seen);
            assert!(again.last_seen >= first.last_seen);
            assert!(s.get_orphan("host1", b.vm_id).await.is_err(), "gone");
            s.remove_orphan("host2", a.vm_id).await.expect("remove");
            assert_eq!(s.list_orphans(Some("host2")).await.expect("list"), vec![]);
        }
    }

    #[tokio::test]
    async fn deleting_an_instance_leaves_a_tombstone() {
        for (s, _d) in stores().await {
            let (n, op) = crate::testing::new_instance("default", "web1");
            let rec = s.insert_instance(&n, &op, pick).await.expect("insert");
            assert!(!s.is_tombstoned(rec.id).await.expect("read"));
            s.delete_instance_row(rec.id).await.expect("delete");
            assert!(s.is_tombstoned(rec.id).await.expect("read"));
            assert!(s.get_instance_by_id(&Scope::All, rec.id).await.is_err());
            // Idempotent: a delete step that runs again finds the tombstone there.
            s.delete_instance_row(rec.id).await.expect("delete again");
        }
    }
}
