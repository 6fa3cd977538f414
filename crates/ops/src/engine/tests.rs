//! Generic checks every operation must pass (after omicron's saga test helpers): each action
//! may run twice with the same result, a failure injected at any step unwinds everything that
//! was done, unwinding twice is harmless, and a crash at any point resumes to the same end.

use super::*;
use crate::MemoryLog;
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A fake world: a set of resources steps create and remove.
#[derive(Default)]
struct World {
    resources: Mutex<BTreeSet<String>>,
    fail_at: Option<usize>,
    transient_failures: AtomicUsize,
    point_of_no_return: Option<usize>,
}

struct MakeResource(usize);

#[async_trait]
impl Step<World> for MakeResource {
    fn name(&self) -> &'static str {
        ["a", "b", "c", "d"][self.0]
    }
    async fn action(&self, w: &World, _s: &StepContext<'_>) -> Result<Value, StepError> {
        if w.fail_at == Some(self.0) {
            return Err(StepError::permanent("injected"));
        }
        if w.transient_failures.load(Ordering::SeqCst) > 0 {
            w.transient_failures.fetch_sub(1, Ordering::SeqCst);
            return Err(StepError::transient("try again"));
        }
        w.resources.lock().expect("lock").insert(self.name().into());
        Ok(Value::from(self.name()))
    }
    async fn undo(&self, w: &World, _s: &StepContext<'_>) -> Result<(), StepError> {
        w.resources.lock().expect("lock").remove(self.name());
        Ok(())
    }
    fn is_point_of_no_return(&self, _output: &Value) -> bool {
        false
    }
}

/// A step that is the point of no return when `.1` says so of its output.
struct NoReturn(MakeResource, fn(&Value) -> bool);

#[async_trait]
impl Step<World> for NoReturn {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    async fn action(&self, w: &World, s: &StepContext<'_>) -> Result<Value, StepError> {
        self.0.action(w, s).await
    }
    async fn undo(&self, w: &World, s: &StepContext<'_>) -> Result<(), StepError> {
        self.0.undo(w, s).await
    }
    fn is_point_of_no_return(&self, output: &Value) -> bool {
        (self.1)(output)
    }
}

fn steps(world: &World) -> Vec<Box<dyn Step<World>>> {
    (0..4)
        .map(|i| {
            let past: fn(&Value) -> bool = if world.point_of_no_return == Some(i) {
                |_| true
            } else {
                |_| false
            };
            Box::new(NoReturn(MakeResource(i), past)) as Box<dyn Step<World>>
        })
        .collect()
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    }
}

fn all() -> BTreeSet<String> {
    ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect()
}

async fn run_fresh(world: &World) -> (Uuid, MemoryLog, Outcome) {
    let log = MemoryLog::default();
    let op = Uuid::new_v4();
    log.create(op);
    let out = run(op, &steps(world), world, &log, fast())
        .await
        .expect("log");
    (op, log, out)
}

#[tokio::test]
async fn success_does_every_step() {
    let world = World::default();
    let (_, _, out) = run_fresh(&world).await;
    assert_eq!(out, Outcome::Succeeded);
    assert_eq!(*world.resources.lock().expect("lock"), all());
}

#[tokio::test]
async fn each_action_twice_gives_the_same_result() {
    let world = World::default();
    let ctx_log = MemoryLog::default();
    let op = Uuid::new_v4();
    ctx_log.create(op);
    let sctx = StepContext {
        operation_id: op,
        log: &ctx_log,
        names: vec![],
        outputs: vec![],
    };
    for step in steps(&world) {
        let first = step.action(&world, &sctx).await;
        let second = step.action(&world, &sctx).await;
        assert_eq!(first, second, "step {}", step.name());
    }
    assert_eq!(*world.resources.lock().expect("lock"), all());
}

