//! Replica chunks in packs: a damaged pack is refused (by the receiver of what it sends), an
//! index lost in a crash is rebuilt from its pack, and replicas of the first layout (one file
//! per chunk) are converted when the store opens, a damaged old chunk dropped.

use super::super::tests::{chunk, files_under, receive, Set, L1};
use super::super::{ReplicaStore, ROOT_LAYER};
use futures::StreamExt;
use uuid::Uuid;

const PAGES: [&[u8]; 3] = [b"page a", b"page b", b"page c"];

/// A store under `dir` holding one snapshot of `vm` whose memory is [`PAGES`].
async fn store_with_snapshot(dir: &std::path::Path, vm: Uuid, sid: Uuid) -> ReplicaStore {
    let store = ReplicaStore::open(dir).expect("open");
    let set = Set::default()
        .layer(ROOT_LAYER, None, b"root")
        .layer(L1, Some(ROOT_LAYER), b"l1")
        .manifest(vm, sid, L1, &PAGES)
        .chunk(PAGES[0], true)
        .chunk(PAGES[1], false)
        .chunk(PAGES[2], true)
        .end();
    receive(&store, vm, &set).await.expect("received");
    store
}

/// What `store` sends to restore `sid` (every chunk), as bytes.
async fn sent(store: &ReplicaStore, vm: Uuid, sid: Uuid) -> Vec<u8> {
    let set = store.restore_set(vm, sid).expect("restore set");
    let chunks = set.chunks.clone();
    let pieces: Vec<std::io::Result<bytes::Bytes>> = store.stream(set, chunks).collect().await;
    let mut out = Vec::new();
    for p in pieces {
        out.extend_from_slice(&p.expect("piece"));
    }
    out
}

#[tokio::test]
async fn a_damaged_pack_is_refused_by_the_receiver_of_what_it_sends() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (vm, sid) = (Uuid::new_v4(), Uuid::new_v4());
    let store = store_with_snapshot(&tmp.path().join("a"), vm, sid).await;
    let packs = store.chunks().packs();
    let digest = *blake3::hash(PAGES[1]).as_bytes();
    let loc = packs.location(&digest).expect("index").expect("stored");
    let path = packs.pack_path(loc.pack);
    let mut bytes = std::fs::read(&path).expect("pack");
    bytes[(loc.offset + nimbus_packs::record::RECORD_HEADER) as usize] ^= 0x01;
    std::fs::write(&path, bytes).expect("damage");
    // Read back on this store: refused.
    let err = packs.reader().read(&digest, "b").expect_err("damaged");
    assert!(err.to_string().contains("damaged"), "{err}");
    // Sent as stored: the receiver refuses it and keeps nothing.
    let other = ReplicaStore::open(&tmp.path().join("b")).expect("open");
    let err = receive(&other, vm, &sent(&store, vm, sid).await)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("damaged"), "{err}");
    assert!(other.restore_set(vm, sid).is_err());
}

#[tokio::test]
async fn an_index_lost_in_a_crash_is_rebuilt_from_its_pack() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (vm, sid) = (Uuid::new_v4(), Uuid::new_v4());
    let store = store_with_snapshot(tmp.path(), vm, sid).await;
    let before = sent(&store, vm, sid).await;
    drop(store);
    let idx = tmp.path().join("replicas/packs/00000001.idx");
    std::fs::remove_file(&idx).expect("index lost");
    let store = ReplicaStore::open(tmp.path()).expect("reopen");
    assert_eq!(sent(&store, vm, sid).await, before, "same replica");
    assert!(idx.is_file(), "index rebuilt");
}

#[tokio::test]
async fn replicas_of_the_first_layout_are_converted_when_the_store_opens() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (vm, sid) = (Uuid::new_v4(), Uuid::new_v4());
    let store = store_with_snapshot(tmp.path(), vm, sid).await;
    let before = sent(&store, vm, sid).await;
    // Rewrite the chunks as the first layout stored them: <aa>/<hash>, flags byte | data.
    let old = tmp.path().join("replicas/chunks");
    {
        let mut reader = store.chunks().packs().reader();
        for page in PAGES {
            let name = chunk(page);
            let (flags, data) = reader
                .read_stored(blake3::hash(page).as_bytes(), &name)
                .expect("read")
                .expect("stored");
            let path = old.join(&name[..2]).join(&name);
            std::fs::create_dir_all(path.parent().expect("fan")).expect("mkdir");
            std::fs::write(&path, [&[flags][..], &data].concat()).expect("write");
        }
    }
    // And a damaged one.
    let bad = chunk(b"page d");
    std::fs::create_dir_all(old.join(&bad[..2])).expect("mkdir");
    std::fs::write(old.join(&bad[..2]).join(&bad), b"\0page X").expect("write");
    drop(store);
    std::fs::remove_dir_all(tmp.path().join("replicas/packs")).expect("no packs");

    let store = ReplicaStore::open(tmp.path()).expect("reopen converts");
    assert!(!old.exists(), "the first layout is gone");
    assert!(!store.chunks().has(&bad), "a damaged old chunk is dropped");
    assert_eq!(
        sent(&store, vm, sid).await,
        before,
        "same replica, from packs"
    );
    assert_eq!(
        files_under(&tmp.path().join("replicas/packs")),
        2,
        "one pack and its index"
    );
}
