//! Placement groups: create, list, delete, and what placement needs to honour them.

use super::{App, AppError, Caller};
use nimbus_api::{
    validate_name, CreatePlacementGroup, ErrorCode, PlacementGroupView, PlacementPolicy,
};
use nimbus_scheduler::{
    place_in_group, GroupPlacement, GroupPolicy, HostCapacity, PlacementError, Resources,
};
use nimbus_store::{InstanceRecord, PlacementGroupRecord, StoreError};
use nimbus_store::{Page, PageRequest};
use uuid::Uuid;

/// An instance's placement group as placement needs it: name, policy, and the hosts of its
/// other members.
#[derive(Debug, Clone)]
pub struct GroupContext {
    pub name: String,
    pub policy: PlacementPolicy,
    pub occupied: Vec<String>,
}

impl GroupContext {
    fn placement(&self) -> GroupPlacement<'_> {
        GroupPlacement {
            name: &self.name,
            policy: match self.policy {
                PlacementPolicy::Spread => GroupPolicy::Spread,
                PlacementPolicy::Pack => GroupPolicy::Pack,
            },
            occupied: &self.occupied,
        }
    }
}

/// Chooses a host among `pool`, honouring `group`; the error says why none fits.
pub fn choose_host<'a>(
    pool: &'a [HostCapacity],
    want: &Resources,
    strategy: nimbus_scheduler::Strategy,
    group: Option<&GroupContext>,
) -> Result<&'a HostCapacity, AppError> {
    place_in_group(pool, want, strategy, group.map(GroupContext::placement)).map_err(|e| match e {
        PlacementError::NoCapacity(e) => AppError::new(ErrorCode::NoCapacity, e.to_string()),
        e @ PlacementError::SpreadImpossible { .. } => AppError::conflict(e.to_string()),
    })
}

impl App {
    pub async fn create_placement_group(
        &self,
        caller: &Caller,
        req: &CreatePlacementGroup,
    ) -> Result<PlacementGroupView, AppError> {
        caller.require_write()?;
        validate_name(&req.name).map_err(|e| {
            AppError::bad_request(format!("invalid placement group name {:?}: {e}", req.name))
        })?;
        let g = self
            .store()
            .insert_placement_group(&caller.project, &req.name, req.policy)
            .await?;
        tracing::info!(group = g.name, policy = %g.policy, project = g.project, "placement group created");
        self.placement_group_view(&g).await
    }

    pub async fn list_placement_groups(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<PlacementGroupView>, AppError> {
        let groups = self
            .store()
            .list_placement_groups_page(&caller.scope(), page)
            .await?;
        let mut out = Vec::new();
        for g in &groups.items {
            out.push(self.placement_group_view(g).await?);
        }
        Ok(Page {
            items: out,
            next: groups.next,
        })
    }

    /// Deletes a group without members.
    pub async fn delete_placement_group(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(), AppError> {
        caller.require_write()?;
        let g = self.placement_group_named(caller, name).await?;
        self.store().delete_placement_group(g.id).await?;
        tracing::info!(
            group = g.name,
            project = g.project,
            "placement group deleted"
        );
        Ok(())
    }

    /// The caller's project's group `name`, or a not-found error that says where to look.
    pub async fn placement_group_named(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<PlacementGroupRecord, AppError> {
        self.store()
            .get_placement_group(&caller.project, name)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => AppError::not_found(format!(
                    "placement group {name:?} not found; `nimbus placement-group list` shows them"
                )),
                e => e.into(),
            })
    }

    /// The placement group of `inst` with the hosts of its other members, if it has one.
    pub async fn group_context(
        &self,
        inst: &InstanceRecord,
    ) -> Result<Option<GroupContext>, AppError> {
        let Some(id) = inst.placement_group else {
            return Ok(None);
        };
        self.group_context_of(id, Some(inst.id)).await.map(Some)
    }

    /// Group `id` with the hosts of its members other than `except`: where they run, and
    /// where a migration of theirs holds room (so that two moving members of a spread group
    /// never land together).
    pub async fn group_context_of(
        &self,
        id: Uuid,
        except: Option<Uuid>,
    ) -> Result<GroupContext, AppError> {
        let g = self.store().get_placement_group_by_id(id).await?;
        let mut occupied = Vec::new();
        for m in self.store().placement_group_members(id).await? {
            if Some(m.id) == except {
                continue;
            }
            occupied.extend(m.host);
            if let Some(op) = m.operation_id {
                match self
                    .store()
                    .get_migration(&nimbus_store::Scope::All, op)
                    .await
                {
                    Ok(mig) if mig.state == "running" => occupied.push(mig.target),
                    _ => {}
                }
            }
        }
        occupied.sort();
        occupied.dedup();
        Ok(GroupContext {
            name: g.name,
            policy: g.policy,
            occupied,
        })
    }

    async fn placement_group_view(
        &self,
        g: &PlacementGroupRecord,
    ) -> Result<PlacementGroupView, AppError> {
        let members = self
            .store()
            .placement_group_members(g.id)
            .await?
            .into_iter()
            .map(|m| match m.host {
                Some(h) => format!("{}@{h}", m.name),
                None => m.name,
            })
            .collect();
        Ok(PlacementGroupView {
            id: g.id,
            name: g.name.clone(),
            project: g.project.clone(),
            policy: g.policy,
            members,
            created_at: g.created_at,
        })
    }
}
