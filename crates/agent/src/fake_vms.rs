//! BENCHMARK STAND-IN for the VM runtime: VMs that are records, without QEMU.
//!
//! bench/control_plane.py measures how many instance creates per second the control plane
//! (API, store, placement, operations, leases, calls to the agents over mutual TLS) sustains
//! with 1, 2 and 3 controllers. With real guests on a 2-core machine a create is bound by the
//! guest's TCG boot, so the figure would measure the emulator, not the controllers. With this
//! stand-in the agent keeps its real API, enrolment, mTLS, registration and everything around
//! the VMs, and only `define`/`start`/`stop`/`reboot`/`delete`/`show`/`list` of a VM answer
//! from an in-memory record: no disk, no tap, no QEMU process.
//!
//! It is switched on for the whole agent process by `nimbus agent --fake-vms`, which the CLI
//! refuses unless [`BENCHMARK_ENV`] is `1`; nothing else turns it on. A VM of this stand-in
//! says so in its status (`reason`), so a cloud running it cannot be mistaken for a real one.

use crate::error::{Error, Result};
use crate::http::{Json, Path};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use nimbus_agent_api::{VmRunState, VmSpec, VmStatus};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use uuid::Uuid;

/// The environment variable that must be `1` for `--fake-vms` to be accepted.
pub const BENCHMARK_ENV: &str = "NIMBUS_BENCHMARK";

/// What a stand-in VM says about itself.
const STAND_IN: &str = "benchmark stand-in VM (nimbus agent --fake-vms): no QEMU runs";

/// The stand-in VMs of this process, once switched on.
static FAKE: OnceLock<FakeVms> = OnceLock::new();

/// Records of VMs by id.
#[derive(Default)]
pub struct FakeVms {
    vms: Mutex<HashMap<Uuid, VmStatus>>,
}

/// Switches the stand-in on for this process (before the agent serves). Refused unless the
/// environment says this is a benchmark.
pub fn enable() -> std::result::Result<(), String> {
    if std::env::var(BENCHMARK_ENV).as_deref() != Ok("1") {
        return Err(format!(
            "--fake-vms runs no VM at all (records only, for the control-plane benchmark); \
             it is accepted only with {BENCHMARK_ENV}=1 in the environment"
        ));
    }
    let _ = FAKE.set(FakeVms::default());
    tracing::warn!("{STAND_IN}: every VM of this agent is a record");
    Ok(())
}

/// The stand-in, when this process runs it.
pub fn active() -> Option<&'static FakeVms> {
    FAKE.get()
}

/// The VM routes served by the stand-in (the same paths and bodies as the real ones).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/vms", get(list))
        .route("/vms/{id}", get(show).put(define).delete(delete))
        .route("/vms/{id}/start", post(start))
        .route("/vms/{id}/stop", post(stop))
        .route("/vms/{id}/reboot", post(start))
}

impl FakeVms {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Uuid, VmStatus>) -> T) -> T {
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut vms)
    }

    fn define(&self, id: Uuid, spec: &VmSpec) -> Result<VmStatus> {
        if spec.id != id {
            return Err(Error::BadRequest(format!(
                "the spec's id {} is not the path's {id}",
                spec.id
            )));
        }
        Ok(self.with(|vms| vms.entry(id).or_insert_with(|| stopped(id)).clone()))
    }

    fn set_state(&self, id: Uuid, state: VmRunState) -> Result<VmStatus> {
        self.with(|vms| {
            let vm = vms.get_mut(&id).ok_or(Error::NotFound(id))?;
            if vm.state != state {
                vm.state = state;
                vm.generation += 1;
                let running = state == VmRunState::Running;
                vm.guest_ready = running;
                vm.started_at = running.then(Utc::now);
            }
            Ok(vm.clone())
        })
    }
}

fn stopped(id: Uuid) -> VmStatus {
    VmStatus {
        reason: Some(STAND_IN.into()),
        ..VmStatus::new(id, VmRunState::Stopped)
    }
}

fn fake() -> Result<&'static FakeVms> {
    active().ok_or_else(|| Error::Internal("the VM stand-in is not switched on".into()))
}

async fn list() -> Result<Json<Vec<VmStatus>>> {
    Ok(Json(fake()?.with(|vms| vms.values().cloned().collect())))
}

async fn show(Path(id): Path<Uuid>) -> Result<Json<VmStatus>> {
    fake()?
        .with(|vms| vms.get(&id).cloned())
        .map(Json)
        .ok_or(Error::NotFound(id))
}

async fn define(Path(id): Path<Uuid>, Json(spec): Json<VmSpec>) -> Result<Json<VmStatus>> {
    Ok(Json(fake()?.define(id, &spec)?))
}

async fn delete(Path(id): Path<Uuid>) -> Result<StatusCode> {
    fake()?.with(|vms| vms.remove(&id));
    Ok(StatusCode::NO_CONTENT)
}

async fn start(Path(id): Path<Uuid>) -> Result<Json<VmStatus>> {
    Ok(Json(fake()?.set_state(id, VmRunState::Running)?))
}

async fn stop(Path(id): Path<Uuid>) -> Result<Json<VmStatus>> {
    Ok(Json(fake()?.set_state(id, VmRunState::Stopped)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::blank_spec;

    #[test]
    fn a_stand_in_vm_goes_through_define_start_stop_and_says_what_it_is() {
        let fake = FakeVms::default();
        let id = Uuid::new_v4();
        assert!(matches!(
            fake.set_state(id, VmRunState::Running),
            Err(Error::NotFound(_))
        ));
        let defined = fake.define(id, &blank_spec(id, vec![])).expect("define");
        assert_eq!(defined.state, VmRunState::Stopped);
        assert!(defined
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("stand-in")));
        let running = fake.set_state(id, VmRunState::Running).expect("start");
        assert!(running.guest_ready && running.generation > defined.generation);
        // Defining again (a step re-run) keeps the record as it is.
        assert_eq!(
            fake.define(id, &blank_spec(id, vec![])).expect("again"),
            running
        );
        assert!(fake
            .define(Uuid::new_v4(), &blank_spec(id, vec![]))
            .is_err());
    }
}
