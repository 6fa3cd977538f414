//! Typed HTTP client of the agent API, used by the controller.

use crate::{
    AgentError, AgentErrorBody, CloneRequest, ColdIncomingRequest, ConsoleChunk,
    DeleteSnapshotResult, ExecRequest, ExecResult, ExportSnapshotSet, HostInventory,
    ImportSnapshotSet, ImportedSnapshotSet, IncomingReady, IncomingRequest, MigrateRequest,
    MigrationProgress, MissingChunks, RestoreRequest, RestoreResult, SnapshotRequest,
    SnapshotResult, SnapshotSetInventory, SnapshotSetPart, StopRequest, VmSpec, VmStatus,
    AGENT_API_PREFIX,
};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use std::time::Duration;
use uuid::Uuid;

/// The header carrying a transferred disk's BLAKE3 digest (hex).
pub const DISK_DIGEST_HEADER: &str = "x-nimbus-blake3";
/// How long a disk transfer may take in all.
const DISK_TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// Client of one agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    base: String,
    /// The bearer token of an agent served without TLS (in-process tests); `None` over
    /// mutual TLS, where the client certificate is the credential.
    token: Option<String>,
    http: reqwest::Client,
}

/// The timeouts of calls to agents (per-call ones override the overall one).
pub fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(120))
}

