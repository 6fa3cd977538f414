//! Packs: what goes in comes out exactly (compressed or not), an index lost or behind its
//! pack is rebuilt (a record cut short by a crash is cut off), collection keeps the live
//! chunks readable and frees the rest, and damage to a pack is refused.

use super::*;

fn chunk(seed: u8, compressible: bool) -> (Vec<u8>, [u8; 32]) {
    let data: Vec<u8> = if compressible {
        (0..8192u32).map(|i| (i / 64) as u8 ^ seed).collect()
    } else {
        {
            // Incompressible: BLAKE3's output stream.
            let mut data = vec![0u8; 8192];
            blake3::Hasher::new()
                .update(&[seed])
                .finalize_xof()
                .fill(&mut data);
            data
        }
    };
    let hash = *blake3::hash(&data).as_bytes();
    (data, hash)
}

fn read(store: &PackStore, hash: &[u8; 32]) -> Result<Option<Vec<u8>>> {
    store.reader().read(hash, "test")
}

#[test]
fn chunks_round_trip_survive_reload_and_collection() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = PackStore::new(tmp.path().join("packs"));
    let chunks: Vec<_> = (0..20u8).map(|i| chunk(i, i % 2 == 0)).collect();
    for (data, hash) in &chunks {
        assert!(store.append(hash, data).expect("append").is_some());
        assert!(
            store.append(hash, data).expect("again").is_none(),
            "deduplicated"
        );
    }
    store.sync().expect("sync");
    let loc = store.location(&chunks[0].1).expect("loc").expect("some");
    assert_eq!(loc.flags, record::ZSTD, "compressible data is compressed");
    assert!(loc.stored_len < 2000, "{loc:?}");
    let loc = store.location(&chunks[1].1).expect("loc").expect("some");
    assert_eq!(loc.flags, 0, "random data is stored raw");

    // A new store (an agent restart) reads the same from the index files.
    let store = PackStore::new(tmp.path().join("packs"));
    for (data, hash) in &chunks {
        assert_eq!(read(&store, hash).expect("read").as_ref(), Some(data));
    }
    // Collection: keep the first half.
    let keep: HashSet<String> = chunks[..10].iter().map(|(_, h)| hex::encode(h)).collect();
    let freed = store.collect_garbage(&keep).expect("gc");
    assert!(freed > 5 * 8192, "freed {freed}");
    for (i, (data, hash)) in chunks.iter().enumerate() {
        let got = read(&store, hash).expect("read");
        assert_eq!(got.as_ref(), (i < 10).then_some(data), "chunk {i}");
    }
    let store = PackStore::new(tmp.path().join("packs"));
    assert_eq!(
        read(&store, &chunks[3].1).expect("read").as_ref(),
        Some(&chunks[3].0)
    );
    // Nothing kept: the pack goes.
    store.collect_garbage(&HashSet::new()).expect("gc all");
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("packs"))
        .expect("dir")
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A chunk's content and hash.
type Chunk = (Vec<u8>, [u8; 32]);

/// A store in `dir` with a raw chunk and a compressed one, synced.
fn two_chunks(dir: &Path) -> (PackStore, Chunk, Chunk) {
    let store = PackStore::new(dir.to_path_buf());
    let (a, ha) = chunk(1, false);
    let (b, hb) = chunk(2, true);
    store.append(&ha, &a).expect("a");
    store.append(&hb, &b).expect("b");
    store.sync().expect("sync");
    (store, (a, ha), (b, hb))
}

#[test]
fn an_index_behind_its_pack_is_rebuilt_and_a_cut_record_dropped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("packs");
    let (store, (a, ha), (b, hb)) = two_chunks(&dir);
    drop(store);
    // The index lost its last entry, and a third record was cut short by a crash.
    let idx = dir.join("00000001.idx");
    let bytes = std::fs::read(&idx).expect("idx");
    std::fs::write(&idx, &bytes[..bytes.len() - record::ENTRY]).expect("write");
    let pack = dir.join("00000001.pack");
    let whole = std::fs::metadata(&pack).expect("stat").len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&pack)
        .expect("open");
    f.write_all(&record::record_header(&[7; 32], 0, 8192, 8192))
        .expect("cut");
    f.write_all(&[1, 2, 3]).expect("cut");
    drop(f);
    let store = PackStore::new(dir.clone());
    assert_eq!(read(&store, &ha).expect("a"), Some(a));
    assert_eq!(read(&store, &hb).expect("b"), Some(b));
    assert_eq!(
        std::fs::metadata(&pack).expect("stat").len(),
        whole,
        "cut record dropped"
    );
    assert!(!store.contains(&[7; 32]).expect("contains"));
}

#[test]
fn a_damaged_pack_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("packs");
    let (store, (_, ha), (b, hb)) = two_chunks(&dir);
    let pack = dir.join("00000001.pack");
    let mut bytes = std::fs::read(&pack).expect("read");
    for hash in [ha, hb] {
        let loc = store.location(&hash).expect("loc").expect("some");
        let at = (loc.offset + record::RECORD_HEADER + 100) as usize;
        bytes[at] ^= 0x10;
    }
    std::fs::write(&pack, &bytes).expect("write");
    for hash in [ha, hb] {
        let err = read(&store, &hash).expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(matches!(err, PackError::Damaged(_)), "{err:?}");
    }
    // Cut short: the cheap check sees it.
    std::fs::write(&pack, &bytes[..bytes.len() - 10]).expect("write");
    let loc = store.location(&hb).expect("loc").expect("some");
    let err = store
        .check(&loc, "b", b.len() as u32, &mut HashMap::new())
        .expect_err("short");
    assert!(err.to_string().contains("shorter"), "{err}");
}
