//! Stop an instance: graceful power-off, forced after a timeout. Its disk and placement stay.

use super::steps::PowerOff;
use super::Plan;
use nimbus_api::InstanceState;
use uuid::Uuid;

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![Box::new(PowerOff(instance))],
        during: Some(InstanceState::Stopping),
        after: Some(InstanceState::Stopped),
    }
}
