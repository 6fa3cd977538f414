//! API tokens and the roles they carry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a token may do.
///
/// | role | reads | writes | admin-only routes | other projects |
/// |---|---|---|---|---|
/// | admin | yes | yes | yes | yes (`?project=P`) |
/// | member | own project | own project | no | no |
/// | reader | own project | no | no | no |
/// | metrics | `/metrics` only | no | no | no |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
    Reader,
    /// Reads `/metrics` and nothing else (for a Prometheus server).
    Metrics,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Reader => "reader",
            Role::Metrics => "metrics",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "admin" => Role::Admin,
            "member" => Role::Member,
            "reader" => Role::Reader,
            "metrics" => Role::Metrics,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: Option<String>,
    pub project: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// After this instant the token is refused (401).
    pub expires_at: Option<DateTime<Utc>>,
    /// Set once revoked; a revoked token is refused at once.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Body of `POST /v1/tokens` (the token belongs to the project the call acts in: the
/// caller's own, or `?project=P`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateToken {
    pub role: Role,
    /// A label for people (e.g. who holds the token).
    pub name: Option<String>,
    /// Lifetime in seconds; none: the token does not expire.
    pub expires_in_secs: Option<u64>,
}

/// Answer of `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenView,
    /// The bearer secret (`nmb_...`); store it now, nimbus keeps only its hash.
    pub secret: String,
}
