//! Instances: validation, capacity checks, and starting their operations.

use crate::app::placement_groups::choose_host;
use crate::app::{App, AppError, Caller};
use crate::ops;
use nimbus_agent_api::{DiskSpec, ExecRequest, GuestImage, NicSpec, VmSpec};
use nimbus_api::{
    validate_name, ConsoleLog, CreateInstance, ExecInstance, ExecOutput, FlavorView, ImageView,
    InstanceState, InstanceView, OperationKind, OperationView,
};
use nimbus_scheduler::Resources;
use nimbus_store::{
    InstanceRecord, NewInstance, NewOperation, Page, PageRequest, Scope, StoreError,
};
use std::path::PathBuf;
use uuid::Uuid;

impl App {
    /// Validates the request, checks that some host can take it, records the instance and
    /// starts its create operation. The project's quota is checked atomically with the
    /// insert (`quota_exceeded`).
    pub async fn create_instance(
        &self,
        caller: &Caller,
        req: &CreateInstance,
    ) -> Result<OperationView, AppError> {
        caller.require_write()?;
        self.create_instance_in(caller, req, None).await
    }

    /// [`App::create_instance`], for a member of scaling group `group` when it is set (the
    /// membership is recorded with the instance, in the same transaction).
    pub async fn create_instance_in(
        &self,
        caller: &Caller,
        req: &CreateInstance,
        group: Option<Uuid>,
    ) -> Result<OperationView, AppError> {
        validate_name(&req.name).map_err(|e| {
            AppError::bad_request(format!("invalid instance name {:?}: {e}", req.name))
        })?;
        if let Some(snapshot) = &req.from_snapshot {
            if req.placement_group.is_some() {
                return Err(AppError::bad_request(
                    "a clone cannot join a placement group (it runs on its snapshot's host)",
                ));
            }
            return self.clone_instance(caller, req, snapshot).await;
        }
        let (Some(flavor_name), Some(image)) = (&req.flavor, &req.image) else {
            return Err(AppError::bad_request(
                "an instance needs a flavor and an image (or from_snapshot to clone one); \
                 `nimbus flavor list` and `nimbus image list` show them",
            ));
        };
        let flavor = self.flavor_named(flavor_name).await?;
        let img = self.image_named(image, &caller.scope()).await?;
        super::images::check_image_fits(&img, flavor.disk_gib)?;
        super::secgroups::check_instance_groups(&req.secgroups)?;
        let nics = self
            .plan_nics(caller, &req.networks, req.ip.as_deref())
            .await?;
        let seed = self.seed_inputs(caller, req, &img).await?;
        let want = Resources {
            vcpus: flavor.vcpus as u64,
            memory_mib: flavor.memory_mib,
            disk_gib: flavor.disk_gib,
        };
        let placement = match &req.placement_group {
            Some(name) => Some(self.placement_group_named(caller, name).await?.id),
            None => None,
        };
        let group_context = match placement {
            Some(id) => Some(self.group_context_of(id, None).await?),
            None => None,
        };
        // Refuse at once what cannot fit anywhere; the create operation places for real.
        let pool = self.host_capacities().await?;
        choose_host(&pool, &want, self.config().strategy, group_context.as_ref())?;
        let id = Uuid::new_v4();
        let op = NewOperation {
            id: Uuid::new_v4(),
            kind: OperationKind::InstanceCreate,
            project: caller.project.clone(),
            target_id: id,
            target_name: req.name.clone(),
            params: serde_json::json!({ "flavor": flavor_name, "image": image }),
        };
        let new = NewInstance {
            id,
            project: caller.project.clone(),
            name: req.name.clone(),
            flavor: flavor.name,
            image: image.clone(),
            image_project: img.project.clone(),
            vcpus: flavor.vcpus,
            memory_mib: flavor.memory_mib,
            disk_gib: flavor.disk_gib,
            group_id: group,
            nics,
            placement_group: placement,
            ha_restart: req.ha.is_some(),
            ha_priority: super::ha::requested_priority(req.ha_priority)?,
            seed,
            secgroups: req.secgroups.clone(),
        };
        self.store()
            .insert_instance(&new, &op, |net, used| {
                super::network::pick_address(&net.cidr, used)
            })
            .await?;
        tracing::info!(instance_id = %id, operation_id = %op.id, name = %req.name, "instance create accepted");
        ops::spawn(self.clone(), op.id);
        Ok(self.store().get_operation(&caller.scope(), op.id).await?)
    }

