//! A snapshot set goes from one host's directories to another's through the stream, with
//! real qcow2 layers: every snapshot is restorable there (disk checksum, memory assembled
//! exactly), the chain stands on the target's paths, only missing chunks travel, and a
//! stream damaged in transit is refused with nothing staged.

use super::{export, import, install};
use crate::instance::files::VmDir;
use crate::snapshot::manifest::{hash_file, DiskLayer, Manifest, SnapshotFiles, FORMAT_VERSION};
use crate::snapshot::{layers, manifest, restore, SnapshotStore};
use nimbus_agent_api::{ExportSnapshotSet, SnapshotResult, SnapshotSetPart};
use nimbus_qemu::img;
use std::path::{Path, PathBuf};
use uuid::Uuid;

use crate::test_support::pseudo_random;

/// A host's directories: its snapshot store and the VM's directory under `vms/`.
fn host(root: &Path, id: Uuid) -> (SnapshotStore, VmDir) {
    let dir = VmDir::new(root.join("vms").join(id.to_string()));
    std::fs::create_dir_all(dir.dir()).expect("mkdir");
    (SnapshotStore::new(root), dir)
}

async fn snapshot_on(store: &SnapshotStore, dir: &VmDir, layer: &Path, memory: &[u8]) -> Manifest {
    let id = Uuid::new_v4();
    let stream = dir.dir().join("mem");
    std::fs::write(&stream, memory).expect("write");
    let (image, _) = store.put_image(&stream).await.expect("chunks");
    let vm_id: Uuid = dir
        .dir()
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .expect("vm id");
    let m = Manifest {
        format_version: FORMAT_VERSION,
        snapshot_id: id,
        vm_id,
        created_at: chrono::Utc::now(),
        qemu_version: "10.0".into(),
        spec: crate::test_support::blank_spec(vm_id, Vec::new()),
        disk: DiskLayer {
            path: layer.to_path_buf(),
            virtual_size: 64 << 20,
            hash: hash_file(layer).expect("hash"),
        },
        memory: Some(image),
        result: SnapshotResult {
            snapshot_id: id,
            memory: true,
            vm_pause_ms: 1.0,
            total_ms: 1,
            disk_layer_bytes: 0,
            memory_bytes: memory.len() as u64,
            memory_new_bytes: 0,
            stored_bytes: 0,
            attempts_undone: 0,
        },
    };
    SnapshotFiles::new(dir, id).write(&m).expect("manifest");
    m
}

/// disk.qcow2 (snapshot a) <- l1 (snapshot b) <- l2 (top), on a base image.
async fn source_vm(root: &Path, base: &Path, id: Uuid) -> (SnapshotStore, VmDir, Vec<Vec<u8>>) {
    let (store, dir) = host(root, id);
    img::create_overlay(&dir.disk(), base, "qcow2", None)
        .await
        .expect("disk");
    let l1 = layers::new_layer_on(&dir, &dir.disk()).await.expect("l1");
    let l2 = layers::new_layer_on(&dir, &l1.path).await.expect("l2");
    dir.set_top_disk(&l2.path).expect("top");
    let a = pseudo_random(300_000, 1);
    let mut b = a.clone();
    b[100_000..110_000].copy_from_slice(&pseudo_random(10_000, 2));
    snapshot_on(&store, &dir, &dir.disk(), &a).await;
    snapshot_on(&store, &dir, &l1.path, &b).await;
    (store, dir, vec![a, b])
}

async fn collect(
    mut rx: futures::channel::mpsc::Receiver<std::io::Result<axum::body::Bytes>>,
) -> Vec<u8> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(piece) = rx.next().await {
        out.extend_from_slice(&piece.expect("stream"));
    }
    out
}

/// The target side of a move: a fresh disk on the base, as `prepare_disk` makes it.
async fn arrive(
    root: &Path,
    base: &Path,
    id: Uuid,
    part: SnapshotSetPart,
    bytes: &[u8],
) -> (SnapshotStore, VmDir) {
    let (store, dir) = host(root, id);
    import::receive(&store, id, part, &mut &bytes[..])
        .await
        .expect("import");
    img::create_overlay(&dir.disk(), base, "qcow2", None)
        .await
        .expect("fresh disk");
    assert!(install::install(&dir, &store.arriving(id))
        .await
        .expect("install"));
    assert!(!store.arriving(id).dir().exists(), "nothing left staged");
    (store, dir)
}

