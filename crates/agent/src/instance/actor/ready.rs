//! When the guest is ready, and what said so (the first of these since its last boot):
//!
//! ```text
//!  its report to the metadata service (cloud-init finished; seeded VMs
//!  on a tenant network, see seed.rs)                                  ▶ ready via `metadata`
//!  its image's ready marker on the console (images without cloud-init) ▶ ready via `console`
//!  restored from a snapshot / arrived by migration (snapshot.rs,
//!  migrate.rs)                                                        ▶ ready via `resumed`
//! ```
//! A seeded guest that can report is not told to print the marker (its `final_message` is
//! another line), so its readiness is cloud-init's report. Either is the guest's own word;
//! what matters is that a report only ever marks the VM whose port it came from
//! ([`crate::network::metadata::http`]), and a console only its own VM.

use super::Actor;
use nimbus_agent_api::VmRunState;
use nimbus_api::ReadySource;

/// Unix time now, in ms.
pub(super) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Actor {
    /// Each tick, and after a launch: the guest's report, or its console marker.
    pub(super) fn poll_ready(&mut self) {
        let (ready, booted, state) = {
            let s = self.status.borrow();
            (s.guest_ready, s.booted_unix_ms, s.state)
        };
        let Some(run) = &mut self.run else { return };
        if ready {
            return;
        }
        let via = if run.marker.poll() {
            Some(ReadySource::Console)
        } else {
            let reported = self.network.ready_report(self.id);
            (state == VmRunState::Running && reported.is_some_and(|at| at >= booted))
                .then_some(ReadySource::Metadata)
        };
        if let Some(via) = via {
            tracing::info!(via = via.as_str(), "guest is ready");
            self.update(|s| {
                s.guest_ready = true;
                s.ready_via = Some(via);
            });
        }
    }
}
