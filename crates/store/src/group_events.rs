//! Events of scaling groups: decisions with their reasons, replacements, refusals.

use crate::{time, Store, StoreError};
use nimbus_api::GroupEvent;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroupEvent {
    /// `created`, `scale_out`, `scale_in`, `set`, `replace`, `refused`, `deleting`.
    pub kind: String,
    pub message: String,
    /// Change of the desired size it made.
    pub delta: i32,
}

impl NewGroupEvent {
    pub fn new(kind: &str, message: impl Into<String>, delta: i32) -> Self {
        Self {
            kind: kind.to_string(),
            message: message.into(),
            delta,
        }
    }
}

pub(crate) async fn insert_event(
    tx: &mut Transaction<'_, Any>,
    group: Uuid,
    e: &NewGroupEvent,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO scaling_group_events (id, group_id, at, kind, message, delta) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(group.to_string())
    .bind(time::now())
    .bind(&e.kind)
    .bind(&e.message)
    .bind(e.delta as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Records an event of a group.
    pub async fn add_group_event(&self, group: Uuid, e: &NewGroupEvent) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_event(&mut tx, group, e).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The `limit` most recent events of a group, newest first.
    pub async fn group_events(
        &self,
        group: Uuid,
        limit: u32,
    ) -> Result<Vec<GroupEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM scaling_group_events WHERE group_id = $1 ORDER BY at DESC, id LIMIT $2",
        )
        .bind(group.to_string())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GroupEvent {
                    at: time::parse(&r.try_get::<String, _>("at")?)?,
                    kind: r.try_get("kind")?,
                    message: r.try_get("message")?,
                    delta: r.try_get::<i64, _>("delta")? as i32,
                })
            })
            .collect()
    }
}
