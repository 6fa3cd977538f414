//! `nimbus group ...` arguments.

use super::WaitArgs;
use clap::{Subcommand, ValueEnum};
use nimbus_api::{PolicyKind, ScalingStep, StepBound};

/// The scaling policy, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Keep the average CPU use near --target-cpu.
    Target,
    /// Add/remove instances by --step thresholds.
    Step,
}

impl From<PolicyArg> for PolicyKind {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Target => PolicyKind::TargetTracking,
            PolicyArg::Step => PolicyKind::Step,
        }
    }
}

/// Parses `>80:+2` (above 80%: add 2) or `<20:-1` (below 20%: remove 1).
pub fn parse_step(s: &str) -> Result<ScalingStep, String> {
    let bad = || format!("invalid step {s:?}: write >CPU:+N or <CPU:-N, e.g. '>80:+2' or '<20:-1'");
    let (bound, rest) = match s.chars().next() {
        Some('>') => (StepBound::Above, &s[1..]),
        Some('<') => (StepBound::Below, &s[1..]),
        _ => return Err(bad()),
    };
    let (cpu, change) = rest.split_once(':').ok_or_else(bad)?;
    let cpu: u32 = cpu.trim_end_matches('%').parse().map_err(|_| bad())?;
    let change: i32 = change.trim_start_matches('+').parse().map_err(|_| bad())?;
    Ok(ScalingStep { bound, cpu, change })
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create a scaling group; its instances are created and kept by the autoscaler.
    Create {
        name: String,
        #[arg(long)]
        flavor: String,
        #[arg(long)]
        image: String,
        /// Fewest instances.
        #[arg(long)]
        min: u32,
        /// Most instances.
        #[arg(long)]
        max: u32,
        /// Instances wanted now [default: min].
        #[arg(long)]
        desired: Option<u32>,
        /// Average CPU use to keep, in percent of the instances' vCPUs.
        #[arg(long, default_value_t = 60)]
        target_cpu: u32,
        #[arg(long, value_enum, default_value = "target")]
        policy: PolicyArg,
        /// A step of a step policy (repeatable): '>80:+2' adds 2 above 80%, '<20:-1'
        /// removes 1 below 20%.
        #[arg(long = "step", value_parser = parse_step, allow_hyphen_values = true)]
        steps: Vec<ScalingStep>,
        /// Moving-average window of CPU use, in seconds [default: 60].
        #[arg(long)]
        window_secs: Option<u32>,
        /// No other scaling decision for this long after one, in seconds [default: 60].
        #[arg(long)]
        cooldown_secs: Option<u32>,
    },
    List,
    /// Sizes, instances with their CPU use, and the last decisions with their reasons.
    Show {
        name: String,
    },
    /// Change a group; applies at once.
    Set {
        name: String,
        #[arg(long)]
        desired: Option<u32>,
        #[arg(long)]
        min: Option<u32>,
        #[arg(long)]
        max: Option<u32>,
        #[arg(long)]
        target_cpu: Option<u32>,
        #[arg(long)]
        window_secs: Option<u32>,
        #[arg(long)]
        cooldown_secs: Option<u32>,
    },
    /// Delete a group and its instances.
    Delete {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse() {
        assert_eq!(
            parse_step(">80:+2"),
            Ok(ScalingStep {
                bound: StepBound::Above,
                cpu: 80,
                change: 2
            })
        );
        assert_eq!(
            parse_step("<20%:-1"),
            Ok(ScalingStep {
                bound: StepBound::Below,
                cpu: 20,
                change: -1
            })
        );
        for bad in ["80:+2", ">x:+1", ">80", ">80:two"] {
            assert!(parse_step(bad).is_err(), "{bad}");
        }
    }
}
