//! Scaling groups: validation, the view (with members' CPU use and recent events), changes
//! by the user (applied at once), and starting a group's delete operation. The autoscaler
//! (`background/autoscaler.rs`) does the rest.

use crate::app::scaling::members::{counted, MemberObs};
use crate::app::{App, AppError, Caller};
use crate::ops;
use nimbus_api::{
    validate_name, CreateGroup, GroupMember, GroupView, OperationKind, OperationView, PolicyKind,
    UpdateGroup,
};
use nimbus_store::{
    GroupRecord, GroupSizes, InstanceRecord, NewGroup, NewGroupEvent, NewOperation, StoreError,
};
use nimbus_store::{Page, PageRequest};
use std::collections::HashMap;
use uuid::Uuid;

/// Window of the CPU average when the request names none.
pub const DEFAULT_WINDOW_SECS: u32 = 60;
/// Cooldown after a scaling change when the request names none.
pub const DEFAULT_COOLDOWN_SECS: u32 = 60;
/// Most members a group may have.
pub const MAX_GROUP_SIZE: u32 = 100;
/// Longest group name: members are named `<group>-<6 hex digits>` (at most 63 characters).
pub const MAX_GROUP_NAME: usize = 56;
/// Events `group show` lists.
const EVENTS_SHOWN: u32 = 20;
/// Attempts of a user's change against concurrent changes by the autoscaler.
const UPDATE_ATTEMPTS: usize = 5;

/// The identity the autoscaler and a group's delete act with on the group's project.
pub fn group_caller(g: &GroupRecord) -> Caller {
    Caller::system("autoscaler", &g.project)
}

/// Checks sizes, target, window and cooldown together.
fn validate_sizes(s: &GroupSizes) -> Result<(), AppError> {
    if s.max == 0 || s.max > MAX_GROUP_SIZE {
        return Err(AppError::bad_request(format!(
            "max must be between 1 and {MAX_GROUP_SIZE} (got {})",
            s.max
        )));
    }
    if s.min > s.max {
        return Err(AppError::bad_request(format!(
            "min {} is above max {}; raise max or lower min",
            s.min, s.max
        )));
    }
    if s.desired < s.min || s.desired > s.max {
        return Err(AppError::bad_request(format!(
            "desired {} is outside min {} .. max {}; change min/max first or with it",
            s.desired, s.min, s.max
        )));
    }
    if !(1..=100).contains(&s.target_cpu) {
        return Err(AppError::bad_request(
            "target CPU must be between 1 and 100 (percent of the members' vCPUs)",
        ));
    }
    if !(5..=crate::app::scaling::cpu::MAX_WINDOW_SECS).contains(&s.window_secs) {
        return Err(AppError::bad_request(format!(
            "window must be between 5 and {} seconds",
            crate::app::scaling::cpu::MAX_WINDOW_SECS
        )));
    }
    if s.cooldown_secs > 86_400 {
        return Err(AppError::bad_request(
            "cooldown must be at most 86400 seconds (a day)",
        ));
    }
    Ok(())
}

fn validate_steps(req: &CreateGroup) -> Result<(), AppError> {
    if req.policy == PolicyKind::Step && req.steps.is_empty() {
        return Err(AppError::bad_request(
            "a step policy needs at least one step, e.g. {\"bound\": \"above\", \"cpu\": 80, \"change\": 2}",
        ));
    }
    for s in &req.steps {
        if s.change == 0 || s.cpu > 100 {
            return Err(AppError::bad_request(format!(
                "invalid step {s:?}: cpu is a percentage (0-100) and change must not be 0"
            )));
        }
    }
    Ok(())
}

