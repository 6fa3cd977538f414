//! Typed client of the nimbus REST API.

mod error;
mod failover;
mod floating_ips;
mod ha;
mod images;
mod keypairs;
mod networks;
mod paging;
mod secgroups;
mod snapshots;

pub use error::ClientError;
pub use paging::ListPage;

use nimbus_api::{
    AuditEntry, ConsoleLog, CreateFlavor, CreateGroup, CreateInstance, CreatePlacementGroup,
    CreateProject, CreateToken, CreatedToken, ErrorBody, ErrorCode, ExecInstance, ExecOutput,
    FlavorView, GroupView, HostView, ImageView, ImportImage, InstanceView, MigrateInstance,
    MigrationView, OperationView, OrphanView, PlacementGroupView, ProjectView, QuotaLimits,
    QuotaView, TokenView, UpdateGroup, UsageQuery, UsageReport,
};
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, Instant};

/// A client of one cloud.
#[derive(Debug, Clone)]
pub struct Client {
    /// The controllers (one or several), and the one in use.
    controllers: failover::Controllers,
    token: Option<String>,
    /// The project calls act in (`?project=P`); none: the token's own.
    project: Option<String>,
    /// The CA the client trusts (PEM), when set by [`Client::with_root_ca`].
    root_ca: Option<Vec<u8>>,
    http: reqwest::Client,
}

/// The client's HTTP settings (timeouts); TLS roots are added by [`Client::with_root_ca`].
fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
}

impl Client {
    /// `api` is the controller URL, e.g. `https://127.0.0.1:7700`, or several separated by
    /// commas: a call that cannot connect to the controller in use goes to the next.
    pub fn new(api: &str, token: Option<String>) -> Self {
        let http = http_builder().build().unwrap_or_default();
        Self {
            controllers: failover::Controllers::parse(api),
            token,
            project: None,
            root_ca: None,
            http,
        }
    }

    /// Trusts the certificate authority `ca_pem` (PEM) and nothing else: how the client
    /// checks the controller's HTTPS certificate (`nimbus up` keeps the CA in
    /// `<data dir>/ca.crt`).
    pub fn with_root_ca(mut self, ca_pem: &[u8]) -> Result<Self, ClientError> {
        let ca = reqwest::Certificate::from_pem(ca_pem).map_err(ClientError::CaCert)?;
        self.http = http_builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .map_err(ClientError::CaCert)?;
        self.root_ca = Some(ca_pem.to_vec());
        Ok(self)
    }

    /// The CA the client trusts (PEM), if one was set (for connections made beside this
    /// client, such as the console's websocket).
    pub fn root_ca(&self) -> Option<&[u8]> {
        self.root_ca.as_deref()
    }

    /// Acts in `project` (admins: any project; others: only their own).
    pub fn with_project(mut self, project: Option<String>) -> Self {
        self.project = project;
        self
    }

