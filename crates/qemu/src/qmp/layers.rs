//! Typed QMP commands for disk layers: external snapshots (`blockdev-add` of an overlay and
//! `blockdev-snapshot`), the block graph, and `block-stream` that pulls a layer's data up
//! into the layer above it.

use super::{Qmp, QmpError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// One entry of `query-named-block-nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockNode {
    #[serde(rename = "node-name")]
    pub node_name: String,
    /// The file the node was opened from, as given (not resolved).
    pub file: PathBuf,
    /// The format driver, e.g. `qcow2` or `file`.
    pub drv: String,
}

impl Qmp {
    /// The block node attached to the device whose qdev id is `device_id` (e.g. `vda`).
    pub async fn top_node(&self, device_id: &str) -> Result<String, QmpError> {
        let v = self.execute("query-block", None).await?;
        let devices = v.as_array().cloned().unwrap_or_default();
        devices
            .iter()
            .filter(|d| {
                d.get("qdev")
                    .and_then(Value::as_str)
                    .is_some_and(|q| q == device_id || q.contains(&format!("/{device_id}/")))
            })
            .find_map(|d| d.pointer("/inserted/node-name")?.as_str().map(String::from))
            .ok_or_else(|| QmpError::Decode {
                command: "query-block".into(),
                detail: format!("no medium in device {device_id}"),
            })
    }

    /// `query-named-block-nodes`: every node of the block graph.
    pub async fn block_nodes(&self) -> Result<Vec<BlockNode>, QmpError> {
        let v = self.execute("query-named-block-nodes", None).await?;
        serde_json::from_value(v).map_err(|e| QmpError::Decode {
            command: "query-named-block-nodes".into(),
            detail: e.to_string(),
        })
    }

    /// Opens the qcow2 file `path` as node `node`, without its backing chain (it is attached
    /// by [`Qmp::blockdev_snapshot`]).
    pub async fn blockdev_add_overlay(&self, node: &str, path: &Path) -> Result<(), QmpError> {
        let args = json!({
            "driver": "qcow2",
            "node-name": node,
            "file": {"driver": "file", "filename": path},
            "backing": null,
        });
        self.execute("blockdev-add", Some(args)).await.map(|_| ())
    }

    /// `blockdev-snapshot`: `overlay` goes on top of `node`, whose users (the guest's disk)
    /// now write into the overlay; `node` stops changing.
    pub async fn blockdev_snapshot(&self, node: &str, overlay: &str) -> Result<(), QmpError> {
        let args = json!({"node": node, "overlay": overlay});
        self.execute("blockdev-snapshot", Some(args))
            .await
            .map(|_| ())
    }

    /// `block-stream` into `node` of the layers between it and `base_node` (the whole chain
    /// when `None`); when done the top's backing is `base_node`, recorded in its header as
    /// `backing_file` (given explicitly: QEMU's own idea of a file's name may be stale).
    pub async fn block_stream(
        &self,
        job_id: &str,
        node: &str,
        base_node: Option<&str>,
        backing_file: Option<&Path>,
    ) -> Result<(), QmpError> {
        let mut args = json!({"job-id": job_id, "device": node, "auto-dismiss": true});
        if let Some(base) = base_node {
            args["base-node"] = json!(base);
        }
        if let Some(file) = backing_file {
            args["backing-file"] = json!(file);
        }
        self.execute("block-stream", Some(args)).await.map(|_| ())
    }
}
