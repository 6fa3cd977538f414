//! Typed QMP commands for block devices over the network: the NBD server and exports of a
//! migration target, and the NBD client node and `blockdev-mirror` job of a source.

use super::{Qmp, QmpError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;

/// Where an NBD server listens or an NBD client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NbdAddress<'a> {
    /// A TCP port of `host`.
    Tcp { host: &'a str, port: u16 },
    /// A unix socket (a relative path is relative to QEMU's working directory).
    Unix(&'a Path),
}

impl NbdAddress<'_> {
    /// The flat `SocketAddress` form (`blockdev-add`).
    fn flat(self) -> Value {
        match self {
            NbdAddress::Tcp { host, port } => inet_flat(host, port),
            NbdAddress::Unix(path) => json!({"type": "unix", "path": path.to_string_lossy()}),
        }
    }

    /// The legacy `SocketAddressLegacy` form: `{"type": ..., "data": {...}}`
    /// (`nbd-server-start`).
    fn legacy(self) -> Value {
        match self {
            NbdAddress::Tcp { host, port } => json!({"type": "inet", "data": inet(host, port)}),
            NbdAddress::Unix(path) => {
                json!({"type": "unix", "data": {"path": path.to_string_lossy()}})
            }
        }
    }
}

/// One entry of `query-block-jobs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockJobInfo {
    /// The job id (`device` is its historical name).
    pub device: String,
    /// Job type, e.g. `mirror`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Estimated total work, in bytes (grows while the guest writes).
    #[serde(default)]
    pub len: u64,
    /// Work done so far, in bytes.
    #[serde(default)]
    pub offset: u64,
    /// A mirror has copied everything once and now keeps the target in sync.
    #[serde(default)]
    pub ready: bool,
    /// Job status, e.g. `running`, `ready`, `concluded`.
    #[serde(default)]
    pub status: String,
    /// I/O status: `ok`, `failed` or `nospace`.
    #[serde(default)]
    pub io_status: Option<String>,
}

impl BlockJobInfo {
    /// Bytes still to copy.
    pub fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.offset)
    }
}

/// A TCP endpoint for QMP (`InetSocketAddress`).
fn inet(host: &str, port: u16) -> Value {
    json!({"host": host, "port": port.to_string()})
}

/// A TCP endpoint in the flat `SocketAddress` form.
fn inet_flat(host: &str, port: u16) -> Value {
    json!({"type": "inet", "host": host, "port": port.to_string()})
}

impl Qmp {
    async fn run_block(&self, command: &str, args: Value) -> Result<(), QmpError> {
        self.execute(command, Some(args)).await.map(|_| ())
    }

    /// `nbd-server-start` listening on `addr`. No TLS: a server reachable over the network
    /// is the agent's tunnel in front of a unix socket (see the agent's migration tunnel).
    pub async fn nbd_server_start(&self, addr: NbdAddress<'_>) -> Result<(), QmpError> {
        self.run_block("nbd-server-start", json!({ "addr": addr.legacy() }))
            .await
    }

    /// `nbd-server-stop`: closes the server and every NBD export.
    pub async fn nbd_server_stop(&self) -> Result<(), QmpError> {
        self.execute("nbd-server-stop", None).await.map(|_| ())
    }

    /// `block-export-add` of the block node `node` as the NBD export `name` (export id
    /// `id`). A writable export activates the node even on a QEMU waiting for an incoming
    /// migration, so that a source can mirror into it.
    pub async fn nbd_export_add(
        &self,
        id: &str,
        node: &str,
        name: &str,
        writable: bool,
    ) -> Result<(), QmpError> {
        let args = json!({
            "type": "nbd", "id": id, "node-name": node, "name": name, "writable": writable
        });
        self.run_block("block-export-add", args).await
    }

    /// `blockdev-add` of an NBD client node `node` connected to `export` at `addr`.
    pub async fn blockdev_add_nbd(
        &self,
        node: &str,
        addr: NbdAddress<'_>,
        export: &str,
    ) -> Result<(), QmpError> {
        let args = json!({
            "driver": "nbd", "node-name": node, "server": addr.flat(), "export": export
        });
        self.run_block("blockdev-add", args).await
    }

    /// `blockdev-del` of the node `node`.
    pub async fn blockdev_del(&self, node: &str) -> Result<(), QmpError> {
        self.run_block("blockdev-del", json!({ "node-name": node }))
            .await
    }

