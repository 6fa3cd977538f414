//! The choice itself, with the copy between controllers stood in by a closure (the copy is
//! tested in crates/controller/tests/replica_copies.rs; the store's side, on SQLite and
//! PostgreSQL, in nimbus-store's `snapshot_replicas` tests; the whole in
//! crates/cli/tests/ha_local.rs).

use super::*;
use std::cell::RefCell;

fn at(minute: u32) -> DateTime<Utc> {
    format!("2026-12-06T12:{minute:02}:00Z")
        .parse()
        .expect("time")
}

fn candidate(name: &str, minute: u32, held_here: bool, live_holders: usize) -> Candidate {
    Candidate {
        id: Uuid::new_v4(),
        name: name.into(),
        taken_at: at(minute),
        held_here,
        live_holders,
    }
}

/// Runs `choose` with a copy that succeeds for the ids in `copyable`; answers the result and
/// the ids whose copy was tried.
async fn run(
    candidates: Vec<Candidate>,
    copyable: &[Uuid],
) -> (Result<FromSnapshot, Vec<Skipped>>, Vec<Uuid>) {
    let tried = RefCell::new(Vec::new());
    let copy = |sid: Uuid| {
        tried.borrow_mut().push(sid);
        let ok = copyable.contains(&sid);
        async move {
            if ok {
                Ok(())
            } else {
                Err("connection refused".to_string())
            }
        }
    };
    let got = choose(candidates, copy).await;
    (got, tried.into_inner())
}

#[tokio::test]
async fn the_newest_snapshot_held_here_is_used_without_a_copy() {
    let (s3, s2) = (candidate("s3", 3, true, 2), candidate("s2", 2, true, 2));
    let (got, tried) = run(vec![s3.clone(), s2], &[]).await;
    let got = got.expect("s3");
    assert_eq!((got.id, got.skipped.len()), (s3.id, 0));
    assert!(tried.is_empty(), "nothing copied");
    assert_eq!(
        got.note("host1"),
        "restarted from snapshot s3 taken at 2026-12-06T12:03:00Z on host host1; changes \
         after it are lost"
    );
}

#[tokio::test]
async fn a_newer_snapshot_no_live_controller_holds_is_passed_over_for_an_older_one() {
    // s3: its only holder died; s2: held by a live controller, copied here; s1 not needed.
    let s3 = candidate("s3", 3, false, 0);
    let s2 = candidate("s2", 2, false, 1);
    let s1 = candidate("s1", 1, true, 2);
    let (got, tried) = run(vec![s3.clone(), s2.clone(), s1], &[s2.id]).await;
    let got = got.expect("s2");
    assert_eq!(got.id, s2.id);
    assert_eq!(tried, [s2.id], "no copy of s3 is tried: nobody holds it");
    assert_eq!(got.skipped.len(), 1);
    assert_eq!(
        (got.skipped[0].name.as_str(), got.skipped[0].why.as_str()),
        ("s3", NO_LIVE_HOLDER)
    );
    let note = got.note("host1");
    assert!(
        note.starts_with("restarted from snapshot s2 taken at 2026-12-06T12:02:00Z on host host1")
            && note.contains(
                "the newer snapshot s3 (taken at 2026-12-06T12:03:00Z) was not used: no live \
                 controller holds its replica"
            ),
        "{note}"
    );
}

#[tokio::test]
async fn a_copy_that_fails_passes_the_snapshot_over_with_the_reason() {
    let s2 = candidate("s2", 2, false, 1);
    let s1 = candidate("s1", 1, true, 1);
    let (got, tried) = run(vec![s2.clone(), s1.clone()], &[]).await;
    let got = got.expect("s1");
    assert_eq!((got.id, tried), (s1.id, vec![s2.id]));
    assert!(
        got.skipped[0]
            .why
            .contains("could not be copied from a live controller: connection refused"),
        "{:?}",
        got.skipped
    );
}

#[tokio::test]
async fn nothing_restorable_answers_every_reason_and_nothing_replicated_none() {
    let s2 = candidate("s2", 2, false, 0);
    let s1 = candidate("s1", 1, false, 1);
    let (got, _) = run(vec![s2, s1], &[]).await;
    let skipped = got.expect_err("none restorable");
    let names: Vec<&str> = skipped.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s2", "s1"]);
    let (got, tried) = run(Vec::new(), &[]).await;
    assert!(got.expect_err("nothing").is_empty() && tried.is_empty());
}

#[test]
fn the_choice_reads_back_from_an_operation_of_the_earlier_format() {
    // Recorded before `skipped` existed: still read, nothing passed over.
    let old = serde_json::json!({"id": Uuid::nil(), "name": "s1", "taken_at": at(1)});
    let got: FromSnapshot = serde_json::from_value(old).expect("read");
    assert!(got.skipped.is_empty());
    let again: FromSnapshot = serde_json::from_value(got.to_json()).expect("round trip");
    assert_eq!(again, got);
}
