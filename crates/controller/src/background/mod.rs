//! Background tasks of the controller: the reconciler, host liveness and the autoscaler of
//! scaling groups.

pub mod autoscaler;
pub mod host_liveness;
pub mod reconciler;
