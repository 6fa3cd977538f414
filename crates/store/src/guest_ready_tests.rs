//! Guest readiness (migration 0028, `Store::set_guest_ready`): what the agents last said of a
//! guest being up is recorded apart from the instance's state, on SQLite and PostgreSQL.

use crate::testing::{new_instance, pick, stores};
use crate::{InstanceRecord, Scope, Store};
use nimbus_api::{InstanceState, ReadySource};
use uuid::Uuid;

async fn get(s: &Store, id: Uuid) -> InstanceRecord {
    s.get_instance_by_id(&Scope::All, id).await.expect("get")
}

#[tokio::test]
async fn readiness_is_recorded_apart_from_state_and_generation() {
    for (s, _d) in stores().await {
        let (a, op) = new_instance("default", "web1");
        let web1 = s.insert_instance(&a, &op, pick).await.expect("insert");
        let (b, op_b) = new_instance("default", "web2");
        let web2 = s.insert_instance(&b, &op_b, pick).await.expect("insert");
        assert_eq!(web1.ready, None, "a new instance is not ready");

        // The create operation still owns web1: readiness is recorded all the same (the
        // create's boot step records it), without a generation bump that would make the
        // operation's next compare-and-swap fail.
        s.set_guest_ready(web1.id, Some(ReadySource::Metadata))
            .await
            .expect("set");
        let got = get(&s, web1.id).await;
        assert_eq!(got.ready, Some(ReadySource::Metadata));
        assert_eq!(got.generation, web1.generation, "generation untouched");
        assert_eq!(got.state, web1.state, "state untouched");
        assert_eq!(
            get(&s, web2.id).await.ready,
            None,
            "only the instance named"
        );
        let by_name = s
            .get_instance(&Scope::project("default"), "web1")
            .await
            .expect("get by name");
        assert_eq!(by_name.ready, Some(ReadySource::Metadata));
        let listed = s.list_instances(&Scope::All).await.expect("list");
        let ready: Vec<_> = listed.iter().map(|i| (i.name.as_str(), i.ready)).collect();
        assert!(
            ready.contains(&("web1", Some(ReadySource::Metadata))),
            "{ready:?}"
        );
        assert!(ready.contains(&("web2", None)), "{ready:?}");

        // A state report does not touch readiness; a new source replaces the old one.
        s.end_instance_operation(web1.id, op.id).await.expect("end");
        let rec = get(&s, web1.id).await;
        assert!(s
            .apply_agent_report(web1.id, rec.generation, 5, InstanceState::Running, None)
            .await
            .expect("report"));
        assert_eq!(get(&s, web1.id).await.ready, Some(ReadySource::Metadata));
        s.set_guest_ready(web1.id, Some(ReadySource::Resumed))
            .await
            .expect("set");
        assert_eq!(get(&s, web1.id).await.ready, Some(ReadySource::Resumed));

        // Not ready again (a reboot, a stop): cleared.
        s.set_guest_ready(web1.id, None).await.expect("clear");
        assert_eq!(get(&s, web1.id).await.ready, None);

        // A deleted instance (the reconciler may race with a delete): nothing to do, no error.
        s.set_guest_ready(Uuid::new_v4(), Some(ReadySource::Console))
            .await
            .expect("unknown id");
    }
}

#[tokio::test]
async fn an_unknown_stored_source_reads_as_not_ready() {
    for (s, _d) in stores().await {
        let (a, op) = new_instance("default", "web1");
        let rec = s.insert_instance(&a, &op, pick).await.expect("insert");
        // What a newer controller sharing the database could write.
        sqlx::query("UPDATE instances SET guest_ready = $1 WHERE id = $2")
            .bind("firmware")
            .bind(rec.id.to_string())
            .execute(s.pool())
            .await
            .expect("update");
        assert_eq!(get(&s, rec.id).await.ready, None);
        s.set_guest_ready(rec.id, Some(ReadySource::Console))
            .await
            .expect("set");
        assert_eq!(get(&s, rec.id).await.ready, Some(ReadySource::Console));
    }
}