#[tokio::test]
async fn failure_at_each_step_unwinds_everything() {
    for fail_at in 0..4 {
        let world = World {
            fail_at: Some(fail_at),
            ..World::default()
        };
        let (op, log, out) = run_fresh(&world).await;
        assert!(
            matches!(out, Outcome::Failed { unwound: true, .. }),
            "fail at {fail_at}: {out:?}"
        );
        assert!(
            world.resources.lock().expect("lock").is_empty(),
            "fail at {fail_at}"
        );
        let snap = log.load(op).await.expect("load");
        assert_eq!(snap.state, OperationState::Failed);
        assert!(snap.error.unwrap_or_default().contains("injected"));
        // Unwinding again (e.g. a resumed run) is harmless and changes nothing.
        let again = run(op, &steps(&world), &world, &log, fast())
            .await
            .expect("log");
        assert!(matches!(again, Outcome::Failed { .. }));
        assert!(world.resources.lock().expect("lock").is_empty());
    }
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let world = World {
        transient_failures: AtomicUsize::new(2),
        ..World::default()
    };
    let (_, _, out) = run_fresh(&world).await;
    assert_eq!(out, Outcome::Succeeded);
}

#[tokio::test]
async fn transient_failures_past_the_budget_unwind() {
    let world = World {
        transient_failures: AtomicUsize::new(100),
        ..World::default()
    };
    let (_, _, out) = run_fresh(&world).await;
    assert!(
        matches!(out, Outcome::Failed { unwound: true, .. }),
        "{out:?}"
    );
}

#[tokio::test]
async fn crash_at_any_step_resumes_to_success() {
    for crashed_in in 0..4 {
        let world = World::default();
        let log = MemoryLog::default();
        let op = Uuid::new_v4();
        log.create(op);
        // Simulate a crash: steps before `crashed_in` done, `crashed_in` in flight (its
        // action may or may not have happened).
        let ss = steps(&world);
        log.init_steps(op, &ss.iter().map(|s| s.name()).collect::<Vec<_>>())
            .await
            .expect("init");
        for (i, s) in ss.iter().enumerate().take(crashed_in + 1) {
            let sctx = StepContext {
                operation_id: op,
                log: &log,
                names: vec![],
                outputs: vec![],
            };
            let out = s.action(&world, &sctx).await.expect("action");
            let state = if i < crashed_in {
                StepState::Done
            } else {
                StepState::Running
            };
            log.set_step(op, i, state, Some(&out), None)
                .await
                .expect("log");
        }
        let out = run(op, &ss, &world, &log, fast()).await.expect("log");
        assert_eq!(out, Outcome::Succeeded, "crashed in {crashed_in}");
        assert_eq!(*world.resources.lock().expect("lock"), all());
    }
}

