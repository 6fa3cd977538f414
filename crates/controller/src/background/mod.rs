//! Background tasks of the controller: the reconciler, host liveness, the autoscaler of
//! scaling groups and the push of security-group rules to hosts.

pub mod autoscaler;
pub mod firewall_sync;
pub mod host_liveness;
pub mod reconciler;