    /// The flavor `name`, or a not-found error that says where to look.
    pub async fn flavor_named(&self, name: &str) -> Result<FlavorView, AppError> {
        self.store().get_flavor(name).await.map_err(|e| match e {
            StoreError::NotFound { .. } => AppError::not_found(format!(
                "flavor {name:?} not found; `nimbus flavor list` shows the flavors"
            )),
            e => e.into(),
        })
    }

    /// Image `name` as `scope` sees it, with a not-found error that says where to look.
    pub async fn image_named(&self, name: &str, scope: &Scope) -> Result<ImageView, AppError> {
        self.store()
            .get_image(name, scope)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => AppError::not_found(format!(
                    "image {name:?} not found; `nimbus image list` shows the images"
                )),
                e => e.into(),
            })
    }

    /// Finds an instance of the caller's project by id or name.
    pub async fn find_instance(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> Result<InstanceRecord, AppError> {
        self.store()
            .get_instance(&caller.scope(), id_or_name)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => {
                    AppError::not_found(format!("instance {id_or_name:?} not found"))
                }
                e => e.into(),
            })
    }

    pub async fn list_instances(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<InstanceView>, AppError> {
        let page = self
            .store()
            .list_instances_page(&caller.scope(), page)
            .await?;
        let ids: Vec<Uuid> = page.items.iter().map(|i| i.id).collect();
        let ports = self.store().ports_of(&ids).await?;
        Ok(page.map(|i| i.view_with(&ports)))
    }

    /// The public view of an instance, with its NICs.
    pub async fn instance_view(&self, inst: &InstanceRecord) -> Result<InstanceView, AppError> {
        let ports = self.store().instance_ports(inst.id).await?;
        self.with_floating_ip(inst.view_with(&ports)).await
    }

    /// Starts an operation of `kind` on an existing instance, after checking that its state
    /// allows it.
    pub async fn act_on_instance(
        &self,
        caller: &Caller,
        id_or_name: &str,
        kind: OperationKind,
    ) -> Result<OperationView, AppError> {
        caller.require_write()?;
        let inst = self.find_instance(caller, id_or_name).await?;
        check_transition(&inst, kind)?;
        let op = NewOperation {
            id: Uuid::new_v4(),
            kind,
            project: inst.project.clone(),
            target_id: inst.id,
            target_name: inst.name.clone(),
            params: serde_json::json!({}),
        };
        self.store().begin_instance_operation(inst.id, &op).await?;
        tracing::info!(instance_id = %inst.id, operation_id = %op.id, kind = kind.as_str(), "operation accepted");
        ops::spawn(self.clone(), op.id);
        Ok(self.store().get_operation(&caller.scope(), op.id).await?)
    }

    /// Reads the instance's serial console log from `offset`.
    pub async fn console_log(
        &self,
        caller: &Caller,
        id_or_name: &str,
        offset: u64,
    ) -> Result<ConsoleLog, AppError> {
        let inst = self.find_instance(caller, id_or_name).await?;
        let host = placed_host(&inst)?;
        let chunk = self
            .agent_of(host)
            .await?
            .console_log(inst.id, offset)
            .await?;
        Ok(ConsoleLog {
            offset: chunk.offset,
            next_offset: chunk.next_offset,
            data: chunk.data,
        })
    }

    /// Runs a command inside the guest.
    pub async fn exec_in_instance(
        &self,
        caller: &Caller,
        id_or_name: &str,
        req: &ExecInstance,
    ) -> Result<ExecOutput, AppError> {
        caller.require_write()?;
        let inst = self.find_instance(caller, id_or_name).await?;
        if inst.state != InstanceState::Running {
            return Err(AppError::conflict(format!(
                "instance {} is {}, not running",
                inst.name, inst.state
            )));
        }
        let host = placed_host(&inst)?;
        let out = self
            .agent_of(host)
            .await?
            .exec(
                inst.id,
                &ExecRequest {
                    command: req.command.clone(),
                    timeout_secs: req.timeout_secs.unwrap_or(30),
                },
            )
            .await?;
        Ok(ExecOutput {
            exit_code: out.exit_code,
            output: out.output,
        })
    }

    /// The VM spec an agent needs for this instance.
    pub async fn vm_spec(&self, inst: &InstanceRecord) -> Result<VmSpec, AppError> {
        let img = self
            .store()
            .get_image_in(&inst.image_project, &inst.image)
            .await?;
        let blob = super::images::blob_of(&img);
        let seed = self.cloud_init_seed(inst, &img).await?;
        Ok(VmSpec {
            id: inst.id,
            name: inst.name.clone(),
            vcpus: inst.vcpus,
            memory_mib: inst.memory_mib,
            image: GuestImage {
                name: img.name,
                kernel: img.kernel.map(PathBuf::from),
                initrd: img.initrd.map(PathBuf::from),
                cmdline: img
                    .cmdline
                    .map(|c| format!("{c} nimbus.hostname={}", inst.name)),
                blob,
                base_disk: img.disk.map(PathBuf::from),
                ready_marker: img.ready_marker,
                uefi: img.firmware == nimbus_api::Firmware::Uefi,
            },
            disk: DiskSpec {
                size_gib: inst.disk_gib,
            },
            seed,
            nics: self.nic_specs(inst).await?,
            ha: inst.ha_restart,
        })
    }

    /// The NICs of an instance as a host needs them (none when the cloud runs without
    /// networking).
    async fn nic_specs(&self, inst: &InstanceRecord) -> Result<Vec<NicSpec>, AppError> {
        if self.config().network.is_none() {
            return Ok(Vec::new());
        }
        let ports = self.store().instance_ports(inst.id).await?;
        Ok(ports
            .into_iter()
            .map(|p| NicSpec {
                mac: p.mac,
                ip: p.ip,
                gateway: Some(p.gateway),
                vni: Some(p.vni),
            })
            .collect())
    }
}

