//! The accelerator VMs run with: the configuration's choice, else `NIMBUS_ACCEL`, else the
//! answer of the probe (a real tiny boot under KVM, see [`nimbus_qemu::probe`]).
//!
//! The probe's answer depends only on the QEMU build and the host kernel, yet the probe can
//! take its whole timeout (30 s) on a host whose `/dev/kvm` cannot boot a kernel. So the
//! answer is cached for the host in `${NIMBUS_IMAGE_CACHE:-/var/cache/nimbus}/accel-probe.json`
//! (in the agent's state directory where that is not writable), keyed by QEMU's `--version`
//! banner and the kernel's release and build: an agent restarted on the same host (after a
//! crash, an upgrade of nimbus) is back at once, and a QEMU or kernel upgrade probes again.
//! Deleting the file forces a new probe.

use crate::instance::files::{read_json, write_json};
use nimbus_agent_api::Accelerator;
use nimbus_qemu::probe::{self, InstalledQemu, ProbeBoot, ProbeOptions};
use nimbus_qemu::Accel;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the accelerator probe's tiny boot may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// The line the default guest prints when its userspace is up.
const PROBE_MARKER: &str = "nimbus-guest ready";
/// The cache's file name in the state directory.
pub const CACHE_FILE: &str = "accel-probe.json";

/// What decides the accelerator besides configuration.
pub struct AccelInputs<'a> {
    /// Configured accelerator (skips the probe).
    pub configured: Option<Accelerator>,
    pub qemu: &'a InstalledQemu,
    pub program: &'a str,
    /// Kernel, initrd and command line the probe boots.
    pub probe_image: Option<&'a (PathBuf, PathBuf, String)>,
    /// Where the probe runs its scratch VM.
    pub state_dir: &'a Path,
    /// The probe's cached answer (see [`cache_file`]).
    pub cache_file: &'a Path,
}

/// Where the probe's answer is cached: the host-wide cache directory when it is writable,
/// else the agent's state directory.
pub fn cache_file(host_cache: &Path, state_dir: &Path) -> PathBuf {
    let writable = std::fs::create_dir_all(host_cache).is_ok()
        && nix::unistd::access(host_cache, nix::unistd::AccessFlags::W_OK).is_ok();
    if writable {
        host_cache.join(CACHE_FILE)
    } else {
        state_dir.join(CACHE_FILE)
    }
}

/// A probe's answer and what it is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CachedProbe {
    /// QEMU's `--version` banner.
    qemu: String,
    /// The host kernel's release and build.
    kernel: String,
    accelerator: Accelerator,
    /// Why the probe chose it.
    detail: String,
    probed_at: chrono::DateTime<chrono::Utc>,
}

/// Chooses the accelerator: configuration, `NIMBUS_ACCEL`, the cached probe answer for this
/// QEMU and kernel, else a new probe (whose answer is cached).
pub async fn choose(inputs: &AccelInputs<'_>) -> anyhow::Result<Accel> {
    if let Some(a) = inputs.configured {
        tracing::info!(accelerator = %a, "accelerator set by configuration");
        return Ok(crate::agent::from_api(a));
    }
    if let Some(a) = probe::accel_override_from_env()? {
        tracing::info!(accelerator = %a, "accelerator set by NIMBUS_ACCEL");
        return Ok(a);
    }
    // An agent killed mid-probe leaves its probe QEMU behind.
    probe::remove_stale_scratch(inputs.state_dir).await;
    let cache_path = inputs.cache_file;
    let kernel = host_kernel();
    if let Some(hit) = cached(cache_path, &inputs.qemu.banner, &kernel) {
        tracing::info!(
            accelerator = %hit.accelerator,
            detail = hit.detail,
            probed_at = %hit.probed_at,
            cache = %cache_path.display(),
            "accelerator from the cached probe (delete the cache to probe again)"
        );
        return Ok(crate::agent::from_api(hit.accelerator));
    }
    let outcome = probe::probe_accel(&probe_options(inputs)).await;
    tracing::info!(accelerator = %outcome.accel, detail = outcome.detail, "accelerator probed");
    let entry = CachedProbe {
        qemu: inputs.qemu.banner.clone(),
        kernel,
        accelerator: crate::agent::to_api(outcome.accel),
        detail: outcome.detail,
        probed_at: chrono::Utc::now(),
    };
    if let Err(e) = write_json(cache_path, &entry) {
        tracing::warn!(error = %e.chain(), "cannot cache the probe's answer; the next start probes again");
    }
    Ok(outcome.accel)
}