impl App {
    /// Validates and records a group; the autoscaler creates its members.
    pub async fn create_group(
        &self,
        caller: &Caller,
        req: &CreateGroup,
    ) -> Result<GroupView, AppError> {
        caller.require_write()?;
        validate_name(&req.name).map_err(|e| {
            AppError::bad_request(format!("invalid group name {:?}: {e}", req.name))
        })?;
        if req.name.len() > MAX_GROUP_NAME {
            return Err(AppError::bad_request(format!(
                "group name {:?} is longer than {MAX_GROUP_NAME} characters (members are named <group>-<id>)",
                req.name
            )));
        }
        let sizes = GroupSizes {
            min: req.min,
            max: req.max,
            desired: req.desired.unwrap_or(req.min),
            target_cpu: req.target_cpu,
            window_secs: req.window_secs.unwrap_or(DEFAULT_WINDOW_SECS),
            cooldown_secs: req.cooldown_secs.unwrap_or(DEFAULT_COOLDOWN_SECS),
        };
        validate_sizes(&sizes)?;
        validate_steps(req)?;
        self.flavor_named(&req.flavor).await?;
        self.image_named(&req.image, &caller.scope()).await?;
        let new = NewGroup {
            id: Uuid::new_v4(),
            project: caller.project.clone(),
            name: req.name.clone(),
            flavor: req.flavor.clone(),
            image: req.image.clone(),
            min: sizes.min,
            max: sizes.max,
            desired: sizes.desired,
            target_cpu: sizes.target_cpu,
            policy: req.policy,
            steps: req.steps.clone(),
            window_secs: sizes.window_secs,
            cooldown_secs: sizes.cooldown_secs,
        };
        let event = NewGroupEvent::new(
            "created",
            format!(
                "created: min {}, max {}, desired {}, target CPU {}%",
                sizes.min, sizes.max, sizes.desired, sizes.target_cpu
            ),
            sizes.desired as i32,
        );
        let g = self.store().insert_group(&new, &event).await?;
        tracing::info!(group_id = %g.id, group = %g.name, desired = g.desired, "group created");
        self.group_view(&g).await
    }

