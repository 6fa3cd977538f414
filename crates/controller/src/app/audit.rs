//! The audit log as admins read it, and how entries are written.

use crate::app::{App, AppError, Caller};
use chrono::{DateTime, Utc};
use nimbus_api::AuditEntry;
use nimbus_store::Scope;
use nimbus_store::{Page, PageRequest};

impl App {
    /// Entries since `since`, newest first: every project's, or only the one named with
    /// `?project=P` (admin).
    pub async fn list_audit(
        &self,
        caller: &Caller,
        since: Option<DateTime<Utc>>,
        page: &PageRequest,
    ) -> Result<Page<AuditEntry>, AppError> {
        caller.require_admin()?;
        let scope = if caller.explicit_project {
            caller.scope()
        } else {
            Scope::All
        };
        Ok(self.store().list_audit_page(&scope, since, page).await?)
    }

    /// Appends an entry; a failure is logged, never answered (the call itself is done).
    pub async fn record_audit(&self, entry: &AuditEntry) {
        if let Err(e) = self.store().insert_audit(entry).await {
            tracing::error!(error = %e, action = %entry.action, "cannot write the audit log");
        }
    }
}