/// The host an instance is placed on, or a conflict error if it has none.
pub fn placed_host(inst: &InstanceRecord) -> Result<&str, AppError> {
    inst.host.as_deref().ok_or_else(|| {
        AppError::conflict(format!("instance {} is not placed on any host", inst.name))
    })
}

/// Which actions each state allows.
fn check_transition(inst: &InstanceRecord, kind: OperationKind) -> Result<(), AppError> {
    use InstanceState as S;
    use OperationKind as K;
    let ok = match kind {
        K::InstanceStart => matches!(inst.state, S::Stopped | S::Error) && inst.host.is_some(),
        K::InstanceStop => matches!(inst.state, S::Running | S::Error) && inst.host.is_some(),
        K::InstanceReboot => inst.state == S::Running,
        K::InstanceDelete => true,
        K::InstanceCreate
        | K::InstanceClone
        | K::InstanceMigrate
        | K::InstanceColdMigrate
        | K::HostDrain
        | K::SnapshotCreate
        | K::SnapshotRestore
        | K::SnapshotDelete
        | K::GroupDelete
        | K::InstanceHaRestart => false,
    };
    if ok {
        return Ok(());
    }
    let verb = kind.as_str().trim_start_matches("instance_");
    Err(AppError::conflict(format!(
        "cannot {verb} instance {}: it is {}{}",
        inst.name,
        inst.state,
        if inst.host.is_none() {
            " and not placed on a host"
        } else {
            ""
        }
    )))
}
