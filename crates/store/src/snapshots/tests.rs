use super::*;
use crate::testing::{pick, stores};
use crate::{InstanceRecord, NewInstance, Scope};
use nimbus_api::OperationKind;

fn operation(kind: OperationKind, target: Uuid) -> NewOperation {
    NewOperation {
        id: Uuid::new_v4(),
        kind,
        project: "default".into(),
        target_id: target,
        target_name: "x".into(),
        params: serde_json::json!({}),
    }
}

/// An instance with no operation attached, placed on host1.
pub(crate) async fn instance(s: &Store, name: &str) -> InstanceRecord {
    let id = Uuid::new_v4();
    let new = NewInstance {
        id,
        project: "default".into(),
        name: name.into(),
        flavor: "small".into(),
        image: "default".into(),
        image_project: "default".into(),
        vcpus: 1,
        memory_mib: 512,
        disk_gib: 2,
        group_id: None,
        nics: Vec::new(),
        placement_group: None,
        ha_restart: false,
        ha_priority: nimbus_api::HA_PRIORITY_MEDIUM,
        seed: Default::default(),
        secgroups: Vec::new(),
    };
    let op = operation(OperationKind::InstanceCreate, id);
    s.insert_instance(&new, &op, pick).await.expect("insert");
    s.reserve_host(id, "host1").await.expect("reserve");
    s.end_instance_operation(id, op.id).await.expect("end");
    s.get_instance_by_id(&Scope::All, id).await.expect("get")
}

/// Takes a snapshot through the same calls as the create operation; returns its id.
pub(crate) async fn snapshot(s: &Store, inst: &InstanceRecord, name: &str) -> Uuid {
    let new = NewSnapshot {
        id: Uuid::new_v4(),
        project: inst.project.clone(),
        instance_id: inst.id,
        name: name.into(),
        memory: true,
        host: "host1".into(),
    };
    let op = operation(OperationKind::SnapshotCreate, inst.id);
    s.begin_snapshot(&new, &op).await.expect("begin");
    s.ensure_snapshot(&new, op.id).await.expect("replay");
    let figures = SnapshotFigures {
        vm_pause_us: 2500,
        disk_layer_bytes: 100,
        memory_bytes: 1000,
        memory_new_bytes: 10,
        stored_bytes: 110,
    };
    s.complete_snapshot(new.id, &figures)
        .await
        .expect("complete");
    s.end_instance_operation(inst.id, op.id).await.expect("end");
    new.id
}

fn parent_of(all: &[SnapshotRecord], name: &str) -> Option<String> {
    all.iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no snapshot {name}"))
        .parent_name
        .clone()
}

#[tokio::test]
async fn snapshots_chain_from_the_current_one_and_branch_after_a_restore() {
    for (s, _d) in stores().await {
        let web = instance(&s, "web1").await;
        let a = snapshot(&s, &web, "a").await;
        let b = snapshot(&s, &web, "b").await;
        assert_eq!(s.current_snapshot(web.id).await.expect("current"), Some(b));
        // Restore to a, then snapshot: c branches from a, beside b.
        s.set_current_snapshot(web.id, Some(a)).await.expect("set");
        let c = snapshot(&s, &web, "c").await;
        let all = s
            .list_snapshots(Some("default"), Some(web.id))
            .await
            .expect("list");
        assert_eq!(parent_of(&all, "a"), None);
        assert_eq!(parent_of(&all, "b").as_deref(), Some("a"));
        assert_eq!(parent_of(&all, "c").as_deref(), Some("a"));
        let current: Vec<_> = all.iter().filter(|r| r.current).map(|r| r.id).collect();
        assert_eq!(current, vec![c]);
        let view = s.get_snapshot("default", "c").await.expect("get").view();
        assert_eq!(view.instance, "web1");
        assert_eq!(view.state, SnapshotState::Available);
        assert_eq!((view.vm_pause_ms, view.stored_bytes), (2.5, 110));
        assert_eq!(
            s.project_snapshot_usage("default").await.expect("usage"),
            (3, 330)
        );
    }
}

#[tokio::test]
async fn deleting_a_snapshot_hands_its_children_and_the_current_mark_to_its_parent() {
    for (s, _d) in stores().await {
        let web = instance(&s, "web1").await;
        let a = snapshot(&s, &web, "a").await;
        let b = snapshot(&s, &web, "b").await;
        let c = snapshot(&s, &web, "c").await;
        s.set_current_snapshot(web.id, Some(b)).await.expect("set");
        let d = snapshot(&s, &web, "d").await;
        s.set_current_snapshot(web.id, Some(b)).await.expect("set");
        // a <- b <- {c, d}, current b; delete b.
        s.delete_snapshot_row(b).await.expect("delete");
        s.delete_snapshot_row(b)
            .await
            .expect("deleting twice is harmless");
        let all = s.list_snapshots(None, Some(web.id)).await.expect("list");
        assert_eq!(all.len(), 3);
        assert_eq!(parent_of(&all, "c").as_deref(), Some("a"));
        assert_eq!(parent_of(&all, "d").as_deref(), Some("a"));
        assert_eq!(s.current_snapshot(web.id).await.expect("current"), Some(a));
        // Deleting a non-current leaf leaves the current mark alone.
        s.delete_snapshot_row(d).await.expect("delete");
        assert_eq!(s.current_snapshot(web.id).await.expect("current"), Some(a));
        // Deleting the root makes its children roots.
        s.delete_snapshot_row(a).await.expect("delete");
        let c_rec = s.get_snapshot_by_id(c).await.expect("get");
        assert_eq!((c_rec.parent_id, c_rec.current), (None, false));
        assert_eq!(s.current_snapshot(web.id).await.expect("current"), None);
    }
}

