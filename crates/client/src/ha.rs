//! `/v1/instances/{instance}/ha`.

use crate::{Client, ClientError};
use nimbus_api::SetInstanceHa;

impl Client {
    /// Sets an instance's HA policy and restart priority; answers them.
    pub async fn set_instance_ha(
        &self,
        instance: &str,
        ha: &SetInstanceHa,
    ) -> Result<SetInstanceHa, ClientError> {
        self.put(&format!("/v1/instances/{instance}/ha"), ha).await
    }
}
