//! Host liveness and fencing: the timeouts controller and agents must agree on.
//!
//! ```text
//!  last report the controller received (t0)
//!  |-- 10 s --> unreachable (no new placements; nothing else changes)
//!  |-- 20 s --> the agent, if alive but cut off, has stopped its HA instances (fenced)
//!  |-- 30 s --> down: instances without HA go `error`; HA instances may restart elsewhere
//! ```
//!
//! The agent measures its fence timeout from the moment it *sent* its last registration that
//! the controller answered, which is never after the controller recorded it: so when the
//! controller declares a host down, the agent (if it still runs) has stopped its HA VMs at
//! least [`FENCE_MARGIN`] earlier, and a VM never runs twice on one disk.

use std::time::Duration;

/// No report for this long: the host is `unreachable` (kept out of placement).
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(10);

/// An agent that has not reached the controller for this long stops its HA instances.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(20);

/// Time the agent is given, after its fence timeout, to have stopped its HA instances
/// (killing a QEMU takes well under a second; this also absorbs clock-rate drift and the
/// controller's pass interval).
pub const FENCE_MARGIN: Duration = Duration::from_secs(10);

/// No report for this long: the host is `down` and its HA instances restart elsewhere.
pub const DOWN_AFTER: Duration =
    Duration::from_secs(FENCE_TIMEOUT.as_secs() + FENCE_MARGIN.as_secs());
