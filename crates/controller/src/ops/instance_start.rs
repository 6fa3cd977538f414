//! Start a stopped instance on its host and wait for the guest.

use super::steps::{Boot, WaitReady};
use super::Plan;
use nimbus_api::InstanceState;
use uuid::Uuid;

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![Box::new(Boot(instance)), Box::new(WaitReady(instance))],
        during: Some(InstanceState::Starting),
        after: Some(InstanceState::Running),
    }
}
