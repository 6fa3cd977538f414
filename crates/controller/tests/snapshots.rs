//! Snapshot operations of the real controller (store, engine, steps) against a fake host
//! agent that fails on demand: the tree and current pointer they maintain, and that a
//! failure in a step leaves nothing behind.

mod support;

use nimbus_api::{
    CreateInstance, CreateSnapshot, ErrorCode, InstanceState, MigrateInstance, OperationKind,
    OperationState, OperationView, SnapshotState,
};
use nimbus_controller::app::Caller;
use nimbus_store::{NewOperation, PageRequest, Scope};
use support::Cloud;
use uuid::Uuid;

/// A cloud of two hosts (4 GiB each) and an admin of the default project.
struct Fixture {
    cloud: Cloud,
    caller: Caller,
}

impl std::ops::Deref for Fixture {
    type Target = Cloud;
    fn deref(&self) -> &Cloud {
        &self.cloud
    }
}

async fn fixture() -> Fixture {
    Fixture {
        cloud: Cloud::start(&["host1", "host2"], 4096).await,
        caller: Caller::system("test", "default"),
    }
}

async fn running_instance(f: &Fixture, name: &str) -> Uuid {
    f.running_instance(name, 512).await
}

async fn wait(f: &Fixture, op: &OperationView) -> OperationView {
    f.wait_operation(op.id).await
}

async fn snapshot(f: &Fixture, instance: &str, name: &str) -> OperationView {
    let req = CreateSnapshot {
        instance: instance.into(),
        name: Some(name.into()),
        disk_only: false,
    };
    let op = f
        .app
        .create_snapshot(&f.caller, &req)
        .await
        .expect("accepted");
    wait(f, &op).await
}

/// A fixture with web1 running on host1 and its snapshot s1.
async fn web1_with_s1() -> (Fixture, Uuid) {
    let f = fixture().await;
    let web = running_instance(&f, "web1").await;
    let op = snapshot(&f, "web1", "s1").await;
    assert_eq!(op.state, OperationState::Succeeded, "{:?}", op.error);
    (f, web)
}

async fn parent(f: &Fixture, name: &str) -> Option<String> {
    f.app
        .find_snapshot(&f.caller, name)
        .await
        .expect("snapshot")
        .parent_name
}

async fn current(f: &Fixture, instance: Uuid) -> Option<String> {
    let id = f
        .app
        .store()
        .current_snapshot(instance)
        .await
        .expect("current")?;
    Some(
        f.app
            .store()
            .get_snapshot_by_id(id)
            .await
            .expect("get")
            .name,
    )
}

#[tokio::test]
async fn snapshots_form_a_tree_and_a_failed_one_leaves_nothing() {
    let f = fixture().await;
    let web = running_instance(&f, "web1").await;
    let op = snapshot(&f, "web1", "s1").await;
    assert_eq!(op.state, OperationState::Succeeded, "{:?}", op.error);
    let s1 = f
        .app
        .find_snapshot(&f.caller, "s1")
        .await
        .expect("s1")
        .view();
    assert_eq!(s1.state, SnapshotState::Available);
    assert_eq!(
        (s1.vm_pause_ms, s1.stored_bytes, s1.memory_bytes),
        (3.5, 3000, 5000)
    );
    assert!(s1.current && s1.memory && s1.parent.is_none());
    assert_eq!(
        snapshot(&f, "web1", "s2").await.state,
        OperationState::Succeeded
    );
    assert_eq!(parent(&f, "s2").await.as_deref(), Some("s1"));

    f.agent
        .state()
        .fail
        .insert("snapshot", (400, "no room for the memory image".into()));
    let failed = snapshot(&f, "web1", "s3").await;
    assert_eq!(failed.state, OperationState::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or("")
            .contains("no room for the memory image"),
        "{:?}",
        failed.error
    );
    // Nothing left: no row, the host was told to delete it, the instance is free and as it was.
    assert!(f.app.find_snapshot(&f.caller, "s3").await.is_err());
    let calls = f.agent.state().calls.clone();
    let tried = calls
        .iter()
        .rfind(|c| c.starts_with("snapshot "))
        .expect("tried");
    let sid = tried.rsplit(' ').next().expect("sid");
    assert!(
        calls
            .iter()
            .any(|c| c == &format!("delete_snapshot {web} {sid}")),
        "the undo deletes the snapshot on the host: {calls:?}"
    );
    let inst = f
        .app
        .store()
        .get_instance_by_id(&Scope::All, web)
        .await
        .expect("inst");
    assert_eq!(
        (inst.state, inst.operation_id),
        (InstanceState::Running, None)
    );
    assert_eq!(current(&f, web).await.as_deref(), Some("s2"));
    assert_eq!(
        f.app.store().count_snapshots_of(web).await.expect("count"),
        2
    );
}

