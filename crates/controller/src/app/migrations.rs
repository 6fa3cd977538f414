//! Live migration and host drain, as the API starts them.

use crate::app::host_capabilities::Unfit;
use crate::app::placement_groups::{choose_host, GroupContext};
use crate::app::{App, AppError, Caller};
use crate::ops;
use nimbus_api::{InstanceState, MigrateInstance, MigrationView, OperationKind, OperationView};
use nimbus_scheduler::{HostCapacity, Resources};
use nimbus_store::Scope;
use nimbus_store::{NewOperation, StoreError};
use uuid::Uuid;

/// Downtime budget when the user sets none.
pub const DEFAULT_MAX_DOWNTIME_MS: u64 = 50;

impl App {
    /// An instance booted through UEFI keeps its EFI variables in a file of its host
    /// (`efivars.fd`). They move inside QEMU's migration stream (the flash device's contents
    /// are guest RAM, written into the target's file when the guest resumes there), so a live
    /// migration and a snapshot with memory carry them; a cold migration or a disk-only
    /// snapshot, which have no stream, would lose them: refused, rather than resetting the
    /// guest's boot entries without a word.
    pub(crate) async fn refuse_if_uefi(
        &self,
        inst: &nimbus_store::InstanceRecord,
        action: &str,
    ) -> Result<(), AppError> {
        let img = self
            .store()
            .get_image_in(&inst.image_project, &inst.image)
            .await?;
        if img.firmware != nimbus_api::Firmware::Uefi {
            return Ok(());
        }
        Err(AppError::conflict(format!(
            "cannot {action} instance {}: it boots through UEFI (image {:?}) and its EFI \
             variables move only inside a running VM's state: migrate it while it runs, and \
             snapshot it with memory (docs/images.md)",
            inst.name, img.name
        )))
    }

    /// Starts the live migration of a running instance.
    pub async fn migrate_instance(
        &self,
        caller: &Caller,
        id_or_name: &str,
        req: &MigrateInstance,
    ) -> Result<OperationView, AppError> {
        caller.require_admin()?;
        let inst = self.find_instance(caller, id_or_name).await?;
        let kind = match inst.state {
            InstanceState::Running => OperationKind::InstanceMigrate,
            InstanceState::Stopped => OperationKind::InstanceColdMigrate,
            other => {
                return Err(AppError::conflict(format!(
                    "cannot migrate instance {}: it is {other}; running instances move live, \
                     stopped ones cold",
                    inst.name
                )))
            }
        };
        let source = inst
            .host
            .clone()
            .ok_or_else(|| AppError::conflict(format!("instance {} has no host", inst.name)))?;
        if kind == OperationKind::InstanceColdMigrate {
            self.refuse_if_uefi(&inst, "cold-migrate").await?;
        }
        if let Some(ms) = req.max_downtime_ms {
            if !(1..=60_000).contains(&ms) {
                return Err(AppError::bad_request(
                    "max_downtime_ms must be between 1 and 60000",
                ));
            }
        }
        // Refuse at once what cannot work; the operation chooses for real.
        self.choose_migration_target(&inst, &source, req.to.as_deref())
            .await?;
        let op = NewOperation {
            id: Uuid::new_v4(),
            kind,
            project: inst.project.clone(),
            target_id: inst.id,
            target_name: inst.name.clone(),
            params: serde_json::to_value(req).unwrap_or_default(),
        };
        self.store().begin_instance_operation(inst.id, &op).await?;
        tracing::info!(instance_id = %inst.id, operation_id = %op.id, %source, to = ?req.to, kind = kind.as_str(), "migration accepted");
        ops::spawn(self.clone(), op.id);
        Ok(self.store().get_operation(&Scope::All, op.id).await?)
    }

