//! Orphans: VMs hosts run that the store does not account for (see the reconciler). Listed
//! to the operator; deleted only on the operator's command, after checking again that the
//! store still does not account for the VM.

use crate::app::{App, AppError};
use nimbus_api::{OrphanKind, OrphanView};
use nimbus_store::{Page, PageRequest};
use nimbus_store::{Scope, StoreError};
use uuid::Uuid;

impl App {
    /// Orphans of `host` (of every host if `None`).
    pub async fn list_orphans(
        &self,
        host: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<OrphanView>, AppError> {
        if let Some(h) = host {
            self.store().get_host(h).await?;
        }
        Ok(self.store().list_orphans_page(host, page).await?)
    }

    /// Deletes orphan `vm_id` on `host`: its QEMU, its directory, and its disk unless that
    /// may be the disk its instance uses on another host (shared storage).
    pub async fn delete_orphan(&self, host: &str, vm_id: Uuid) -> Result<(), AppError> {
        let orphan = self
            .store()
            .get_orphan(host, vm_id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => AppError::not_found(format!(
                    "host {host} has no orphan {vm_id}; see `nimbus host orphans {host}`"
                )),
                e => e.into(),
            })?;
        let keep_disk = self.check_still_orphan(&orphan).await?;
        let h = self.store().get_host(host).await?;
        self.agent(&h.agent_url)
            .remove_vm(vm_id, keep_disk && h.shared_storage.is_some())
            .await?;
        self.store().remove_orphan(host, vm_id).await?;
        tracing::warn!(instance_id = %vm_id, %host, kind = orphan.kind.as_str(), "orphan VM deleted by the operator");
        Ok(())
    }

    /// Refuses when the store accounts for the VM now (the orphan list is a pass old);
    /// answers whether its disk must stay (a misplaced copy's instance may use it).
    async fn check_still_orphan(&self, o: &OrphanView) -> Result<bool, AppError> {
        let inst = match self.store().get_instance_by_id(&Scope::All, o.vm_id).await {
            Err(StoreError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
            Ok(i) => i,
        };
        if inst.host.as_deref() == Some(o.host.as_str()) {
            return Err(AppError::conflict(format!(
                "VM {} is instance {:?}, placed on {}: not an orphan any more",
                o.vm_id, inst.name, o.host
            )));
        }
        if let Some(op) = inst.operation_id {
            return Err(AppError::conflict(format!(
                "instance {:?} is busy with operation {op} (a migration may be moving it); wait for it (`nimbus operation wait {op}`)",
                inst.name
            )));
        }
        Ok(o.kind == OrphanKind::Misplaced)
    }
}
