//! Scaling groups (issue 6). So far only the pure parts: [`series`] turns metered usage into
//! per-instance CPU series, [`policy`] turns those into a new desired size with its reason.

pub mod policy;
pub mod series;
