//! `/v1/keypairs`.

use crate::{Client, ClientError};
use nimbus_api::{CreateKeypair, CreatedKeypair, KeypairView};

impl Client {
    /// Imports `public_key`, or (without it) creates a keypair whose private key is answered
    /// once.
    pub async fn create_keypair(&self, req: &CreateKeypair) -> Result<CreatedKeypair, ClientError> {
        self.post("/v1/keypairs", req).await
    }

    pub async fn list_keypairs(&self) -> Result<Vec<KeypairView>, ClientError> {
        self.list_all("/v1/keypairs").await
    }

    pub async fn keypair(&self, name: &str) -> Result<KeypairView, ClientError> {
        self.get(&format!("/v1/keypairs/{name}")).await
    }

    pub async fn delete_keypair(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/keypairs/{name}")).await
    }
}
