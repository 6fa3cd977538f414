//! The replica store against synthetic snapshot sets in the agents' frame format (the
//! agents' side of the stream is tested in `nimbus-agent`'s `snapshot::moving` tests).

use super::receive::Received;
use super::*;
use futures::StreamExt;
use nimbus_agent_api::snapshot_move::frame::{encode_header, read_data, read_header, Header};
use serde_json::json;

pub(super) fn chunk(content: &[u8]) -> String {
    blake3::hash(content).to_hex().to_string()
}

/// A set builder: frames appended in order.
#[derive(Default)]
pub(super) struct Set(Vec<u8>);

impl Set {
    pub(super) fn frame(mut self, h: Header, data: &[u8]) -> Self {
        self.0.extend(encode_header(&h, data.len() as u64));
        self.0.extend_from_slice(data);
        self
    }
    pub(super) fn layer(self, name: &str, backing: Option<&str>, data: &[u8]) -> Self {
        let h = Header::Layer {
            name: name.into(),
            backing: backing.map(str::to_string),
            digest: blake3::hash(data).to_hex().to_string(),
        };
        self.frame(h, data)
    }
    pub(super) fn chunk(self, content: &[u8], compress: bool) -> Self {
        let data = if compress {
            zstd::bulk::compress(content, 1).expect("compress")
        } else {
            content.to_vec()
        };
        let h = Header::Chunk {
            hash: chunk(content),
            zstd: compress,
        };
        self.frame(h, &data)
    }
    pub(super) fn manifest(self, vm: Uuid, sid: Uuid, layer: &str, chunks: &[&[u8]]) -> Self {
        let list: Vec<_> = chunks
            .iter()
            .map(|c| json!({"hash": chunk(c), "len": c.len()}))
            .collect();
        let m = json!({"format_version": 1, "snapshot_id": sid, "vm_id": vm,
            "disk": {"path": layer, "virtual_size": 1, "hash": "x"},
            "memory": {"len": 0, "hash": "x", "chunks": list}});
        self.frame(Header::Manifest, &serde_json::to_vec(&m).expect("json"))
    }
    pub(super) fn end(self) -> Vec<u8> {
        self.frame(Header::End, b"").0
    }
}

pub(super) const L1: &str = "0123456789abcdef0123456789abcdef.qcow2";
const L2: &str = "fedcba9876543210fedcba9876543210.qcow2";

pub(super) async fn receive(
    store: &ReplicaStore,
    vm: Uuid,
    bytes: &[u8],
) -> Result<Received, ReplicaError> {
    store.receive(vm, &mut &bytes[..]).await
}