async fn all_restorable(store: &SnapshotStore, dir: &VmDir, memories: &[Vec<u8>]) {
    let ms = crate::snapshot::manifest::all(dir).expect("manifests");
    assert_eq!(ms.len(), 2);
    for m in ms {
        assert!(
            m.disk.path.starts_with(dir.dir()),
            "{}",
            m.disk.path.display()
        );
        let out = dir.dir().join("out");
        restore::prepare(store, &m, &out).await.expect("restorable");
        let got = std::fs::read(&out).expect("read");
        assert!(memories.contains(&got), "memory exact");
    }
}

fn chain_names(chain: &[PathBuf]) -> Vec<String> {
    chain
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn a_snapshot_set_moves_cold_and_live() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("base.qcow2");
    img::create_blank(&base, 64 << 20).await.expect("base");
    let id = Uuid::new_v4();
    let (src_store, src, memories) = source_vm(&tmp.path().join("src"), &base, id).await;
    let inventory = export::inventory(&src).expect("inventory");
    assert!(inventory.layered && inventory.snapshots == 2);

    // Cold: every layer goes, the top too; the target already holds the first image.
    let dst_root = tmp.path().join("dst");
    let (dst_store, _) = host(&dst_root, Uuid::new_v4());
    let pre = dst_root.join("pre");
    std::fs::write(&pre, &memories[0]).expect("write");
    dst_store.put_image(&pre).await.expect("pre");
    let missing: Vec<String> = inventory
        .chunks
        .iter()
        .filter(|c| !dst_store.chunks().has(c))
        .cloned()
        .collect();
    assert!(!missing.is_empty() && missing.len() < inventory.chunks.len() / 4);
    let req = ExportSnapshotSet {
        part: SnapshotSetPart::All,
        chunks: missing.clone(),
        layers: true,
        live: false,
        skip_layers: Vec::new(),
    };
    let bytes = collect(
        export::stream(&src, &src_store, &req)
            .await
            .expect("export"),
    )
    .await;
    let (dst_store, dst) = arrive(&dst_root, &base, id, SnapshotSetPart::All, &bytes).await;
    all_restorable(&dst_store, &dst, &memories).await;
    let chain = layers::chain_of(&dst.top_disk()).await.expect("chain");
    assert_eq!(chain.len(), 4, "top, l1, disk, base: {chain:?}");
    assert!(
        chain.iter().all(|p| p.starts_with(&dst_root) || p == &base),
        "{chain:?}"
    );
    assert_eq!(
        chain_names(&chain)[..3],
        chain_names(&layers::chain_of(&src.top_disk()).await.expect("chain"))[..3]
    );

    // Live: the top stays (the mirror fills a fresh one on the same layer). The disk part
    // comes before the VM is defined, the memory part into the VM defined meanwhile.
    let live_root = tmp.path().join("live");
    let export_part = |part| {
        let req = ExportSnapshotSet {
            part,
            chunks: inventory.chunks.clone(),
            layers: true,
            live: true,
            skip_layers: Vec::new(),
        };
        let (src, src_store) = (&src, &src_store);
        async move { collect(export::stream(src, src_store, &req).await.expect("export")).await }
    };
    let disk_bytes = export_part(SnapshotSetPart::Disk).await;
    let (live_store, live) =
        arrive(&live_root, &base, id, SnapshotSetPart::Disk, &disk_bytes).await;
    assert!(
        manifest::all(&live).expect("manifests").is_empty(),
        "no memory yet"
    );
    let bytes = export_part(SnapshotSetPart::Memory).await;
    let err = import::receive(
        &live_store,
        id,
        SnapshotSetPart::Memory,
        &mut &disk_bytes[..],
    )
    .await
    .expect_err("a disk frame in a memory part");
    assert_eq!(err.code(), "bad_request", "{err}");
    import::receive(&live_store, id, SnapshotSetPart::Memory, &mut &bytes[..])
        .await
        .expect("memory part");
    assert!(install::install(&live, &live_store.arriving_memory(id))
        .await
        .expect("install"));
    all_restorable(&live_store, &live, &memories).await;
    let chain = layers::chain_of(&live.top_disk()).await.expect("chain");
    let src_chain = layers::chain_of(&src.top_disk()).await.expect("chain");
    assert_eq!(chain.len(), 4);
    assert_ne!(
        chain_names(&chain)[0],
        chain_names(&src_chain)[0],
        "a fresh top"
    );
    assert_eq!(chain_names(&chain)[1..3], chain_names(&src_chain)[1..3]);

    // The memory part may also come first (it starts with the disk part): staged apart, it
    // survives the disk part's arrival, and the define takes both.
    let early_root = tmp.path().join("early");
    let (early_store, _) = host(&early_root, Uuid::new_v4());
    import::receive(&early_store, id, SnapshotSetPart::Memory, &mut &bytes[..])
        .await
        .expect("memory part first");
    let (early_store, early) =
        arrive(&early_root, &base, id, SnapshotSetPart::Disk, &disk_bytes).await;
    assert!(
        manifest::all(&early).expect("manifests").is_empty(),
        "the disk part alone"
    );
    assert!(install::install(&early, &early_store.arriving_memory(id))
        .await
        .expect("install"));
    assert!(!early_store.arriving_memory(id).dir().exists());
    all_restorable(&early_store, &early, &memories).await;

    // A byte damaged anywhere in transit: refused, nothing staged, no stray chunk kept.
    let fresh_root = tmp.path().join("damaged");
    let (fresh_store, _) = host(&fresh_root, Uuid::new_v4());
    for at in [bytes.len() / 5, bytes.len() - 40] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        let err = import::receive(&fresh_store, id, SnapshotSetPart::All, &mut &bad[..])
            .await
            .expect_err("damaged stream");
        assert_eq!(err.code(), "bad_request", "{err}");
        assert!(fresh_store.arriving(id).read_set().expect("read").is_none());
        assert!(
            inventory
                .chunks
                .iter()
                .all(|c| !fresh_store.chunks().has(c)),
            "chunks collected"
        );
    }

    // A chunk damaged on the source's disk goes as stored (the source does not check what
    // the receiver checks anyway) and is refused by the receiver all the same.
    let victim = &inventory.chunks[inventory.chunks.len() / 2];
    let (pack, span) = src_store
        .chunks()
        .stored_span(victim)
        .expect("index")
        .expect("in a pack");
    let mut packed = std::fs::read(&pack).expect("read");
    packed[span.start as usize + 7] ^= 0x40;
    std::fs::write(&pack, &packed).expect("damage");
    let bytes = export_part(SnapshotSetPart::Memory).await;
    let err = import::receive(&fresh_store, id, SnapshotSetPart::Memory, &mut &bytes[..])
        .await
        .expect_err("damaged on the source");
    assert!(
        err.to_string().contains(victim) && err.to_string().contains("source host"),
        "{err}"
    );
    assert!(inventory
        .chunks
        .iter()
        .all(|c| !fresh_store.chunks().has(c)));
}

/// A received layer with an external data file would open a file the sender names: refused.
#[test]
fn a_layer_with_an_external_data_file_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layer = tmp.path().join("x.qcow2");
    let data = tmp.path().join("elsewhere.raw");
    let ok = std::process::Command::new("qemu-img")
        .arg("create")
        .arg("-q")
        .args(["-f", "qcow2", "-o"])
        .arg(format!("data_file={}", data.display()))
        .arg(&layer)
        .arg("1M")
        .status()
        .expect("qemu-img");
    assert!(ok.success());
    let err = import::check_qcow2_header(&layer, "x.qcow2").expect_err("refused");
    assert!(err.to_string().contains("external data file"), "{err}");
    let plain = tmp.path().join("plain.qcow2");
    std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&plain)
        .arg("1M")
        .status()
        .expect("qemu-img");
    import::check_qcow2_header(&plain, "plain.qcow2").expect("a plain qcow2");
    std::fs::write(
        &plain,
        b"not an image at all, but long enough to have a header....................",
    )
    .expect("write");
    assert!(import::check_qcow2_header(&plain, "plain.qcow2").is_err());
}
