//! QEMU version check and accelerator probe.
//!
//! KVM is chosen only when `/dev/kvm` opens *and* a real tiny boot under KVM works: with a
//! kernel (and initrd) given, the guest must print one of the expected console markers
//! within the timeout; without one, QEMU must keep running the firmware with KVM enabled.
//! Some hosts expose a `/dev/kvm` that cannot boot a standard kernel (e.g. a paravirtual
//! nested hypervisor), so the device alone proves nothing. `NIMBUS_ACCEL=tcg|kvm` (or the
//! caller's configuration) skips the probe.

use crate::config::{Accel, DirectBoot, MachineSection, QemuConfig};
use crate::paths::VmPaths;
use crate::process::{log_tail, QemuProcess};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// The oldest QEMU nimbus runs on (7.2 corrupts guests live-migrated under TCG).
pub const MIN_VERSION: QemuVersion = QemuVersion {
    major: 9,
    minor: 0,
    micro: 0,
};

/// A QEMU version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// What the version check or probe can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run {program} --version")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read a version from {program} --version: {output:?}")]
    UnknownVersion { program: String, output: String },
    #[error(
        "QEMU {found} is too old: nimbus needs {MIN_VERSION} or newer. On Debian 12 run \
         `apt-get install -t bookworm-backports qemu-system-x86` (or scripts/install-deps.sh)"
    )]
    TooOld { found: QemuVersion },
    #[error("NIMBUS_ACCEL={0:?} is neither `kvm` nor `tcg`")]
    BadOverride(String),
}

/// Parses the first line of `qemu-system-x86_64 --version`
/// (`QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)`).
pub fn parse_version(text: &str) -> Option<QemuVersion> {
    let rest = text.lines().next()?.split("version ").nth(1)?;
    let number = rest.split_whitespace().next()?;
    let mut parts = number.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    Some(QemuVersion {
        major: parts.next()??,
        minor: parts.next().flatten().unwrap_or(0),
        micro: parts.next().flatten().unwrap_or(0),
    })
}

/// The installed QEMU: its parsed version and the first line of `--version`, which also
/// names the distribution's build (what a cached probe answer is keyed by).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledQemu {
    pub version: QemuVersion,
    /// e.g. `QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)`.
    pub banner: String,
}

/// Runs `<program> --version` and parses it.
pub async fn qemu_version(program: &str) -> Result<QemuVersion, ProbeError> {
    Ok(installed_qemu(program).await?.version)
}

/// Runs `<program> --version`: the version and the banner line.
pub async fn installed_qemu(program: &str) -> Result<InstalledQemu, ProbeError> {
    let out = tokio::process::Command::new(program)
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| ProbeError::Spawn {
            program: program.to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let version = parse_version(&text).ok_or(ProbeError::UnknownVersion {
        program: program.to_string(),
        output: text.clone(),
    })?;
    Ok(InstalledQemu {
        version,
        banner: text.lines().next().unwrap_or_default().trim().to_string(),
    })
}

/// Refuses QEMU older than [`MIN_VERSION`], with instructions to upgrade.
pub fn check_min_version(found: QemuVersion) -> Result<(), ProbeError> {
    if found < MIN_VERSION {
        return Err(ProbeError::TooOld { found });
    }
    Ok(())
}

/// The accelerator forced by `NIMBUS_ACCEL`, if set.
pub fn accel_override_from_env() -> Result<Option<Accel>, ProbeError> {
    match std::env::var("NIMBUS_ACCEL") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "kvm" => Ok(Some(Accel::Kvm)),
            "tcg" => Ok(Some(Accel::Tcg)),
            _ => Err(ProbeError::BadOverride(v)),
        },
    }
}

/// A kernel to boot for the probe, and the console lines that prove it booted.
#[derive(Debug, Clone)]
pub struct ProbeBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Any of these lines on the console means the guest booted.
    pub markers: Vec<String>,
}

/// How to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// QEMU system emulator to run.
    pub program: String,
    pub boot: Option<ProbeBoot>,
    /// How long the tiny boot may take.
    pub timeout: Duration,
    /// Where the probe's scratch directory is created.
    pub scratch_parent: PathBuf,
}

/// The probe's answer and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub accel: Accel,
    pub detail: String,
}

/// The prefix of the probe's scratch directories (`<parent>/kvm-probe-<agent pid>`).
const SCRATCH_PREFIX: &str = "kvm-probe-";

