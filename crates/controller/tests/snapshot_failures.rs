//! A failure injected at each step of the real `snapshot_create` and `snapshot_restore`
//! plans (before the step acts, and after it acted), run by the real engine on the real
//! store against a fake host agent: the operation unwinds and leaves nothing behind. After
//! omicron's saga test helpers (`nexus/src/app/sagas/test_helpers.rs`).

mod support;

use async_trait::async_trait;
use nimbus_api::{InstanceState, OperationKind, SnapshotState};
use nimbus_controller::ops::snapshot_create::{self, CreateParams};
use nimbus_controller::ops::{snapshot_restore, SnapshotParams};
use nimbus_controller::App;
use nimbus_ops::{Outcome, RetryPolicy, Step, StepContext, StepError};
use nimbus_store::{NewOperation, NewSnapshot};
use serde_json::Value;
use std::time::Duration;
use support::Cloud;
use uuid::Uuid;

/// When the injected failure strikes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Strike {
    /// The step fails without acting.
    Before,
    /// The step acts, then reports a failure (an answer lost on the way back).
    After,
}

/// A step of a real plan, failing as told.
struct Failing {
    inner: Box<dyn Step<App>>,
    strike: Option<Strike>,
}

#[async_trait]
impl Step<App> for Failing {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        match self.strike {
            Some(Strike::Before) => Err(StepError::permanent("injected before")),
            Some(Strike::After) => {
                self.inner.action(app, s).await?;
                Err(StepError::permanent("injected after"))
            }
            None => self.inner.action(app, s).await,
        }
    }

    async fn undo(&self, app: &App, s: &StepContext<'_>) -> Result<(), StepError> {
        self.inner.undo(app, s).await
    }

    fn is_point_of_no_return(&self, output: &serde_json::Value) -> bool {
        self.inner.is_point_of_no_return(output)
    }
}

fn failing_at(
    steps: Vec<Box<dyn Step<App>>>,
    at: usize,
    strike: Strike,
) -> Vec<Box<dyn Step<App>>> {
    steps
        .into_iter()
        .enumerate()
        .map(|(i, inner)| {
            Box::new(Failing {
                inner,
                strike: (i == at).then_some(strike),
            }) as Box<dyn Step<App>>
        })
        .collect()
}

/// The log of operation `op`, claimed by this test's controller.
async fn owned_log(app: &App, op: Uuid) -> nimbus_store::FencedLog {
    let claim = app
        .store()
        .claim_operation(op, app.controller_id(), Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("unowned");
    app.store().fenced_log(claim)
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    }
}

type World = Cloud;

async fn world() -> World {
    Cloud::start(&["host1"], 8192).await
}

fn operation(kind: OperationKind, instance: Uuid, params: Value) -> NewOperation {
    NewOperation {
        id: Uuid::new_v4(),
        kind,
        project: "default".into(),
        target_id: instance,
        target_name: "web".into(),
        params,
    }
}

async fn instance(w: &World, name: &str) -> Uuid {
    w.running_instance(name, 512).await
}

/// Records a snapshot as the API does and runs its create plan, failing as told.
async fn create(
    w: &World,
    instance: Uuid,
    name: &str,
    fail: Option<(usize, Strike)>,
) -> (Uuid, Outcome) {
    let params = CreateParams {
        snapshot_id: Uuid::new_v4(),
        name: name.into(),
        memory: true,
        host: "host1".into(),
    };
    let op = operation(
        OperationKind::SnapshotCreate,
        instance,
        serde_json::to_value(&params).expect("params"),
    );
    let new = NewSnapshot {
        id: params.snapshot_id,
        project: "default".into(),
        instance_id: instance,
        name: name.into(),
        memory: true,
        host: "host1".into(),
    };
    w.app
        .store()
        .begin_snapshot(&new, &op)
        .await
        .expect("begin");
    let steps = snapshot_create::plan(instance).steps;
    let steps = match fail {
        Some((at, strike)) => failing_at(steps, at, strike),
        None => steps,
    };
    let log = owned_log(&w.app, op.id).await;
    let outcome = nimbus_ops::run(op.id, &steps, &w.app, &log, fast())
        .await
        .expect("log");
    w.app
        .store()
        .end_instance_operation(instance, op.id)
        .await
        .expect("end");
    (params.snapshot_id, outcome)
}

