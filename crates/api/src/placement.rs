//! Placement groups: instances kept apart (`spread`, members on distinct hosts) or together
//! (`pack`, members on the same host while they fit). Honoured by create, migrate and drain.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// How a placement group places its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlacementPolicy {
    /// Members on distinct hosts; a member that cannot have a host of its own is refused.
    Spread,
    /// Members on the same host while it has room (a preference, not a rule).
    Pack,
}

impl PlacementPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementPolicy::Spread => "spread",
            PlacementPolicy::Pack => "pack",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "spread" => Some(PlacementPolicy::Spread),
            "pack" => Some(PlacementPolicy::Pack),
            _ => None,
        }
    }
}

impl std::fmt::Display for PlacementPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of `POST /v1/placement-groups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatePlacementGroup {
    pub name: String,
    pub policy: PlacementPolicy,
}

/// A placement group and where its members are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlacementGroupView {
    pub id: Uuid,
    pub name: String,
    pub project: String,
    pub policy: PlacementPolicy,
    /// Its instances, as `name@host` (`name` alone while not placed).
    pub members: Vec<String>,
    pub created_at: DateTime<Utc>,
}