impl AgentClient {
    /// A client of an agent served over plain HTTP with a bearer token (in-process tests).
    pub fn new(base_url: &str, token: &str) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            token: Some(token.to_string()),
            http: http_builder().build().unwrap_or_default(),
        }
    }

    /// A client of the agent at `base_url` (e.g. `https://10.88.0.11:7701`) through `http`,
    /// which carries the TLS settings (the CA; the controller's certificate).
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            token: None,
            http,
        }
    }

    /// Base URL of the agent.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// URL of a route under the agent API prefix (also used for the console websocket).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.base, AGENT_API_PREFIX, path)
    }

    /// The bearer token the agent expects, if it is served without TLS.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, AgentError> {
        let resp = self.send_raw(req).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| AgentError::Decode(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Decode(e.to_string()))
    }

    async fn send_raw(&self, req: RequestBuilder) -> Result<Response, AgentError> {
        let resp = req.send().await.map_err(|source| AgentError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body: AgentErrorBody = serde_json::from_str(&text).unwrap_or_else(|_| AgentErrorBody {
            code: "unknown".into(),
            message: text,
        });
        Err(AgentError::Api {
            status,
            code: body.code,
            message: body.message,
        })
    }

    pub async fn host(&self) -> Result<HostInventory, AgentError> {
        self.send(self.request(Method::GET, "/host")).await
    }

    /// The stopped VM's disk as one self-contained qcow2 (its chain flattened), as a stream
    /// (`Content-Length` set): what an image is baked from.
    pub async fn export_flattened_disk(&self, id: uuid::Uuid) -> Result<Response, AgentError> {
        let req = self
            .request(Method::GET, &format!("/vms/{id}/disk/flattened"))
            .timeout(Duration::from_secs(3600));
        self.send_raw(req).await
    }

    pub async fn list_vms(&self) -> Result<Vec<VmStatus>, AgentError> {
        self.send(self.request(Method::GET, "/vms")).await
    }

    /// Makes the host's security-group rules exactly `fw` (one transaction; on failure the
    /// previous rules stay and the error is answered).
    pub async fn set_firewall(
        &self,
        fw: &crate::HostFirewall,
    ) -> Result<crate::FirewallApplied, AgentError> {
        self.send(self.request(Method::PUT, "/firewall").json(fw))
            .await
    }

    pub async fn define_vm(&self, spec: &VmSpec) -> Result<VmStatus, AgentError> {
        let path = format!("/vms/{}", spec.id);
        // The agent may first fetch an uploaded image: allow it 10 MiB/s at least.
        let fetch = spec
            .image
            .blob
            .as_ref()
            .map_or(0, |b| b.size_bytes / (10 << 20));
        let timeout = Duration::from_secs(120 + fetch);
        self.send(self.request(Method::PUT, &path).json(spec).timeout(timeout))
            .await
    }

    pub async fn vm(&self, id: Uuid) -> Result<VmStatus, AgentError> {
        self.send(self.request(Method::GET, &format!("/vms/{id}")))
            .await
    }

    pub async fn start_vm(&self, id: Uuid) -> Result<VmStatus, AgentError> {
        self.send(self.request(Method::POST, &format!("/vms/{id}/start")))
            .await
    }

    pub async fn stop_vm(&self, id: Uuid, req: &StopRequest) -> Result<VmStatus, AgentError> {
        let path = format!("/vms/{id}/stop");
        let req_builder = self
            .request(Method::POST, &path)
            .timeout(answer_timeout(req.timeout_secs))
            .json(req);
        self.send(req_builder).await
    }

    pub async fn reboot_vm(&self, id: Uuid) -> Result<VmStatus, AgentError> {
        self.send(self.request(Method::POST, &format!("/vms/{id}/reboot")))
            .await
    }

    /// Deletes the VM and its disk; a VM the agent does not know counts as deleted.
    pub async fn delete_vm(&self, id: Uuid) -> Result<(), AgentError> {
        self.remove_vm(id, false).await
    }

    /// Deletes the VM; with `keep_disk` its disk file stays (shared storage that another host
    /// now uses). A VM the agent does not know counts as deleted.
    pub async fn remove_vm(&self, id: Uuid, keep_disk: bool) -> Result<(), AgentError> {
        let path = if keep_disk {
            format!("/vms/{id}?keep_disk=true")
        } else {
            format!("/vms/{id}")
        };
        match self.send_raw(self.request(Method::DELETE, &path)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Target side: prepare to receive the VM.
    pub async fn migration_incoming(
        &self,
        req: &IncomingRequest,
    ) -> Result<IncomingReady, AgentError> {
        let path = format!("/vms/{}/migration/incoming", req.spec.id);
        self.send(self.request(Method::POST, &path).json(req)).await
    }

    /// Cold migration, target side: define the stopped VM with its disk.
    pub async fn cold_incoming(&self, req: &ColdIncomingRequest) -> Result<VmStatus, AgentError> {
        let path = format!("/vms/{}/cold", req.spec.id);
        self.send(self.request(Method::PUT, &path).json(req)).await
    }

    /// Cold migration, source side: the stopped VM's disk as a byte stream, with its digest
    /// (the `x-nimbus-blake3` header).
    pub async fn export_disk(&self, id: Uuid) -> Result<(Response, String), AgentError> {
        let resp = self
            .send_raw(self.long_request(Method::GET, &format!("/vms/{id}/disk")))
            .await?;
        let digest = resp
            .headers()
            .get(DISK_DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| AgentError::Decode("the disk came without its digest".into()))?;
        Ok((resp, digest))
    }

    /// Cold migration, target side: the disk `body` (checked against `digest`) replaces the
    /// fresh one.
    pub async fn import_disk(
        &self,
        id: Uuid,
        body: reqwest::Body,
        digest: &str,
    ) -> Result<(), AgentError> {
        let req = self
            .long_request(Method::PUT, &format!("/vms/{id}/disk"))
            .header(DISK_DIGEST_HEADER, digest)
            .body(body);
        self.send_raw(req).await.map(|_| ())
    }

    /// Source side of moving snapshots: what the VM's snapshots are made of.
    pub async fn snapshot_set(&self, id: Uuid) -> Result<SnapshotSetInventory, AgentError> {
        self.send(self.request(Method::GET, &format!("/vms/{id}/snapshot-set")))
            .await
    }

    /// Which of `chunks` this host lacks.
    pub async fn missing_chunks(
        &self,
        chunks: &MissingChunks,
    ) -> Result<MissingChunks, AgentError> {
        self.send(
            self.long_request(Method::POST, "/chunks/missing")
                .json(chunks),
        )
        .await
    }

    /// Source side: the VM's snapshot set as a stream (see [`crate::snapshot_move`]).
    pub async fn export_snapshot_set(
        &self,
        id: Uuid,
        req: &ExportSnapshotSet,
    ) -> Result<Response, AgentError> {
        let path = format!("/vms/{id}/snapshot-set/export");
        self.send_raw(self.long_request(Method::POST, &path).json(req))
            .await
    }

    /// Target side: receives (and checks) `part` of the snapshot set of a VM arriving here.
    pub async fn import_snapshot_set(
        &self,
        id: Uuid,
        part: SnapshotSetPart,
        body: reqwest::Body,
    ) -> Result<ImportedSnapshotSet, AgentError> {
        let path = format!("/vms/{id}/snapshot-set");
        let query = ImportSnapshotSet { part };
        self.send(
            self.long_request(Method::PUT, &path)
                .query(&query)
                .body(body),
        )
        .await
    }

    /// A request without the overall timeout (disk transfers take as long as their size).
    fn long_request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).timeout(DISK_TRANSFER_TIMEOUT)
    }

    /// Source side: start sending the VM.
    pub async fn migration_start(
        &self,
        id: Uuid,
        req: &MigrateRequest,
    ) -> Result<MigrationProgress, AgentError> {
        let path = format!("/vms/{id}/migration/start");
        self.send(self.request(Method::POST, &path).json(req)).await
    }

    /// Source side: progress of the current (or last) migration.
    pub async fn migration(&self, id: Uuid) -> Result<MigrationProgress, AgentError> {
        self.send(self.request(Method::GET, &format!("/vms/{id}/migration")))
            .await
    }

    /// Source side: progress once the migration has ended, or as it is after `within`
    /// (the agent holds the request; at most 5 s). An agent of an older release answers at
    /// once: callers must not assume it waited.
    pub async fn migration_when_final(
        &self,
        id: Uuid,
        within: std::time::Duration,
    ) -> Result<MigrationProgress, AgentError> {
        let path = format!("/vms/{id}/migration?wait_final_ms={}", within.as_millis());
        self.send(self.request(Method::GET, &path)).await
    }

    /// Source side: cancel; the VM keeps (or resumes) running on the source.
    pub async fn migration_cancel(&self, id: Uuid) -> Result<MigrationProgress, AgentError> {
        self.send(self.request(Method::POST, &format!("/vms/{id}/migration/cancel")))
            .await
    }

    /// Takes a snapshot (idempotent per snapshot id).
    pub async fn snapshot(
        &self,
        id: Uuid,
        req: &SnapshotRequest,
    ) -> Result<SnapshotResult, AgentError> {
        let path = format!("/vms/{id}/snapshots");
        let req_builder = self
            .request(Method::POST, &path)
            .timeout(Duration::from_secs(600))
            .json(req);
        self.send(req_builder).await
    }

    /// Restores the VM to snapshot `sid`.
    pub async fn restore_snapshot(
        &self,
        id: Uuid,
        sid: Uuid,
        req: &RestoreRequest,
    ) -> Result<RestoreResult, AgentError> {
        let path = format!("/vms/{id}/snapshots/{sid}/restore");
        let req_builder = self
            .request(Method::POST, &path)
            .timeout(Duration::from_secs(600))
            .json(req);
        self.send(req_builder).await
    }

    /// Deletes snapshot `sid`; an unknown snapshot counts as deleted.
    pub async fn delete_snapshot(
        &self,
        id: Uuid,
        sid: Uuid,
    ) -> Result<DeleteSnapshotResult, AgentError> {
        let path = format!("/vms/{id}/snapshots/{sid}");
        let req_builder = self
            .request(Method::DELETE, &path)
            .timeout(Duration::from_secs(600));
        self.send(req_builder).await
    }

    /// Starts a new VM from a snapshot of another VM on this host.
    pub async fn clone_vm(&self, req: &CloneRequest) -> Result<VmStatus, AgentError> {
        let path = format!("/vms/{}/clone", req.spec.id);
        let req_builder = self
            .request(Method::POST, &path)
            .timeout(Duration::from_secs(600))
            .json(req);
        self.send(req_builder).await
    }

    pub async fn console_log(&self, id: Uuid, offset: u64) -> Result<ConsoleChunk, AgentError> {
        let path = format!("/vms/{id}/console/log?offset={offset}");
        self.send(self.request(Method::GET, &path)).await
    }

    pub async fn exec(&self, id: Uuid, req: &ExecRequest) -> Result<ExecResult, AgentError> {
        let path = format!("/vms/{id}/exec");
        let req_builder = self
            .request(Method::POST, &path)
            .timeout(answer_timeout(req.timeout_secs))
            .json(req);
        self.send(req_builder).await
    }
}

/// How long to wait for the answer to a request that may take `secs` on the agent: that
/// plus a margin, and never less than the client's default.
fn answer_timeout(secs: u64) -> Duration {
    Duration::from_secs(secs.saturating_add(30).max(120))
}
