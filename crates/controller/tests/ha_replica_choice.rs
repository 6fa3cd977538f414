//! Which snapshot an HA restart of a local-disk instance restores, through the real
//! controller (store, replica store, copy between controllers): a fake host agent takes the
//! snapshots (the host is not the subject), and a replica is put into the controller's store
//! in the frames a host's export sends. One controller on SQLite (the store's side of the
//! choice runs on SQLite and PostgreSQL in nimbus-store's `snapshot_replicas` tests; several
//! controllers through the binary in crates/cli/tests/ha_local.rs).

mod support;

use nimbus_agent_api::snapshot_move::frame::{encode_header, Header, ROOT_LAYER};
use nimbus_api::{OperationState, ReplicaCopies};
use nimbus_controller::app::Caller;
use nimbus_controller::ops::ha_replica_choice::{restorable_replica, NO_LIVE_HOLDER};
use support::Cloud;
use uuid::Uuid;

/// Takes snapshot `name` of `instance` through the controller; answers its id.
async fn snapshot(cloud: &Cloud, caller: &Caller, instance: &str, name: &str) -> Uuid {
    let op = cloud.begin_snapshot(caller, instance, name).await;
    let done = cloud.wait_operation(op.id).await;
    assert_eq!(done.state, OperationState::Succeeded, "{:?}", done.error);
    cloud
        .app
        .find_snapshot(caller, name)
        .await
        .expect("snap")
        .id
}

/// The replica of one snapshot (a root layer, its manifest, one memory chunk) as a host's
/// export frames it.
fn replica_frames(vm: Uuid, sid: Uuid) -> Vec<u8> {
    let layer = format!("layer of {sid}").into_bytes();
    let page = format!("memory of {sid}").into_bytes();
    let hash = blake3::hash(&page).to_hex().to_string();
    let manifest = serde_json::json!({"format_version": 1, "snapshot_id": sid, "vm_id": vm,
        "disk": {"path": ROOT_LAYER, "virtual_size": 1, "hash": "x"},
        "memory": {"len": page.len(), "hash": "x",
                   "chunks": [{"hash": hash.clone(), "len": page.len()}]}});
    let frames: [(Header, Vec<u8>); 4] = [
        (
            Header::Layer {
                name: ROOT_LAYER.into(),
                backing: None,
                digest: blake3::hash(&layer).to_hex().to_string(),
            },
            layer,
        ),
        (Header::Manifest, manifest.to_string().into_bytes()),
        (Header::Chunk { hash, zstd: false }, page),
        (Header::End, Vec::new()),
    ];
    frames
        .into_iter()
        .flat_map(|(h, data)| {
            let mut out = encode_header(&h, data.len() as u64);
            out.extend(data);
            out
        })
        .collect()
}

#[tokio::test]
async fn the_newest_snapshot_this_controller_can_restore_is_chosen_and_the_others_are_named() {
    let cloud = Cloud::start(&["host1", "host2"], 4096).await;
    let caller = Caller::system("test", "default");
    let vm = cloud.running_instance("db1", 512).await;
    let s1 = snapshot(&cloud, &caller, "db1", "s1").await;
    let s2 = snapshot(&cloud, &caller, "db1", "s2").await;
    let (app, me) = (&cloud.app, cloud.app.controller_id());
    // Live, as `nimbus controller` is once started (a holder counts only while it is).
    nimbus_controller::background::leases::register(app)
        .await
        .expect("register");

    // Nothing replicated: the restart cannot happen, and says so.
    let e = restorable_replica(app, vm, "host1")
        .await
        .expect_err("nothing replicated");
    assert!(
        e.to_string()
            .contains("it has no snapshot replicated to the controllers"),
        "{e}"
    );

    // s1's replica is here; s2 was replicated by a controller that is gone (no holder).
    app.replicas()
        .receive(vm, &mut &replica_frames(vm, s1)[..])
        .await
        .expect("s1 received");
    for sid in [s1, s2] {
        app.store()
            .mark_snapshot_replicated(sid, 10)
            .await
            .expect("mark");
    }
    app.store()
        .add_replica_holder(s1, me)
        .await
        .expect("holder");
    let shown = |name: &'static str| {
        let caller = caller.clone();
        async move {
            app.show_snapshot(&caller, name)
                .await
                .expect("show")
                .replicas
        }
    };
    let one_of_one = ReplicaCopies {
        held: 1,
        controllers: 1,
    };
    assert_eq!(shown("s1").await, Some(one_of_one));
    assert_eq!(shown("s2").await.map(|r| r.held), Some(0));
    let chosen = restorable_replica(app, vm, "host1").await.expect("s1");
    assert_eq!((chosen.id, chosen.skipped.len()), (s1, 1));
    assert_eq!(chosen.skipped[0].why, NO_LIVE_HOLDER);
    let note = chosen.note("host1");
    assert!(
        note.starts_with("restarted from snapshot s1 taken at")
            && note.contains("; the newer snapshot s2 (taken at")
            && note.contains("was not used: no live controller holds its replica"),
        "{note}"
    );

    // A holder row without the files (this controller's, wrong): the copy is tried, finds no
    // other holder, and s2 is passed over with that reason; the wrong row is dropped.
    app.store().add_replica_holder(s2, me).await.expect("row");
    let chosen = restorable_replica(app, vm, "host1").await.expect("s1");
    assert_eq!(chosen.id, s1);
    assert!(
        chosen.skipped[0]
            .why
            .contains("could not be copied from a live controller"),
        "{:?}",
        chosen.skipped
    );
    assert_eq!(shown("s2").await.map(|r| r.held), Some(0), "row dropped");
}
