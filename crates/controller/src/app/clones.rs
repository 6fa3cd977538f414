//! Clones: new instances that resume from another instance's snapshot.

use crate::app::migrations::resources_of;
use crate::app::{App, AppError, Caller};
use crate::ops;
use crate::ops::instance_clone::CloneParams;
use nimbus_api::{CreateInstance, ErrorCode, OperationKind, OperationView, SnapshotState};
use nimbus_store::{NewInstance, NewOperation, NicPlan};
use uuid::Uuid;

impl App {
    /// Starts a clone of snapshot `snapshot`: a new instance with the source's flavor and
    /// image and its own identity (id, MAC, IP), on the host the snapshot lives on.
    pub async fn clone_instance(
        &self,
        caller: &Caller,
        req: &CreateInstance,
        snapshot: &str,
    ) -> Result<OperationView, AppError> {
        let (snap, source) = self.reachable_snapshot(caller, snapshot).await?;
        if snap.state != SnapshotState::Available {
            return Err(AppError::conflict(format!(
                "snapshot {} is {}; clones start from available snapshots",
                snap.name, snap.state
            )));
        }
        for (what, asked, has) in [
            ("flavor", &req.flavor, &source.flavor),
            ("image", &req.image, &source.image),
        ] {
            if asked.as_ref().is_some_and(|a| a != has) {
                return Err(AppError::bad_request(format!(
                    "a clone has the {what} of its source instance {} ({has}); leave the {what} out",
                    source.name
                )));
            }
        }
        let want = resources_of(&source);
        self.check_room_on(&snap.host, &want)
            .await
            .map_err(|e| match e.code {
                ErrorCode::NoCapacity => AppError::new(
                    ErrorCode::NoCapacity,
                    format!(
                        "snapshot {} lives on host {} (snapshots stay on their host), which has \
                         no room for a clone of {}: {}; free room there (stop or delete an \
                         instance on {})",
                        snap.name, snap.host, source.name, e.message, snap.host
                    ),
                ),
                _ => e,
            })?;
        let id = Uuid::new_v4();
        let params = CloneParams {
            snapshot_id: snap.id,
            source_instance: source.id,
            host: snap.host.clone(),
        };
        let op = NewOperation {
            id: Uuid::new_v4(),
            kind: OperationKind::InstanceClone,
            project: caller.project.clone(),
            target_id: id,
            target_name: req.name.clone(),
            params: serde_json::to_value(&params).map_err(|e| AppError::internal(e.to_string()))?,
        };
        let new = NewInstance {
            id,
            project: caller.project.clone(),
            name: req.name.clone(),
            flavor: source.flavor.clone(),
            image: source.image.clone(),
            image_project: source.image_project.clone(),
            placement_group: None,
            vcpus: source.vcpus,
            memory_mib: source.memory_mib,
            disk_gib: source.disk_gib,
            group_id: None,
            // The source's networks, with new addresses.
            nics: self
                .store()
                .instance_ports(source.id)
                .await?
                .into_iter()
                .map(|p| NicPlan {
                    network: p.network,
                    address: None,
                })
                .collect(),
            ha_restart: req.ha.is_some(),
            ha_priority: super::ha::requested_priority(req.ha_priority)?,
            seed: Default::default(),
            // The source's security groups.
            secgroups: self.store().instance_secgroups(source.id).await?,
        };
        self.store()
            .insert_instance(&new, &op, |net, used| {
                super::network::pick_address(&net.cidr, used)
            })
            .await?;
        tracing::info!(instance_id = %id, operation_id = %op.id, snapshot_id = %snap.id,
            source = %source.name, host = %snap.host, "clone accepted");
        ops::spawn(self.clone(), op.id);
        Ok(self.store().get_operation(&caller.scope(), op.id).await?)
    }
}
