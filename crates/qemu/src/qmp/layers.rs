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

/// A disk device's write counters (from `query-blockstats`), compared to prove that the
/// guest changed nothing on its disk between two readings. virtio-blk counts writes and
/// write-zeroes as writes, when they complete (failed ones apart: a failed write may have
/// written part). It does not count discards: nimbus's disks are opened with
/// `discard=ignore`, so a guest's discard changes nothing. (Discards are read all the same,
/// for devices that count them.) A write that fails for want of space is not counted at
/// all: QEMU stops the VM and keeps it to retry, which the caller must look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct GuestWrites {
    #[serde(rename = "wr_operations")]
    pub writes: u64,
    #[serde(rename = "failed_wr_operations", default)]
    pub failed_writes: u64,
    #[serde(rename = "unmap_operations", default)]
    pub discards: u64,
    #[serde(rename = "failed_unmap_operations", default)]
    pub failed_discards: u64,
    #[serde(rename = "wr_bytes")]
    pub bytes: u64,
}

/// Whether a `query-block` or `query-blockstats` entry is the device with qdev id
/// `device_id` (QEMU names it by its QOM path, `/machine/peripheral/vda/virtio-backend`).
fn is_device(entry: &Value, device_id: &str) -> bool {
    entry
        .get("qdev")
        .and_then(Value::as_str)
        .is_some_and(|q| q == device_id || q.contains(&format!("/{device_id}/")))
}

/// The write counters of device `device_id` in a `query-blockstats` answer.
fn writes_of(blockstats: &Value, device_id: &str) -> Result<GuestWrites, String> {
    let stats = blockstats
        .as_array()
        .and_then(|all| all.iter().find(|d| is_device(d, device_id)))
        .and_then(|d| d.get("stats"))
        .ok_or_else(|| format!("no statistics for device {device_id}"))?;
    serde_json::from_value(stats.clone()).map_err(|e| e.to_string())
}

impl Qmp {
    /// The block node attached to the device whose qdev id is `device_id` (e.g. `vda`).
    pub async fn top_node(&self, device_id: &str) -> Result<String, QmpError> {
        let v = self.execute("query-block", None).await?;
        let devices = v.as_array().cloned().unwrap_or_default();
        devices
            .iter()
            .filter(|d| is_device(d, device_id))
            .find_map(|d| d.pointer("/inserted/node-name")?.as_str().map(String::from))
            .ok_or_else(|| QmpError::Decode {
                command: "query-block".into(),
                detail: format!("no medium in device {device_id}"),
            })
    }

    /// What the guest has written to the disk of device `device_id` so far
    /// (`query-blockstats`): equal answers mean no write of the guest completed in between.
    pub async fn guest_writes(&self, device_id: &str) -> Result<GuestWrites, QmpError> {
        let v = self.execute("query-blockstats", None).await?;
        writes_of(&v, device_id).map_err(|detail| QmpError::Decode {
            command: "query-blockstats".into(),
            detail,
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
            // As the disk it goes on (see the launch's `-blockdev`).
            "discard": "ignore",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_devices_write_counters_by_its_qdev_id() {
        // `query-blockstats` of QEMU 10.0 for a `-blockdev` disk (trimmed).
        let v = json!([
            {"device": "", "qdev": "/machine/peripheral/vdb/virtio-backend", "node-name": "x",
             "stats": {"wr_operations": 1, "failed_wr_operations": 0, "unmap_operations": 0,
                       "failed_unmap_operations": 0, "wr_bytes": 512}},
            {"device": "", "qdev": "/machine/peripheral/vda/virtio-backend", "node-name": "disk0",
             "stats": {"wr_operations": 40, "failed_wr_operations": 1, "unmap_operations": 2,
                       "failed_unmap_operations": 0, "wr_bytes": 163840, "rd_operations": 9}}
        ]);
        assert_eq!(
            writes_of(&v, "vda").expect("vda"),
            GuestWrites {
                writes: 40,
                failed_writes: 1,
                discards: 2,
                failed_discards: 0,
                bytes: 163840
            }
        );
        assert!(writes_of(&v, "vdc").is_err());
    }
}
