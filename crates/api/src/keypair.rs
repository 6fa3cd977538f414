//! Keypairs: SSH public keys a project registers, put into its instances by cloud-init.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A keypair as the API shows it (only the public half is ever stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeypairView {
    pub name: String,
    /// OpenSSH format, e.g. `ssh-ed25519 AAAA... comment`.
    pub public_key: String,
    /// `SHA256:<base64>`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/keypairs`: imports `public_key`, or without it creates an Ed25519
/// keypair whose private key is answered once and never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateKeypair {
    pub name: String,
    /// An OpenSSH public key line.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// Answer of `POST /v1/keypairs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedKeypair {
    pub keypair: KeypairView,
    /// The private key (OpenSSH PEM) of a created keypair: shown this once, kept nowhere.
    pub private_key: Option<String>,
}