#[tokio::test]
async fn names_are_unique_per_project_and_a_refused_snapshot_leaves_nothing() {
    for (s, _d) in stores().await {
        let web = instance(&s, "web1").await;
        let other = instance(&s, "web2").await;
        snapshot(&s, &web, "before").await;
        let dup = NewSnapshot {
            id: Uuid::new_v4(),
            project: "default".into(),
            instance_id: other.id,
            name: "before".into(),
            memory: false,
            host: "host1".into(),
        };
        let op = operation(OperationKind::SnapshotCreate, other.id);
        let err = s.begin_snapshot(&dup, &op).await;
        assert!(
            matches!(err, Err(StoreError::Conflict(ref m)) if m.contains("before")),
            "{err:?}"
        );
        assert!(
            s.get_operation(&Scope::All, op.id).await.is_err(),
            "no operation left"
        );
        let inst = s
            .get_instance_by_id(&Scope::All, other.id)
            .await
            .expect("get");
        assert_eq!(inst.operation_id, None, "the instance is not left busy");
        assert_eq!(s.count_snapshots_of(other.id).await.expect("count"), 0);
    }
}

#[tokio::test]
async fn one_operation_per_instance_and_only_on_available_snapshots() {
    for (s, _d) in stores().await {
        let web = instance(&s, "web1").await;
        let a = snapshot(&s, &web, "a").await;
        let restore = operation(OperationKind::SnapshotRestore, web.id);
        s.begin_snapshot_operation(a, SnapshotState::Restoring, &restore)
            .await
            .expect("begin");
        assert_eq!(
            s.get_snapshot_by_id(a).await.expect("get").state,
            SnapshotState::Restoring
        );
        let delete = operation(OperationKind::SnapshotDelete, web.id);
        let busy = s
            .begin_snapshot_operation(a, SnapshotState::Deleting, &delete)
            .await;
        assert!(
            matches!(busy, Err(StoreError::Conflict(ref m)) if m.contains("busy")),
            "{busy:?}"
        );
        s.end_snapshot_operation(a, SnapshotState::Available)
            .await
            .expect("end");
        s.end_instance_operation(web.id, restore.id)
            .await
            .expect("end");
        s.end_snapshot_operation(a, SnapshotState::Error)
            .await
            .expect("end");
        // A snapshot in error cannot be restored, only deleted.
        let again = operation(OperationKind::SnapshotRestore, web.id);
        let not_available = s
            .begin_snapshot_operation(a, SnapshotState::Restoring, &again)
            .await;
        assert!(
            matches!(not_available, Err(StoreError::Conflict(ref m)) if m.contains("not available")),
            "{not_available:?}"
        );
        assert!(
            s.get_operation(&Scope::All, again.id).await.is_err(),
            "no operation left"
        );
        let inst = s
            .get_instance_by_id(&Scope::All, web.id)
            .await
            .expect("get");
        assert_eq!(
            inst.operation_id, None,
            "a refused operation does not hold the instance"
        );
        s.begin_snapshot_operation(a, SnapshotState::Deleting, &delete)
            .await
            .expect("a snapshot in error can be deleted");
    }
}

#[tokio::test]
async fn deleting_an_instance_s_snapshots_clears_its_tree() {
    for (s, _d) in stores().await {
        let web = instance(&s, "web1").await;
        let other = instance(&s, "web2").await;
        snapshot(&s, &web, "a").await;
        snapshot(&s, &web, "b").await;
        let kept = snapshot(&s, &other, "c").await;
        assert_eq!(s.delete_snapshots_of(web.id).await.expect("delete"), 2);
        assert_eq!(s.current_snapshot(web.id).await.expect("current"), None);
        let left: Vec<_> = s
            .list_snapshots(Some("default"), None)
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, vec![kept]);
    }
}

#[tokio::test]
async fn the_snapshot_quota_is_checked_in_the_insert() {
    for (s, _d) in stores().await {
        let web = instance(&s, "web").await;
        s.set_quota(
            "default",
            &nimbus_api::QuotaLimits {
                snapshots: Some(1),
                ..nimbus_api::QuotaLimits::UNLIMITED
            },
        )
        .await
        .expect("set");
        snapshot(&s, &web, "first").await;
        assert_eq!(s.quota_usage("default").await.expect("usage").snapshots, 1);
        let new = NewSnapshot {
            id: Uuid::new_v4(),
            project: "default".into(),
            instance_id: web.id,
            name: "second".into(),
            memory: true,
            host: "host1".into(),
        };
        let op = operation(OperationKind::SnapshotCreate, web.id);
        let e = s.begin_snapshot(&new, &op).await;
        assert!(
            matches!(&e, Err(StoreError::QuotaExceeded(q)) if q.resource == "snapshots"),
            "{e:?}"
        );
        assert!(
            s.get_operation(&Scope::All, op.id).await.is_err(),
            "nothing recorded"
        );
    }
}