fn probe_options(inputs: &AccelInputs<'_>) -> ProbeOptions {
    ProbeOptions {
        program: inputs.program.to_string(),
        boot: inputs
            .probe_image
            .map(|(kernel, initrd, cmdline)| ProbeBoot {
                kernel: kernel.clone(),
                initrd: Some(initrd.clone()),
                cmdline: cmdline.clone(),
                markers: vec![PROBE_MARKER.to_string()],
            }),
        timeout: PROBE_TIMEOUT,
        scratch_parent: inputs.state_dir.to_path_buf(),
    }
}

/// The cached answer, if the file holds one for this QEMU and kernel.
fn cached(path: &Path, qemu: &str, kernel: &str) -> Option<CachedProbe> {
    match read_json::<CachedProbe>(path) {
        Ok(Some(c)) if c.qemu == qemu && c.kernel == kernel => Some(c),
        Ok(Some(c)) => {
            tracing::info!(
                cached_qemu = c.qemu,
                cached_kernel = c.kernel,
                "QEMU or kernel changed since the last probe; probing again"
            );
            None
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e.chain(), "unreadable probe cache; probing again");
            None
        }
    }
}

/// The running kernel's release and build (`uname -r` and `uname -v`).
fn host_kernel() -> String {
    let read = |f: &str| {
        std::fs::read_to_string(Path::new("/proc/sys/kernel").join(f))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    format!("{} {}", read("osrelease"), read("version"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(qemu: &str, kernel: &str) -> CachedProbe {
        CachedProbe {
            qemu: qemu.into(),
            kernel: kernel.into(),
            accelerator: Accelerator::Tcg,
            detail: "KVM probe: no boot marker".into(),
            probed_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn cache_answers_only_for_the_same_qemu_and_kernel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CACHE_FILE);
        assert_eq!(cached(&path, "QEMU 10.0.2", "6.1 #1"), None, "no file");
        let e = entry("QEMU 10.0.2", "6.1 #1");
        write_json(&path, &e).expect("write");
        assert_eq!(cached(&path, "QEMU 10.0.2", "6.1 #1"), Some(e));
        assert_eq!(
            cached(&path, "QEMU 10.0.3", "6.1 #1"),
            None,
            "QEMU upgraded"
        );
        assert_eq!(cached(&path, "QEMU 10.0.2", "6.12 #1"), None, "new kernel");
        std::fs::write(&path, b"{").expect("write");
        assert_eq!(cached(&path, "QEMU 10.0.2", "6.1 #1"), None, "damaged file");
    }

    #[test]
    fn cache_falls_back_to_the_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("cache");
        assert_eq!(cache_file(&host, dir.path()), host.join(CACHE_FILE));
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").expect("write");
        assert_eq!(cache_file(&file, dir.path()), dir.path().join(CACHE_FILE));
    }

    #[test]
    fn host_kernel_names_release_and_build() {
        let k = host_kernel();
        assert!(k.contains('.') && k.contains('#'), "{k}");
    }

    /// A start with the same QEMU and kernel takes the cached answer instead of probing;
    /// another kernel probes again and replaces the cache. The probe here boots a kernel that
    /// does not exist, so it can only answer TCG: a KVM answer proves the cache was used.
    #[tokio::test]
    async fn cached_answer_is_used_for_the_same_qemu_and_kernel_only() {
        if std::env::var_os("NIMBUS_ACCEL").is_some() {
            eprintln!("NIMBUS_ACCEL is set: the probe is skipped, nothing to test");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let program = nimbus_qemu::qemu_binary();
        let qemu = probe::installed_qemu(&program).await.expect("qemu");
        let missing = dir.path().join("no-such-kernel");
        let image = (missing.clone(), missing, String::new());
        let path = dir.path().join(CACHE_FILE);
        let inputs = AccelInputs {
            configured: None,
            qemu: &qemu,
            program: &program,
            probe_image: Some(&image),
            state_dir: dir.path(),
            cache_file: &path,
        };
        let mut e = entry(&qemu.banner, &host_kernel());
        e.accelerator = Accelerator::Kvm;
        write_json(&path, &e).expect("write");
        assert_eq!(choose(&inputs).await.expect("cached"), Accel::Kvm);

        e.kernel = "an older kernel".into();
        write_json(&path, &e).expect("write");
        assert_eq!(choose(&inputs).await.expect("probe"), Accel::Tcg);
        let saved: CachedProbe = read_json(&path).expect("read").expect("cached");
        assert_eq!(
            (saved.accelerator, saved.qemu, saved.kernel),
            (Accelerator::Tcg, qemu.banner.clone(), host_kernel())
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from(CACHE_FILE)],
            "no probe scratch left"
        );
    }
}
