//! The one loop every background task runs in: a pass every interval, and for the tasks that
//! must act from one controller at a time, the task's lease first.
//!
//! ```text
//!  every interval ──▶ Run::OneController? ──▶ acquire the lease (database clock)
//!                          │ no                  │ granted (same epoch, or the next one
//!                          ▼                     │ after its holder died or stalled)
//!                      pass(app) ◀───────────────┘ pass(app fenced by the lease's epoch)
//!                                                │ refused: another controller runs it; skip
//! ```
//! A task's lease is renewed by this controller's heartbeat too (`background::leases`), so a
//! pass longer than the TTL keeps it; when its holder dies or stalls, another controller
//! acquires it at its next tick after the lease ran out: within TTL + one interval. Every
//! store transaction of a pass goes through a store fenced by the lease's epoch, so a holder
//! that stalled past its lease and wakes up after the move writes nothing.

use crate::app::{App, AppError};
use async_trait::async_trait;
use nimbus_store::StoreError;
use std::time::Duration;

/// Who runs a task when several controllers share the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Each controller for itself (its own heartbeat, the takeover scan).
    EveryController,
    /// One controller at a time, through the task's lease.
    OneController,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}", .0.message)]
    App(#[from] AppError),
}

/// A periodic background task.
#[async_trait]
pub trait Task: Send + 'static {
    /// Its name: in logs, and the key of its lease.
    const NAME: &'static str;
    /// Who runs it.
    const RUN: Run;
    /// Time between two passes.
    fn interval(&self, app: &App) -> Duration;
    /// One pass. A task run by one controller gets `app` fenced by its lease.
    async fn pass(&mut self, app: &App) -> Result<(), PassError>;
    /// This controller has just taken the task (first, or back from another controller):
    /// forget what earlier passes kept in memory, another controller acted meanwhile.
    fn acquired(&mut self) {}
}

/// Runs a task's ticks; remembers the epoch of its lease between them.
pub struct Runner<T> {
    task: T,
    epoch: Option<i64>,
}

impl<T: Task> Runner<T> {
    pub fn new(task: T) -> Self {
        Self { task, epoch: None }
    }

    /// Runs the task forever, one tick every interval.
    pub async fn run(mut self, app: App) {
        let mut tick = tokio::time::interval(self.task.interval(&app));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.tick(&app).await;
        }
    }

    /// One tick: the lease if the task needs one, then a pass. Answers whether this
    /// controller ran the pass.
    pub async fn tick(&mut self, app: &App) -> bool {
        let app = match T::RUN {
            Run::EveryController => app.clone(),
            Run::OneController => match self.lease(app).await {
                Some(fenced) => fenced,
                None => return false,
            },
        };
        if let Err(e) = self.task.pass(&app).await {
            tracing::warn!(task = T::NAME, error = %e, "background pass failed");
        }
        true
    }

    /// `app` fenced by the task's lease, if this controller holds it now.
    async fn lease(&mut self, app: &App) -> Option<App> {
        let ttl = app.config().lease_ttl;
        match app
            .store()
            .acquire_task(T::NAME, app.controller_id(), ttl)
            .await
        {
            Ok(Some(lease)) => {
                if self.epoch != Some(lease.epoch) {
                    tracing::info!(
                        task = T::NAME,
                        epoch = lease.epoch,
                        "this controller runs the task now"
                    );
                    self.task.acquired();
                    self.epoch = Some(lease.epoch);
                }
                Some(app.fenced(lease))
            }
            Ok(None) => {
                if self.epoch.take().is_some() {
                    tracing::warn!(task = T::NAME, "the task moved to another controller");
                }
                None
            }
            Err(e) => {
                tracing::warn!(task = T::NAME, error = %e, "cannot acquire the task's lease; skipping this tick");
                None
            }
        }
    }
}