/// Chooses the accelerator: KVM only if a real tiny boot under KVM works, else TCG.
///
/// Cancel-safe: dropping the future (e.g. the agent is told to stop mid-probe) kills the
/// probe's QEMU at once, so nothing outlives the caller.
pub async fn probe_accel(opts: &ProbeOptions) -> ProbeOutcome {
    let tcg = |detail: String| ProbeOutcome {
        accel: Accel::Tcg,
        detail,
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("/dev/kvm cannot be opened: {e}"));
    }
    let scratch = opts
        .scratch_parent
        .join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        return tcg(format!("cannot create {}: {e}", scratch.display()));
    }
    let result = boot_under_kvm(opts, &VmPaths::new(&scratch)).await;
    if let Err(e) = std::fs::remove_dir_all(&scratch) {
        tracing::warn!(dir = %scratch.display(), error = %e, "cannot remove probe directory");
    }
    match result {
        Ok(detail) => ProbeOutcome {
            accel: Accel::Kvm,
            detail,
        },
        Err(why) => tcg(why),
    }
}

async fn boot_under_kvm(opts: &ProbeOptions, paths: &VmPaths) -> Result<String, String> {
    let machine = MachineSection {
        name: "nimbus-kvm-probe".into(),
        accel: Accel::Kvm,
        vcpus: 1,
        memory_mib: 256,
    };
    let mut config = QemuConfig::standard(machine, paths);
    config.boot = opts.boot.as_ref().map(|b| DirectBoot {
        kernel: b.kernel.clone(),
        initrd: b.initrd.clone(),
        cmdline: Some(b.cmdline.clone()),
    });
    let qemu = QemuProcess::spawn(&opts.program, &config, paths)
        .map_err(|e| format!("KVM probe could not start QEMU: {e}"))?;
    let mut qemu = KillOnDrop(qemu);
    let verdict = judge(opts, paths, &mut qemu.0).await;
    if let Err(e) = qemu.0.kill(Duration::ZERO).await {
        tracing::warn!(error = %e, "cannot end the KVM probe's QEMU");
    }
    verdict
}

/// The probe's QEMU, killed when the probe ends, however it ends (cancellation included).
struct KillOnDrop(QemuProcess);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.0.kill_now() {
            tracing::warn!(error = %e, "cannot end the KVM probe's QEMU");
        }
    }
}

/// Ends the probe QEMUs and removes the scratch directories that an agent killed mid-probe
/// (e.g. by SIGKILL) left in `parent`. Only QEMUs whose command line names their scratch
/// directory are signalled.
pub async fn remove_stale_scratch(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let is_scratch = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SCRATCH_PREFIX));
        if !is_scratch {
            continue;
        }
        let dir = entry.path();
        if let Some(mut qemu) = QemuProcess::adopt(&VmPaths::new(&dir)) {
            if let Err(e) = qemu.kill(Duration::ZERO).await {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot end a stale probe QEMU");
                continue;
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(dir = %dir.display(), "stale probe directory removed"),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a stale probe directory")
            }
        }
    }
}

