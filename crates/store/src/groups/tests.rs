use super::*;
use crate::testing::stores;
use crate::NewInstance;
use nimbus_api::{OperationKind, StepBound};

fn new_group(name: &str) -> NewGroup {
    NewGroup {
        id: Uuid::new_v4(),
        project: "default".into(),
        name: name.into(),
        flavor: "tiny".into(),
        image: "default".into(),
        min: 1,
        max: 4,
        desired: 2,
        target_cpu: 60,
        policy: PolicyKind::Step,
        steps: vec![ScalingStep {
            bound: StepBound::Above,
            cpu: 80,
            change: 2,
        }],
        window_secs: 60,
        cooldown_secs: 30,
    }
}

fn created() -> NewGroupEvent {
    NewGroupEvent::new("created", "created with desired 2", 2)
}

fn op(kind: OperationKind, target: Uuid) -> NewOperation {
    NewOperation {
        id: Uuid::new_v4(),
        kind,
        project: "default".into(),
        target_id: target,
        target_name: "x".into(),
        params: serde_json::json!({}),
    }
}

async fn add_member(s: &Store, group: Option<Uuid>, name: &str) -> Uuid {
    let id = Uuid::new_v4();
    let new = NewInstance {
        id,
        project: "default".into(),
        name: name.into(),
        flavor: "tiny".into(),
        image: "default".into(),
        image_project: "default".into(),
        vcpus: 1,
        memory_mib: 256,
        disk_gib: 1,
        group_id: group,
        nics: Vec::new(),
        placement_group: None,
        ha_restart: false,
        ha_priority: nimbus_api::HA_PRIORITY_MEDIUM,
        seed: Default::default(),
        secgroups: Vec::new(),
    };
    s.insert_instance(
        &new,
        &op(OperationKind::InstanceCreate, id),
        crate::testing::pick,
    )
    .await
    .expect("insert instance");
    id
}

#[tokio::test]
async fn groups_round_trip_and_names_are_unique_per_project() {
    for (s, _d) in stores().await {
        let g = new_group("web");
        let rec = s.insert_group(&g, &created()).await.expect("insert");
        assert_eq!(rec.name, "web");
        assert_eq!(rec.policy, PolicyKind::Step);
        assert_eq!(rec.steps, g.steps);
        assert_eq!((rec.min, rec.max, rec.desired), (1, 4, 2));
        assert_eq!(rec.state, GROUP_ACTIVE);
        assert_eq!(rec.last_scaled_at, None);
        let dup = s.insert_group(&new_group("web"), &created()).await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        let mut other = new_group("web");
        other.project = "acme".into();
        s.insert_group(&other, &created())
            .await
            .expect("other project");
        assert_eq!(s.list_groups(Some("default")).await.expect("list").len(), 1);
        assert_eq!(s.list_groups(None).await.expect("list").len(), 2);
        assert!(matches!(
            s.get_group("acme", "nope").await,
            Err(StoreError::NotFound { .. })
        ));
        let events = s.group_events(rec.id, 10).await.expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "created");
    }
}

#[tokio::test]
async fn size_changes_are_compare_and_swap_and_carry_their_event() {
    for (s, _d) in stores().await {
        let rec = s
            .insert_group(&new_group("web"), &created())
            .await
            .expect("insert");
        let mut sizes = rec.sizes();
        sizes.desired = 4;
        let now = Utc::now();
        let out = NewGroupEvent::new("scale_out", "avg CPU 91% over 60 s > 60% target: +2", 2);
        assert!(s
            .update_group_sizes(rec.id, rec.generation, sizes, Some(now), &out)
            .await
            .expect("update"));
        // A second writer that read the old generation loses and writes nothing.
        let lost = NewGroupEvent::new("scale_in", "stale", -1);
        assert!(!s
            .update_group_sizes(rec.id, rec.generation, rec.sizes(), None, &lost)
            .await
            .expect("update"));
        let got = s.get_group_by_id(rec.id).await.expect("get");
        assert_eq!(got.desired, 4);
        assert_eq!(got.generation, rec.generation + 1);
        let scaled = got.last_scaled_at.expect("scaled at");
        assert!((scaled - now).num_milliseconds().abs() < 1);
        // A user's change keeps the cooldown's start.
        let mut sizes = got.sizes();
        sizes.min = 2;
        let set = NewGroupEvent::new("set", "min 2", 0);
        assert!(s
            .update_group_sizes(rec.id, got.generation, sizes, None, &set)
            .await
            .expect("update"));
        let got = s.get_group_by_id(rec.id).await.expect("get");
        assert_eq!(got.last_scaled_at, Some(scaled));
        assert_eq!(got.min, 2);
        let events = s.group_events(rec.id, 10).await.expect("events");
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["set", "scale_out", "created"]);
        assert_eq!(events[1].delta, 2);
        s.count_group_replacement(rec.id, &NewGroupEvent::new("replace", "web-1 died", 0))
            .await
            .expect("replace");
        assert_eq!(
            s.get_group_by_id(rec.id).await.expect("get").replacements,
            1
        );
    }
}

#[tokio::test]
async fn members_are_the_instances_of_the_group() {
    for (s, _d) in stores().await {
        let rec = s
            .insert_group(&new_group("web"), &created())
            .await
            .expect("insert");
        let a = add_member(&s, Some(rec.id), "web-a").await;
        let b = add_member(&s, Some(rec.id), "web-b").await;
        add_member(&s, None, "loner").await;
        let members = s.group_members(rec.id).await.expect("members");
        let ids: Vec<Uuid> = members.iter().map(|m| m.id).collect();
        assert_eq!(ids, [a, b]);
        assert!(members.iter().all(|m| m.group_id == Some(rec.id)));
        assert_eq!(
            s.get_instance(&crate::Scope::project("default"), "loner")
                .await
                .expect("get")
                .group_id,
            None
        );
    }
}

#[tokio::test]
async fn delete_marks_deleting_once_and_needs_no_members_left() {
    for (s, _d) in stores().await {
        let rec = s
            .insert_group(&new_group("web"), &created())
            .await
            .expect("insert");
        let m = add_member(&s, Some(rec.id), "web-a").await;
        let del = op(OperationKind::GroupDelete, rec.id);
        let ev = NewGroupEvent::new("deleting", "delete requested", 0);
        s.begin_group_delete(rec.id, &del, &ev)
            .await
            .expect("begin");
        let again = s
            .begin_group_delete(rec.id, &op(OperationKind::GroupDelete, rec.id), &ev)
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        let got = s.get_group_by_id(rec.id).await.expect("get");
        assert_eq!(got.state, GROUP_DELETING);
        assert_eq!(
            s.get_operation(&crate::Scope::All, del.id)
                .await
                .expect("op")
                .kind,
            OperationKind::GroupDelete
        );
        // The autoscaler can no longer change a group being deleted.
        let stale = NewGroupEvent::new("scale_out", "x", 1);
        assert!(!s
            .update_group_sizes(rec.id, got.generation, got.sizes(), None, &stale)
            .await
            .expect("update"));
        assert!(matches!(
            s.delete_group_row(rec.id).await,
            Err(StoreError::Conflict(_))
        ));
        s.delete_instance_row(m).await.expect("delete member");
        s.delete_group_row(rec.id).await.expect("delete group");
        assert!(s.get_group_by_id(rec.id).await.is_err());
        assert!(s.group_events(rec.id, 10).await.expect("events").is_empty());
    }
}
