//! Restoring a VM to a snapshot: everything is checked before the VM is touched (manifest,
//! disk layer checksum, every memory chunk while the image is assembled); then the VM's
//! QEMU is replaced by one resumed from the snapshot on a new top layer, and the guest is
//! brought back to the present (clock stepped, randomness reseeded).

use super::manifest::{self, Manifest, SnapshotFiles};
use super::SnapshotStore;
use super::{failpoint, layers};
use crate::error::{Error, Result};
use crate::instance::{RestorePlan, VmHandle};
use nimbus_agent_api::{ExecRequest, RestoreRequest, RestoreResult};
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a restored guest may take to show its heartbeat.
const HEARTBEAT_WAIT: Duration = Duration::from_secs(15);

/// Loads and checks the manifest of snapshot `sid` of the VM in `vm`.
pub fn load_manifest(vm: &crate::instance::files::VmDir, sid: Uuid) -> Result<Manifest> {
    SnapshotFiles::new(vm, sid).read()?.ok_or_else(|| {
        Error::BadRequest(format!(
            "snapshot {sid} does not exist on this host (or was never completed)"
        ))
    })
}

/// Checks the manifest's disk layer and assembles (verifying) its memory image into `out`.
pub async fn prepare(store: &SnapshotStore, m: &Manifest, out: &Path) -> Result<()> {
    let m2 = m.clone();
    super::blocking(move || m2.check_disk()).await?;
    if let Some(image) = &m.memory {
        store.check_image(image)?;
        if let Err(e) = store.assemble(image, out).await {
            let _ = std::fs::remove_file(out);
            return Err(e);
        }
    }
    Ok(())
}

/// Restores `vm` to snapshot `sid`.
pub async fn restore(
    vm: &VmHandle,
    store: &SnapshotStore,
    sid: Uuid,
    req: &RestoreRequest,
) -> Result<RestoreResult> {
    let started = Instant::now();
    let dir = vm.dir();
    let m = load_manifest(dir, sid)?;
    if m.vm_id != vm.id() {
        return Err(Error::BadRequest(format!(
            "snapshot {sid} belongs to VM {}, not {}",
            m.vm_id,
            vm.id()
        )));
    }
    let files = SnapshotFiles::new(dir, sid);
    let stream = files.restore_stream_file();
    prepare(store, &m, &stream).await?;
    let new_top = match failpoint::check("restore.after_assemble") {
        Ok(()) => layers::new_layer_on(dir, &m.disk.path).await,
        Err(e) => Err(e),
    };
    let new_top = match new_top {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&stream);
            return Err(e);
        }
    };
    let old_top = dir.top_disk();
    let plan = RestorePlan {
        top: new_top.path.clone(),
        stream: m.memory.as_ref().map(|_| stream.clone()),
    };
    let restored = vm.restore(plan).await;
    let _ = std::fs::remove_file(&stream);
    if let Err(e) = restored {
        let _ = std::fs::remove_file(&new_top.path);
        return Err(e);
    }
    let running_ms = started.elapsed().as_millis() as u64;
    discard_unless_snapshot(dir, &old_top)?;
    let first_heartbeat_ms = wait_heartbeat(vm, started).await;
    if m.memory.is_some() {
        bring_to_present(vm, req.step_clock, None).await;
    }
    tracing::info!(instance_id = %vm.id(), snapshot_id = %sid, running_ms, ?first_heartbeat_ms, "restored");
    Ok(RestoreResult {
        snapshot_id: sid,
        running_ms,
        first_heartbeat_ms,
        status: vm.status(),
    })
}

/// Removes a former top layer unless a snapshot holds it (or it is the first disk).
fn discard_unless_snapshot(dir: &crate::instance::files::VmDir, old_top: &Path) -> Result<()> {
    let held = manifest::all(dir)?
        .iter()
        .any(|m| layers::same_file(&m.disk.path, old_top));
    if !held && !layers::same_file(old_top, &dir.disk_path()) {
        let _ = std::fs::remove_file(old_top);
    }
    Ok(())
}

/// Milliseconds from `started` to the guest's first heartbeat, if one comes in time.
pub async fn wait_heartbeat(vm: &VmHandle, started: Instant) -> Option<u64> {
    let deadline = Instant::now() + HEARTBEAT_WAIT;
    while Instant::now() < deadline {
        if vm.status().heartbeat_age_ms.is_some() {
            return Some(started.elapsed().as_millis() as u64);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// A new identity for a clone: what the guest must change.
pub struct NewIdentity<'a> {
    pub hostname: &'a str,
    pub mac: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub gateway: Option<&'a str>,
    pub cloned_from: Uuid,
}

/// Tells the resumed guest what time it is, mixes fresh host randomness into its pool and,
/// for a clone, gives it its new identity. Best effort (a guest without the exec channel
/// keeps its snapshot-time clock); failures are logged.
pub async fn bring_to_present(vm: &VmHandle, step_clock: bool, identity: Option<NewIdentity<'_>>) {
    let mut script = Vec::new();
    if step_clock {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        script.push(format!("date -s @{} >/dev/null", now.as_secs()));
    }
    let seed: [u8; 32] = {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(Uuid::new_v4().as_bytes());
        b[16..].copy_from_slice(Uuid::new_v4().as_bytes());
        b
    };
    script.push(format!("echo {} > /dev/urandom", hex::encode(seed)));
    if let Some(id) = identity {
        script.push(format!("hostname {}", id.hostname));
        if let Some(mac) = id.mac {
            script.push(format!(
                "ip link set eth0 down && ip link set eth0 address {mac} && ip link set eth0 up"
            ));
        }
        if let Some(ip) = id.ip {
            script.push(format!(
                "ip addr flush dev eth0 && ip addr add {ip} dev eth0"
            ));
            if let Some(gw) = id.gateway {
                script.push(format!("ip route replace default via {gw}"));
            }
        }
        script.push(format!(
            "mkdir -p /run/nimbus && echo {} > /run/nimbus/cloned-from",
            id.cloned_from
        ));
    }
    let req = ExecRequest {
        command: script.join("; "),
        timeout_secs: 10,
    };
    match vm.exec(&req).await {
        Ok(r) if r.exit_code == 0 => {}
        Ok(r) => tracing::warn!(
            exit_code = r.exit_code,
            output = r.output,
            "guest fix-ups after restore failed"
        ),
        Err(e) => tracing::warn!(error = %e.chain(), "cannot reach the guest after restore"),
    }
}
