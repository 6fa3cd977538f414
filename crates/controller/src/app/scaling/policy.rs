//! Scaling decisions, pure: from the CPU use of a group's instances (as metered: one point
//! per usage interval) to a new desired size and the reason shown to the user.
//!
//! ```text
//!  CPU points of each instance ──▶ average over the window (per instance, then over the group)
//!     ──▶ target tracking: desired = ceil(current x avg / target), or the first matching step
//!     ──▶ tolerance (no change within +/- tolerance of the target)
//!     ──▶ cooldown (no scale-out / scale-in until its cooldown since the last change passed)
//!     ──▶ clamp to [min, max]
//!     ──▶ Decision { desired, delta, reason: "avg CPU 91% over 60 s > 60% target: +2" }
//! ```
//! Too little data in the window (instances just started, metering gaps) decides nothing.

use std::time::Duration;

/// One measurement of an instance's CPU use: the share of its vCPUs it used (0-100%) over
/// the metering interval ending at `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuPoint {
    pub at_ms: i64,
    pub cpu_pct: f64,
}

/// How a group reacts to load.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Keep the average CPU use near `target_pct`.
    TargetTracking {
        target_pct: f64,
        /// No change while the average is within this many points of the target.
        tolerance_pct: f64,
    },
    /// Add or remove instances by fixed steps: the first step whose range holds the average.
    Steps(Vec<Step>),
}

/// A step: when the average is in `[from_pct, to_pct)`, change the size by `change`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub from_pct: f64,
    pub to_pct: f64,
    pub change: i32,
}

/// A group's scaling policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub rule: Rule,
    pub min: u32,
    pub max: u32,
    /// The window the average is taken over.
    pub window: Duration,
    /// Least time between a change and a scale-out.
    pub scale_out_cooldown: Duration,
    /// Least time between a change and a scale-in.
    pub scale_in_cooldown: Duration,
}

/// Where the group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupState {
    pub desired: u32,
    /// When the desired size last changed (Unix ms).
    pub last_change_ms: Option<i64>,
}

/// A change of the desired size.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub delta: i64,
    pub reason: String,
}

/// Least share of the window the points must cover (per instance, on average).
const MIN_COVERAGE: f64 = 0.5;

/// The group's average CPU use over `[now - window, now]`: each instance's mean of its
/// points in the window, averaged over the instances that have points. `None` when the
/// points cover too little of the window (`interval_ms`: the metering interval, the time
/// each point stands for).
pub fn window_average(
    series: &[Vec<CpuPoint>],
    now_ms: i64,
    window: Duration,
    interval_ms: i64,
) -> Option<f64> {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
    let start = now_ms - window_ms;
    let mut means = Vec::new();
    let mut covered = 0i64;
    for points in series {
        let inside: Vec<f64> = points
            .iter()
            .filter(|p| p.at_ms > start && p.at_ms <= now_ms)
            .map(|p| p.cpu_pct.clamp(0.0, 100.0))
            .collect();
        if inside.is_empty() {
            continue;
        }
        covered += inside.len() as i64 * interval_ms;
        means.push(inside.iter().sum::<f64>() / inside.len() as f64);
    }
    if means.is_empty() || (covered as f64) < MIN_COVERAGE * window_ms as f64 * means.len() as f64 {
        return None;
    }
    Some(means.iter().sum::<f64>() / means.len() as f64)
}

