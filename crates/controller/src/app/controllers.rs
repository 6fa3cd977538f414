//! The controllers sharing this database.

use crate::app::{App, AppError, Caller};
use nimbus_api::ControllerView;

impl App {
    /// The live controllers, oldest first (admin).
    pub async fn list_controllers(&self, caller: &Caller) -> Result<Vec<ControllerView>, AppError> {
        caller.require_admin()?;
        let me = self.controller_id();
        let rows = self
            .store()
            .list_controllers(self.config().lease_ttl)
            .await?;
        let holders = self.store().task_holders().await?;
        Ok(rows
            .into_iter()
            .map(|c| ControllerView {
                tasks: holders
                    .iter()
                    .filter(|h| h.holder == c.id)
                    .map(|h| h.task.clone())
                    .collect(),
                this: c.id == me,
                id: c.id,
                url: c.url,
                version: c.version,
                started_at: c.started_at,
                heartbeat_age_ms: c.heartbeat_age_ms,
                operations: c.operations,
            })
            .collect())
    }
}
