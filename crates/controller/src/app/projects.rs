//! Projects: created and deleted by admins; a tenant may see its own.

use crate::app::{App, AppError, Caller};
use nimbus_api::{validate_name, CreateProject, ProjectView, QuotaLimits, Role, DEFAULT_PROJECT};
use nimbus_store::StoreError;
use nimbus_store::{Page, PageRequest};

/// Longest project description.
const MAX_DESCRIPTION: usize = 1024;

impl App {
    /// Creates a project with the default quota of new projects ([`QuotaLimits::NEW_PROJECT`])
    /// and its `default` network.
    pub async fn create_project(
        &self,
        caller: &Caller,
        req: &CreateProject,
    ) -> Result<ProjectView, AppError> {
        caller.require_admin()?;
        validate_name(&req.name).map_err(|e| {
            AppError::bad_request(format!("invalid project name {:?}: {e}", req.name))
        })?;
        if req
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION)
        {
            return Err(AppError::bad_request(format!(
                "a project description has at most {MAX_DESCRIPTION} bytes"
            )));
        }
        let p = self
            .store()
            .create_project(
                &req.name,
                req.description.as_deref(),
                &QuotaLimits::NEW_PROJECT,
                &self.default_network(),
            )
            .await?;
        tracing::info!(project = %p.name, "project created");
        Ok(p)
    }

    pub async fn list_projects(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<ProjectView>, AppError> {
        caller.require_admin()?;
        Ok(self.store().list_projects_page(page).await?)
    }

    /// A project: any project for an admin, only its own for others (404 otherwise, so
    /// that names do not leak).
    pub async fn get_project(&self, caller: &Caller, name: &str) -> Result<ProjectView, AppError> {
        if caller.role != Role::Admin && caller.token_project != name {
            return Err(project_not_found(name));
        }
        self.store().get_project(name).await.map_err(|e| match e {
            StoreError::NotFound { .. } => project_not_found(name),
            e => e.into(),
        })
    }

    /// Deletes a project that owns no instances; its tokens are revoked.
    pub async fn delete_project(&self, caller: &Caller, name: &str) -> Result<(), AppError> {
        caller.require_admin()?;
        if name == DEFAULT_PROJECT {
            return Err(AppError::bad_request(
                "the default project holds the bootstrap admin token and cannot be deleted",
            ));
        }
        self.store()
            .delete_project(name)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => project_not_found(name),
                e => e.into(),
            })?;
        tracing::info!(project = %name, "project deleted");
        Ok(())
    }
}

pub(crate) fn project_not_found(name: &str) -> AppError {
    AppError::not_found(format!(
        "project {name:?} not found; `nimbus project list` shows the projects"
    ))
}