#[tokio::test]
async fn restore_moves_the_current_mark_and_a_refused_restore_changes_nothing() {
    let f = fixture().await;
    let web = running_instance(&f, "web1").await;
    for name in ["s1", "s2"] {
        assert_eq!(
            snapshot(&f, "web1", name).await.state,
            OperationState::Succeeded
        );
    }
    let op = f
        .app
        .restore_snapshot(&f.caller, "s1")
        .await
        .expect("accepted");
    let op = wait(&f, &op).await;
    assert_eq!(op.state, OperationState::Succeeded, "{:?}", op.error);
    let restored = op.steps.iter().find(|s| s.name == "restore").expect("step");
    let out: nimbus_api::SnapshotRestored =
        serde_json::from_value(restored.output.clone().expect("output")).expect("summary");
    assert_eq!((out.running_ms, out.first_heartbeat_ms), (420, Some(610)));
    assert_eq!(current(&f, web).await.as_deref(), Some("s1"));
    // The next snapshot branches from s1, beside s2.
    assert_eq!(
        snapshot(&f, "web1", "s3").await.state,
        OperationState::Succeeded
    );
    assert_eq!(parent(&f, "s3").await.as_deref(), Some("s1"));

    f.agent.state().fail.insert(
        "restore",
        (
            422,
            "checksum mismatch in memory chunk 17 of snapshot s2".into(),
        ),
    );
    let op = f
        .app
        .restore_snapshot(&f.caller, "s2")
        .await
        .expect("accepted");
    let op = wait(&f, &op).await;
    assert_eq!(op.state, OperationState::Failed);
    assert!(
        op.error
            .as_deref()
            .unwrap_or("")
            .contains("checksum mismatch"),
        "{:?}",
        op.error
    );
    let s2 = f.app.find_snapshot(&f.caller, "s2").await.expect("s2");
    assert_eq!(
        (s2.state, s2.operation_id),
        (SnapshotState::Available, None)
    );
    let inst = f
        .app
        .store()
        .get_instance_by_id(&Scope::All, web)
        .await
        .expect("inst");
    assert_eq!(
        (inst.state, inst.operation_id),
        (InstanceState::Running, None)
    );
    assert_eq!(current(&f, web).await.as_deref(), Some("s3"));
}

#[tokio::test]
async fn deleting_the_middle_of_a_chain_hands_its_children_to_its_parent() {
    let f = fixture().await;
    let web = running_instance(&f, "web1").await;
    for name in ["s1", "s2", "s3"] {
        assert_eq!(
            snapshot(&f, "web1", name).await.state,
            OperationState::Succeeded
        );
    }
    let s2 = f.app.find_snapshot(&f.caller, "s2").await.expect("s2").id;
    let op = f
        .app
        .delete_snapshot(&f.caller, "s2")
        .await
        .expect("accepted");
    let op = wait(&f, &op).await;
    assert_eq!(op.state, OperationState::Succeeded, "{:?}", op.error);
    let freed = op
        .steps
        .iter()
        .find(|s| s.name == "delete_on_host")
        .expect("step");
    let out: nimbus_api::SnapshotDeleted =
        serde_json::from_value(freed.output.clone().expect("output")).expect("summary");
    assert_eq!(out.freed_bytes, 3000);
    assert!(!f.agent.state().snapshots.contains(&(web, s2)));
    assert_eq!(parent(&f, "s3").await.as_deref(), Some("s1"));
    assert_eq!(current(&f, web).await.as_deref(), Some("s3"));
    // Deleting the current one makes its parent current.
    let op = f
        .app
        .delete_snapshot(&f.caller, "s3")
        .await
        .expect("accepted");
    assert_eq!(wait(&f, &op).await.state, OperationState::Succeeded);
    assert_eq!(current(&f, web).await.as_deref(), Some("s1"));
}

