//! API tokens: created (secret shown once), listed (never the secret) and revoked by admins.

use crate::app::auth::{generate_token, generate_token_id, hash_token};
use crate::app::{App, AppError, Caller};
use chrono::{Duration, Utc};
use nimbus_api::{CreateToken, CreatedToken, Role, TokenView};
use nimbus_store::{NewToken, Scope, StoreError, TokenRecord};
use nimbus_store::{Page, PageRequest};

/// Longest token lifetime accepted (ten years).
const MAX_LIFETIME_SECS: u64 = 10 * 366 * 24 * 3600;
/// Longest token name.
const MAX_NAME: usize = 128;

/// The public view of a token row.
pub fn token_view(t: &TokenRecord) -> Result<TokenView, AppError> {
    Ok(TokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        project: t.project.clone(),
        role: Role::parse(&t.role)
            .ok_or_else(|| AppError::internal(format!("token {} has an unknown role", t.id)))?,
        created_at: t.created_at,
        expires_at: t.expires_at,
        revoked_at: t.revoked_at,
    })
}

/// Which tokens an admin call sees: one project if it named one, else all.
fn admin_scope(caller: &Caller) -> Scope {
    if caller.explicit_project {
        caller.scope()
    } else {
        Scope::All
    }
}

impl App {
    /// Creates a token in the project the call acts in; the answer carries the secret,
    /// which nimbus does not keep.
    pub async fn create_token(
        &self,
        caller: &Caller,
        req: &CreateToken,
    ) -> Result<CreatedToken, AppError> {
        caller.require_admin()?;
        if req
            .name
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > MAX_NAME)
        {
            return Err(AppError::bad_request(format!(
                "a token name has 1 to {MAX_NAME} bytes"
            )));
        }
        let expires_at = match req.expires_in_secs {
            Some(0) => return Err(AppError::bad_request("expires_in_secs must be positive")),
            Some(s) if s > MAX_LIFETIME_SECS => return Err(AppError::bad_request(
                "a token lives at most ten years; omit the expiry for a token that does not expire",
            )),
            Some(s) => Some(Utc::now() + Duration::seconds(s as i64)),
            None => None,
        };
        let secret = generate_token();
        let id = generate_token_id();
        let rec = self
            .store()
            .insert_token(&NewToken {
                id: &id,
                name: req.name.as_deref(),
                hash: &hash_token(&secret),
                role: req.role.as_str(),
                project: &caller.project,
                expires_at,
            })
            .await?;
        tracing::info!(token_id = %id, project = %caller.project, role = %req.role, "token created");
        Ok(CreatedToken {
            token: token_view(&rec)?,
            secret,
        })
    }

    pub async fn list_tokens(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<TokenView>, AppError> {
        caller.require_admin()?;
        self.store()
            .list_tokens_page(&admin_scope(caller), page)
            .await?
            .try_map(token_view)
    }

    /// Revokes a token; requests with it are refused from now on.
    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<TokenView, AppError> {
        caller.require_admin()?;
        let rec = self
            .store()
            .revoke_token(&admin_scope(caller), id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => AppError::not_found(format!(
                    "token {id:?} not found; `nimbus token list` shows the tokens"
                )),
                e => e.into(),
            })?;
        tracing::info!(token_id = %id, "token revoked");
        token_view(&rec)
    }
}
