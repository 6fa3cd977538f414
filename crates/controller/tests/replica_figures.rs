//! Figures of the replica store (run by bench/replicas.py, ignored otherwise): receiving the
//! first replica of a 512 MiB guest's memory (65,536 chunks of 8 KiB, in the frames a host's
//! export sends): wall time and the files the store holds afterwards. Not a test of
//! behaviour (crates/controller/src/app/replicas/ has those); never gated on time.

use nimbus_agent_api::snapshot_move::frame::{encode_header, Header, ROOT_LAYER};
use nimbus_controller::app::replicas::ReplicaStore;
use std::time::Instant;
use uuid::Uuid;

/// Chunks of a 512 MiB guest at 8 KiB each.
const CHUNKS: u32 = 65_536;

/// Memory-like content: a varying page per chunk (every chunk distinct).
fn page(i: u32) -> Vec<u8> {
    let mut data = vec![0u8; 8192];
    blake3::Hasher::new()
        .update(&i.to_le_bytes())
        .finalize_xof()
        .fill(&mut data[..4096]);
    data
}

/// The set of one snapshot of `vm` whose memory is [`CHUNKS`] chunks.
fn first_set(vm: Uuid, sid: Uuid) -> Vec<u8> {
    let mut out = Vec::with_capacity(600 << 20);
    let layer = b"the snapshot's disk layer";
    out.extend(encode_header(
        &Header::Layer {
            name: ROOT_LAYER.into(),
            backing: None,
            digest: blake3::hash(layer).to_hex().to_string(),
        },
        layer.len() as u64,
    ));
    out.extend_from_slice(layer);
    let pages: Vec<Vec<u8>> = (0..CHUNKS).map(page).collect();
    let chunks: Vec<_> = pages
        .iter()
        .map(|p| serde_json::json!({"hash": blake3::hash(p).to_hex().to_string(), "len": p.len()}))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({"format_version": 1,
        "snapshot_id": sid, "vm_id": vm,
        "disk": {"path": ROOT_LAYER, "virtual_size": 1, "hash": "x"},
        "memory": {"len": u64::from(CHUNKS) * 8192, "hash": "x", "chunks": chunks}}))
    .expect("json");
    out.extend(encode_header(&Header::Manifest, manifest.len() as u64));
    out.extend_from_slice(&manifest);
    for p in &pages {
        let (zstd, data) = match zstd::bulk::compress(p, 1) {
            Ok(z) if z.len() < p.len() => (true, z),
            _ => (false, p.clone()),
        };
        let hash = blake3::hash(p).to_hex().to_string();
        out.extend(encode_header(
            &Header::Chunk { hash, zstd },
            data.len() as u64,
        ));
        out.extend_from_slice(&data);
    }
    out.extend(encode_header(&Header::End, 0));
    out
}

fn files_under(dir: &std::path::Path) -> usize {
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

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a figure for bench/replicas.py"]
async fn bench_receive_a_first_replica() {
    let runs: usize = std::env::var("NIMBUS_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut figures = Vec::new();
    for _ in 0..runs {
        let tmp = tempfile::Builder::new()
            .prefix("nimbus-bench-replica-")
            .tempdir_in(std::env::var("NIMBUS_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .expect("tmp");
        let store = ReplicaStore::open(tmp.path()).expect("open");
        let (vm, sid) = (Uuid::new_v4(), Uuid::new_v4());
        let set = first_set(vm, sid);
        let started = Instant::now();
        let got = store.receive(vm, &mut &set[..]).await.expect("received");
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(got.snapshots, [sid]);
        figures.push(
            serde_json::json!({"ms": ms, "files": files_under(store.root()),
            "bytes": got.bytes(), "chunks": got.chunks}),
        );
    }
    println!(
        "BENCH-OUTPUT{}BENCH-OUTPUT",
        serde_json::Value::from(figures)
    );
}
