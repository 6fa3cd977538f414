//! The decision logic on recorded CPU series (no VM).

use super::members::{converge, steady_average, unhealthy, MemberObs, HEARTBEAT_TIMEOUT_MS};
use super::policy::{cooldown_left, decide, Decision, PolicyInput};
use super::window::{CpuWindow, Sample};
use chrono::{Duration, TimeZone, Utc};
use nimbus_api::{InstanceState, PolicyKind, ScalingStep, StepBound};
use uuid::Uuid;

/// Cumulative CPU time (ms) of a 1-vCPU TCG guest's QEMU process, recorded by
/// `bench/scaling.py --record` on the development machine (shared with other builds), every
/// third 1 s sample (the autoscaler's 3 s tick): idle (~5%) until t=20 s, `burn-cpu` from 20 s
/// to 53 s (~86%: the host's other work takes the rest), then idle again.
const RECORDED_MS: [(f64, u64); 25] = [
    (0.00, 3_660),
    (3.00, 3_810),
    (6.00, 3_990),
    (9.00, 4_150),
    (12.01, 4_340),
    (15.01, 4_480),
    (18.01, 4_620),
    (21.01, 5_600),
    (24.01, 8_000),
    (27.01, 10_500),
    (30.01, 13_180),
    (33.01, 15_890),
    (36.02, 17_750),
    (39.02, 20_060),
    (42.02, 22_750),
    (45.02, 25_450),
    (48.02, 28_100),
    (51.02, 30_730),
    (54.02, 32_470),
    (57.02, 32_650),
    (60.03, 32_810),
    (63.03, 32_960),
    (66.03, 33_130),
    (69.03, 33_280),
    (72.03, 33_460),
];

fn window_until(t: f64) -> CpuWindow {
    let mut w = CpuWindow::default();
    for (at, ms) in RECORDED_MS.iter().filter(|(at, _)| *at <= t) {
        w.push(
            Sample {
                at_secs: *at,
                cpu_ns: ms * 1_000_000,
            },
            3600.0,
        );
    }
    w
}

fn target(desired: u32, measured: u32, avg: f64) -> PolicyInput<'static> {
    PolicyInput {
        kind: PolicyKind::TargetTracking,
        steps: &[],
        target_cpu: 60,
        min: 1,
        max: 6,
        desired,
        measured,
        avg_cpu: avg,
        window_secs: 60,
    }
}

fn change(d: Decision) -> (u32, i32, String) {
    match d {
        Decision::Change {
            desired,
            delta,
            reason,
        } => (desired, delta, reason),
        Decision::Hold { reason } => panic!("expected a change, got hold: {reason}"),
    }
}

fn holds(d: &Decision) -> bool {
    matches!(d, Decision::Hold { .. })
}

#[test]
fn window_average_of_the_recorded_series() {
    let idle = window_until(18.1).percent(15.0, 1).expect("covered");
    assert!((3.0..8.0).contains(&idle), "idle {idle}");
    let busy = window_until(51.1).percent(15.0, 1).expect("covered");
    assert!((80.0..92.0).contains(&busy), "busy {busy}");
    // The whole series so far: load during 31 of its 51 s.
    let mixed = window_until(51.1).percent(52.0, 1).expect("covered");
    assert!((48.0..58.0).contains(&mixed), "mixed {mixed}");
    // Two vCPUs: the same CPU time is half the use.
    let two = window_until(51.1).percent(15.0, 2).expect("covered");
    assert!((busy / 2.0 - two).abs() < 0.01);
}

#[test]
fn window_needs_coverage_and_restarts_with_a_new_qemu() {
    assert_eq!(
        window_until(6.0).percent(60.0, 1),
        None,
        "6 s of a 60 s window"
    );
    assert!(window_until(45.0).percent(60.0, 1).is_some(), "45 s is 75%");
    let mut w = window_until(60.0);
    // A new QEMU process starts counting from zero.
    w.push(
        Sample {
            at_secs: 63.0,
            cpu_ns: 200_000_000,
        },
        3600.0,
    );
    assert_eq!(w.percent(10.0, 1), None);
    w.push(
        Sample {
            at_secs: 73.0,
            cpu_ns: 700_000_000,
        },
        3600.0,
    );
    let p = w.percent(10.0, 1).expect("covered");
    assert!((p - 5.0).abs() < 0.01, "{p}");
}

