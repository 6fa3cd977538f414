//! Background tasks of the controller: the reconciler, host liveness, the autoscaler of
//! scaling groups, the push of security-group rules to hosts, the lease keeper (heartbeat,
//! lease renewal, takeover of dead controllers' operations) and retention (usage roll-up, old
//! operations and audit entries), and the copy pass of uploaded images' bytes to every controller. Each is a [`task::Task`] run by [`task::Runner`]: the
//! lease keeper on every controller, the others on one controller at a time.

pub mod autoscaler;
pub mod firewall_sync;
pub mod host_liveness;
pub mod image_copies;
pub mod leases;
pub mod reconciler;
pub mod replication;
pub mod retention;
pub mod task;