#[tokio::test]
async fn a_clone_gets_a_new_identity_on_the_snapshot_s_host() {
    let (f, web) = web1_with_s1().await;
    let req = CreateInstance {
        name: "web2".into(),
        flavor: None,
        image: None,
        from_snapshot: Some("s1".into()),
        ..Default::default()
    };
    let op = f
        .app
        .create_instance(&f.caller, &req)
        .await
        .expect("accepted");
    assert_eq!(op.kind, OperationKind::InstanceClone);
    let op = wait(&f, &op).await;
    assert_eq!(op.state, OperationState::Succeeded, "{:?}", op.error);
    let (a, b) = (
        f.app
            .store()
            .get_instance_by_id(&Scope::All, web)
            .await
            .expect("web1"),
        f.app.find_instance(&f.caller, "web2").await.expect("web2"),
    );
    assert_eq!(b.state, InstanceState::Running);
    assert_eq!(
        b.host.as_deref(),
        Some("host1"),
        "clones run where the snapshot lives"
    );
    assert_eq!(
        (b.flavor.as_str(), b.vcpus, b.memory_mib),
        ("small", 1, 512)
    );
    assert_ne!(a.mac, b.mac);
    assert_ne!(a.ip, b.ip);
    assert_eq!(
        f.agent
            .state()
            .clones
            .iter()
            .map(|s| s.id)
            .collect::<Vec<_>>(),
        vec![b.id]
    );

    // A clone of a snapshot whose host is full is refused, naming the host (host2 has room
    // but does not hold the snapshot).
    f.running_instance("filler", 3000).await;
    let req = CreateInstance {
        name: "web3".into(),
        ..req
    };
    let e = f
        .app
        .create_instance(&f.caller, &req)
        .await
        .expect_err("full");
    assert_eq!(e.code, ErrorCode::NoCapacity);
    assert!(
        e.message.starts_with(
            "snapshot s1 lives on host host1 (snapshots stay on their host), which has no room"
        ),
        "{}",
        e.message
    );
    assert!(
        f.app.find_instance(&f.caller, "web3").await.is_err(),
        "nothing recorded"
    );
}

