//! Snapshots: validation, and starting their create, restore and delete operations.
//! See docs/snapshots.md.

use crate::app::{App, AppError, Caller};
use crate::ops;
use crate::ops::snapshot_create::CreateParams;
use crate::ops::SnapshotParams;
use chrono::Utc;
use nimbus_api::{
    validate_name, CreateSnapshot, InstanceState, OperationKind, OperationView, ReplicaCopies,
    SnapshotState, SnapshotView,
};
use nimbus_store::{InstanceRecord, NewOperation, NewSnapshot, Scope, SnapshotRecord, StoreError};
use nimbus_store::{Page, PageRequest};
use uuid::Uuid;

impl App {
    /// Validates the request and starts the snapshot's create operation; the snapshot is
    /// recorded (in `creating`) at once, so its name is taken from now on.
    pub async fn create_snapshot(
        &self,
        caller: &Caller,
        req: &CreateSnapshot,
    ) -> Result<OperationView, AppError> {
        let inst = self.find_instance(caller, &req.instance).await?;
        let name = match &req.name {
            Some(n) => n.clone(),
            None => default_name(&inst.name),
        };
        validate_name(&name)
            .map_err(|e| AppError::bad_request(format!("invalid snapshot name {name:?}: {e}")))?;
        let memory = !req.disk_only;
        check_snapshottable(&inst, memory)?;
        if !memory {
            self.refuse_if_uefi(&inst, "take a disk-only snapshot of")
                .await?;
        }
        let host = snapshot_host(&inst)?;
        self.require_host_up(&host, &format!("where instance {} runs", inst.name))
            .await?;
        // The project's snapshot quota is checked in the store, in the insert transaction.
        let new = NewSnapshot {
            id: Uuid::new_v4(),
            project: inst.project.clone(),
            instance_id: inst.id,
            name: name.clone(),
            memory,
            host: host.clone(),
        };
        let params = CreateParams {
            snapshot_id: new.id,
            name: name.clone(),
            memory,
            host,
        };
        let op = NewOperation {
            id: Uuid::new_v4(),
            kind: OperationKind::SnapshotCreate,
            project: inst.project.clone(),
            target_id: inst.id,
            target_name: inst.name.clone(),
            params: serde_json::to_value(&params).map_err(|e| AppError::internal(e.to_string()))?,
        };
        self.store().begin_snapshot(&new, &op).await?;
        tracing::info!(instance_id = %inst.id, snapshot_id = %new.id, operation_id = %op.id, %name, memory, "snapshot accepted");
        ops::spawn(self.clone(), op.id);
        Ok(self.store().get_operation(&caller.scope(), op.id).await?)
    }

