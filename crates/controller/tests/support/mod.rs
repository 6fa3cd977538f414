//! Test support: a stand-in for a host agent, for the controller's operation tests: it serves the agent
//! routes the snapshot operations call, keeps what a host would hold (VMs, snapshots), logs
//! every call, and fails a route on demand. The controller under test is real.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nimbus_agent_api::{
    AgentErrorBody, CloneRequest, DeleteSnapshotResult, RestoreResult, SnapshotRequest,
    SnapshotResult, VmRunState, VmSpec, VmStatus,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// What the fake host holds.
#[derive(Default)]
pub struct HostState {
    pub vms: HashMap<Uuid, VmRunState>,
    /// (vm, snapshot) pairs stored.
    pub snapshots: HashSet<(Uuid, Uuid)>,
    /// Specs of the clones started.
    pub clones: Vec<VmSpec>,
    /// `"<route> <vm> [<snapshot>]"` for every call, in order.
    pub calls: Vec<String>,
    /// Route name (`snapshot`, `restore`, `delete_snapshot`, `clone`) -> (status, message)
    /// to fail it with.
    pub fail: HashMap<&'static str, (u16, String)>,
}

#[derive(Clone, Default)]
pub struct FakeAgent(pub Arc<Mutex<HostState>>);

impl FakeAgent {
    pub fn state(&self) -> std::sync::MutexGuard<'_, HostState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves on a free loopback port; answers the agent URL.
    pub async fn serve(&self) -> String {
        let app = Router::new()
            .route("/vms", get(list_vms))
            .route("/vms/{id}", get(vm).delete(delete_vm))
            .route("/vms/{id}/cold", axum::routing::put(cold_incoming))
            .route("/vms/{id}/start", post(start_vm))
            .route("/vms/{id}/snapshots", post(snapshot))
            .route("/vms/{id}/snapshots/{sid}/restore", post(restore))
            .route(
                "/vms/{id}/snapshots/{sid}",
                axum::routing::delete(delete_snapshot),
            )
            .route("/vms/{id}/clone", post(clone))
            .route(
                "/vms/{id}/snapshot-set",
                get(snapshot_set).put(import_snapshot_set),
            )
            .route("/vms/{id}/snapshot-set/export", post(export_snapshot_set))
            .route("/chunks/missing", post(missing_chunks))
            .with_state(self.clone());
        let app = Router::new().nest(nimbus_agent_api::AGENT_API_PREFIX, app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    /// Logs a call; answers the failure injected for its route, if any.
    fn call(&self, route: &'static str, what: String) -> Option<Response> {
        let mut st = self.state();
        st.calls.push(format!("{route} {what}"));
        st.fail
            .get(route)
            .map(|(status, message)| error(*status, message))
    }
}

fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = AgentErrorBody {
        code: "injected".into(),
        message: message.into(),
    };
    (status, Json(body)).into_response()
}

pub fn status(id: Uuid, state: VmRunState) -> VmStatus {
    VmStatus {
        pid: Some(4242),
        guest_ready: true,
        ready_via: Some(nimbus_api::ReadySource::Console),
        heartbeat_age_ms: Some(100),
        first_heartbeat_unix_ms: Some(1),
        ..VmStatus::new(id, state)
    }
}

async fn list_vms(State(f): State<FakeAgent>) -> Response {
    let vms: Vec<VmStatus> = f
        .state()
        .vms
        .iter()
        .map(|(id, s)| status(*id, *s))
        .collect();
    Json(vms).into_response()
}

/// Defines the VM stopped, logging the disk it links to (`cold <vm> <disk>`).
async fn cold_incoming(
    State(f): State<FakeAgent>,
    Path(id): Path<Uuid>,
    Json(req): Json<nimbus_agent_api::ColdIncomingRequest>,
) -> Response {
    let disk = match &req.disk {
        nimbus_agent_api::DiskTransfer::Shared { path } => path.display().to_string(),
        nimbus_agent_api::DiskTransfer::Mirror => "mirror".into(),
    };
    if let Some(e) = f.call("cold", format!("{id} {disk}")) {
        return e;
    }
    f.state().vms.insert(id, VmRunState::Stopped);
    Json(status(id, VmRunState::Stopped)).into_response()
}

async fn start_vm(State(f): State<FakeAgent>, Path(id): Path<Uuid>) -> Response {
    if let Some(e) = f.call("start", id.to_string()) {
        return e;
    }
    f.state().vms.insert(id, VmRunState::Running);
    Json(status(id, VmRunState::Running)).into_response()
}

async fn vm(State(f): State<FakeAgent>, Path(id): Path<Uuid>) -> Response {
    match f.state().vms.get(&id) {
        Some(s) => Json(status(id, *s)).into_response(),
        None => error(404, "no such VM"),
    }
}

async fn delete_vm(State(f): State<FakeAgent>, Path(id): Path<Uuid>) -> Response {
    let mut st = f.state();
    st.calls.push(format!("delete_vm {id}"));
    st.vms.remove(&id);
    st.snapshots.retain(|(vm, _)| *vm != id);
    Json(serde_json::json!({})).into_response()
}

/// The VM's snapshots as a set to move: one chunk digest per snapshot.
async fn snapshot_set(State(f): State<FakeAgent>, Path(id): Path<Uuid>) -> Response {
    let st = f.state();
    let chunks: Vec<String> = st
        .snapshots
        .iter()
        .filter(|(vm, _)| *vm == id)
        .map(|(_, sid)| sid.simple().to_string().repeat(2))
        .collect();
    Json(nimbus_agent_api::SnapshotSetInventory {
        snapshots: chunks.len() as u32,
        layered: !chunks.is_empty(),
        chunks,
    })
    .into_response()
}

/// Lacks every chunk it is asked about.
async fn missing_chunks(
    State(f): State<FakeAgent>,
    Json(req): Json<nimbus_agent_api::MissingChunks>,
) -> Response {
    f.state()
        .calls
        .push(format!("missing_chunks {}", req.chunks.len()));
    Json(req).into_response()
}

/// Sends `set-of-<id>` as the stream (logged `export_snapshot_set <id> <chunks asked>`).
async fn export_snapshot_set(
    State(f): State<FakeAgent>,
    Path(id): Path<Uuid>,
    Json(req): Json<nimbus_agent_api::ExportSnapshotSet>,
) -> Response {
    if let Some(e) = f.call("export_snapshot_set", format!("{id} {}", req.chunks.len())) {
        return e;
    }
    format!("set-of-{id}").into_response()
}

/// Logs what arrived (`import_snapshot_set <id> <body>`).
async fn import_snapshot_set(
    State(f): State<FakeAgent>,
    Path(id): Path<Uuid>,
    body: String,
) -> Response {
    if let Some(e) = f.call("import_snapshot_set", format!("{id} {body}")) {
        return e;
    }
    Json(nimbus_agent_api::ImportedSnapshotSet {
        snapshots: 1,
        chunks: 1,
        chunk_bytes: 8192,
        ..Default::default()
    })
    .into_response()
}

async fn snapshot(
    State(f): State<FakeAgent>,
    Path(id): Path<Uuid>,
    Json(req): Json<SnapshotRequest>,
) -> Response {
    if let Some(e) = f.call("snapshot", format!("{id} {}", req.snapshot_id)) {
        return e;
    }
    f.state().snapshots.insert((id, req.snapshot_id));
    Json(SnapshotResult {
        snapshot_id: req.snapshot_id,
        memory: req.memory,
        vm_pause_ms: 3.5,
        total_ms: 40,
        disk_layer_bytes: 1000,
        memory_bytes: if req.memory { 5000 } else { 0 },
        memory_new_bytes: if req.memory { 2000 } else { 0 },
        stored_bytes: if req.memory { 3000 } else { 1000 },
        attempts_undone: 0,
    })
    .into_response()
}

async fn restore(State(f): State<FakeAgent>, Path((id, sid)): Path<(Uuid, Uuid)>) -> Response {
    if let Some(e) = f.call("restore", format!("{id} {sid}")) {
        return e;
    }
    if !f.state().snapshots.contains(&(id, sid)) {
        return error(404, "no such snapshot");
    }
    f.state().vms.insert(id, VmRunState::Running);
    Json(RestoreResult {
        snapshot_id: sid,
        running_ms: 420,
        first_heartbeat_ms: Some(610),
        status: status(id, VmRunState::Running),
    })
    .into_response()
}

async fn delete_snapshot(
    State(f): State<FakeAgent>,
    Path((id, sid)): Path<(Uuid, Uuid)>,
) -> Response {
    if let Some(e) = f.call("delete_snapshot", format!("{id} {sid}")) {
        return e;
    }
    f.state().snapshots.remove(&(id, sid));
    Json(DeleteSnapshotResult {
        snapshot_id: sid,
        freed_bytes: 3000,
    })
    .into_response()
}

async fn clone(State(f): State<FakeAgent>, Json(req): Json<CloneRequest>) -> Response {
    if let Some(e) = f.call("clone", format!("{} {}", req.spec.id, req.snapshot_id)) {
        return e;
    }
    let mut st = f.state();
    if !st.snapshots.contains(&(req.source_vm, req.snapshot_id)) {
        return error(404, "no such snapshot");
    }
    st.vms.insert(req.spec.id, VmRunState::Running);
    st.clones.push(req.spec.clone());
    Json(status(req.spec.id, VmRunState::Running)).into_response()
}

/// A controller (real store, engine and steps) whose hosts are served by one fake agent,
/// with an image to create instances from.
pub struct Cloud {
    pub app: nimbus_controller::App,
    pub agent: FakeAgent,
    _dir: tempfile::TempDir,
}

impl Cloud {
    /// Hosts `hosts`, each with 4 vCPUs and `memory_mib`.
    pub async fn start(hosts: &[&str], memory_mib: u64) -> Self {
        use nimbus_agent_api::{Accelerator, HostInventory, RegisterHost};
        let dir = tempfile::tempdir().expect("tempdir");
        let config = nimbus_controller::ControllerConfig::new(dir.path().to_path_buf());
        let app = nimbus_controller::App::open(config).await.expect("open");
        app.bootstrap().await.expect("bootstrap");
        let agent = FakeAgent::default();
        let url = agent.serve().await;
        for host in hosts {
            app.register_host(&RegisterHost {
                agent_url: url.clone(),
                inventory: HostInventory {
                    name: host.to_string(),
                    cpus: 4,
                    memory_mib,
                    disk_gib: 50,
                    accelerator: Accelerator::Tcg,
                    qemu_version: "10.0.2".into(),
                    agent_version: "test".into(),
                    shared_storage: None,
                    cpu_allocation_ratio: None,
                    ram_allocation_ratio: None,
                    ksm: None,
                    image_cache: None,
                    capabilities: nimbus_agent_api::capability::all(),
                },
            })
            .await
            .expect("register");
        }
        // Any existing file stands in for a kernel: nothing boots here.
        let exe = std::env::current_exe().expect("exe").display().to_string();
        app.import_image(&nimbus_api::ImportImage {
            name: "default".into(),
            kernel: Some(exe),
            initrd: None,
            cmdline: None,
            disk: None,
            ready_marker: None,
        })
        .await
        .expect("image");
        Self {
            app,
            agent,
            _dir: dir,
        }
    }

