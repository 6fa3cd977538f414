//! Reboot an instance (reset) and wait for the guest to come back.

use super::steps::{Reset, WaitReady};
use super::Plan;
use nimbus_api::InstanceState;
use uuid::Uuid;

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![Box::new(Reset(instance)), Box::new(WaitReady(instance))],
        during: Some(InstanceState::Rebooting),
        after: Some(InstanceState::Running),
    }
}
