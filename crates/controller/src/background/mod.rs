//! Background tasks of the controller: the reconciler, host liveness, the autoscaler of
//! scaling groups, the push of security-group rules to hosts and retention (usage roll-up,
//! old operations and audit entries).

pub mod autoscaler;
pub mod firewall_sync;
pub mod host_liveness;
pub mod reconciler;
pub mod retention;
