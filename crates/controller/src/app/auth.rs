//! Bearer-token authentication and the role checks. Tokens are random secrets shown once;
//! only their SHA-256 hash is stored. Every request looks its token up (no cache), so a
//! revocation or an expiry takes effect on the next request.

use crate::app::{App, AppError};
use chrono::Utc;
use nimbus_api::{ErrorCode, Role};
use nimbus_store::Scope;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Who is calling, and in which project the call acts.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub token_id: String,
    pub token_name: Option<String>,
    pub role: Role,
    /// The project the token belongs to.
    pub token_project: String,
    /// The project the call acts in: the token's, or (admins only) `?project=P`.
    pub project: String,
    /// Whether the call named its project (`?project=P`).
    pub explicit_project: bool,
}

impl Caller {
    /// The controller acting on its own behalf (e.g. a drain migrating instances) as an
    /// admin in `project`; `who` names it in logs.
    pub fn system(who: &str, project: &str) -> Self {
        Caller {
            token_id: format!("system:{who}"),
            token_name: None,
            role: Role::Admin,
            token_project: project.to_string(),
            project: project.to_string(),
            explicit_project: true,
        }
    }

    /// What the call may see of project-owned resources found by name or listed: the
    /// project it acts in.
    pub fn scope(&self) -> Scope {
        Scope::project(&self.project)
    }

    /// What the call may see of resources found by their globally unique id (operations,
    /// migrations): an admin who named no project sees every project's, so that an
    /// operation id printed by any command can be followed.
    pub fn id_scope(&self) -> Scope {
        if self.role == Role::Admin && !self.explicit_project {
            Scope::All
        } else {
            self.scope()
        }
    }

    /// Refuses unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), AppError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(AppError::new(
                ErrorCode::Forbidden,
                format!(
                    "this needs an admin token (yours is a {} token of project {})",
                    self.role, self.token_project
                ),
            ))
        }
    }

    /// Refuses a metrics token anywhere but `/metrics`.
    pub fn require_not_metrics(&self) -> Result<(), AppError> {
        if self.role == Role::Metrics {
            return Err(AppError::new(
                ErrorCode::Forbidden,
                "a metrics token may only read /metrics",
            ));
        }
        Ok(())
    }

    /// Refuses unless the caller may read `/metrics` (an admin or a metrics token).
    pub fn require_metrics(&self) -> Result<(), AppError> {
        match self.role {
            Role::Admin | Role::Metrics => Ok(()),
            _ => Err(AppError::new(
                ErrorCode::Forbidden,
                "/metrics needs an admin or a metrics token (`nimbus token create --role metrics`)",
            )),
        }
    }

    /// Refuses read-only tokens.
    pub fn require_write(&self) -> Result<(), AppError> {
        if matches!(self.role, Role::Reader | Role::Metrics) {
            Err(AppError::new(
                ErrorCode::Forbidden,
                format!(
                    "a reader token may only read; ask an admin of project {} for a member token",
                    self.token_project
                ),
            ))
        } else {
            Ok(())
        }
    }
}

/// Prefix of every nimbus token, so that leaked tokens are easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "nmb_";

/// A new random token (256 bits).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// A new short token id (public, unlike the secret).
pub fn generate_token_id() -> String {
    let mut bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("tok-{}", hex::encode(bytes))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(message: &str) -> AppError {
    AppError::new(ErrorCode::Unauthorized, message)
}

impl App {
    /// Resolves a bearer token to its caller, acting in its own project. Missing, unknown,
    /// expired and revoked tokens are `unauthorized`.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Caller, AppError> {
        let token = token.ok_or_else(|| {
            unauthorized("missing bearer token: pass --token or set NIMBUS_TOKEN")
        })?;
        let rec = self
            .store()
            .token_by_hash(&hash_token(token))
            .await?
            .ok_or_else(|| unauthorized("invalid token"))?;
        if rec.revoked_at.is_some() {
            return Err(unauthorized(
                "this token was revoked; ask an admin for a new one",
            ));
        }
        if !rec.is_valid_at(Utc::now()) {
            return Err(unauthorized(
                "this token has expired; ask an admin for a new one",
            ));
        }
        let role = Role::parse(&rec.role).ok_or_else(|| {
            tracing::error!(token_id = %rec.id, role = %rec.role, "token with an unknown role");
            unauthorized("this token has an unknown role; ask an admin for a new one")
        })?;
        Ok(Caller {
            token_id: rec.id,
            token_name: rec.name,
            role,
            project: rec.project.clone(),
            token_project: rec.project,
            explicit_project: false,
        })
    }

    /// The caller acting in `project` when given: admins may name any existing project,
    /// others only their own (403 otherwise).
    pub async fn act_in(
        &self,
        mut caller: Caller,
        project: Option<&str>,
    ) -> Result<Caller, AppError> {
        caller.explicit_project = project.is_some();
        if let Some(p) = project.filter(|p| *p != caller.token_project) {
            if caller.role != Role::Admin {
                return Err(AppError::new(
                    ErrorCode::Forbidden,
                    "only an admin token may act in another project (drop --project)",
                ));
            }
            self.store()
                .get_project(p)
                .await
                .map_err(|_| crate::app::projects::project_not_found(p))?;
            caller.project = p.to_string();
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_hash_stably() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert!(constant_time_eq(&a, &a.clone()));
        assert!(!constant_time_eq(&a, &b));
        assert_ne!(generate_token_id(), generate_token_id());
    }

    fn caller(role: Role, explicit: bool) -> Caller {
        Caller {
            token_id: "t".into(),
            token_name: None,
            role,
            token_project: "acme".into(),
            project: "acme".into(),
            explicit_project: explicit,
        }
    }

    #[test]
    fn roles_gate_writes_admin_routes_and_id_lookups() {
        let admin = caller(Role::Admin, false);
        let member = caller(Role::Member, false);
        let reader = caller(Role::Reader, false);
        assert!(admin.require_admin().is_ok());
        assert_eq!(
            member.require_admin().map_err(|e| e.code),
            Err(ErrorCode::Forbidden)
        );
        assert!(member.require_write().is_ok());
        assert_eq!(
            reader.require_write().map_err(|e| e.code),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(admin.id_scope(), Scope::All);
        assert_eq!(caller(Role::Admin, true).id_scope(), Scope::project("acme"));
        assert_eq!(member.id_scope(), Scope::project("acme"));
        assert_eq!(reader.scope(), Scope::project("acme"));
    }
}
