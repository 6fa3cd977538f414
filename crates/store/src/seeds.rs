//! What an instance's cloud-init seed carries besides its identity: the public key of the
//! keypair it was created with (copied, so deleting the keypair changes nothing) and its
//! user-data. Written in the instance's insert transaction.

use crate::{Store, StoreError};
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

/// The seed inputs of an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceSeed {
    pub key_name: Option<String>,
    /// OpenSSH public key line.
    pub public_key: Option<String>,
    /// Base64 of the user-data.
    pub user_data: Option<String>,
}

/// Records `seed` for instance `id` (inside its insert transaction).
pub(crate) async fn write_seed(
    tx: &mut Transaction<'_, Any>,
    id: Uuid,
    seed: &InstanceSeed,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE instances SET key_name = $1, public_key = $2, user_data = $3 WHERE id = $4",
    )
    .bind(seed.key_name.clone())
    .bind(seed.public_key.clone())
    .bind(seed.user_data.clone())
    .bind(id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// The seed inputs of instance `id` (empty for an unknown id).
    pub async fn instance_seed(&self, id: Uuid) -> Result<InstanceSeed, StoreError> {
        let row =
            sqlx::query("SELECT key_name, public_key, user_data FROM instances WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        let Some(r) = row else {
            return Ok(InstanceSeed::default());
        };
        Ok(InstanceSeed {
            key_name: r.try_get("key_name")?,
            public_key: r.try_get("public_key")?,
            user_data: r.try_get("user_data")?,
        })
    }
}