#[tokio::test]
async fn cancel_before_start_unwinds_and_reports_cancelled() {
    let world = World::default();
    let log = MemoryLog::default();
    let op = Uuid::new_v4();
    log.create(op);
    log.request_cancel(op);
    let out = run(op, &steps(&world), &world, &log, fast())
        .await
        .expect("log");
    assert_eq!(out, Outcome::Cancelled);
    assert!(world.resources.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn failure_after_point_of_no_return_does_not_unwind() {
    let world = World {
        point_of_no_return: Some(1),
        fail_at: Some(2),
        ..World::default()
    };
    let (_, _, out) = run_fresh(&world).await;
    assert!(
        matches!(out, Outcome::Failed { unwound: false, .. }),
        "{out:?}"
    );
    let left: Vec<String> = world
        .resources
        .lock()
        .expect("lock")
        .iter()
        .cloned()
        .collect();
    assert_eq!(left, vec!["a".to_string(), "b".to_string()]);
}

#[tokio::test]
async fn finalize_runs_before_the_end_is_visible() {
    for fail_at in [None, Some(2)] {
        let world = World {
            fail_at,
            ..World::default()
        };
        let log = MemoryLog::default();
        let op = Uuid::new_v4();
        log.create(op);
        let seen = std::sync::Mutex::new(None);
        let out = run_then(op, &steps(&world), &world, &log, fast(), |outcome| {
            let state = state_of(&log, op);
            async {
                *seen.lock().expect("lock") = Some((outcome, state.await));
            }
        })
        .await
        .expect("log");
        let (outcome, state_then) = seen.lock().expect("lock").clone().expect("finalized");
        assert_eq!(outcome, out);
        assert!(
            !state_then.is_final(),
            "final state written before finalize: {state_then:?}"
        );
        assert!(log.load(op).await.expect("load").state.is_final());
    }
}

async fn state_of(log: &MemoryLog, op: Uuid) -> OperationState {
    log.load(op).await.expect("load").state
}

/// A log recording `names`, the first `done` of them done (their actions ran).
async fn persisted(world: &World, names: &[&str], done: usize) -> (Uuid, MemoryLog) {
    let log = MemoryLog::default();
    let op = Uuid::new_v4();
    log.create(op);
    log.init_steps(op, names).await.expect("init");
    for (i, s) in steps(world).iter().enumerate().take(done) {
        let sctx = StepContext {
            operation_id: op,
            log: &log,
            names: vec![],
            outputs: vec![],
        };
        let out = s.action(world, &sctx).await.expect("action");
        log.set_step(op, i, StepState::Done, Some(&out), None)
            .await
            .expect("done");
    }
    (op, log)
}

/// An operation persisted by an older plan (another nimbus version) whose steps have the
/// same names resumes where it was.
#[tokio::test]
async fn an_older_plan_with_the_same_steps_resumes() {
    let world = World::default();
    let (op, log) = persisted(&world, &["a", "b", "c", "d"], 2).await;
    let out = run(op, &steps(&world), &world, &log, fast())
        .await
        .expect("log");
    assert_eq!(out, Outcome::Succeeded);
    assert_eq!(*world.resources.lock().expect("lock"), all());
}

/// A step renamed (or added, removed, moved) between versions: the operation is refused
/// with a message naming both plans, and no step runs in another's place.
#[tokio::test]
async fn an_unknown_plan_is_refused_and_runs_nothing() {
    let world = World::default();
    let (op, log) = persisted(&world, &["a", "b", "c_old", "d"], 1).await;
    let before = world.resources.lock().expect("lock").clone();
    let out = run(op, &steps(&world), &world, &log, fast())
        .await
        .expect("log");
    let Outcome::Failed { error, unwound } = out else {
        panic!("{out:?}");
    };
    assert!(!unwound);
    assert!(
        error.contains("[a, b, c_old, d]") && error.contains("[a, b, c, d]"),
        "{error}"
    );
    assert_eq!(
        *world.resources.lock().expect("lock"),
        before,
        "nothing ran"
    );
    let snap = log.load(op).await.expect("load");
    assert_eq!(snap.state, OperationState::Failed);
    assert_eq!(snap.steps[2].state, StepState::Pending);
}

#[test]
fn outputs_are_addressed_by_step_name() {
    let log = MemoryLog::default();
    let sctx = StepContext {
        operation_id: Uuid::new_v4(),
        log: &log,
        names: vec!["place", "boot"],
        outputs: vec![Some(Value::from("h1")), None],
    };
    assert_eq!(sctx.output("place"), Some(&Value::from("h1")));
    assert_eq!(sctx.output("boot"), None);
    assert_eq!(sctx.output("elsewhere"), None);
}

/// A cancel after a step whose output says it passed the point of no return is ignored (the
/// operation goes on to success); before it, the same cancel unwinds everything.
#[tokio::test]
async fn a_step_output_can_mark_the_point_of_no_return() {
    let plan = || -> Vec<Box<dyn Step<World>>> {
        (0..4)
            // The point of no return is having made resource `b`.
            .map(|i| {
                Box::new(NoReturn(MakeResource(i), |out| out.as_str() == Some("b")))
                    as Box<dyn Step<World>>
            })
            .collect()
    };
    for (done, expected) in [(2, Outcome::Succeeded), (1, Outcome::Cancelled)] {
        let world = World::default();
        let (op, log) = persisted(&world, &["a", "b", "c", "d"], done).await;
        log.request_cancel(op);
        let out = run(op, &plan(), &world, &log, fast()).await.expect("log");
        assert_eq!(out, expected, "{done} steps done before the cancel");
        let left = world.resources.lock().expect("lock").clone();
        let want = if expected == Outcome::Succeeded {
            all()
        } else {
            BTreeSet::new()
        };
        assert_eq!(left, want);
    }
}
