//! Durable operations.
//!
//! An operation is a list of steps, each with an action and (where needed) an undo. Every
//! transition is written to a persisted step log ([`OperationLog`]) *before* the engine goes
//! on, so that after a crash [`run`] can be called again with the same operation: steps that
//! are done are skipped and the step that was in flight is run again. Actions and undos must
//! therefore be idempotent (ids are generated before the operation starts, or in an early step
//! whose output is logged).
//!
//! ```text
//!            ┌──────── step i ok ────────┐
//!            ▼                           │
//!   running ─┴─ step i fails (permanent, or transient retries exhausted) ─┐
//!      │                                                                    ▼
//!      │ cancel requested (checked between steps)                     unwinding: undo i..0
//!      └──────────────────────────────────────────────────────────────▶  │
//!   all steps done ─▶ succeeded                            failed | cancelled
//! ```
//! Steps are addressed by name: a step reads earlier outputs by step name, and an operation
//! is resumed only when the step names it recorded are the plan's, in order. One persisted by
//! another nimbus version whose plan has the same steps resumes; one whose plan differs (a
//! step renamed, added, removed or moved) fails at once with a message naming both plans,
//! and no step runs in another's place.
//!
//! A step may be marked as the operation's *point of no return*: once it is done, a later
//! failure no longer unwinds (the operation fails forward and says so), and cancel is refused.

mod engine;
mod log;
mod step;

pub use engine::{run, run_then, Outcome, RetryPolicy};
pub use log::{LogError, LogSnapshot, MemoryLog, OperationLog, StepRecord};
pub use step::{Step, StepContext, StepError};

pub use nimbus_api::{OperationState, StepState};
