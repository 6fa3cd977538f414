//! The autoscaler: every [`TICK`], for each active scaling group,
//!
//! 1. samples its members' CPU use (the agents' VM statuses feed the [`CpuSource`]),
//! 2. replaces unhealthy members (error, stopped, silent heartbeat): a delete through the
//!    normal delete operation, counted and explained in the group's events; the create that
//!    replaces it comes from step 4,
//! 3. when the group is steady and out of its cooldown, lets the policy decide a new desired
//!    size, and records that decision (with its reason) in the store *before* acting on it,
//! 4. converges the members to `desired`: creates through the normal instance create path
//!    (validation, quota, the scheduler's spread) and deletes the newest idle members
//!    through the normal delete operation.
//!
//! Nothing is kept in memory between ticks but CPU samples: "current" is always read from
//! the store, where a member exists from the moment its create is accepted, so a controller
//! restart in the middle of a scale-out neither loses nor duplicates members.
//!
//! [`CpuSource`]: crate::app::scaling::CpuSource

use crate::app::groups::group_caller;
use crate::app::scaling::members::{converge, steady_average, unhealthy, MemberObs};
use crate::app::scaling::policy::{cooldown_left, decide, Decision, PolicyInput};
use crate::app::{App, AppError};
use crate::background::task::{PassError, Run, Task};
use chrono::Utc;
use nimbus_agent_api::VmStatus;
use nimbus_api::{CreateInstance, InstanceState, OperationKind};
use nimbus_store::{GroupRecord, NewGroupEvent, GROUP_ACTIVE};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// How often groups are evaluated.
pub const TICK: Duration = Duration::from_secs(3);
/// Longest wait for a new member's placement before the next create.
const PLACEMENT_WAIT: Duration = Duration::from_secs(5);

/// The autoscaler as a background task: one controller at a time (two would both create
/// members for one gap), every write fenced by its lease.
pub struct Autoscaler;

#[async_trait::async_trait]
impl Task for Autoscaler {
    const NAME: &'static str = "autoscaler";
    const RUN: Run = Run::OneController;

    fn interval(&self, _: &App) -> Duration {
        TICK
    }

    async fn pass(&mut self, app: &App) -> Result<(), PassError> {
        Ok(pass(app).await?)
    }
}

/// One pass over every group.
pub async fn pass(app: &App) -> Result<(), AppError> {
    let groups = app.store().list_groups(None).await?;
    if groups.is_empty() {
        return Ok(());
    }
    let vms = poll_agents(app).await?;
    app.cpu().observe(&vms);
    let heartbeats: HashMap<Uuid, Option<u64>> = vms
        .iter()
        .map(|(id, vm)| (*id, vm.heartbeat_age_ms))
        .collect();
    for g in groups.iter().filter(|g| g.state == GROUP_ACTIVE) {
        if let Err(e) = evaluate(app, g, &heartbeats).await {
            tracing::warn!(group_id = %g.id, group = %g.name, error = %e, "group evaluation failed");
        }
    }
    Ok(())
}

/// The VM statuses of every reachable agent.
async fn poll_agents(app: &App) -> Result<HashMap<Uuid, VmStatus>, AppError> {
    let mut out = HashMap::new();
    for host in app.store().list_hosts().await? {
        match app.agent(&host.agent_url).list_vms().await {
            Ok(vms) => out.extend(vms.into_iter().map(|v| (v.id, v))),
            Err(e) => tracing::debug!(host = %host.name, error = %e, "agent unreachable"),
        }
    }
    Ok(out)
}

async fn evaluate(
    app: &App,
    g: &GroupRecord,
    heartbeats: &HashMap<Uuid, Option<u64>>,
) -> Result<(), AppError> {
    let members = app.store().group_members(g.id).await?;
    let obs = app.observe_members(g, &members, heartbeats);
    replace_unhealthy(app, g, &obs).await?;
    let g = &decide_desired(app, g, &obs).await?;
    // Re-read: replacements started deletes, and members may have changed meanwhile.
    let members = app.store().group_members(g.id).await?;
    let obs = app.observe_members(g, &members, heartbeats);
    let plan = converge(g.desired, &obs);
    // Members being deleted still hold their capacity: a refusal now is retried next tick
    // without being reported.
    let releasing = obs.iter().any(|m| m.state == InstanceState::Deleting);
    for _ in 0..plan.create {
        if !create_member(app, g, releasing).await? {
            break;
        }
    }
    for id in plan.remove {
        delete_member(app, g, id).await;
    }
    Ok(())
}

async fn replace_unhealthy(app: &App, g: &GroupRecord, obs: &[MemberObs]) -> Result<(), AppError> {
    for m in obs {
        let Some(why) = unhealthy(m) else { continue };
        if !m.placed {
            // Its create failed before it got a host (the capacity vanished meanwhile): a
            // refused scale-out, not a failed member.
            if delete_member(app, g, m.id).await {
                let reason = m.reason.as_deref().unwrap_or("no host could take it");
                refused(app, g, format!("scale-out stopped: {reason}")).await?;
            }
            continue;
        }
        tracing::warn!(group = %g.name, instance_id = %m.id, %why, "replacing group member");
        if delete_member(app, g, m.id).await {
            let event = NewGroupEvent::new("replace", format!("replacing {}: {why}", m.name), 0);
            app.store().count_group_replacement(g.id, &event).await?;
        }
    }
    Ok(())
}

