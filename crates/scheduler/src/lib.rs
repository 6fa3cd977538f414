//! Placement of instances on hosts.
//!
//! Placement is two passes, as in Nova's filter scheduler: *filter* keeps the hosts that can
//! take the request (up, enabled, enough free capacity after allocation ratios), *weigh*
//! orders the survivors by the chosen strategy (spread: most free memory first; pack: least
//! free memory first). Placement groups ([`place_in_group`]) add a filter (spread) or a
//! preference (pack). The crate does no I/O: the caller passes a snapshot of the pool.

mod capacity;
mod group;
mod placement;

pub use capacity::{AllocationRatios, HostCapacity, Resources};
pub use group::{place_in_group, GroupPlacement, GroupPolicy, PlacementError};
pub use placement::{place, place_preferring, NoCapacity, Strategy};
