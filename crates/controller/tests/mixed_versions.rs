//! A cloud whose agents are being upgraded one by one: an instance with snapshots never
//! starts a migration towards (or from) a host whose agent cannot move snapshots. The
//! controller knows from the host's registration, which an older agent sends without
//! `capabilities`; such a host is refused when named and skipped when the scheduler chooses,
//! and the message names the host to upgrade. The agents are the fake of `support` (what is
//! tested is the controller's choice, not the move itself, which tests/snapshots.rs covers).

mod support;

use nimbus_agent_api::RegisterHost;
use nimbus_api::{
    ErrorCode, InstanceState, MigrateInstance, OperationKind, OperationState, OperationView,
};
use nimbus_controller::app::Caller;
use nimbus_store::Scope;
use support::Cloud;

/// Registers `host` again as an agent older than capabilities registers: the same JSON
/// without the field.
async fn register_as_old_agent(cloud: &Cloud, host: &str) {
    let url = cloud
        .app
        .store()
        .get_host(host)
        .await
        .expect("host")
        .agent_url;
    let old: RegisterHost = serde_json::from_value(serde_json::json!({
        "agent_url": url,
        "inventory": {
            "name": host, "cpus": 4, "memory_mib": 4096, "disk_gib": 50,
            "accelerator": "tcg", "qemu_version": "10.0.2", "agent_version": "0.0.9"
        }
    }))
    .expect("an old agent's registration");
    cloud.app.register_host(&old).await.expect("registered");
    let rec = cloud.app.store().get_host(host).await.expect("host");
    assert!(rec.capabilities.is_empty(), "{:?}", rec.capabilities);
}

async fn wait(cloud: &Cloud, op: &OperationView) -> OperationView {
    cloud.wait_operation(op.id).await
}

fn to(host: &str) -> MigrateInstance {
    MigrateInstance {
        to: Some(host.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn snapshots_never_start_a_move_to_or_from_an_agent_that_cannot_take_them() {
    let cloud = Cloud::start(&["host1", "host2", "host3"], 4096).await;
    let caller = Caller::system("test", "default");
    let web = cloud.running_instance("web1", 512).await;
    let op = cloud.begin_snapshot(&caller, "web1", "s1").await;
    assert_eq!(wait(&cloud, &op).await.state, OperationState::Succeeded);
    cloud
        .app
        .store()
        .set_instance_state(web, InstanceState::Stopped, None)
        .await
        .expect("stop");
    register_as_old_agent(&cloud, "host2").await;

    // Named: refused before any operation starts, naming the host to upgrade.
    let err = cloud
        .app
        .migrate_instance(&caller, "web1", &to("host2"))
        .await
        .expect_err("an old target is refused");
    assert_eq!(err.code, ErrorCode::Conflict);
    assert!(
        err.message.contains("upgrade the agent on host host2"),
        "{}",
        err.message
    );
    let busy = cloud
        .app
        .store()
        .get_instance_by_id(&Scope::All, web)
        .await
        .expect("web");
    assert_eq!(busy.state, InstanceState::Stopped, "nothing started");

    // Not named, and the only other host out of service: the message says why host2 was not
    // a choice either.
    cloud
        .app
        .set_host_enabled("host3", false)
        .await
        .expect("off");
    let err = cloud
        .app
        .migrate_instance(&caller, "web1", &MigrateInstance::default())
        .await
        .expect_err("no fit target");
    assert!(
        err.message
            .contains("not considered: host host2 cannot receive instance web1's 1 snapshot(s)"),
        "{}",
        err.message
    );

    // With host3 back, the scheduler skips host2 (several times, whatever its order).
    cloud.app.set_host_enabled("host3", true).await.expect("on");
    for _ in 0..3 {
        let target = cloud
            .app
            .choose_migration_target(&busy, "host1", None)
            .await
            .expect("a target");
        assert_eq!(target, "host3");
    }
    let op = cloud
        .app
        .migrate_instance(&caller, "web1", &MigrateInstance::default())
        .await
        .expect("accepted");
    let op = wait(&cloud, &op).await;
    assert_eq!(
        (op.kind, op.state),
        (
            OperationKind::InstanceColdMigrate,
            OperationState::Succeeded
        ),
        "{:?}",
        op.error
    );
    let moved = cloud
        .app
        .store()
        .get_instance_by_id(&Scope::All, web)
        .await
        .expect("web");
    assert_eq!(moved.host.as_deref(), Some("host3"));

    // An old source cannot send its snapshots: refused, naming the source.
    register_as_old_agent(&cloud, "host3").await;
    let err = cloud
        .app
        .migrate_instance(&caller, "web1", &to("host1"))
        .await
        .expect_err("an old source is refused");
    assert!(
        err.message.contains("upgrade the agent on host host3"),
        "{}",
        err.message
    );

    // An instance without snapshots may still move to an old agent (the fake copies no
    // plain disk, so the choice is checked, not the move).
    let plain = cloud.running_instance("web2", 512).await;
    let plain = cloud
        .app
        .store()
        .get_instance_by_id(&Scope::All, plain)
        .await
        .expect("web2");
    let target = cloud
        .app
        .choose_migration_target(&plain, "host1", Some("host2"))
        .await
        .expect("no snapshot, no capability needed");
    assert_eq!(target, "host2");
}