    /// The URL of the controller in use.
    pub fn api(&self) -> &str {
        self.controllers.current()
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.api(), path));
        if let Some(p) = &self.project {
            r = r.query(&[("project", p)]);
        }
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send<T: DeserializeOwned>(&self, r: RequestBuilder) -> Result<T, ClientError> {
        let (_, bytes) = self.exchange(r).await?;
        if bytes.is_empty() {
            return serde_json::from_slice(b"null").map_err(|e| ClientError::Decode(e.to_string()));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Sends `r`: the headers and body of a success, the API's error otherwise.
    async fn exchange(
        &self,
        r: RequestBuilder,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>), ClientError> {
        let resp = self.execute(r).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport {
            api: self.api().to_string(),
            source: e,
        })?;
        if !status.is_success() {
            let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                code: ErrorCode::Internal,
                message: format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ),
            });
            return Err(ClientError::Api {
                status: status.as_u16(),
                body,
            });
        }
        Ok((headers, bytes.to_vec()))
    }

    /// Sends `r` to the controller in use, or the next ones while it cannot connect.
    async fn execute(&self, r: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let req = r.build().map_err(|e| ClientError::Transport {
            api: self.api().to_string(),
            source: e,
        })?;
        self.controllers.execute(&self.http, req).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.req(Method::GET, path)).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.req(Method::POST, path).json(body)).await
    }

    async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.req(Method::PATCH, path).json(body)).await
    }

    async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.req(Method::PUT, path).json(body)).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.req(Method::DELETE, path)).await
    }

    /// Whether the controller in use (or the next that connects) serves (`/healthz`).
    pub async fn health(&self) -> Result<(), ClientError> {
        self.exchange(self.req(Method::GET, "/healthz")).await?;
        Ok(())
    }

    /// Raw request, for tests of malformed input.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), ClientError> {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = self.execute(r).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.unwrap_or_default()))
    }

    // Instances

    /// Usage per instance and in total (`GET /v1/usage`).
    pub async fn usage(&self, q: &UsageQuery) -> Result<UsageReport, ClientError> {
        self.send(self.req(Method::GET, "/v1/usage").query(q)).await
    }

    /// Every instance of the project (all pages).
    pub async fn list_instances(&self) -> Result<Vec<InstanceView>, ClientError> {
        self.list_all("/v1/instances").await
    }

    pub async fn create_instance(
        &self,
        req: &CreateInstance,
    ) -> Result<OperationView, ClientError> {
        self.post("/v1/instances", req).await
    }

    pub async fn instance(&self, name: &str) -> Result<InstanceView, ClientError> {
        self.get(&format!("/v1/instances/{name}")).await
    }

    /// `action` is `start`, `stop` or `reboot`.
    pub async fn instance_action(
        &self,
        name: &str,
        action: &str,
    ) -> Result<OperationView, ClientError> {
        self.post(
            &format!("/v1/instances/{name}/{action}"),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn delete_instance(&self, name: &str) -> Result<OperationView, ClientError> {
        self.delete(&format!("/v1/instances/{name}")).await
    }

    pub async fn exec(&self, name: &str, command: &str) -> Result<ExecOutput, ClientError> {
        let req = ExecInstance {
            command: command.to_string(),
            timeout_secs: None,
        };
        self.post(&format!("/v1/instances/{name}/exec"), &req).await
    }

    pub async fn console_log(&self, name: &str, offset: u64) -> Result<ConsoleLog, ClientError> {
        self.get(&format!("/v1/instances/{name}/console/log?offset={offset}"))
            .await
    }

    /// Websocket URL of the instance's console.
    pub fn console_url(&self, name: &str) -> String {
        format!(
            "{}/v1/instances/{name}/console",
            self.api().replacen("http", "ws", 1)
        )
    }

    /// Starts a live migration.
    pub async fn migrate_instance(
        &self,
        name: &str,
        req: &MigrateInstance,
    ) -> Result<OperationView, ClientError> {
        self.post(&format!("/v1/instances/{name}/migrate"), req)
            .await
    }

    /// A migration record (its id is its operation's id).
    pub async fn migration(&self, id: &str) -> Result<MigrationView, ClientError> {
        self.get(&format!("/v1/migrations/{id}")).await
    }

    /// Drains a host (disable + migrate everything off).
    pub async fn drain_host(&self, name: &str) -> Result<OperationView, ClientError> {
        self.post(&format!("/v1/hosts/{name}/drain"), &serde_json::json!({}))
            .await
    }

    /// Restarts a dead host's instances elsewhere (see docs/hosts.md).
    pub async fn evacuate_host(
        &self,
        name: &str,
    ) -> Result<nimbus_api::EvacuateResult, ClientError> {
        self.post(
            &format!("/v1/hosts/{name}/evacuate"),
            &serde_json::json!({}),
        )
        .await
    }

    // Scaling groups

    pub async fn list_groups(&self) -> Result<Vec<GroupView>, ClientError> {
        self.list_all("/v1/groups").await
    }

    pub async fn create_group(&self, req: &CreateGroup) -> Result<GroupView, ClientError> {
        self.post("/v1/groups", req).await
    }

    /// A group with its members and recent events.
    pub async fn group(&self, name: &str) -> Result<GroupView, ClientError> {
        self.get(&format!("/v1/groups/{name}")).await
    }

    /// Changes desired/min/max/target; applies at once.
    pub async fn update_group(
        &self,
        name: &str,
        req: &UpdateGroup,
    ) -> Result<GroupView, ClientError> {
        self.patch(&format!("/v1/groups/{name}"), req).await
    }

    /// Deletes a group and its instances (an operation).
    pub async fn delete_group(&self, name: &str) -> Result<OperationView, ClientError> {
        self.delete(&format!("/v1/groups/{name}")).await
    }

    // Placement groups

    pub async fn list_placement_groups(&self) -> Result<Vec<PlacementGroupView>, ClientError> {
        self.list_all("/v1/placement-groups").await
    }

    pub async fn create_placement_group(
        &self,
        req: &CreatePlacementGroup,
    ) -> Result<PlacementGroupView, ClientError> {
        self.post("/v1/placement-groups", req).await
    }

    pub async fn delete_placement_group(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/placement-groups/{name}")).await
    }

    // Flavors, images, hosts

    pub async fn list_flavors(&self) -> Result<Vec<FlavorView>, ClientError> {
        self.list_all("/v1/flavors").await
    }

    pub async fn create_flavor(&self, req: &CreateFlavor) -> Result<FlavorView, ClientError> {
        self.post("/v1/flavors", req).await
    }

    pub async fn delete_flavor(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/flavors/{name}")).await
    }

    pub async fn list_images(&self) -> Result<Vec<ImageView>, ClientError> {
        self.list_all("/v1/images").await
    }

    pub async fn import_image(&self, req: &ImportImage) -> Result<ImageView, ClientError> {
        self.post("/v1/images", req).await
    }

    pub async fn delete_image(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/images/{name}")).await
    }

    /// The live controllers (admin).
    pub async fn list_controllers(&self) -> Result<Vec<nimbus_api::ControllerView>, ClientError> {
        self.get("/v1/controllers").await
    }

    pub async fn list_hosts(&self) -> Result<Vec<HostView>, ClientError> {
        self.list_all("/v1/hosts").await
    }

    pub async fn host(&self, name: &str) -> Result<HostView, ClientError> {
        self.get(&format!("/v1/hosts/{name}")).await
    }

    /// `enable` or `disable`.
    pub async fn host_action(&self, name: &str, action: &str) -> Result<HostView, ClientError> {
        self.post(
            &format!("/v1/hosts/{name}/{action}"),
            &serde_json::json!({}),
        )
        .await
    }

    /// Orphan VMs of `host` (of every host if `None`).
    pub async fn orphans(&self, host: Option<&str>) -> Result<Vec<OrphanView>, ClientError> {
        match host {
            Some(h) => {
                self.list_up_to("/v1/orphans", &[("host", h)], usize::MAX)
                    .await
            }
            None => self.list_all("/v1/orphans").await,
        }
    }

    /// Deletes the orphan VM `vm` of `host`.
    /// A one-time join token valid for `expires_in_secs` (admin).
    pub async fn create_join_token(
        &self,
        expires_in_secs: u64,
    ) -> Result<nimbus_api::JoinTokenView, ClientError> {
        let body = nimbus_api::CreateJoinToken {
            expires_in_secs: Some(expires_in_secs),
        };
        self.post("/v1/hosts/join-tokens", &body).await
    }

    /// Removes a host without instances and revokes its certificate (admin).
    pub async fn remove_host(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/hosts/{name}")).await
    }

    pub async fn delete_orphan(&self, host: &str, vm: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/hosts/{host}/orphans/{vm}")).await
    }

    // Projects, tokens, quotas, audit

    pub async fn list_projects(&self) -> Result<Vec<ProjectView>, ClientError> {
        self.list_all("/v1/projects").await
    }

    pub async fn create_project(&self, req: &CreateProject) -> Result<ProjectView, ClientError> {
        self.post("/v1/projects", req).await
    }

    pub async fn project(&self, name: &str) -> Result<ProjectView, ClientError> {
        self.get(&format!("/v1/projects/{name}")).await
    }

    pub async fn delete_project(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/projects/{name}")).await
    }

    /// Creates a token in the project this client acts in; the answer holds the secret.
    pub async fn create_token(&self, req: &CreateToken) -> Result<CreatedToken, ClientError> {
        self.post("/v1/tokens", req).await
    }

    /// Tokens of the project this client names, or of every project.
    pub async fn list_tokens(&self) -> Result<Vec<TokenView>, ClientError> {
        self.list_all("/v1/tokens").await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<TokenView, ClientError> {
        self.delete(&format!("/v1/tokens/{id}")).await
    }

    pub async fn quota(&self, project: &str) -> Result<QuotaView, ClientError> {
        self.get(&format!("/v1/projects/{project}/quota")).await
    }

    pub async fn set_quota(
        &self,
        project: &str,
        limits: &QuotaLimits,
    ) -> Result<QuotaView, ClientError> {
        self.send(
            self.req(Method::PUT, &format!("/v1/projects/{project}/quota"))
                .json(limits),
        )
        .await
    }

    /// The `limit` newest audit entries since `since` (RFC 3339), newest first.
    pub async fn audit(
        &self,
        since: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, ClientError> {
        let filter: Vec<(&str, &str)> = since.map(|s| ("since", s)).into_iter().collect();
        self.list_up_to("/v1/audit", &filter, limit as usize).await
    }

    // Operations

    /// The `limit` newest operations (following pages past the API's page size).
    pub async fn list_operations(&self, limit: u32) -> Result<Vec<OperationView>, ClientError> {
        self.list_up_to("/v1/operations", &[], limit as usize).await
    }

    pub async fn operation(&self, id: &str) -> Result<OperationView, ClientError> {
        self.get(&format!("/v1/operations/{id}")).await
    }

    pub async fn cancel_operation(&self, id: &str) -> Result<OperationView, ClientError> {
        self.post(
            &format!("/v1/operations/{id}/cancel"),
            &serde_json::json!({}),
        )
        .await
    }

    /// Waits until an operation is final, calling `on_progress` each time it is read; gives
    /// up after `timeout` with [`ClientError::Timeout`]. Each read is a long poll (the
    /// controller answers as soon as the operation changes or ends, see
    /// [`OperationWaitParams`](nimbus_api::OperationWaitParams)); an answer that comes
    /// back early and unchanged (a controller without long polls) is followed by a pause,
    /// so that reads stay at most ten a second.
    pub async fn wait_operation(
        &self,
        id: &str,
        timeout: Duration,
        mut on_progress: impl FnMut(&OperationView),
    ) -> Result<OperationView, ClientError> {
        const MIN_PERIOD: Duration = Duration::from_millis(100);
        let start = Instant::now();
        let mut last: Option<OperationView> = None;
        loop {
            let asked = Instant::now();
            let left = timeout.saturating_sub(start.elapsed()).as_secs();
            let wait = left.clamp(1, 10);
            let op: OperationView = self
                .get(&format!("/v1/operations/{id}?wait_secs={wait}"))
                .await?;
            on_progress(&op);
            if op.state.is_final() {
                return Ok(op);
            }
            if start.elapsed() > timeout {
                return Err(ClientError::Timeout {
                    what: format!("operation {id}"),
                    secs: timeout.as_secs(),
                });
            }
            if last.as_ref() == Some(&op) {
                tokio::time::sleep(MIN_PERIOD.saturating_sub(asked.elapsed())).await;
            }
            last = Some(op);
        }
    }
}
