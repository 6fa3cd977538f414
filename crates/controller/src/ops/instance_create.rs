//! Create an instance: place it, define it on the host (disk overlay), boot it, wait for
//! the guest. Any failure undoes in reverse: the VM and its disk are deleted on the host and
//! the capacity reservation is released; the instance stays in `error` with the reason.

use super::steps::{Boot, Define, Place, WaitReady};
use super::Plan;
use nimbus_api::InstanceState;
use uuid::Uuid;

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![
            Box::new(Place(instance)),
            Box::new(Define(instance)),
            Box::new(Boot(instance)),
            Box::new(WaitReady(instance)),
        ],
        during: Some(InstanceState::Building),
        after: Some(InstanceState::Running),
    }
}
