//! Bearer-token authentication. Tokens are random secrets shown once; only their SHA-256
//! hash is stored.

use crate::app::{App, AppError};
use nimbus_api::ErrorCode;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub token_id: String,
    pub role: String,
    pub project: String,
}

/// Prefix of every nimbus token, so that leaked tokens are easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "nmb_";

/// A new random token (256 bits).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
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

impl App {
    /// Resolves a bearer token to its caller.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Caller, AppError> {
        let token = token.ok_or_else(|| {
            AppError::new(
                ErrorCode::Unauthorized,
                "missing bearer token: pass --token or set NIMBUS_TOKEN",
            )
        })?;
        let rec = self
            .store()
            .token_by_hash(&hash_token(token))
            .await?
            .ok_or_else(|| AppError::new(ErrorCode::Unauthorized, "invalid or revoked token"))?;
        Ok(Caller {
            token_id: rec.id,
            role: rec.role,
            project: rec.project,
        })
    }

    /// Checks the agents' shared token (used by agents to register).
    pub fn authenticate_agent(&self, token: Option<&str>) -> Result<(), AppError> {
        match token {
            Some(t) if constant_time_eq(t, &self.config().agent_token) => Ok(()),
            _ => Err(AppError::new(
                ErrorCode::Unauthorized,
                "invalid agent token",
            )),
        }
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
    }
}
