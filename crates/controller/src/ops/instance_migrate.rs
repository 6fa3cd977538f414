//! Live-migrate a running instance to another host (pre-copy, see docs/live_migration.md).
//!
//! ```text
//! choose_target ─▶ prepare_target ─▶ transfer ─▶ verify_target ─▶ commit ─▶ cleanup_source
//!  reserve room     target QEMU       pre-copy     running there,   host :=     delete the
//!  on the target    waits (+NBD for   (+disk       heartbeat        target      source copy
//!                   a local disk)     mirror)      continues        (POINT OF NO RETURN)
//! ```
//! Until `commit`, any failure or a cancel unwinds: the source is told to cancel (the VM runs
//! on there, resumed if it was paused), the target copy is deleted, the reservation released.
//! The VM is never running on two hosts: the target only runs after the source paused, and a
//! target that fails verification is deleted before the source resumes.

use super::migrate_steps::{
    ChooseTarget, CleanupSource, Commit, PrepareTarget, Transfer, VerifyTarget,
};
use super::Plan;
use nimbus_api::InstanceState;
use uuid::Uuid;

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![
            Box::new(ChooseTarget(instance)),
            Box::new(PrepareTarget(instance)),
            Box::new(Transfer(instance)),
            Box::new(VerifyTarget(instance)),
            Box::new(Commit(instance)),
            Box::new(CleanupSource(instance)),
        ],
        during: Some(InstanceState::Migrating),
        after: Some(InstanceState::Running),
    }
}