#[test]
fn the_recorded_series_scales_out_then_in() {
    let idle = window_until(18.1).percent(15.0, 1).expect("covered");
    assert!(holds(&decide(&target(1, 1, idle))), "idle at min 1 holds");
    // Under load: one member at ~86% with a 60% target needs two.
    let busy = window_until(51.1).percent(15.0, 1).expect("covered");
    let (desired, delta, reason) = change(decide(&PolicyInput {
        window_secs: 15,
        ..target(1, 1, busy)
    }));
    assert_eq!((desired, delta), (2, 1));
    assert_eq!(
        reason,
        format!("avg CPU {busy:.0}% over 15 s > 60% target: +1")
    );
    // Half way into the load the 15 s window already sees most of it.
    let rising = window_until(30.1).percent(15.0, 1).expect("covered");
    assert!(rising > 66.0, "{rising}");
    // 20 s after the load ended, the two members idle: back to one.
    let after = window_until(72.1).percent(15.0, 1).expect("covered");
    let (desired, delta, reason) = change(decide(&PolicyInput {
        window_secs: 15,
        ..target(2, 2, after)
    }));
    assert_eq!((desired, delta), (1, -1));
    assert!(reason.ends_with("< 60% target: -1"), "{reason}");
}

#[test]
fn target_tracking_maths_and_reasons() {
    let (desired, delta, reason) = change(decide(&target(2, 2, 91.0)));
    assert_eq!((desired, delta), (4, 2));
    assert_eq!(reason, "avg CPU 91% over 60 s > 60% target: +2");
    let (desired, delta, reason) = change(decide(&target(4, 4, 20.0)));
    assert_eq!((desired, delta), (2, -2), "ceil(4 x 20 / 60) = 2");
    assert_eq!(reason, "avg CPU 20% over 60 s < 60% target: -2");
    // Capped at max, kept at min.
    let (desired, _, reason) = change(decide(&target(3, 3, 100.0)));
    assert_eq!(desired, 5);
    let (desired, _, reason2) = change(decide(&PolicyInput {
        max: 4,
        ..target(3, 3, 100.0)
    }));
    assert_eq!(desired, 4);
    assert!(
        reason2.ends_with("+1 (capped at max 4)"),
        "{reason2} / {reason}"
    );
    let (desired, _, reason) = change(decide(&PolicyInput {
        min: 2,
        ..target(4, 4, 1.0)
    }));
    assert_eq!(desired, 2);
    assert!(reason.ends_with("-2 (kept at min 2)"), "{reason}");
}

#[test]
fn dead_band_and_limits_hold() {
    for avg in [55.0, 60.0, 65.0] {
        assert!(
            holds(&decide(&target(2, 2, avg))),
            "{avg}% is within the band"
        );
    }
    // Below the band but removing one would put the rest over the target.
    assert!(holds(&decide(&target(2, 2, 50.0))));
    assert!(holds(&decide(&PolicyInput {
        max: 2,
        ..target(2, 2, 99.0)
    })));
    let Decision::Hold { reason } = decide(&target(1, 1, 2.0)) else {
        panic!("at min");
    };
    assert!(reason.contains("already at min 1"), "{reason}");
    assert!(holds(&decide(&target(1, 0, 0.0))), "nothing measured");
}

#[test]
fn a_constant_load_settles_without_flapping() {
    // 1.4 CPUs of work spread over the members (each can use at most 100%).
    let load = 1.4;
    let mut desired = 1;
    let mut history = vec![desired];
    for _ in 0..10 {
        let avg = (100.0 * load / f64::from(desired)).min(100.0);
        if let Decision::Change { desired: d, .. } = decide(&target(desired, desired, avg)) {
            desired = d;
        }
        history.push(desired);
    }
    assert_eq!(history[2..], [3; 9], "{history:?}");
}

#[test]
fn a_refused_scale_out_does_not_grow_desired_further() {
    // desired 3, only 2 could be created: the policy works from the 2 measured.
    assert!(holds(&decide(&target(3, 2, 80.0))), "ceil(2 x 80 / 60) = 3");
    let (desired, ..) = change(decide(&target(3, 2, 10.0)));
    assert_eq!(desired, 1);
}