#[tokio::test]
async fn refusals_name_the_way_out() {
    let (f, web) = web1_with_s1().await;

    let dup = CreateSnapshot {
        instance: "web1".into(),
        name: Some("s1".into()),
        disk_only: false,
    };
    let e = f
        .app
        .create_snapshot(&f.caller, &dup)
        .await
        .expect_err("duplicate");
    assert_eq!(e.code, ErrorCode::Conflict, "{}", e.message);
    let unknown = CreateSnapshot {
        instance: "nope".into(),
        ..dup.clone()
    };
    let e = f
        .app
        .create_snapshot(&f.caller, &unknown)
        .await
        .expect_err("unknown");
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = f
        .app
        .restore_snapshot(&f.caller, "nope")
        .await
        .expect_err("unknown");
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("nimbus snapshot list"), "{}", e.message);

    // A stopped instance: memory snapshots are refused with the way out, disk-only works.
    f.app
        .store()
        .set_instance_state(web, InstanceState::Stopped, None)
        .await
        .expect("stop");
    let e = f
        .app
        .create_snapshot(
            &f.caller,
            &CreateSnapshot {
                instance: "web1".into(),
                name: None,
                disk_only: false,
            },
        )
        .await
        .expect_err("stopped");
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(e.message.contains("--disk-only"), "{}", e.message);
    let op = f
        .app
        .create_snapshot(
            &f.caller,
            &CreateSnapshot {
                instance: "web1".into(),
                name: None,
                disk_only: true,
            },
        )
        .await
        .expect("disk only");
    let op = wait(&f, &op).await;
    assert_eq!(op.state, OperationState::Succeeded, "{:?}", op.error);
    let all = f
        .app
        .list_snapshots(&f.caller, Some("web1"), &PageRequest::first(100))
        .await
        .expect("list")
        .items;
    let disk_only = all.iter().find(|s| !s.memory).expect("disk-only snapshot");
    assert!(
        disk_only.name.starts_with("web1-2"),
        "default name: {}",
        disk_only.name
    );
    assert_eq!(disk_only.parent.as_deref(), Some("s1"));

    // While an operation holds the instance, restore and delete are refused as busy, and
    // leave the snapshot as it was.
    let other = NewOperation {
        id: Uuid::new_v4(),
        kind: OperationKind::InstanceReboot,
        project: "default".into(),
        target_id: web,
        target_name: "web1".into(),
        params: serde_json::json!({}),
    };
    f.app
        .store()
        .begin_instance_operation(web, &other)
        .await
        .expect("hold");
    for e in [
        f.app
            .restore_snapshot(&f.caller, "s1")
            .await
            .expect_err("busy"),
        f.app
            .delete_snapshot(&f.caller, "s1")
            .await
            .expect_err("busy"),
    ] {
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(
            e.message
                .contains(&format!("busy with operation {}", other.id)),
            "{}",
            e.message
        );
    }
    let s1 = f.app.find_snapshot(&f.caller, "s1").await.expect("s1");
    assert_eq!(
        (s1.state, s1.operation_id),
        (SnapshotState::Available, None)
    );
}

#[tokio::test]
async fn a_snapshot_whose_undo_failed_shows_error_and_can_be_deleted() {
    let f = fixture().await;
    let web = running_instance(&f, "web1").await;
    {
        let mut host = f.agent.state();
        host.fail.insert("snapshot", (400, "disk full".into()));
        host.fail
            .insert("delete_snapshot", (400, "disk unreadable".into()));
    }
    let op = snapshot(&f, "web1", "s1").await;
    assert_eq!(op.state, OperationState::Failed);
    let error = op.error.unwrap_or_default();
    assert!(error.contains("undo of take also failed"), "{error}");
    let s1 = f.app.find_snapshot(&f.caller, "s1").await.expect("kept");
    assert_eq!((s1.state, s1.operation_id), (SnapshotState::Error, None));
    let inst = f
        .app
        .store()
        .get_instance_by_id(&Scope::All, web)
        .await
        .expect("web1");
    assert_eq!(
        (inst.state, inst.operation_id),
        (InstanceState::Running, None)
    );
    // Restoring it is refused; once the host works again, deleting it cleans up.
    let e = f
        .app
        .restore_snapshot(&f.caller, "s1")
        .await
        .expect_err("error");
    assert!(e.message.contains("not available"), "{}", e.message);
    f.agent.state().fail.clear();
    let op = f
        .app
        .delete_snapshot(&f.caller, "s1")
        .await
        .expect("accepted");
    assert_eq!(wait(&f, &op).await.state, OperationState::Succeeded);
    assert!(f.app.find_snapshot(&f.caller, "s1").await.is_err());
}

#[tokio::test]
async fn a_failed_clone_leaves_no_vm_and_no_reservation() {
    let (f, _web) = web1_with_s1().await;
    f.agent.state().fail.insert(
        "clone",
        (400, "the snapshot's QEMU version is unknown here".into()),
    );
    let req = CreateInstance {
        name: "web2".into(),
        flavor: None,
        image: None,
        from_snapshot: Some("s1".into()),
        ..Default::default()
    };
    let op = f
        .app
        .create_instance(&f.caller, &req)
        .await
        .expect("accepted");
    let op = wait(&f, &op).await;
    assert_eq!(op.state, OperationState::Failed);
    let web2 = f.app.find_instance(&f.caller, "web2").await.expect("web2");
    assert_eq!(web2.state, InstanceState::Error);
    assert!(
        web2.reason
            .as_deref()
            .is_some_and(|r| r.contains("QEMU version is unknown")),
        "{:?}",
        web2.reason
    );
    assert_eq!(web2.host, None, "the reservation on host1 is released");
    let host = f.agent.state();
    assert!(!host.vms.contains_key(&web2.id), "no VM left on the host");
    assert!(
        host.calls
            .iter()
            .any(|c| c == &format!("delete_vm {}", web2.id)),
        "the undo deleted whatever the host made: {:?}",
        host.calls
    );
}

