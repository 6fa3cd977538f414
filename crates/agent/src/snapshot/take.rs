//! Taking a snapshot: a new top layer prepared, the short pause (in the VM's actor), then,
//! while the guest runs on, the memory image cut into chunks and the manifest written.

use super::chunks::{ChunkedImage, Stored};
use super::manifest::{self, DiskLayer, Manifest, Pending, SnapshotFiles, FORMAT_VERSION};
use super::SnapshotStore;
use super::{failpoint, follow, layers, memory};
use crate::error::{Error, Result};
use crate::instance::{TakePlan, Taken, VmHandle};
use chrono::Utc;
use nimbus_agent_api::{SnapshotRequest, SnapshotResult};
use std::path::Path;
use std::time::Instant;

/// Takes snapshot `req.snapshot_id` of `vm`. Idempotent: a snapshot already taken answers
/// with its result. If it fails before the disk was switched nothing is left; after, the
/// half-made snapshot stays recorded (`pending.json`) for [`super::delete`] to undo.
pub async fn take(
    vm: &VmHandle,
    store: &SnapshotStore,
    qemu_version: &str,
    req: &SnapshotRequest,
) -> Result<SnapshotResult> {
    let files = SnapshotFiles::new(vm.dir(), req.snapshot_id);
    if let Some(done) = files.read()? {
        return Ok(done.result);
    }
    if files.read_pending()?.is_some() {
        return Err(Error::Conflict(format!(
            "an earlier attempt at snapshot {} did not complete; delete it, then take a new one",
            req.snapshot_id
        )));
    }
    let started = Instant::now();
    let dir = vm.dir();
    let frozen = dir.top_disk();
    // A disk frozen after QEMU's pause (see `memory::FreezeChoice`) that the guest wrote to
    // meanwhile is not taken: the snapshot is taken again, stopping first.
    let mut disk_after = true;
    // The pauses of an attempt undone count: the guest went through them.
    let (mut undone_pause_ms, mut attempts_undone) = (0.0, 0);
    let (new_top, stream, prepared, taken, chunking) = loop {
        let new_top = layers::new_layer_on(dir, &frozen).await?;
        files.write_pending(&Pending {
            layer: frozen.clone(),
        })?;
        // QEMU, as the VM's user, writes the memory image there.
        crate::confine::user::give_new_file(dir.dir(), files.dir())?;
        if let Err(e) = failpoint::check("take.after_new_layer") {
            abandon(vm, &files, &new_top, None).await;
            return Err(e);
        }
        let stream = req.memory.then(|| files.stream_file());
        let (chunking, release) = match stream.as_ref().map(|path| start_chunking(store, path)) {
            Some((chunking, release)) => (Some(chunking), Some(release)),
            None => (None, None),
        };
        let prepared = started.elapsed();
        let plan = TakePlan {
            new_top: new_top.clone(),
            stream: stream.clone(),
            disk_after,
            on_resume: release,
        };
        match (vm.take_snapshot(plan).await, chunking) {
            (Ok(Taken::Frozen { pause_ms }), Some((task, signal))) => {
                signal.complete();
                break (new_top, stream, prepared, pause_ms, Some(task));
            }
            (Ok(Taken::Frozen { pause_ms }), None) => {
                break (new_top, stream, prepared, pause_ms, None)
            }
            (Ok(Taken::Again { pause_ms }), chunking) => {
                abandon(vm, &files, &new_top, chunking).await;
                undone_pause_ms += pause_ms;
                attempts_undone += 1;
                disk_after = false;
            }
            (Err(e), chunking) => {
                abandon(vm, &files, &new_top, chunking).await;
                return Err(e);
            }
        }
    };
    let taken = taken + undone_pause_ms;
    let written = started.elapsed();
    // The frozen layer is hashed while the chunker finishes the image's tail.
    let layer_path = frozen.clone();
    let (chunked, hash) = tokio::join!(
        async {
            let Some(task) = chunking else {
                return Ok((None, Stored::default()));
            };
            let (image, stored) = task
                .await
                .map_err(|e| Error::Internal(format!("cutting the memory image failed: {e}")))??;
            if let Some(path) = stream.clone() {
                // Unlinking the image frees its page cache: 10-20 ms for an idle 512 MiB
                // guest's image, which nobody waits for. A crash before it leaves the file
                // in the snapshot's directory, which goes with the snapshot.
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove a memory image already stored");
                    }
                });
            }
            Ok::<_, Error>((Some(image), stored))
        },
        super::blocking(move || manifest::hash_file(&layer_path)),
    );
    let (memory, stored) = chunked?;
    let (hash, chunked) = (hash?, started.elapsed());
    failpoint::check("take.after_pause")?;
    let virtual_size = new_top.virtual_size;
    let disk_layer_bytes = layers::allocated_bytes(&frozen);
    let memory_bytes = memory.as_ref().map_or(0, |m| m.len);
    let result = SnapshotResult {
        snapshot_id: req.snapshot_id,
        memory: req.memory,
        vm_pause_ms: taken,
        total_ms: started.elapsed().as_millis() as u64,
        disk_layer_bytes,
        memory_bytes,
        memory_new_bytes: stored.new_bytes,
        stored_bytes: disk_layer_bytes + stored.new_bytes,
        attempts_undone,
    };
    failpoint::check("take.before_manifest")?;
    files.write(&Manifest {
        format_version: FORMAT_VERSION,
        snapshot_id: req.snapshot_id,
        vm_id: vm.id(),
        created_at: Utc::now(),
        qemu_version: qemu_version.to_string(),
        spec: vm.spec().clone(),
        disk: DiskLayer {
            path: frozen,
            virtual_size,
            hash,
        },
        memory,
        result: result.clone(),
    })?;
    let _ = std::fs::remove_file(files.pending_file());
    // The phases, from the request: what to look at when a snapshot is slow.
    tracing::info!(
        instance_id = %vm.id(),
        ?prepared,
        ?written,
        ?chunked,
        recorded = ?started.elapsed(),
        "snapshot phases"
    );
    tracing::info!(
        instance_id = %vm.id(),
        snapshot_id = %req.snapshot_id,
        pause_ms = result.vm_pause_ms,
        stored_bytes = result.stored_bytes,
        memory_bytes = result.memory_bytes,
        total_ms = result.total_ms,
        "snapshot stored"
    );
    Ok(result)
}

