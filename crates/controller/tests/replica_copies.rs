//! Snapshot replicas on every controller (issue 12): three real controllers (`App`s) over one
//! PostgreSQL database, each with its own replica store (its own blob dir), the first two
//! serving their API over TLS on loopback as `nimbus controller` does. Controller A receives
//! a replica (a synthetic snapshot set in the agents' frame format, as a host's export sends
//! it: the host is not the subject here); B copies it from A over the controllers' mutual
//! TLS; A dies; C copies it from B; B and C can then send what an HA restart sends a host.
//!
//! Needs `NIMBUS_TEST_POSTGRES_URL` (`bash scripts/ci-postgres.sh` prints one): without it
//! this test fails, it does not pass silently.

use nimbus_agent_api::snapshot_move::frame::{encode_header, Header, ROOT_LAYER};
use nimbus_controller::background::leases;
use nimbus_controller::http::peer::ClientCert;
use nimbus_controller::{App, ControllerConfig};
use nimbus_test_utils::controllers::TestDatabase;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tower::ServiceExt;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(60);

/// Controller `i` over `db`, sharing `data` (CA, tokens), its replicas under its own blob dir.
async fn open_controller(db: &TestDatabase, data: &Path, i: u16) -> App {
    let mut config = ControllerConfig::new(data.to_path_buf());
    config.database_url = db.url.clone();
    let port = 18700 + (std::process::id() % 500) as u16 * 4 + i;
    config.listen = vec![SocketAddr::from(([127, 0, 0, 1], port))];
    config.lease_ttl = TTL;
    config.blob_dir = Some(data.join(format!("ctl{i}")));
    let app = App::open(config).await.expect("open");
    app.bootstrap().await.expect("bootstrap");
    leases::register(&app).await.expect("register");
    app
}

/// Serves `app`'s API over TLS on its listen address, as `nimbus controller` does.
async fn serve(app: &App) -> tokio::task::JoinHandle<()> {
    let addr = app.config().listen[0];
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let listener = nimbus_pki::TlsListener::new(listener, app.tls().server.clone(), None)
        .expect("tls listener");
    let router = nimbus_controller::http::router(app.clone()).layer(axum::middleware::from_fn(
        nimbus_controller::http::peer::expose,
    ));
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<nimbus_pki::PeerInfo>(),
        )
        .await;
    })
}

/// A snapshot set of one snapshot (a root layer, a manifest, two memory chunks), in the
/// frames a host's export sends.
fn snapshot_set(vm: Uuid, sid: Uuid) -> Vec<u8> {
    let mut out = Vec::new();
    let mut frame = |h: Header, data: &[u8]| {
        out.extend(encode_header(&h, data.len() as u64));
        out.extend_from_slice(data);
    };
    let layer = b"the snapshot's disk layer";
    frame(
        Header::Layer {
            name: ROOT_LAYER.into(),
            backing: None,
            digest: blake3::hash(layer).to_hex().to_string(),
        },
        layer,
    );
    let pages: [&[u8]; 2] = [b"page a", b"page b"];
    let chunks: Vec<_> = pages
        .iter()
        .map(|p| serde_json::json!({"hash": blake3::hash(p).to_hex().to_string(), "len": p.len()}))
        .collect();
    let manifest = serde_json::json!({"format_version": 1, "snapshot_id": sid, "vm_id": vm,
        "disk": {"path": ROOT_LAYER, "virtual_size": 1, "hash": "x"},
        "memory": {"len": 12, "hash": "x", "chunks": chunks}});
    frame(
        Header::Manifest,
        &serde_json::to_vec(&manifest).expect("json"),
    );
    for p in pages {
        let hash = blake3::hash(p).to_hex().to_string();
        frame(Header::Chunk { hash, zstd: false }, p);
    }
    frame(Header::End, b"");
    out
}

/// GET `uri` on `app`'s router with the verified client certificate `cert`.
async fn status_as(app: &App, uri: &str, cert: ClientCert) -> axum::http::StatusCode {
    let mut req = axum::http::Request::builder()
        .uri(uri)
        .body(axum::body::Body::empty())
        .expect("request");
    req.extensions_mut().insert(cert);
    let router = nimbus_controller::http::router(app.clone());
    router.oneshot(req).await.expect("response").status()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_outlives_the_controller_that_received_it() {
    let db = TestDatabase::create().expect("PostgreSQL for the replica copies test");
    let data = tempfile::tempdir().expect("tempdir");
    let a = open_controller(&db, data.path(), 0).await;
    let b = open_controller(&db, data.path(), 1).await;
    let c = open_controller(&db, data.path(), 2).await;
    let server_a = serve(&a).await;
    let server_b = serve(&b).await;

    // A receives a replica from "the host" and records itself as its holder.
    let (vm, sid) = (Uuid::new_v4(), Uuid::new_v4());
    let got = a
        .replicas()
        .receive(vm, &mut &snapshot_set(vm, sid)[..])
        .await
        .expect("received");
    assert_eq!(got.snapshots, [sid]);
    a.store()
        .add_replica_holder(sid, a.controller_id())
        .await
        .expect("holder");
    assert!(a.holds_replica(vm, sid) && !b.holds_replica(vm, sid));

    // The peer route serves a controller's certificate only.
    let uri = format!("/v1/internal/peers/replicas/{vm}/{sid}");
    let host = ClientCert::host("host1", &["127.0.0.1"]);
    assert_eq!(
        status_as(&a, &uri, host).await,
        axum::http::StatusCode::UNAUTHORIZED,
        "a host is not a controller"
    );
    let other = format!("/v1/internal/peers/replicas/{vm}/{}", Uuid::new_v4());
    assert_eq!(
        status_as(&a, &other, ClientCert::controller()).await,
        axum::http::StatusCode::NOT_FOUND
    );

    // B copies it from A over mutual TLS, checked frame by frame, and holds it.
    b.ensure_replica(vm, sid).await.expect("B copies from A");
    assert!(b.holds_replica(vm, sid));
    let holders = |app: &App| {
        let app = app.clone();
        async move {
            let mut h: Vec<Uuid> = app
                .store()
                .live_replica_holders(sid, TTL)
                .await
                .expect("holders")
                .into_iter()
                .map(|h| h.controller)
                .collect();
            h.sort();
            h
        }
    };
    let mut ab = vec![a.controller_id(), b.controller_id()];
    ab.sort();
    assert_eq!(holders(&b).await, ab);

    // A dies (its server and its row gone): C copies from B, and B and C can each send
    // what a restart sends a host.
    server_a.abort();
    a.store()
        .unregister_controller(a.controller_id())
        .await
        .expect("A gone");
    c.ensure_replica(vm, sid).await.expect("C copies from B");
    for app in [&b, &c] {
        let set = app.replicas().restore_set(vm, sid).expect("restore set");
        assert_eq!((set.snapshot, set.chunks.len()), (sid, 2));
    }

    // A replica no live controller holds is refused with what happened.
    let lost = Uuid::new_v4();
    let e = c.ensure_replica(vm, lost).await.expect_err("no holder");
    assert!(
        e.message.contains("no live controller holds one"),
        "{}",
        e.message
    );
    server_b.abort();
}