#[tokio::test]
async fn a_failure_at_any_step_of_a_snapshot_leaves_nothing_behind() {
    let w = world().await;
    for at in 0..3 {
        for strike in [Strike::Before, Strike::After] {
            let web = instance(&w, &format!("web-{at}-{}", strike == Strike::After)).await;
            let (sid, outcome) = create(
                &w,
                web,
                &format!("s-{at}-{strike:?}").to_lowercase(),
                Some((at, strike)),
            )
            .await;
            assert!(
                matches!(outcome, Outcome::Failed { unwound: true, .. }),
                "failure at step {at} {strike:?}: {outcome:?}"
            );
            let store = w.app.store();
            assert!(
                store.get_snapshot_by_id(sid).await.is_err(),
                "row left at {at} {strike:?}"
            );
            assert!(
                !w.agent.state().snapshots.contains(&(web, sid)),
                "files left on the host at {at} {strike:?}"
            );
            assert_eq!(store.current_snapshot(web).await.expect("current"), None);
            let inst = store
                .get_instance_by_id(&nimbus_store::Scope::All, web)
                .await
                .expect("instance");
            assert_eq!(
                (inst.state, inst.operation_id),
                (InstanceState::Running, None)
            );
        }
    }
}

#[tokio::test]
async fn a_failure_before_the_restore_acts_leaves_the_vm_and_the_tree_as_they_were() {
    let w = world().await;
    let web = instance(&w, "web").await;
    let (s1, outcome) = create(&w, web, "s1", None).await;
    assert_eq!(outcome, Outcome::Succeeded);
    let (s2, outcome) = create(&w, web, "s2", None).await;
    assert_eq!(outcome, Outcome::Succeeded);
    // check_snapshot before and after it acted, and restore before it acts (the host
    // refusing a damaged snapshot); past the point of no return there is no unwinding.
    for (at, strike) in [(0, Strike::Before), (0, Strike::After), (1, Strike::Before)] {
        let params = SnapshotParams { snapshot_id: s1 };
        let op = operation(
            OperationKind::SnapshotRestore,
            web,
            serde_json::to_value(&params).expect("params"),
        );
        let store = w.app.store();
        store
            .begin_snapshot_operation(s1, SnapshotState::Restoring, &op)
            .await
            .expect("begin");
        let restores_before = restores(&w);
        let steps = failing_at(snapshot_restore::plan(web).steps, at, strike);
        let log = owned_log(&w.app, op.id).await;
        let outcome = nimbus_ops::run(op.id, &steps, &w.app, &log, fast())
            .await
            .expect("log");
        store.end_instance_operation(web, op.id).await.expect("end");
        assert!(
            matches!(outcome, Outcome::Failed { unwound: true, .. }),
            "failure at step {at} {strike:?}: {outcome:?}"
        );
        assert_eq!(restores(&w), restores_before, "the VM was not touched");
        let snap = store.get_snapshot_by_id(s1).await.expect("s1");
        assert_eq!(
            (snap.state, snap.operation_id),
            (SnapshotState::Available, None)
        );
        assert_eq!(
            store.current_snapshot(web).await.expect("current"),
            Some(s2)
        );
        let inst = store
            .get_instance_by_id(&nimbus_store::Scope::All, web)
            .await
            .expect("instance");
        assert_eq!(
            (inst.state, inst.operation_id),
            (InstanceState::Running, None)
        );
    }
}

fn restores(w: &World) -> usize {
    w.agent
        .state()
        .calls
        .iter()
        .filter(|c| c.starts_with("restore "))
        .count()
}
