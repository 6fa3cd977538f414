//! Quotas as the API shows and sets them (enforcement is in the store's insert
//! transactions).

use crate::app::{App, AppError, Caller};
use nimbus_api::{QuotaLimits, QuotaView};

impl App {
    /// Limits and current use of a project (admin, or a token of that project).
    pub async fn get_quota(&self, caller: &Caller, project: &str) -> Result<QuotaView, AppError> {
        self.get_project(caller, project).await?;
        Ok(QuotaView {
            project: project.to_string(),
            limits: self.store().quota(project).await?,
            usage: self.store().quota_usage(project).await?,
        })
    }

    /// Replaces a project's limits (admin).
    pub async fn set_quota(
        &self,
        caller: &Caller,
        project: &str,
        limits: &QuotaLimits,
    ) -> Result<QuotaView, AppError> {
        caller.require_admin()?;
        self.get_project(caller, project).await?;
        self.store().set_quota(project, limits).await?;
        tracing::info!(%project, ?limits, "quota set");
        self.get_quota(caller, project).await
    }
}
