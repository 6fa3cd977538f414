//! Cold-migrate a stopped instance to another host (issue 14, part 2).
//!
//! ```text
//! choose_target ─▶ prepare_cold_target ─▶ copy_disk ─▶ commit_cold ─▶ cleanup_source
//!  reserve room     define it there,       stream the     host :=       delete the
//!  on the target    stopped: link to the   source's disk  target        source copy
//!                   shared disk, or a      into it (none  (POINT OF NO
//!                   fresh overlay          when shared)   RETURN)
//! ```
//! No QEMU runs anywhere; the instance stays `stopped` (shown `migrating` meanwhile). Until
//! `commit_cold` a failure or cancel deletes the target copy (never a shared disk) and the
//! instance stays on its source, untouched.

use super::cold_migrate_steps::{CommitCold, CopyDisk, PrepareColdTarget};
use super::migrate_steps::{ChooseTarget, CleanupSource};
use super::Plan;
use nimbus_api::InstanceState;
use uuid::Uuid;

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![
            Box::new(ChooseTarget(instance)),
            Box::new(PrepareColdTarget(instance)),
            Box::new(CopyDisk(instance)),
            Box::new(CommitCold(instance)),
            Box::new(CleanupSource(instance)),
        ],
        during: Some(InstanceState::Migrating),
        after: Some(InstanceState::Stopped),
    }
}