/// Lets the policy decide when the group is steady and out of its cooldown; records the
/// decision. Returns the group as it now is.
async fn decide_desired(
    app: &App,
    g: &GroupRecord,
    obs: &[MemberObs],
) -> Result<GroupRecord, AppError> {
    let Some((measured, avg)) = steady_average(g.desired, obs) else {
        return Ok(g.clone());
    };
    let decision = decide(&PolicyInput {
        kind: g.policy,
        steps: &g.steps,
        target_cpu: g.target_cpu,
        min: g.min,
        max: g.max,
        desired: g.desired,
        measured,
        avg_cpu: avg,
        window_secs: g.window_secs,
    });
    let Decision::Change {
        desired,
        delta,
        reason,
    } = decision
    else {
        return Ok(g.clone());
    };
    let now = Utc::now();
    let since = g
        .last_scaled_at
        .map(|t| (now - t).num_milliseconds() as f64 / 1000.0);
    if let Some(left) = cooldown_left(since, g.cooldown_secs) {
        tracing::debug!(group = %g.name, %reason, left_secs = left, "in cooldown");
        return Ok(g.clone());
    }
    let kind = if delta > 0 { "scale_out" } else { "scale_in" };
    let mut sizes = g.sizes();
    sizes.desired = desired;
    let event = NewGroupEvent::new(kind, reason.clone(), delta);
    if app
        .store()
        .update_group_sizes(g.id, g.generation, sizes, Some(now), &event)
        .await?
    {
        tracing::info!(group = %g.name, %reason, desired, "scaling decision");
    }
    Ok(app.store().get_group_by_id(g.id).await?)
}

/// Creates one member through the normal create path. A refusal (no capacity, a quota)
/// stops the scale-out and is said once in the group's events (unless `releasing`: members
/// being deleted will free capacity); returns whether to go on.
async fn create_member(app: &App, g: &GroupRecord, releasing: bool) -> Result<bool, AppError> {
    let short = Uuid::new_v4().simple().to_string();
    let req = CreateInstance {
        name: format!("{}-{}", g.name, &short[..6]),
        flavor: Some(g.flavor.clone()),
        image: Some(g.image.clone()),
        from_snapshot: None,
        ..Default::default()
    };
    match app
        .create_instance_in(&group_caller(g), &req, Some(g.id))
        .await
    {
        Ok(op) => {
            tracing::info!(group = %g.name, instance = %req.name, operation_id = %op.id, "group member create accepted");
            wait_for_placement(app, op.target_id).await;
            Ok(true)
        }
        Err(e) => {
            tracing::debug!(group = %g.name, code = e.code.as_str(), error = %e.message, releasing, "scale-out refused");
            if !releasing {
                refused(app, g, format!("scale-out stopped: {}", e.message)).await?;
            }
            Ok(false)
        }
    }
}

/// Records a refused scale-out once per episode: not again while the group's latest event is
/// a refusal (its figures, e.g. the free capacity named in the message, may change from tick
/// to tick); any other event (a decision, a change, a replacement) ends the episode.
async fn refused(app: &App, g: &GroupRecord, message: String) -> Result<(), AppError> {
    let last = app.store().group_events(g.id, 1).await?;
    if last.first().is_some_and(|l| l.kind == "refused") {
        return Ok(());
    }
    tracing::warn!(group = %g.name, %message, "scale-out refused");
    app.store()
        .add_group_event(g.id, &NewGroupEvent::new("refused", message, 0))
        .await?;
    Ok(())
}

/// Waits (briefly) until the new member holds its host's capacity, so that the capacity
/// check of the next create sees it and refuses cleanly what no longer fits.
async fn wait_for_placement(app: &App, id: Uuid) {
    let deadline = tokio::time::Instant::now() + PLACEMENT_WAIT;
    while tokio::time::Instant::now() < deadline {
        match app
            .store()
            .get_instance_by_id(&nimbus_store::Scope::All, id)
            .await
        {
            Ok(m) if m.host.is_none() && m.operation_id.is_some() => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the delete of a member through the normal delete operation; false if it could
/// not start (another operation acts on it: looked at again next tick).
async fn delete_member(app: &App, g: &GroupRecord, id: Uuid) -> bool {
    match app
        .act_on_instance(
            &group_caller(g),
            &id.to_string(),
            OperationKind::InstanceDelete,
        )
        .await
    {
        Ok(op) => {
            tracing::info!(group = %g.name, instance_id = %id, operation_id = %op.id, "group member delete started");
            true
        }
        Err(e) => {
            tracing::debug!(group = %g.name, instance_id = %id, error = %e.message, "member delete deferred");
            false
        }
    }
}
