//! `/v1/snapshots`.

use crate::{Client, ClientError};
use nimbus_api::{CreateSnapshot, OperationView, SnapshotView};

impl Client {
    /// Starts a snapshot; answers its `snapshot_create` operation.
    pub async fn create_snapshot(
        &self,
        req: &CreateSnapshot,
    ) -> Result<OperationView, ClientError> {
        self.post("/v1/snapshots", req).await
    }

    /// The project's snapshots, or those of `instance`; parents before their children.
    pub async fn list_snapshots(
        &self,
        instance: Option<&str>,
    ) -> Result<Vec<SnapshotView>, ClientError> {
        match instance {
            Some(i) => {
                let filter = [("instance", i)];
                self.list_up_to("/v1/snapshots", &filter, usize::MAX).await
            }
            None => self.list_all("/v1/snapshots").await,
        }
    }

    pub async fn snapshot(&self, name: &str) -> Result<SnapshotView, ClientError> {
        self.get(&format!("/v1/snapshots/{name}")).await
    }

    /// Starts restoring the snapshot's instance to it.
    pub async fn restore_snapshot(&self, name: &str) -> Result<OperationView, ClientError> {
        self.post(
            &format!("/v1/snapshots/{name}/restore"),
            &serde_json::json!({}),
        )
        .await
    }

    /// Starts deleting a snapshot.
    pub async fn delete_snapshot(&self, name: &str) -> Result<OperationView, ClientError> {
        self.delete(&format!("/v1/snapshots/{name}")).await
    }
}