    /// `blockdev-mirror` of `device` into the node `target` as job `job_id`: `sync` is
    /// `top`, `full` or `none`; `write_blocking` makes every guest write reach the target
    /// before it completes once the job is ready (the target never falls behind).
    pub async fn blockdev_mirror(
        &self,
        job_id: &str,
        device: &str,
        target: &str,
        sync: &str,
        write_blocking: bool,
    ) -> Result<(), QmpError> {
        let mode = if write_blocking {
            "write-blocking"
        } else {
            "background"
        };
        let args = json!({
            "job-id": job_id, "device": device, "target": target, "sync": sync,
            "copy-mode": mode
        });
        self.run_block("blockdev-mirror", args).await
    }

    /// `query-block-jobs`.
    pub async fn query_block_jobs(&self) -> Result<Vec<BlockJobInfo>, QmpError> {
        let v = self.execute("query-block-jobs", None).await?;
        serde_json::from_value(v).map_err(|e| QmpError::Decode {
            command: "query-block-jobs".into(),
            detail: e.to_string(),
        })
    }

    /// `block-commit` of `top`, the layer a device writes into, into the layer under it,
    /// `base`, while the guest runs: once the job is ready, [`Qmp::job_complete`] makes
    /// `base` the layer the device writes into again (QEMU's active commit).
    pub async fn block_commit_active(
        &self,
        job_id: &str,
        top: &str,
        base: &str,
    ) -> Result<(), QmpError> {
        let args = json!({"job-id": job_id, "device": top, "base-node": base});
        self.run_block("block-commit", args).await
    }

    /// `job-complete` of a ready job.
    pub async fn job_complete(&self, job_id: &str) -> Result<(), QmpError> {
        let args = json!({ "id": job_id });
        self.run_block("job-complete", args).await
    }

    /// `block-job-cancel` of job `job_id`. On a ready mirror without `force` the job makes
    /// a last pass and ends with `BLOCK_JOB_COMPLETED`: the target is then a consistent
    /// copy as of the cancel. With `force` it ends at once.
    pub async fn block_job_cancel(&self, job_id: &str, force: bool) -> Result<(), QmpError> {
        self.run_block(
            "block-job-cancel",
            json!({ "device": job_id, "force": force }),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::MigrationInfo;

    #[test]
    fn decodes_block_jobs_as_qemu_10_reports_them() {
        let v = json!([{"auto-finalize": true, "io-status": "ok", "device": "mirror-x",
            "auto-dismiss": true, "busy": true, "len": 65536, "offset": 4096,
            "status": "running", "paused": false, "speed": 0, "ready": false,
            "type": "mirror", "actively-synced": false}]);
        let jobs: Vec<BlockJobInfo> = serde_json::from_value(v).expect("decode");
        assert_eq!(jobs[0].device, "mirror-x");
        assert_eq!(jobs[0].remaining(), 61440);
        assert!(!jobs[0].ready);
    }

    #[test]
    fn nbd_addresses_in_both_qmp_forms() {
        let unix = NbdAddress::Unix(Path::new("nbd-in.sock"));
        assert_eq!(
            unix.legacy(),
            json!({"type": "unix", "data": {"path": "nbd-in.sock"}})
        );
        assert_eq!(unix.flat(), json!({"type": "unix", "path": "nbd-in.sock"}));
        let tcp = NbdAddress::Tcp {
            host: "10.0.0.1",
            port: 10809,
        };
        assert_eq!(
            tcp.legacy(),
            json!({"type": "inet", "data": {"host": "10.0.0.1", "port": "10809"}})
        );
        assert_eq!(
            tcp.flat(),
            json!({"type": "inet", "host": "10.0.0.1", "port": "10809"})
        );
    }

    #[test]
    fn decodes_migration_statistics_of_qemu_10() {
        let v = json!({"status": "active", "setup-time": 1, "total-time": 330,
            "expected-downtime": 50, "cpu-throttle-percentage": 30,
            "ram": {"total": 268967936, "dirty-sync-count": 3, "page-size": 4096,
                    "remaining": 4096, "transferred": 68011205, "dirty-pages-rate": 12,
                    "mbps": 1653.7}});
        let info: MigrationInfo = serde_json::from_value(v).expect("decode");
        let ram = info.ram.expect("ram");
        assert_eq!((ram.page_size, ram.dirty_sync_count), (4096, 3));
        assert_eq!(info.cpu_throttle_percentage, Some(30));
        let target = json!({"status": "setup", "socket-address":
            [{"port": "43709", "ipv4": true, "host": "127.0.0.1", "type": "inet"}]});
        let info: MigrationInfo = serde_json::from_value(target).expect("decode");
        let addr = &info.socket_address.expect("address")[0];
        assert_eq!(addr.port.as_deref(), Some("43709"));
    }
}