async fn judge(
    opts: &ProbeOptions,
    paths: &VmPaths,
    qemu: &mut QemuProcess,
) -> Result<String, String> {
    let failed = |what: &str| {
        let tail = log_tail(&paths.qemu_log());
        format!(
            "KVM probe {what}: {}",
            tail.lines().last().unwrap_or("no output")
        )
    };
    let qmp = qemu
        .wait_for_qmp(opts.timeout)
        .await
        .map_err(|e| format!("KVM probe: QEMU failed under KVM: {e}"))?;
    let Some(boot) = &opts.boot else {
        // No kernel to boot: the firmware must run under KVM for a moment.
        sleep(Duration::from_millis(500)).await;
        if !qemu.is_alive() {
            return Err(failed("failed"));
        }
        let status = qmp
            .query_status()
            .await
            .map_err(|e| format!("KVM probe: {e}"))?;
        let kvm = qmp
            .execute("query-kvm", None)
            .await
            .map_err(|e| format!("KVM probe: {e}"))?;
        let enabled = kvm.get("enabled").and_then(serde_json::Value::as_bool) == Some(true);
        if status.running && enabled && qemu.is_alive() {
            return Ok("firmware runs under KVM (no kernel given for a full boot)".into());
        }
        return Err(format!(
            "KVM probe: status {}, kvm enabled {enabled}",
            status.status
        ));
    };
    let deadline = Instant::now() + opts.timeout;
    loop {
        let console = std::fs::read(paths.console_log()).unwrap_or_default();
        let console = String::from_utf8_lossy(&console);
        if let Some(m) = boot.markers.iter().find(|m| console.contains(m.as_str())) {
            return Ok(format!("a kernel booted under KVM to {m:?}"));
        }
        if !qemu.is_alive() {
            return Err(failed("QEMU exited"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "KVM probe: no boot marker on the console within {:?}",
                opts.timeout
            ));
        }
        sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        let v = parse_version(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright",
        );
        assert_eq!(
            v,
            Some(QemuVersion {
                major: 10,
                minor: 0,
                micro: 2
            })
        );
        let v = parse_version("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u13)");
        assert_eq!(
            v,
            Some(QemuVersion {
                major: 7,
                minor: 2,
                micro: 15
            })
        );
        assert_eq!(
            parse_version("QEMU emulator version 9.1.50"),
            Some(QemuVersion {
                major: 9,
                minor: 1,
                micro: 50
            })
        );
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn refuses_old_qemu_with_a_hint() {
        let old = QemuVersion {
            major: 7,
            minor: 2,
            micro: 15,
        };
        let msg = check_min_version(old).expect_err("must fail").to_string();
        assert!(
            msg.contains("7.2.15") && msg.contains("bookworm-backports"),
            "{msg}"
        );
        assert!(check_min_version(QemuVersion {
            major: 9,
            minor: 0,
            micro: 0
        })
        .is_ok());
    }

    #[tokio::test]
    async fn probe_without_kernel_answers_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = ProbeOptions {
            program: crate::qemu_binary(),
            boot: None,
            timeout: Duration::from_secs(20),
            scratch_parent: dir.path().to_path_buf(),
        };
        let outcome = probe_accel(&opts).await;
        eprintln!("probe: {outcome:?}");
        assert!(!outcome.detail.is_empty());
        let left = std::fs::read_dir(dir.path()).expect("read_dir").count();
        assert_eq!(left, 0, "scratch directory removed");
    }

    /// The pid in `dir`'s pid file, once QEMU wrote it (bounded).
    async fn pid_in(dir: &std::path::Path) -> u32 {
        for _ in 0..500 {
            if let Some(pid) = std::fs::read_to_string(dir.join("qemu.pid"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                return pid;
            }
            sleep(Duration::from_millis(10)).await;
        }
        panic!("no pid file in {}", dir.display());
    }

    async fn gone(pid: u32) -> bool {
        for _ in 0..500 {
            let alive = crate::procfs::read_stat(pid).is_some_and(|s| !s.is_exited());
            if !alive {
                return true;
            }
            sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// An agent stopped mid-probe drops the probe: its QEMU must not outlive it.
    #[tokio::test]
    async fn cancelled_probe_kills_its_qemu() {
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            eprintln!("no usable /dev/kvm: the probe starts no QEMU here, nothing to cancel");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = ProbeOptions {
            program: crate::qemu_binary(),
            boot: None,
            timeout: Duration::from_secs(20),
            scratch_parent: dir.path().to_path_buf(),
        };
        let scratch = dir
            .path()
            .join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
        let probe = probe_accel(&opts);
        let pid = tokio::select! {
            outcome = probe => panic!("the probe ended before it could be cancelled: {outcome:?}"),
            pid = pid_in(&scratch) => pid,
        };
        assert!(
            gone(pid).await,
            "the cancelled probe's QEMU {pid} still runs"
        );
    }

    /// A probe QEMU left by an agent killed mid-probe is ended, and its directory removed,
    /// by the next start; other directories are left alone.
    #[tokio::test]
    async fn stale_probe_scratch_is_cleaned_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scratch = dir.path().join(format!("{SCRATCH_PREFIX}1"));
        let other = dir.path().join("vms");
        std::fs::create_dir_all(&scratch).expect("mkdir");
        std::fs::create_dir_all(&other).expect("mkdir");
        let paths = VmPaths::new(&scratch);
        let machine = MachineSection {
            name: "stale-probe".into(),
            accel: Accel::Tcg,
            vcpus: 1,
            memory_mib: 64,
        };
        let config = QemuConfig::standard(machine, &paths);
        let qemu = QemuProcess::spawn(&crate::qemu_binary(), &config, &paths).expect("spawn");
        let pid = pid_in(&scratch).await;
        assert_eq!(pid, qemu.pid());
        remove_stale_scratch(dir.path()).await;
        assert!(gone(pid).await, "the stale probe QEMU {pid} still runs");
        assert!(!scratch.exists());
        assert!(other.exists());
    }

    #[tokio::test]
    async fn installed_qemu_is_recent_enough() {
        let v = qemu_version(&crate::qemu_binary())
            .await
            .expect("qemu --version");
        check_min_version(v).expect("QEMU >= 9.0 installed");
    }
}