    /// Finds a snapshot of the caller's project by id or name.
    pub async fn find_snapshot(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> Result<SnapshotRecord, AppError> {
        self.store()
            .get_snapshot(&caller.project, id_or_name)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => AppError::not_found(format!(
                    "snapshot {id_or_name:?} not found; `nimbus snapshot list` shows the snapshots"
                )),
                e => e.into(),
            })
    }

    /// A snapshot as `GET /v1/snapshots/{snapshot}` shows it: a replicated one says how many
    /// live controllers hold its replica.
    pub async fn show_snapshot(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> Result<SnapshotView, AppError> {
        let snap = self.find_snapshot(caller, id_or_name).await?;
        let mut view = snap.view();
        if snap.replicated_at.is_some() {
            let ttl = self.config().lease_ttl;
            let held = self.store().live_replica_holders(snap.id, ttl).await?.len();
            let controllers = self.store().list_controllers(ttl).await?.len();
            view.replicas = Some(ReplicaCopies {
                held: held as u32,
                controllers: controllers as u32,
            });
        }
        Ok(view)
    }

    /// The caller's snapshots, of one instance if given; parents before their children.
    pub async fn list_snapshots(
        &self,
        caller: &Caller,
        instance: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<SnapshotView>, AppError> {
        let instance = match instance {
            Some(i) => Some(self.find_instance(caller, i).await?.id),
            None => None,
        };
        let snapshots = self
            .store()
            .list_snapshots_page(&caller.scope(), instance, page)
            .await?;
        Ok(snapshots.map(|s| s.view()))
    }

    /// Starts restoring a snapshot's instance to it.
    pub async fn restore_snapshot(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> Result<OperationView, AppError> {
        let (snap, inst) = self.reachable_snapshot(caller, id_or_name).await?;
        if inst.host.as_deref() != Some(snap.host.as_str()) {
            return Err(AppError::conflict(format!(
                "snapshot {} lives on host {}, but instance {} is {}; it cannot be restored there",
                snap.name,
                snap.host,
                inst.name,
                inst.host
                    .as_deref()
                    .map(|h| format!("on host {h}"))
                    .unwrap_or_else(|| "on no host".into())
            )));
        }
        self.begin_on_snapshot(&snap, &inst, OperationKind::SnapshotRestore)
            .await
    }

    /// Starts deleting a snapshot (its children keep everything they need).
    pub async fn delete_snapshot(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> Result<OperationView, AppError> {
        let (snap, inst) = self.reachable_snapshot(caller, id_or_name).await?;
        if let Some(clone) = self.clone_reading(snap.id).await? {
            return Err(AppError::conflict(format!(
                "snapshot {} is being cloned (operation {clone}); delete it when that ends",
                snap.name
            )));
        }
        self.begin_on_snapshot(&snap, &inst, OperationKind::SnapshotDelete)
            .await
    }

    /// A snapshot of the caller's project and its instance, once the host storing the
    /// snapshot is known to be up (503 otherwise).
    pub(crate) async fn reachable_snapshot(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> Result<(SnapshotRecord, InstanceRecord), AppError> {
        let snap = self.find_snapshot(caller, id_or_name).await?;
        let inst = self
            .store()
            .get_instance_by_id(&Scope::All, snap.instance_id)
            .await?;
        self.require_host_up(&snap.host, &format!("where snapshot {} lives", snap.name))
            .await?;
        Ok((snap, inst))
    }

    /// Records an operation of `kind` on an existing snapshot and starts it.
    async fn begin_on_snapshot(
        &self,
        snap: &SnapshotRecord,
        inst: &InstanceRecord,
        kind: OperationKind,
    ) -> Result<OperationView, AppError> {
        let state = match kind {
            OperationKind::SnapshotRestore => SnapshotState::Restoring,
            _ => SnapshotState::Deleting,
        };
        let params = SnapshotParams {
            snapshot_id: snap.id,
        };
        let op = NewOperation {
            id: Uuid::new_v4(),
            kind,
            project: snap.project.clone(),
            target_id: inst.id,
            target_name: inst.name.clone(),
            params: serde_json::to_value(&params).map_err(|e| AppError::internal(e.to_string()))?,
        };
        self.store()
            .begin_snapshot_operation(snap.id, state, &op)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => AppError::conflict(format!(
                    "cannot {} snapshot {}: {m}",
                    kind.as_str().trim_start_matches("snapshot_"),
                    snap.name
                )),
                e => e.into(),
            })?;
        tracing::info!(instance_id = %inst.id, snapshot_id = %snap.id, operation_id = %op.id, kind = kind.as_str(), "snapshot operation accepted");
        ops::spawn(self.clone(), op.id);
        Ok(self
            .store()
            .get_operation(&Scope::project(&snap.project), op.id)
            .await?)
    }

    /// An unfinished clone operation that reads snapshot `id`, if any.
    async fn clone_reading(&self, id: Uuid) -> Result<Option<Uuid>, AppError> {
        for op in self.store().unfinished_operations().await? {
            if op.kind != OperationKind::InstanceClone {
                continue;
            }
            let params = self.store().operation_params(op.id).await?;
            if serde_json::from_value::<SnapshotParams>(params).is_ok_and(|p| p.snapshot_id == id) {
                return Ok(Some(op.id));
            }
        }
        Ok(None)
    }
}

/// `<instance>-<yyyymmdd-hhmmss>` (UTC).
fn default_name(instance: &str) -> String {
    format!("{instance}-{}", Utc::now().format("%Y%m%d-%H%M%S"))
}

/// A snapshot with memory needs a running VM; a disk-only one a running or stopped VM.
fn check_snapshottable(inst: &InstanceRecord, memory: bool) -> Result<(), AppError> {
    match (inst.state, memory) {
        (InstanceState::Running, _) | (InstanceState::Stopped, false) => Ok(()),
        (InstanceState::Stopped, true) => Err(AppError::conflict(format!(
            "instance {0} is stopped, and a snapshot with memory needs it running: use \
             --disk-only for its disk alone, or start it first (`nimbus instance start {0}`)",
            inst.name
        ))),
        (state, _) => Err(AppError::conflict(format!(
            "cannot snapshot instance {}: it is {state}; snapshots are taken of running \
             (or, with --disk-only, stopped) instances",
            inst.name
        ))),
    }
}

/// The host an instance's snapshots live on.
fn snapshot_host(inst: &InstanceRecord) -> Result<String, AppError> {
    inst.host.clone().ok_or_else(|| {
        AppError::conflict(format!("instance {} is not placed on any host", inst.name))
    })
}