    /// The host an instance on `source` should move to: `to` if given (it must be up,
    /// enabled, have room and an agent that can receive what the instance holds), else the
    /// scheduler's choice among the other hosts that can; both honouring the instance's
    /// placement group.
    pub async fn choose_migration_target(
        &self,
        inst: &nimbus_store::InstanceRecord,
        source: &str,
        to: Option<&str>,
    ) -> Result<String, AppError> {
        let unfit = self.unfit_targets(inst, Some(source)).await?;
        let pool = self.host_capacities().await?;
        let group = self.group_context(inst).await?;
        migration_target(&pool, group.as_ref(), self, inst, (source, to), &unfit)
    }

    /// A migration record (its id is its operation's id).
    pub async fn get_migration(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<MigrationView, AppError> {
        let op = self.get_operation(caller, id).await?;
        self.store()
            .get_migration(&caller.id_scope(), op.id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => {
                    AppError::not_found(format!("migration {id} not found"))
                }
                e => e.into(),
            })
    }

    /// Starts draining a host: it takes no new instances and every running instance on it
    /// moves live to other hosts.
    pub async fn drain_host(&self, caller: &Caller, name: &str) -> Result<OperationView, AppError> {
        caller.require_admin()?;
        let host = self.get_host(name).await?;
        let busy = self
            .store()
            .list_operations(&Scope::All, 200)
            .await?
            .into_iter()
            .find(|o| {
                o.kind == OperationKind::HostDrain
                    && o.target_name == host.name
                    && !o.state.is_final()
            });
        if let Some(op) = busy {
            return Err(AppError::conflict(format!(
                "host {name} is already draining (operation {})",
                op.id
            )));
        }
        let op = NewOperation {
            id: Uuid::new_v4(),
            kind: OperationKind::HostDrain,
            project: caller.project.clone(),
            target_id: Uuid::nil(),
            target_name: host.name.clone(),
            params: serde_json::json!({ "host": host.name }),
        };
        self.store().insert_operation(&op).await?;
        tracing::info!(operation_id = %op.id, host = %host.name, "drain accepted");
        ops::spawn(self.clone(), op.id);
        Ok(self.store().get_operation(&Scope::All, op.id).await?)
    }
}

/// What an instance holds.
pub fn resources_of(inst: &nimbus_store::InstanceRecord) -> Resources {
    Resources {
        vcpus: inst.vcpus as u64,
        memory_mib: inst.memory_mib,
        disk_gib: inst.disk_gib,
    }
}

/// [`App::choose_migration_target`] on given figures (claims choose again on fresh ones).
pub(crate) fn migration_target(
    pool: &[HostCapacity],
    group: Option<&GroupContext>,
    app: &App,
    inst: &nimbus_store::InstanceRecord,
    (source, to): (&str, Option<&str>),
    unfit: &Unfit,
) -> Result<String, AppError> {
    let want = &resources_of(inst);
    let pool: Vec<_> = pool.iter().filter(|h| h.name != source).cloned().collect();
    let strategy = app.config().strategy;
    if let Some(to) = to {
        if to == source {
            return Err(AppError::bad_request(format!(
                "the instance already runs on {to}"
            )));
        }
        let host = pool
            .iter()
            .find(|h| h.name == to)
            .ok_or_else(|| AppError::not_found(format!("host {to:?} not found")))?;
        if !host.schedulable {
            return Err(AppError::conflict(format!(
                "host {to} is down or disabled; `nimbus host list` shows which"
            )));
        }
        if let Some(why) = unfit.reason(to) {
            return Err(AppError::conflict(why.to_string()));
        }
        let one = std::slice::from_ref(host);
        return choose_host(one, want, strategy, group).map(|h| h.name.clone());
    }
    let fit: Vec<_> = pool
        .iter()
        .filter(|h| unfit.reason(&h.name).is_none())
        .cloned()
        .collect();
    choose_host(&fit, want, strategy, group)
        .map(|h| h.name.clone())
        .map_err(|mut e| {
            if let Some(skipped) = unfit.skipped_in(&pool) {
                e.message = format!("{}; {skipped}", e.message);
            }
            e
        })
}
