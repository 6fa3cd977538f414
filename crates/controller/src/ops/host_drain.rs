//! Drain a host for maintenance: take it out of placement, then live-migrate every running
//! instance off it (largest first, two at a time), each through its own migrate operation.

use super::drain_steps::{DisableHost, Evacuate};
use super::Plan;

pub fn plan(host: &str) -> Plan {
    Plan {
        steps: vec![
            Box::new(DisableHost(host.to_string())),
            Box::new(Evacuate(host.to_string())),
        ],
        during: None,
        after: None,
    }
}
