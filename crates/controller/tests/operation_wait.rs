//! `GET /v1/operations/{operation}?wait_secs=N`, the long poll: a request waiting for an
//! operation answers with its end, not with the state it had when the request came; one
//! that already ended answers at once. The agent is a fake (the subject is the controller).

mod support;

use nimbus_api::OperationState;
use nimbus_controller::app::Caller;
use std::time::Duration;
use support::Cloud;

#[tokio::test]
async fn a_waiting_request_answers_with_the_end_of_the_operation() {
    let cloud = Cloud::start(&["host1"], 4096).await;
    let caller = Caller::system("test", "default");
    cloud.running_instance("web1", 512).await;
    let op = cloud.begin_snapshot(&caller, "web1", "s1").await;
    assert_eq!(op.state, OperationState::Running);
    let id = op.id.to_string();
    // Bounded: the operation takes milliseconds against a fake agent.
    let mut seen = op;
    for _ in 0..20 {
        if seen.state.is_final() {
            break;
        }
        seen = tokio::time::timeout(
            Duration::from_secs(30),
            cloud
                .app
                .wait_operation(&caller, &id, Duration::from_secs(10)),
        )
        .await
        .expect("answered within its wait")
        .expect("operation");
    }
    assert_eq!(seen.state, OperationState::Succeeded, "{:?}", seen.error);
    // Ended: a long wait answers at once (the timeout would fail the test otherwise).
    let again = tokio::time::timeout(
        Duration::from_secs(5),
        cloud
            .app
            .wait_operation(&caller, &id, Duration::from_secs(60)),
    )
    .await
    .expect("an ended operation is answered at once")
    .expect("operation");
    assert_eq!(again, seen);
    // An unknown operation is refused, not waited for.
    let missing = uuid::Uuid::new_v4().to_string();
    let e = cloud
        .app
        .wait_operation(&caller, &missing, Duration::from_secs(60))
        .await
        .expect_err("unknown");
    assert!(e.to_string().contains("not found"), "{e}");
}