    /// Finds a group of the caller's project by name.
    pub async fn find_group(&self, caller: &Caller, name: &str) -> Result<GroupRecord, AppError> {
        self.store()
            .get_group(&caller.project, name)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => AppError::not_found(format!(
                    "group {name:?} not found; `nimbus group list` shows the groups"
                )),
                e => e.into(),
            })
    }

    pub async fn list_groups(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<GroupView>, AppError> {
        let groups = self.store().list_groups_page(&caller.scope(), page).await?;
        let mut out = Vec::new();
        for g in &groups.items {
            out.push(self.group_view(g).await?);
        }
        Ok(Page {
            items: out,
            next: groups.next,
        })
    }

    pub async fn show_group(&self, caller: &Caller, name: &str) -> Result<GroupView, AppError> {
        let g = self.find_group(caller, name).await?;
        self.group_view(&g).await
    }

    /// Applies a user's change at once: the autoscaler converges to the new desired size at
    /// its next tick, and the policy leaves a changed desired size alone for a cooldown.
    /// Changing min or max alone moves desired into the new range.
    pub async fn update_group(
        &self,
        caller: &Caller,
        name: &str,
        req: &UpdateGroup,
    ) -> Result<GroupView, AppError> {
        caller.require_write()?;
        for _ in 0..UPDATE_ATTEMPTS {
            let g = self.find_group(caller, name).await?;
            let old = g.sizes();
            let min = req.min.unwrap_or(old.min);
            let max = req.max.unwrap_or(old.max);
            let new = GroupSizes {
                min,
                max,
                desired: req
                    .desired
                    .unwrap_or_else(|| old.desired.clamp(min, max.max(min))),
                target_cpu: req.target_cpu.unwrap_or(old.target_cpu),
                window_secs: req.window_secs.unwrap_or(old.window_secs),
                cooldown_secs: req.cooldown_secs.unwrap_or(old.cooldown_secs),
            };
            validate_sizes(&new)?;
            if new == old {
                return self.group_view(&g).await;
            }
            let delta = new.desired as i32 - old.desired as i32;
            let event = NewGroupEvent::new("set", describe_change(&old, &new), delta);
            // A desired size the user chose holds for a cooldown before the policy revises it.
            let scaled_at = (delta != 0).then(chrono::Utc::now);
            if self
                .store()
                .update_group_sizes(g.id, g.generation, new, scaled_at, &event)
                .await?
            {
                tracing::info!(group_id = %g.id, change = %event.message, "group changed");
                let g = self.store().get_group_by_id(g.id).await?;
                return self.group_view(&g).await;
            }
            if g.state != nimbus_store::GROUP_ACTIVE {
                return Err(AppError::conflict(format!("group {name} is being deleted")));
            }
        }
        Err(AppError::conflict(format!(
            "group {name} kept changing while this change was applied; try again"
        )))
    }

    /// Starts the group's delete operation: its members are deleted through their own
    /// delete operations, then the group.
    pub async fn delete_group(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<OperationView, AppError> {
        caller.require_write()?;
        let g = self.find_group(caller, name).await?;
        let op = NewOperation {
            id: Uuid::new_v4(),
            kind: OperationKind::GroupDelete,
            project: g.project.clone(),
            target_id: g.id,
            target_name: g.name.clone(),
            params: serde_json::json!({}),
        };
        let event = NewGroupEvent::new(
            "deleting",
            format!("delete requested (operation {})", op.id),
            0,
        );
        self.store().begin_group_delete(g.id, &op, &event).await?;
        tracing::info!(group_id = %g.id, operation_id = %op.id, "group delete accepted");
        ops::spawn(self.clone(), op.id);
        Ok(self.store().get_operation(&caller.scope(), op.id).await?)
    }

    /// What the autoscaler knows of each member: store state, CPU use over the group's
    /// window, and the heartbeat age the agents reported (`heartbeats`, when polled).
    pub fn observe_members(
        &self,
        g: &GroupRecord,
        members: &[InstanceRecord],
        heartbeats: &HashMap<Uuid, Option<u64>>,
    ) -> Vec<MemberObs> {
        members
            .iter()
            .map(|m| MemberObs {
                id: m.id,
                name: m.name.clone(),
                state: m.state,
                reason: m.reason.clone(),
                busy: m.operation_id.is_some(),
                placed: m.host.is_some(),
                created_at: m.created_at,
                heartbeat_age_ms: heartbeats.get(&m.id).copied().flatten(),
                cpu_percent: self.cpu().cpu_percent(m.id, m.vcpus, g.window_secs),
            })
            .collect()
    }

    /// The public view of a group.
    pub async fn group_view(&self, g: &GroupRecord) -> Result<GroupView, AppError> {
        let members = self.store().group_members(g.id).await?;
        let obs = self.observe_members(g, &members, &HashMap::new());
        let current = counted(&obs).len() as u32;
        let measured: Vec<f64> = obs
            .iter()
            .filter(|m| m.state == nimbus_api::InstanceState::Running)
            .map(|m| m.cpu_percent)
            .collect::<Option<_>>()
            .unwrap_or_default();
        let cpu_percent =
            (!measured.is_empty()).then(|| measured.iter().sum::<f64>() / measured.len() as f64);
        let instances = members
            .iter()
            .zip(&obs)
            .map(|(m, o)| GroupMember {
                name: m.name.clone(),
                state: m.state,
                host: m.host.clone(),
                cpu_percent: o.cpu_percent,
                created_at: m.created_at,
            })
            .collect();
        Ok(GroupView {
            name: g.name.clone(),
            project: g.project.clone(),
            flavor: g.flavor.clone(),
            image: g.image.clone(),
            min: g.min,
            max: g.max,
            desired: g.desired,
            current,
            target_cpu: g.target_cpu,
            policy: g.policy,
            steps: g.steps.clone(),
            window_secs: g.window_secs,
            cooldown_secs: g.cooldown_secs,
            state: g.state.clone(),
            cpu_percent,
            instances,
            events: self.store().group_events(g.id, EVENTS_SHOWN).await?,
            replacements: g.replacements,
            last_scaled_at: g.last_scaled_at,
            created_at: g.created_at,
        })
    }
}

/// "set by user: desired 2 -> 3, min 1 -> 3".
fn describe_change(old: &GroupSizes, new: &GroupSizes) -> String {
    let fields = [
        ("desired", old.desired, new.desired),
        ("min", old.min, new.min),
        ("max", old.max, new.max),
        ("target CPU %", old.target_cpu, new.target_cpu),
        ("window s", old.window_secs, new.window_secs),
        ("cooldown s", old.cooldown_secs, new.cooldown_secs),
    ];
    let changes: Vec<String> = fields
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(k, a, b)| format!("{k} {a} -> {b}"))
        .collect();
    format!("set by user: {}", changes.join(", "))
}
