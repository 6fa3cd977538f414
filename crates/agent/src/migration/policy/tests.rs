//! The escalation decisions replayed on series recorded with QEMU 10.0.2 (TCG, 1 vCPU,
//! 256 MiB guest running `dirty-mem 64 100`).

use super::*;

/// `(dirty-sync-count, remaining, cpu-throttle-percentage)` at the first poll of each round,
/// bandwidth capped at 20 MiB/s, QEMU's auto-converge at its default ramp. It converged at
/// round 18 after 47 s; rounds 2-7 show the stall the policy is meant to break.
const CAPPED_20_MIB_S: [(u64, u64, u64); 18] = [
    (1, 248_127_488, 0),
    (2, 66_396_160, 0),
    (3, 67_538_944, 20),
    (4, 68_300_800, 20),
    (5, 69_320_704, 30),
    (6, 68_292_608, 30),
    (7, 69_316_608, 40),
    (8, 58_810_368, 40),
    (9, 66_199_552, 50),
    (10, 69_320_704, 50),
    (11, 68_308_992, 60),
    (12, 57_663_488, 60),
    (13, 40_538_112, 70),
    (14, 24_387_584, 70),
    (15, 21_024_768, 80),
    (16, 5_337_088, 80),
    (17, 3_072_000, 80),
    (18, 2_322_432, 80),
];

/// Uncapped, same guest: converged in the fourth round within a second.
const UNCAPPED: [(u64, u64, u64); 3] = [(1, 226_488_320, 0), (2, 9_773_056, 0), (3, 1_052_672, 0)];

fn samples(series: &[(u64, u64, u64)]) -> Vec<RoundSample> {
    series
        .iter()
        .map(|&(round, remaining, throttle_pct)| RoundSample {
            round,
            remaining,
            throttle_pct,
        })
        .collect()
}

/// Replays a series round by round, applying each escalation; returns `(round, action)`.
fn replay(policy: &MigrationPolicy, series: &[(u64, u64, u64)]) -> Vec<(u64, Action)> {
    let all = samples(series);
    let mut ladder = Ladder::default();
    let mut taken = Vec::new();
    for n in 1..=all.len() {
        let seen = &all[..n];
        if let Some(e) = decide(policy, &ladder, seen, 1_000) {
            let round = seen[n - 1].round;
            ladder = climb(&ladder, e.action, round);
            taken.push((round, e.action));
        }
    }
    taken
}

#[test]
fn a_converging_migration_is_left_alone() {
    assert_eq!(replay(&MigrationPolicy::default(), &UNCAPPED), vec![]);
}

#[test]
fn stalls_raise_the_throttle_step_by_step() {
    let taken = replay(&MigrationPolicy::default(), &CAPPED_20_MIB_S);
    assert_eq!(
        taken,
        vec![
            (5, Action::RaiseThrottle { level: 1 }),
            (11, Action::RaiseThrottle { level: 2 }),
        ]
    );
}

#[test]
fn postcopy_comes_after_the_throttle_levels() {
    let policy = MigrationPolicy {
        allow_postcopy: true,
        ..MigrationPolicy::default()
    };
    // The recorded series converged after two raises; a series that keeps stalling at the
    // top level gets post-copy once three more rounds pass without progress.
    let mut series = CAPPED_20_MIB_S[..11].to_vec();
    series.extend((12..=20).map(|r| (r, 68_000_000, 99)));
    let taken = replay(&policy, &series);
    assert_eq!(
        taken,
        vec![
            (5, Action::RaiseThrottle { level: 1 }),
            (11, Action::RaiseThrottle { level: 2 }),
            (15, Action::StartPostcopy),
        ]
    );
}

#[test]
fn without_auto_converge_postcopy_is_the_first_step() {
    let policy = MigrationPolicy {
        auto_converge: false,
        allow_postcopy: true,
        ..MigrationPolicy::default()
    };
    assert_eq!(
        replay(&policy, &CAPPED_20_MIB_S),
        vec![(5, Action::StartPostcopy)]
    );
    let nothing_allowed = MigrationPolicy {
        auto_converge: false,
        ..MigrationPolicy::default()
    };
    assert_eq!(replay(&nothing_allowed, &CAPPED_20_MIB_S), vec![]);
}

#[test]
fn the_message_says_what_and_why() {
    let all = samples(&CAPPED_20_MIB_S[..5]);
    let e = decide(&MigrationPolicy::default(), &Ladder::default(), &all, 0).expect("escalates");
    assert_eq!(
        e.message,
        "round 5: remaining stopped shrinking (66 MiB; no 10% drop since round 2: 63 MiB); \
         auto-converge throttle 20%->50% (+20% per step, now 30%)"
    );
}

#[test]
fn timeout_aborts_unless_in_postcopy() {
    let policy = MigrationPolicy {
        timeout_secs: 10,
        ..MigrationPolicy::default()
    };
    let all = samples(&UNCAPPED[..1]);
    assert_eq!(decide(&policy, &Ladder::default(), &all, 9_999), None);
    let e = decide(&policy, &Ladder::default(), &all, 10_000).expect("aborts");
    assert_eq!(e.action, Action::Abort);
    assert!(e.message.contains("within 10 s"), "{}", e.message);
    let in_postcopy = Ladder {
        postcopy: true,
        ..Ladder::default()
    };
    assert_eq!(decide(&policy, &in_postcopy, &all, 60_000), None);
}

#[test]
fn settings_follow_the_policy() {
    let default = MigrationPolicy::default();
    assert!(validate(&default).is_ok());
    let params = source_parameters(&default);
    assert_eq!(params.max_bandwidth, Some(UNCAPPED_BYTES_PER_S));
    assert_eq!(params.downtime_limit, Some(50));
    let capped = MigrationPolicy {
        max_bandwidth_mib_s: Some(5),
        ..default.clone()
    };
    assert_eq!(source_parameters(&capped).max_bandwidth, Some(5 << 20));
    let caps = source_capabilities(&default, true);
    assert!(caps.contains(&("pause-before-switchover", true)));
    assert!(
        caps.contains(&("background-snapshot", false)),
        "whatever left it on"
    );
    assert!(caps.contains(&("auto-converge", true)));
    assert!(source_capabilities(&default, false).contains(&("pause-before-switchover", false)));
    assert_eq!(target_parameters(&default), None);
    let multifd = MigrationPolicy {
        multifd_channels: Some(4),
        ..default.clone()
    };
    assert_eq!(
        target_parameters(&multifd).and_then(|p| p.multifd_channels),
        Some(4)
    );
    assert!(target_capabilities(&multifd, true).contains(&("multifd", true)));
    let both = MigrationPolicy {
        allow_postcopy: true,
        ..multifd
    };
    assert!(validate(&both).expect_err("refused").contains("multifd"));
}
