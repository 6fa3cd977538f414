//! The reconciler releases an instance held by an operation that ended but whose end was
//! never applied (its finish failed): no instance stays busy forever.

mod support;

use nimbus_api::{InstanceState, OperationKind, OperationState};
use nimbus_controller::background::reconciler;
use nimbus_ops::OperationLog;
use nimbus_store::{NewOperation, Scope};
use uuid::Uuid;

#[tokio::test]
async fn an_ended_operation_never_keeps_its_instance_busy() {
    let cloud = support::Cloud::start(&["host1"], 4096).await;
    let store = cloud.app.store();
    let id = cloud.running_instance("web1", 512).await;
    let op = NewOperation {
        id: Uuid::new_v4(),
        kind: OperationKind::InstanceStop,
        project: "default".into(),
        target_id: id,
        target_name: "web1".into(),
        params: serde_json::json!({}),
    };
    store
        .begin_instance_operation(id, &op)
        .await
        .expect("begin");
    // The operation ended, but its finish never reached the instance (as when the database
    // failed at that moment).
    let claim = store
        .claim_operation(
            op.id,
            cloud.app.controller_id(),
            std::time::Duration::from_secs(60),
        )
        .await
        .expect("claim")
        .expect("unowned");
    store
        .fenced_log(claim)
        .set_state(op.id, OperationState::Failed, Some("the host went away"))
        .await
        .expect("end");
    // Settling (the first thing a reconcile pass does) releases it with the failure's reason.
    nimbus_controller::ops::settle_ended(&cloud.app)
        .await
        .expect("settle");
    let inst = store
        .get_instance_by_id(&Scope::All, id)
        .await
        .expect("instance");
    assert_eq!(inst.operation_id, None, "released");
    assert_eq!(inst.state, InstanceState::Error);
    assert!(
        inst.reason
            .as_deref()
            .is_some_and(|r| r.contains("the host went away")),
        "{:?}",
        inst.reason
    );
    // The rest of the pass then applies what the agent reports: the VM runs.
    reconciler::pass(&cloud.app).await.expect("pass");
    let inst = store
        .get_instance_by_id(&Scope::All, id)
        .await
        .expect("instance");
    assert_eq!(inst.state, InstanceState::Running);
    // A new operation may start.
    let next = NewOperation {
        id: Uuid::new_v4(),
        ..op
    };
    store
        .begin_instance_operation(id, &next)
        .await
        .expect("not busy");
}
