//! `/v1/networks`.

use crate::{Client, ClientError};
use nimbus_api::{CreateNetwork, NetworkView};

impl Client {
    pub async fn list_networks(&self) -> Result<Vec<NetworkView>, ClientError> {
        self.list_all("/v1/networks").await
    }

    pub async fn create_network(&self, req: &CreateNetwork) -> Result<NetworkView, ClientError> {
        self.post("/v1/networks", req).await
    }

    pub async fn network(&self, name: &str) -> Result<NetworkView, ClientError> {
        self.get(&format!("/v1/networks/{name}")).await
    }

    pub async fn delete_network(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/networks/{name}")).await
    }
}
