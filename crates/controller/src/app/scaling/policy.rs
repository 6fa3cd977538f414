//! Scaling decisions: from the members' average CPU use to a new desired size. Pure: no I/O,
//! no clock; tested on recorded CPU series in `tests.rs`.
//!
//! Target tracking: `want = ceil(n x avg / target)` where `n` is the number of measured
//! members, so that `n` instances at `avg` become `want` instances at (at most) the target.
//! A dead band of [`DEAD_BAND`] of the target on each side keeps the group from flapping:
//! it scales out only above `target x 1.1`, in only below `target x 0.9`, and a scale-in never
//! goes further than `ceil(n x avg / target)`, so the instances left stay at or under the
//! target (below the scale-out threshold). The result is clamped to [min, max]; a scale-out
//! never lowers `desired` and a scale-in never raises it.

use nimbus_api::{PolicyKind, ScalingStep, StepBound};

/// Fraction of the target on each side of it within which target tracking holds.
pub const DEAD_BAND: f64 = 0.10;

/// What the policy sees of a group at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyInput<'a> {
    pub kind: PolicyKind,
    pub steps: &'a [ScalingStep],
    pub target_cpu: u32,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    /// Members whose CPU use was measured over the whole window (the base of the maths).
    pub measured: u32,
    /// Their average CPU use, in percent of their vCPUs.
    pub avg_cpu: f64,
    pub window_secs: u32,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Keep `desired`; the reason says why (not recorded as an event).
    Hold { reason: String },
    /// Set `desired` to `desired` (a change of `delta`), for `reason`, e.g.
    /// "avg CPU 91% over 60 s > 60% target: +2".
    Change {
        desired: u32,
        delta: i32,
        reason: String,
    },
}

/// Decides the new desired size of a group.
pub fn decide(p: &PolicyInput<'_>) -> Decision {
    let avg = p.avg_cpu;
    let head = format!("avg CPU {avg:.0}% over {} s", p.window_secs);
    if p.measured == 0 {
        return Decision::Hold {
            reason: "no member measured yet".into(),
        };
    }
    let (want, out, rule) = match p.kind {
        PolicyKind::TargetTracking => {
            let target = f64::from(p.target_cpu.max(1));
            let want = (f64::from(p.measured) * avg / target).ceil().max(1.0) as u32;
            if avg > target * (1.0 + DEAD_BAND) {
                (want, true, format!("> {}% target", p.target_cpu))
            } else if avg < target * (1.0 - DEAD_BAND) {
                (want, false, format!("< {}% target", p.target_cpu))
            } else {
                return Decision::Hold {
                    reason: format!(
                        "{head} within {:.0}% of the {}% target",
                        DEAD_BAND * 100.0,
                        p.target_cpu
                    ),
                };
            }
        }
        PolicyKind::Step => match matching_step(p.steps, avg) {
            Some(step) => {
                let want = (i64::from(p.measured) + i64::from(step.change)).max(0) as u32;
                let sign = if step.bound == StepBound::Above {
                    '>'
                } else {
                    '<'
                };
                (want, step.change > 0, format!("{sign} {}% step", step.cpu))
            }
            None => {
                return Decision::Hold {
                    reason: format!("{head}: no step applies"),
                }
            }
        },
    };
    let clamped = want.clamp(p.min, p.max.max(p.min));
    let new = if out {
        clamped.max(p.desired)
    } else {
        clamped.min(p.desired)
    };
    if new == p.desired {
        let limit = if out && p.desired >= p.max {
            format!(" (already at max {})", p.max)
        } else if !out && p.desired <= p.min {
            format!(" (already at min {})", p.min)
        } else {
            format!(" (desired already {})", p.desired)
        };
        return Decision::Hold {
            reason: format!("{head} {rule}: hold{limit}"),
        };
    }
    let delta = new as i32 - p.desired as i32;
    let note = if clamped != want {
        if want > clamped {
            format!(" (capped at max {})", p.max)
        } else {
            format!(" (kept at min {})", p.min)
        }
    } else {
        String::new()
    };
    Decision::Change {
        desired: new,
        delta,
        reason: format!("{head} {rule}: {delta:+}{note}"),
    }
}

/// The step that applies to `avg`: the highest `above` threshold it exceeds, else the lowest
/// `below` threshold it is under.
fn matching_step(steps: &[ScalingStep], avg: f64) -> Option<&ScalingStep> {
    let above = steps
        .iter()
        .filter(|s| s.bound == StepBound::Above && avg > f64::from(s.cpu))
        .max_by_key(|s| s.cpu);
    above.or_else(|| {
        steps
            .iter()
            .filter(|s| s.bound == StepBound::Below && avg < f64::from(s.cpu))
            .min_by_key(|s| s.cpu)
    })
}

/// Seconds of cooldown left after a policy change made `since_last_secs` ago.
pub fn cooldown_left(since_last_secs: Option<f64>, cooldown_secs: u32) -> Option<f64> {
    let since = since_last_secs?;
    let left = f64::from(cooldown_secs) - since;
    (left > 0.0).then_some(left)
}