/// Decides whether the group changes size; `None`: it stays as it is.
pub fn decide(
    policy: &Policy,
    state: GroupState,
    series: &[Vec<CpuPoint>],
    now_ms: i64,
    interval_ms: i64,
) -> Option<Decision> {
    let avg = window_average(series, now_ms, policy.window, interval_ms)?;
    let current = state.desired;
    let (wanted, why) = match &policy.rule {
        Rule::TargetTracking {
            target_pct,
            tolerance_pct,
        } => {
            if (avg - target_pct).abs() <= *tolerance_pct || *target_pct <= 0.0 {
                return None;
            }
            let wanted = (f64::from(current.max(1)) * avg / target_pct).ceil() as i64;
            let cmp = if avg > *target_pct { ">" } else { "<" };
            (wanted, format!("{cmp} {target_pct:.0}% target"))
        }
        Rule::Steps(steps) => {
            let step = steps.iter().find(|s| avg >= s.from_pct && avg < s.to_pct)?;
            (
                i64::from(current) + i64::from(step.change),
                format!("in step {:.0}-{:.0}%", step.from_pct, step.to_pct),
            )
        }
    };
    let clamped = wanted.clamp(i64::from(policy.min), i64::from(policy.max));
    let delta = clamped - i64::from(current);
    if delta == 0 {
        return None;
    }
    let cooldown = if delta > 0 {
        policy.scale_out_cooldown
    } else {
        policy.scale_in_cooldown
    };
    if let Some(last) = state.last_change_ms {
        let since = now_ms - last;
        if since < i64::try_from(cooldown.as_millis()).unwrap_or(i64::MAX) {
            return None;
        }
    }
    let mut reason = format!(
        "avg CPU {avg:.0}% over {} s {why}: {delta:+}",
        policy.window.as_secs()
    );
    if clamped != wanted {
        let bound = if wanted > clamped { "max" } else { "min" };
        reason.push_str(&format!(
            " (wanted {:+}, held at {bound} {clamped})",
            wanted - i64::from(current)
        ));
    }
    Some(Decision {
        desired: u32::try_from(clamped).unwrap_or(policy.max),
        delta,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: i64 = 10_000;

    fn policy(rule: Rule) -> Policy {
        Policy {
            rule,
            min: 1,
            max: 6,
            window: Duration::from_secs(60),
            scale_out_cooldown: Duration::from_secs(120),
            scale_in_cooldown: Duration::from_secs(300),
        }
    }

    fn target(pct: f64) -> Rule {
        Rule::TargetTracking {
            target_pct: pct,
            tolerance_pct: 5.0,
        }
    }

    /// A recorded series: one point every 10 s up to `end_s`, with these CPU values.
    fn recorded(end_s: i64, values: &[f64]) -> Vec<CpuPoint> {
        let n = values.len() as i64;
        values
            .iter()
            .enumerate()
            .map(|(i, v)| CpuPoint {
                at_ms: (end_s - (n - 1 - i as i64) * 10) * 1000,
                cpu_pct: *v,
            })
            .collect()
    }

    fn state(desired: u32) -> GroupState {
        GroupState {
            desired,
            last_change_ms: None,
        }
    }

    #[test]
    fn busy_group_scales_out_with_the_reason() {
        let busy = vec![
            recorded(600, &[88.0, 92.0, 95.0, 90.0, 91.0, 90.0]),
            recorded(600, &[90.0, 91.0, 93.0, 89.0, 92.0, 90.0]),
        ];
        let d =
            decide(&policy(target(60.0)), state(2), &busy, 600_000, INTERVAL).expect("scale out");
        assert_eq!((d.desired, d.delta), (4, 2));
        assert_eq!(d.reason, "avg CPU 91% over 60 s > 60% target: +2");
    }

    #[test]
    fn only_the_window_counts() {
        // Idle for long, busy for the last minute: the old idle points are ignored.
        let mut s = recorded(540, &[2.0; 10]);
        s.extend(recorded(600, &[95.0; 6]));
        let d = decide(&policy(target(60.0)), state(1), &[s], 600_000, INTERVAL).expect("out");
        assert_eq!(d.delta, 1, "{}", d.reason);
    }

    #[test]
    fn idle_group_scales_in_but_not_below_min() {
        let idle = vec![recorded(600, &[3.0; 6]), recorded(600, &[5.0; 6])];
        let d = decide(&policy(target(60.0)), state(4), &idle, 600_000, INTERVAL).expect("in");
        assert_eq!((d.desired, d.delta), (1, -3));
        assert!(
            d.reason
                .starts_with("avg CPU 4% over 60 s < 60% target: -3"),
            "{}",
            d.reason
        );
        assert!(decide(&policy(target(60.0)), state(1), &idle, 600_000, INTERVAL).is_none());
    }

    #[test]
    fn max_holds_and_says_so() {
        let hot = vec![recorded(600, &[100.0; 6]); 5];
        let d = decide(&policy(target(50.0)), state(5), &hot, 600_000, INTERVAL).expect("out");
        assert_eq!((d.desired, d.delta), (6, 1));
        assert_eq!(
            d.reason,
            "avg CPU 100% over 60 s > 50% target: +1 (wanted +5, held at max 6)"
        );
    }

    #[test]
    fn near_the_target_nothing_changes() {
        let fine = vec![recorded(600, &[58.0, 62.0, 61.0, 59.0, 63.0, 60.0])];
        assert!(decide(&policy(target(60.0)), state(2), &fine, 600_000, INTERVAL).is_none());
    }

    #[test]
    fn cooldowns_prevent_flapping() {
        let busy = vec![recorded(600, &[95.0; 6])];
        let idle = vec![recorded(600, &[1.0; 6])];
        let p = policy(target(60.0));
        let just_changed = GroupState {
            desired: 2,
            last_change_ms: Some(540_000),
        };
        assert!(
            decide(&p, just_changed, &busy, 600_000, INTERVAL).is_none(),
            "60 s < 120 s"
        );
        assert!(
            decide(&p, just_changed, &busy, 660_000 + 1, INTERVAL).is_none(),
            "no fresh data"
        );
        let later = GroupState {
            last_change_ms: Some(400_000),
            ..just_changed
        };
        assert!(
            decide(&p, later, &busy, 600_000, INTERVAL).is_some(),
            "200 s > 120 s"
        );
        assert!(
            decide(&p, later, &idle, 600_000, INTERVAL).is_none(),
            "200 s < 300 s"
        );
    }

    #[test]
    fn too_little_data_decides_nothing() {
        let sparse = vec![recorded(600, &[99.0, 99.0])];
        assert_eq!(
            window_average(&sparse, 600_000, Duration::from_secs(60), INTERVAL),
            None
        );
        assert!(decide(&policy(target(60.0)), state(1), &sparse, 600_000, INTERVAL).is_none());
        assert!(decide(&policy(target(60.0)), state(1), &[], 600_000, INTERVAL).is_none());
    }

    #[test]
    fn step_policy_takes_the_first_matching_step() {
        let steps = Rule::Steps(vec![
            Step {
                from_pct: 0.0,
                to_pct: 20.0,
                change: -1,
            },
            Step {
                from_pct: 70.0,
                to_pct: 85.0,
                change: 1,
            },
            Step {
                from_pct: 85.0,
                to_pct: 101.0,
                change: 3,
            },
        ]);
        let p = policy(steps);
        let warm = vec![recorded(600, &[75.0; 6])];
        let d = decide(&p, state(2), &warm, 600_000, INTERVAL).expect("step");
        assert_eq!(d.reason, "avg CPU 75% over 60 s in step 70-85%: +1");
        let hot = vec![recorded(600, &[90.0; 6])];
        assert_eq!(
            decide(&p, state(2), &hot, 600_000, INTERVAL)
                .expect("step")
                .desired,
            5
        );
        let mid = vec![recorded(600, &[50.0; 6])];
        assert!(
            decide(&p, state(2), &mid, 600_000, INTERVAL).is_none(),
            "no step matches"
        );
    }
}