    /// Starts a snapshot (with memory) of `instance` named `name`; answers its operation.
    #[allow(dead_code)] // not every test file using this support takes a snapshot
    pub async fn begin_snapshot(
        &self,
        caller: &nimbus_controller::app::Caller,
        instance: &str,
        name: &str,
    ) -> nimbus_api::OperationView {
        let req = nimbus_api::CreateSnapshot {
            instance: instance.into(),
            name: Some(name.into()),
            disk_only: false,
        };
        self.app
            .create_snapshot(caller, &req)
            .await
            .expect("snapshot accepted")
    }

    /// Waits (5 s at most) until operation `id` ends; answers it.
    #[allow(dead_code)] // not every test file using this support waits for an operation
    pub async fn wait_operation(&self, id: Uuid) -> nimbus_api::OperationView {
        for _ in 0..200 {
            let now = self
                .app
                .store()
                .get_operation(&nimbus_store::Scope::All, id)
                .await
                .expect("op");
            if now.state.is_final() {
                return now;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("operation {id} did not end");
    }

    /// An instance running on host1 with no operation, as a finished create leaves it.
    pub async fn running_instance(&self, name: &str, memory_mib: u64) -> Uuid {
        use nimbus_api::{InstanceState, OperationKind};
        let id = Uuid::new_v4();
        let new = nimbus_store::NewInstance {
            id,
            project: "default".into(),
            name: name.into(),
            flavor: "small".into(),
            image: "default".into(),
            image_project: nimbus_store::PATH_IMAGE_PROJECT.into(),
            vcpus: 1,
            memory_mib,
            disk_gib: 2,
            group_id: None,
            nics: Vec::new(),
            placement_group: None,
            ha_restart: false,
            ha_priority: nimbus_api::HA_PRIORITY_MEDIUM,
            seed: Default::default(),
            secgroups: Vec::new(),
        };
        let op = nimbus_store::NewOperation {
            id: Uuid::new_v4(),
            kind: OperationKind::InstanceCreate,
            project: "default".into(),
            target_id: id,
            target_name: name.into(),
            params: serde_json::json!({}),
        };
        let store = self.app.store();
        store
            .insert_instance(&new, &op, |net, used| {
                nimbus_controller::app::network::pick_address(&net.cidr, used)
            })
            .await
            .expect("insert");
        store.reserve_host(id, "host1").await.expect("reserve");
        store
            .set_instance_state(id, InstanceState::Running, None)
            .await
            .expect("state");
        store.end_instance_operation(id, op.id).await.expect("end");
        self.agent.state().vms.insert(id, VmRunState::Running);
        id
    }
}
