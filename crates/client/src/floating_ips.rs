//! `/v1/floating-ips`.

use crate::{Client, ClientError};
use nimbus_api::{AttachFloatingIp, FloatingIpView};

impl Client {
    /// Every floating IP of the project (all pages).
    pub async fn list_floating_ips(&self) -> Result<Vec<FloatingIpView>, ClientError> {
        self.list_all("/v1/floating-ips").await
    }

    pub async fn allocate_floating_ip(&self) -> Result<FloatingIpView, ClientError> {
        self.post("/v1/floating-ips", &serde_json::json!({})).await
    }

    pub async fn attach_floating_ip(
        &self,
        address: &str,
        instance: &str,
    ) -> Result<FloatingIpView, ClientError> {
        let req = AttachFloatingIp {
            instance: instance.to_string(),
        };
        self.post(&format!("/v1/floating-ips/{address}/attach"), &req)
            .await
    }

    pub async fn detach_floating_ip(&self, address: &str) -> Result<FloatingIpView, ClientError> {
        self.post(
            &format!("/v1/floating-ips/{address}/detach"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn release_floating_ip(&self, address: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/floating-ips/{address}")).await
    }
}
