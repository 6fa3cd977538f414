use super::*;

use crate::test_support::pseudo_random;

#[test]
fn a_slightly_changed_image_shares_most_chunks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::new(tmp.path().join("chunks"));
    let first = pseudo_random(4 << 20, 1);
    let mut second = first.clone();
    // An insertion shifts every later offset; a few bytes change elsewhere.
    second.splice(1_000_000..1_000_000, [7u8; 100]);
    second[3_000_000] ^= 0xff;
    let (a_path, b_path) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::write(&a_path, &first).expect("write");
    std::fs::write(&b_path, &second).expect("write");
    let (a, stored_a) = store.put_file(&a_path).expect("put a");
    let (b, stored_b) = store.put_file(&b_path).expect("put b");
    // Random bytes are stored raw: the image plus a small header per chunk.
    let len = first.len() as u64;
    assert!(
        stored_a.new_bytes >= len && stored_a.new_bytes < len + len / 100,
        "{stored_a:?}"
    );
    assert!(
        stored_b.new_bytes < first.len() as u64 / 10,
        "second image added {} bytes",
        stored_b.new_bytes
    );
    // Both come back exactly.
    let out = tmp.path().join("out");
    store.assemble(&a, &out).expect("assemble a");
    assert_eq!(std::fs::read(&out).expect("read"), first);
    store.assemble(&b, &out).expect("assemble b");
    assert_eq!(std::fs::read(&out).expect("read"), second);
    // Dropping `a` frees what only it used; `b` stays whole.
    let keep: HashSet<String> = b.chunks.iter().map(|c| c.hash.clone()).collect();
    let freed = store.collect_garbage(&keep).expect("gc");
    assert!(
        freed > 0 && freed < first.len() as u64 / 10,
        "freed {freed}"
    );
    store.check(&b).expect("b intact");
    assert!(store.check(&a).is_err());
}

#[test]
fn damaged_packs_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::new(tmp.path().join("chunks"));
    let path = tmp.path().join("img");
    std::fs::write(&path, pseudo_random(200_000, 9)).expect("write");
    let (image, _) = store.put_file(&path).expect("put");
    let loc = store
        .packs
        .location(&digest_of(&image.chunks[1].hash).expect("digest"))
        .expect("index")
        .expect("in a pack");
    let pack = tmp.path().join("chunks/packs/00000001.pack");
    let mut bytes = std::fs::read(&pack).expect("read");
    bytes[(loc.offset + 41 + 10) as usize] ^= 1;
    std::fs::write(&pack, &bytes).expect("write");
    store
        .check(&image)
        .expect("same length passes the cheap check");
    let err = store
        .assemble(&image, &tmp.path().join("out"))
        .expect_err("damaged");
    assert!(
        err.to_string().contains("damaged") && err.to_string().contains("checksum"),
        "{err}"
    );
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&pack, &bytes).expect("write");
    assert!(store.check(&image).is_err());
}

/// Snapshots taken before packs (one file per chunk) are still read, checked and
/// collected; a chunk of that layout is not stored again in a pack.
#[test]
fn chunks_of_the_first_layout_keep_working() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("chunks");
    let store = ChunkStore::new(dir.clone());
    let data = pseudo_random(300_000, 5);
    let path = tmp.path().join("img");
    std::fs::write(&path, &data).expect("write");
    let (image, _) = store.put_file(&path).expect("put");
    // Move every chunk out of the packs into the first layout.
    let mut reader = store.packs.reader();
    for c in &image.chunks {
        let bytes = store.read_with(&mut reader, &c.hash).expect("read");
        let old = store.path(&c.hash);
        std::fs::create_dir_all(old.parent().expect("parent")).expect("mkdir");
        std::fs::write(&old, bytes).expect("write");
    }
    drop(reader);
    std::fs::remove_dir_all(dir.join(PACKS)).expect("no packs");
    let store = ChunkStore::new(dir.clone());
    store.check(&image).expect("present");
    let out = tmp.path().join("out");
    store.assemble(&image, &out).expect("assemble");
    assert_eq!(std::fs::read(&out).expect("read"), data);
    let (_, stored) = store.put_file(&path).expect("again");
    assert_eq!(stored.new_chunks, 0, "deduplicated against the old layout");
    let victim = store.path(&image.chunks[0].hash);
    let mut bytes = std::fs::read(&victim).expect("read");
    bytes[3] ^= 1;
    std::fs::write(&victim, &bytes).expect("damage");
    let err = store.assemble(&image, &out).expect_err("damaged");
    assert!(err.to_string().contains("damaged"), "{err}");
    assert!(store.collect_garbage(&HashSet::new()).expect("gc") > 0);
    assert!(!victim.exists());
}

/// Storers that cannot write (here: where the packs go is a file) fail the image: the
/// cutter is not left waiting for room in a queue nobody reads any more.
#[test]
fn an_image_whose_chunks_cannot_be_written_fails_instead_of_hanging() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("chunks");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(PACKS), b"not a directory").expect("block the packs");
    let store = ChunkStore::new(dir);
    // Far more chunks than the queue holds.
    let path = tmp.path().join("image");
    std::fs::write(&path, pseudo_random(16 << 20, 3)).expect("write");
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(store.put_file(&path).map(|_| ()));
    });
    // A bound on a hang, not a measure: the failure comes in milliseconds.
    let result = result
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("put_file returned");
    assert!(result.is_err(), "{result:?}");
}
