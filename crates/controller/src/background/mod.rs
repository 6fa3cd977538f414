//! Background tasks of the controller: the reconciler, host liveness, the autoscaler of
//! scaling groups, the push of security-group rules to hosts, and the lease keeper
//! (heartbeat, lease renewal, takeover of dead controllers' operations).

pub mod autoscaler;
pub mod firewall_sync;
pub mod host_liveness;
pub mod leases;
pub mod reconciler;
