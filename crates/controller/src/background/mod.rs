//! Background tasks of the controller: the reconciler and the autoscaler of scaling groups.

pub mod autoscaler;
pub mod reconciler;
