//! Operations as users see them: show, list, cancel.

use crate::app::{App, AppError, Caller};
use nimbus_api::OperationView;
use nimbus_store::StoreError;
use nimbus_store::{Page, PageRequest};
use uuid::Uuid;

impl App {
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
