//! Background tasks of the controller.

pub mod reconciler;
