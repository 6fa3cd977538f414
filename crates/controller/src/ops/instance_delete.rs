//! Delete an instance: remove the VM and its disk from the host, then the record (which
//! releases its capacity). Removing the VM is the point of no return.

use super::steps::{Destroy, Forget};
use super::Plan;
use nimbus_api::InstanceState;
use uuid::Uuid;

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![Box::new(Destroy(instance)), Box::new(Forget(instance))],
        during: Some(InstanceState::Deleting),
        after: None,
    }
}
