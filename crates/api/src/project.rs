//! Projects: the tenants of the cloud. Every instance, operation and migration belongs to one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A project as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProjectView {
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/projects`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateProject {
    /// A DNS label, like every resource name.
    pub name: String,
    pub description: Option<String>,
}