/// A drain no longer leaves an instance behind for its snapshots: its live migration sends
/// the disk part of the snapshot set (no chunk) to the target before the target QEMU starts;
/// the memory part goes in the background from then on. (The fake host cannot receive a
/// live VM, so the move then fails and unwinds: the instance stays where it was, with its
/// snapshot.)
#[tokio::test]
async fn a_drain_sends_the_snapshots_of_a_running_instance_first() {
    let (f, web) = web1_with_s1().await;
    let op = f
        .app
        .drain_host(&f.caller, "host1")
        .await
        .expect("accepted");
    let op = wait(&f, &op).await;
    let error = op.error.unwrap_or_default();
    assert!(!error.contains("snapshot"), "{error}");
    let calls = f.agent.state().calls.clone();
    assert!(
        calls.contains(&format!("export_snapshot_set {web} 0"))
            && calls.contains(&format!("import_snapshot_set {web} set-of-{web}")),
        "{calls:?}"
    );
    let s1 = f
        .app
        .store()
        .get_snapshot("default", "s1")
        .await
        .expect("s1");
    assert_eq!(
        s1.host, "host1",
        "a failed move leaves the snapshot on its source"
    );
}

/// A stopped instance with a snapshot migrates cold: its snapshot set goes from the source
/// to the target before the target defines it (only chunks the target lacks are asked
/// for), the disk copy is not made again (the layers came with the set), the snapshot rows
/// follow the instance to its new host, and the source copy goes only after the commit.
#[tokio::test]
async fn snapshots_move_with_a_cold_migration() {
    let (f, web) = web1_with_s1().await;
    f.app
        .store()
        .set_instance_state(web, InstanceState::Stopped, None)
        .await
        .expect("stop");
    let op = f
        .app
        .migrate_instance(&f.caller, "web1", &MigrateInstance::default())
        .await
        .expect("no longer refused");
    let op = wait(&f, &op).await;
    assert_eq!(
        (op.kind, op.state),
        (
            OperationKind::InstanceColdMigrate,
            OperationState::Succeeded
        ),
        "{:?}",
        op.error
    );
    // One fake serves both hosts: its log is both hosts' calls, in order.
    let target_calls = f.agent.state().calls.clone();
    let import = target_calls
        .iter()
        .position(|c| *c == format!("import_snapshot_set {web} set-of-{web}"))
        .unwrap_or_else(|| panic!("the set arrived: {target_calls:?}"));
    let define = target_calls
        .iter()
        .position(|c| c.starts_with(&format!("cold {web}")))
        .expect("defined");
    assert!(
        import < define,
        "the set is staged before the define: {target_calls:?}"
    );
    assert!(target_calls.contains(&"missing_chunks 1".to_string()));
    let source_calls = target_calls.clone();
    let export = source_calls
        .iter()
        .position(|c| *c == format!("export_snapshot_set {web} 1"))
        .expect("exported");
    let removed = source_calls
        .iter()
        .position(|c| *c == format!("delete_vm {web}"))
        .expect("source copy removed");
    assert!(export < removed);
    assert!(
        !source_calls.iter().any(|c| c.starts_with("disk")),
        "no separate disk copy"
    );
    let s1 = f
        .app
        .store()
        .get_snapshot("default", "s1")
        .await
        .expect("s1");
    assert_eq!(
        s1.host, "host2",
        "the snapshot lives where its instance does"
    );
}
