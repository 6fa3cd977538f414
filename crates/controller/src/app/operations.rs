//! Operations as users see them: show, list, cancel.

use crate::app::{App, AppError, Caller};
use nimbus_api::OperationView;
use nimbus_store::StoreError;
use nimbus_store::{Page, PageRequest};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// How often a waiting request reads again an operation whose change nothing announced
/// here: one run by another controller, or a step or progress line of one run here.
const WAIT_RECHECK: Duration = Duration::from_millis(100);

impl App {
    /// The operation once it differs from what it was at the request, or has ended, or
    /// after `wait`, whichever comes first: a long poll, woken at once when an operation
    /// run by this controller ends.
    pub async fn wait_operation(
        &self,
        caller: &Caller,
        id: &str,
        wait: Duration,
    ) -> Result<OperationView, AppError> {
        let mut ended = self.inner.operations_ended.subscribe();
        let first = self.get_operation(caller, id).await?;
        let deadline = Instant::now() + wait;
        let mut now = first.clone();
        while !now.state.is_final() && now == first && Instant::now() < deadline {
            let next = deadline.min(Instant::now() + WAIT_RECHECK);
            if let Ok(Err(_)) = tokio::time::timeout_at(next, ended.changed()).await {
                // No sender left (never while the app lives): fall back to the recheck.
                tokio::time::sleep_until(next).await;
            }
            now = self.get_operation(caller, id).await?;
        }
        Ok(now)
    }

    /// Wakes the requests waiting for an operation: one run here has ended.
    pub(crate) fn operation_ended(&self) {
        self.inner.operations_ended.send_replace(());
    }

    pub async fn get_operation(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<OperationView, AppError> {
        let uuid = Uuid::parse_str(id)
            .map_err(|_| AppError::bad_request(format!("{id:?} is not an operation id")))?;
        let op = self
            .store()
            .get_operation(&caller.id_scope(), uuid)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => {
                    AppError::not_found(format!("operation {id} not found"))
                }
                e => e.into(),
            })?;
        Ok(op)
    }

    pub async fn list_operations(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<OperationView>, AppError> {
        Ok(self
            .store()
            .list_operations_page(&caller.scope(), page)
            .await?)
    }

    /// Asks a running operation to stop and undo what it did; refused once it is final.
    pub async fn cancel_operation(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<OperationView, AppError> {
        caller.require_write()?;
        let op = self.get_operation(caller, id).await?;
        if op.state.is_final() {
            return Err(AppError::conflict(format!(
                "operation {id} is already {}",
                op.state.as_str()
            )));
        }
        self.store()
            .request_cancel(&caller.id_scope(), op.id)
            .await?;
        self.get_operation(caller, id).await
    }
}