pub(super) fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(|e| e.ok())
            .map(|e| {
                if e.path().is_dir() {
                    files_under(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[tokio::test]
async fn a_second_snapshot_sends_only_what_is_new_and_restores_with_its_chain() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = ReplicaStore::open(tmp.path()).expect("open");
    let vm = Uuid::new_v4();
    let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
    let first = Set::default()
        .layer(ROOT_LAYER, None, b"root layer")
        .manifest(vm, s1, ROOT_LAYER, &[b"page a", b"page b"])
        .chunk(b"page a", true)
        .chunk(b"page b", false)
        .end();
    let got = receive(&store, vm, &first).await.expect("first");
    assert_eq!(
        (got.snapshots.clone(), got.layers, got.chunks),
        (vec![s1], 1, 2)
    );

    // The second: what the store lacks only (as the replication asks the host).
    let lacking = store.missing_chunks(&[chunk(b"page a"), chunk(b"page c")]);
    assert_eq!(lacking, vec![chunk(b"page c")]);
    assert_eq!(store.layer_names(vm), vec![ROOT_LAYER.to_string()]);
    let second = Set::default()
        .layer(L1, Some(ROOT_LAYER), b"what the guest wrote")
        .manifest(vm, s1, ROOT_LAYER, &[b"page a", b"page b"])
        .manifest(vm, s2, L1, &[b"page a", b"page c"])
        .chunk(b"page c", true)
        .frame(
            Header::Top {
                name: L1.into(),
                fresh: true,
            },
            b"",
        )
        .end();
    let got = receive(&store, vm, &second).await.expect("second");
    assert_eq!((got.layers, got.chunks), (1, 1));
    assert!(got.snapshots.contains(&s2));
    assert_eq!(files_under(&store.root().join("incoming")), 0);

    // A restart from s2 sends both chains (first layer first) and s2's layer as the top.
    let set = store.restore_set(vm, s2).expect("set");
    assert_eq!(set.top, L1);
    assert_eq!(set.snapshots.len(), 2);
    assert_eq!(set.chunks.len(), 3);
    let rx = store.stream(set, vec![chunk(b"page c")]);
    let bytes: Vec<u8> = rx.map(|b| b.expect("piece").to_vec()).concat().await;
    let mut r = &bytes[..];
    let mut seen = Vec::new();
    loop {
        let (h, len) = read_header(&mut r).await.expect("header");
        let data = read_data(&mut r, len, 1 << 20).await.expect("data");
        if let Header::Chunk { hash, zstd } = &h {
            super::receive::check_chunk(hash, *zstd, &data).expect("chunk sent intact");
        }
        let end = h == Header::End;
        seen.push(h);
        if end {
            break;
        }
    }
    let kinds: Vec<String> = seen
        .iter()
        .map(|h| match h {
            Header::Layer { name, .. } => format!("layer {name}"),
            Header::Manifest => "manifest".into(),
            Header::Chunk { .. } => "chunk".into(),
            Header::Top { name, fresh } => format!("top {name} {fresh}"),
            Header::End => "end".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "layer disk.qcow2".to_string(),
            format!("layer {L1}"),
            "manifest".into(),
            "manifest".into(),
            "chunk".into(),
            format!("top {L1} true"),
            "end".into()
        ]
    );
}

#[tokio::test]
async fn a_damaged_cut_or_foreign_set_leaves_nothing_visible() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = ReplicaStore::open(tmp.path()).expect("open");
    let vm = Uuid::new_v4();
    let sid = Uuid::new_v4();
    let mut damaged = Set::default()
        .layer(ROOT_LAYER, None, b"root")
        .manifest(vm, sid, ROOT_LAYER, &[b"page"])
        .frame(
            Header::Chunk {
                hash: chunk(b"page"),
                zstd: false,
            },
            b"pagX",
        )
        .end();
    let err = receive(&store, vm, &damaged).await.expect_err("damaged");
    assert!(err.to_string().contains("damaged"), "{err}");
    // Cut short: no End.
    damaged.truncate(damaged.len() - 20);
    assert!(receive(&store, vm, &damaged).await.is_err());
    let foreign = Set::default()
        .manifest(Uuid::new_v4(), sid, ROOT_LAYER, &[])
        .end();
    assert!(receive(&store, vm, &foreign).await.is_err());
    let escaping = Set::default().layer("../../etc/x", None, b"x").end();
    assert!(receive(&store, vm, &escaping).await.is_err());
    assert_eq!(files_under(store.root()), 0, "nothing kept");
    assert!(store.restore_set(vm, sid).is_err());
    // A manifest whose layer never came is not kept either.
    let incomplete = Set::default().manifest(vm, sid, L2, &[]).end();
    let got = receive(&store, vm, &incomplete).await.expect("received");
    assert!(got.snapshots.is_empty());
    assert_eq!(files_under(store.root()), 0);
}

#[tokio::test]
async fn deleting_a_snapshot_frees_what_no_other_replica_uses() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = ReplicaStore::open(tmp.path()).expect("open");
    let vm = Uuid::new_v4();
    let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
    let set = Set::default()
        .layer(ROOT_LAYER, None, b"root")
        .layer(L1, Some(ROOT_LAYER), b"l1")
        .layer(L2, Some(L1), b"l2, not used by any snapshot")
        .manifest(vm, s1, ROOT_LAYER, &[b"shared", b"only s1"])
        .manifest(vm, s2, L1, &[b"shared"])
        .chunk(b"shared", false)
        .chunk(b"only s1", false)
        .end();
    receive(&store, vm, &set).await.expect("received");
    // s1 deleted: s2 still needs the first layer (its backing) and the shared chunk.
    let freed = store
        .sweep(async { Some([s2].into()) })
        .await
        .expect("sweep");
    assert!(freed > 0);
    assert!(!store.chunks().has(&chunk(b"only s1")));
    assert!(store.chunks().has(&chunk(b"shared")));
    let mut layers = store.layer_names(vm);
    layers.sort();
    assert_eq!(layers, vec![L1.to_string(), ROOT_LAYER.to_string()]);
    store.restore_set(vm, s2).expect("s2 still restorable");
    // Every snapshot gone: nothing left.
    store
        .sweep(async { Some(BTreeSet::new()) })
        .await
        .expect("sweep");
    assert_eq!(files_under(store.root()), 0);
}