/// A memory image being cut as QEMU writes it, and the signal that ends the following.
type Chunking = (
    tokio::task::JoinHandle<Result<(ChunkedImage, Stored)>>,
    follow::FollowSignal,
);

/// Undoes an attempt that failed or is taken again: the chunker ends (what it stored is
/// garbage the next collection takes) and, unless the disk switched to `new_top`, nothing
/// of the attempt is left.
async fn abandon(
    vm: &VmHandle,
    files: &SnapshotFiles,
    new_top: &layers::NewTop,
    chunking: Option<Chunking>,
) {
    if let Some((task, signal)) = chunking {
        drop(signal);
        let _ = task.await;
    }
    if !layers::same_file(&vm.dir().top_disk(), &new_top.path) {
        let _ = std::fs::remove_file(&new_top.path);
        let _ = files.remove();
    }
}

/// Starts cutting the memory image QEMU is about to write to `path` into chunks, as it is
/// written (see [`follow`]); the signal tells the chunker when the image is whole.
/// Held until the VM resumes (see [`follow::follow_held`]).
fn start_chunking(store: &SnapshotStore, path: &Path) -> (Chunking, follow::Release) {
    // A file left by an earlier attempt must not be read as the start of this one.
    let _ = std::fs::remove_file(path);
    let (reader, signal, release) = follow::follow_held(path.to_path_buf(), memory::IMAGE_OFFSET);
    let (store, path) = (store.clone(), path.to_path_buf());
    let task = tokio::spawn(async move { store.put_following(reader, &path).await });
    ((task, signal), release)
}