#[test]
fn step_policy() {
    let steps = [
        ScalingStep {
            bound: StepBound::Above,
            cpu: 70,
            change: 1,
        },
        ScalingStep {
            bound: StepBound::Above,
            cpu: 85,
            change: 3,
        },
        ScalingStep {
            bound: StepBound::Below,
            cpu: 20,
            change: -1,
        },
    ];
    let p = |desired, avg| PolicyInput {
        kind: PolicyKind::Step,
        steps: &steps,
        ..target(desired, desired, avg)
    };
    let (desired, _, reason) = change(decide(&p(2, 75.0)));
    assert_eq!(desired, 3);
    assert_eq!(reason, "avg CPU 75% over 60 s > 70% step: +1");
    assert_eq!(change(decide(&p(2, 90.0))).0, 5);
    assert_eq!(change(decide(&p(2, 90.0))).1, 3);
    let (desired, _, reason) = change(decide(&p(3, 10.0)));
    assert_eq!(desired, 2);
    assert_eq!(reason, "avg CPU 10% over 60 s < 20% step: -1");
    assert!(holds(&decide(&p(3, 50.0))));
    assert!(holds(&decide(&p(1, 5.0))), "at min");
}

#[test]
fn cooldown() {
    assert_eq!(cooldown_left(None, 60), None);
    assert_eq!(cooldown_left(Some(45.0), 60), Some(15.0));
    assert_eq!(cooldown_left(Some(60.0), 60), None);
}

fn member(n: u32, state: InstanceState) -> MemberObs {
    MemberObs {
        id: Uuid::new_v4(),
        name: format!("web-{n}"),
        state,
        reason: None,
        busy: false,
        placed: true,
        created_at: Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("time")
            + Duration::seconds(i64::from(n)),
        heartbeat_age_ms: Some(1_000),
        cpu_percent: Some(50.0),
    }
}

#[test]
fn unhealthy_members() {
    let mut m = member(1, InstanceState::Error);
    m.reason = Some("QEMU exited: killed".into());
    assert_eq!(
        unhealthy(&m).as_deref(),
        Some("it is in error: QEMU exited: killed")
    );
    m.busy = true;
    assert_eq!(unhealthy(&m), None, "an operation owns it");
    let mut m = member(2, InstanceState::Running);
    assert_eq!(unhealthy(&m), None);
    m.heartbeat_age_ms = Some(HEARTBEAT_TIMEOUT_MS + 5_000);
    assert_eq!(
        unhealthy(&m).as_deref(),
        Some("its guest sent no heartbeat for 35 s")
    );
    m.heartbeat_age_ms = None;
    assert_eq!(
        unhealthy(&m),
        None,
        "images without a heartbeat are not judged by it"
    );
    assert!(unhealthy(&member(3, InstanceState::Stopped)).is_some());
    assert_eq!(unhealthy(&member(4, InstanceState::Building)), None);
}

#[test]
fn convergence_counts_what_the_store_holds() {
    let mut building = member(3, InstanceState::Building);
    building.busy = true;
    let mut deleting = member(4, InstanceState::Deleting);
    deleting.busy = true;
    let members = vec![
        member(1, InstanceState::Running),
        member(2, InstanceState::Error),
        building.clone(),
        deleting,
    ];
    // Counted: web-1 and web-3 (still building); web-2 is replaced, web-4 is going.
    let c = converge(3, &members);
    assert_eq!((c.create, c.remove.len()), (1, 0));
    assert_eq!(converge(2, &members).create, 0);
    // Scale-in removes the newest idle member; a member being built waits.
    let c = converge(1, &members);
    assert_eq!((c.create, c.remove.clone()), (0, vec![members[0].id]));
    let c = converge(0, &members);
    assert_eq!(c.remove, vec![members[0].id]);
    let idle = vec![
        member(1, InstanceState::Running),
        member(2, InstanceState::Running),
        member(3, InstanceState::Running),
    ];
    assert_eq!(converge(1, &idle).remove, vec![idle[2].id, idle[1].id]);
}

#[test]
fn the_policy_waits_for_a_steady_group() {
    let mut a = member(1, InstanceState::Running);
    let b = member(2, InstanceState::Running);
    a.cpu_percent = Some(90.0);
    assert_eq!(steady_average(2, &[a.clone(), b.clone()]), Some((2, 70.0)));
    assert_eq!(steady_average(3, &[a.clone(), b.clone()]), Some((2, 70.0)));
    assert_eq!(steady_average(1, &[a.clone(), b.clone()]), None);
    let mut booting = b.clone();
    booting.state = InstanceState::Building;
    booting.busy = true;
    assert_eq!(steady_average(2, &[a.clone(), booting]), None);
    let mut unmeasured = b;
    unmeasured.cpu_percent = None;
    assert_eq!(steady_average(2, &[a, unmeasured]), None);
}
