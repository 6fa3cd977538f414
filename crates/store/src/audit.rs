//! The audit log of mutating API calls.

use crate::instances::parse_uuid;
use crate::page::{KeyColumn, Keyset, Page, PageRequest};
use crate::{time, Scope, Store, StoreError};
use chrono::{DateTime, Utc};
use nimbus_api::AuditEntry;
use sqlx::Row;

fn from_row(r: &sqlx::any::AnyRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: parse_uuid(&r.try_get::<String, _>("id")?)?,
        at: time::parse(&r.try_get::<String, _>("at")?)?,
        token_id: r.try_get("token_id")?,
        token_name: r.try_get("token_name")?,
        project: r.try_get("project")?,
        method: r.try_get("method")?,
        path: r.try_get("path")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        status: r.try_get::<i64, _>("status")?.clamp(0, u16::MAX as i64) as u16,
        client_ip: r.try_get("client_ip")?,
    })
}

impl Store {
    /// Appends an entry.
    pub async fn insert_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, token_id, token_name, project, method, path, action, \
             target, status, client_ip) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(e.id.to_string())
        .bind(time::to_text(e.at))
        .bind(e.token_id.clone())
        .bind(e.token_name.clone())
        .bind(e.project.clone())
        .bind(&e.method)
        .bind(&e.path)
        .bind(&e.action)
        .bind(e.target.clone())
        .bind(e.status as i64)
        .bind(e.client_ip.clone())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Entries `scope` sees since `since` (all when `None`), newest first, at most `limit`.
    pub async fn list_audit(
        &self,
        scope: &Scope,
        since: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let first = PageRequest::first(limit);
        Ok(self.list_audit_page(scope, since, &first).await?.items)
    }

    /// One page of the entries `scope` sees since `since` (all when `None`), newest first.
    pub async fn list_audit_page(
        &self,
        scope: &Scope,
        since: Option<DateTime<Utc>>,
        page: &PageRequest,
    ) -> Result<Page<AuditEntry>, StoreError> {
        const KEY: Keyset = Keyset::descending(&[KeyColumn::text("at"), KeyColumn::text("id")]);
        let mut binds = vec![time::to_text(since.unwrap_or(DateTime::<Utc>::MIN_UTC))];
        binds.extend(scope.values());
        let filter = format!("at >= $1 AND {}", scope.condition("project", 2));
        let rows = KEY
            .fetch(&self.pool, page, "SELECT * FROM audit_log", &filter, &binds)
            .await?;
        rows.try_map(from_row)
    }
}
