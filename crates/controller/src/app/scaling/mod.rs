//! Scaling groups' decision logic, pure and unit-tested: the policy ([`policy`]), moving
//! windows of CPU use ([`window`]), member health and convergence ([`members`]), and the
//! source of per-instance CPU use ([`cpu`]). The background task that applies them is
//! `background/autoscaler.rs`; the API side is `app/groups.rs`. See docs/scaling.md.

pub mod cpu;
pub mod members;
pub mod policy;
pub mod window;

#[cfg(test)]
mod tests;

pub use cpu::{AgentCpu, CpuSource};
