//! Background tasks of the controller: the reconciler, host liveness, the autoscaler of
//! scaling groups, the push of security-group rules to hosts, the lease keeper (heartbeat,
//! lease renewal, takeover of dead controllers' operations), retention (usage roll-up, old
//! operations and audit entries), the replication of snapshots off their hosts, and the copy
//! passes of uploaded images' bytes and of snapshot replicas to every controller. Each is a
//! [`task::Task`] run by [`task::Runner`]: the lease keeper and the copy passes on every
//! controller, the others on one controller at a time.

pub mod autoscaler;
pub mod firewall_sync;
pub mod host_liveness;
pub mod image_copies;
pub mod leases;
pub mod reconciler;
pub mod replica_copies;
pub mod replication;
pub mod retention;
pub mod task;
