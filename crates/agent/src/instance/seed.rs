//! The cloud-init NoCloud seed: a small FAT disk labelled `CIDATA` holding `meta-data`
//! (instance id, hostname, public keys), `user-data`, `vendor-data` and `network-config`
//! (the instance's address, so the guest needs no DHCP). It is attached as a virtio disk:
//! Debian's cloud kernel has no AHCI driver, so a CD-ROM on q35 would be invisible to it.
//!
//! The vendor-data is a MIME multipart: a cloud-config making cloud-init print the ready line
//! on the console at its end (`final_message`), and a script ([`READY_REPORT`]) installing a
//! unit that reports to the metadata service once cloud-init has finished, every boot: that
//! report is the instance's readiness when it has a tenant network; the final message is
//! then not the ready marker, so only the report makes the guest ready. Without a tenant
//! network (no metadata service) the final message is the ready marker, as before.
//! Parts, not keys of one cloud-config: user-data replaces vendor-data keys it also sets
//! (`runcmd`, `write_files`), and cannot replace a vendor script.
//!
//! Built with `mkfs.vfat` and `mcopy` (dosfstools, mtools): no loop device, no mount. The
//! files are JSON, which every YAML parser (cloud-init's) reads, so no value needs escaping.

use super::files::VmDir;
use crate::error::{Error, Result};
use base64::Engine as _;
use nimbus_agent_api::{CloudInitSeed, NicSpec, VmSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The line cloud-init prints at its end (vendor-data's `final_message`) when the guest
/// reports its readiness to the metadata service: it is not the ready marker, so the report
/// alone makes such a guest ready.
const FINAL_MESSAGE: &str = "nimbus: cloud-init finished after $UPTIME s";
/// The line cloud-init prints at its end when the guest has no metadata service to report
/// to (no tenant network): it starts with [`nimbus_agent_api::CLOUD_INIT_READY_MARKER`],
/// the image's ready marker.
const FINAL_MESSAGE_MARKER: &str = "nimbus-guest ready: cloud-init finished after $UPTIME s";

/// The vendor script that installs the readiness report (systemd unit, python3 client).
const READY_REPORT: &str = include_str!("ready_report.sh");
/// Separates the vendor-data's parts (appears in neither).
const BOUNDARY: &str = "==nimbus-vendor-data==";

/// A seeded guest on these NICs reports its readiness to the metadata service: it has a
/// tenant network, so a metadata service to report to.
fn reports_ready(nics: &[NicSpec]) -> bool {
    nics.iter().any(|n| n.vni.is_some())
}

/// Seed disk size in KiB (FAT12; user-data is at most 16 KiB).
const SEED_KIB: &str = "1024";
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The seed file of a VM.
pub fn path(dir: &VmDir) -> PathBuf {
    dir.dir().join("seed.img")
}

/// The seed's files, by name.
pub fn files(seed: &CloudInitSeed, nics: &[NicSpec]) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let meta = serde_json::json!({
        "instance-id": seed.instance_id,
        "local-hostname": super::launch::hostname(&seed.hostname),
        "public-keys": seed.public_keys,
    });
    let user_data = match &seed.user_data {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| Error::BadRequest(format!("seed user_data is not base64: {e}")))?,
        None => b"#cloud-config\n{}\n".to_vec(),
    };
    let vendor = vendor_data(reports_ready(nics));
    let mut out = vec![
        ("meta-data", meta.to_string().into_bytes()),
        ("user-data", user_data),
        ("vendor-data", vendor.into_bytes()),
    ];
    if !nics.is_empty() {
        out.push((
            "network-config",
            network_config(nics).to_string().into_bytes(),
        ));
    }
    Ok(out)
}

/// The vendor-data: the `final_message` cloud-config and the readiness report's script
/// (`report`), or only the final message with the ready marker (no metadata service).
fn vendor_data(report: bool) -> String {
    let message = if report {
        FINAL_MESSAGE
    } else {
        FINAL_MESSAGE_MARKER
    };
    let config = format!(
        "#cloud-config\n{}\n",
        serde_json::json!({ "final_message": message })
    );
    if !report {
        return config;
    }
    let part = |kind: &str, body: &str| {
        format!(
            "--{BOUNDARY}\nContent-Type: {kind}; charset=\"utf-8\"\nMIME-Version: 1.0\n\n{body}\n"
        )
    };
    format!(
        "Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\nMIME-Version: 1.0\n\n{}{}--{BOUNDARY}--\n",
        part("text/cloud-config", &config),
        part("text/x-shellscript", READY_REPORT),
    )
}

/// Network config version 2: each NIC by its MAC, with its static address and gateway (the
/// default route, which also reaches the metadata service at 169.254.169.254).
fn network_config(nics: &[NicSpec]) -> serde_json::Value {
    let mut ethernets = serde_json::Map::new();
    for (i, nic) in nics.iter().enumerate() {
        let mut e = serde_json::json!({
            "match": { "macaddress": nic.mac },
            "addresses": [nic.ip],
        });
        // `gateway4`, not a `routes` entry to 0.0.0.0/0: Debian 12's cloud-init renders the
        // latter into no default route (seen: the guest's report to 169.254.169.254 failed
        // with "Network is unreachable"); `gateway4` becomes ifupdown's `gateway`.
        if let Some(gw) = &nic.gateway {
            e["gateway4"] = serde_json::json!(gw);
        }
        ethernets.insert(format!("nic{i}"), e);
    }
    serde_json::json!({ "version": 2, "ethernets": ethernets })
}

/// Writes the VM's seed disk if its spec has a seed and the disk is not there yet. Built
/// under a temporary name: a crash leaves no half seed.
pub async fn ensure(dir: &VmDir, spec: &VmSpec) -> Result<()> {
    let Some(seed) = &spec.seed else {
        return Ok(());
    };
    let target = path(dir);
    if target.is_file() {
        return Ok(());
    }
    let staging = dir.dir().join("seed.d");
    let tmp = dir.dir().join("seed.img.tmp");
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_file(&tmp);
    std::fs::create_dir_all(&staging).map_err(Error::io("create", &staging))?;
    let built = build(&staging, &tmp, &files(seed, &spec.nics)?).await;
    let _ = std::fs::remove_dir_all(&staging);
    if let Err(e) = built {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &target).map_err(Error::io("rename", &target))
}

async fn build(staging: &Path, image: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    run(
        "mkfs.vfat",
        &[
            "-n".as_ref(),
            "CIDATA".as_ref(),
            "-C".as_ref(),
            image.as_os_str(),
            SEED_KIB.as_ref(),
        ],
    )
    .await?;
    for (name, bytes) in files {
        let src = staging.join(name);
        std::fs::write(&src, bytes).map_err(Error::io("write", &src))?;
        let dest = format!("::{name}");
        run(
            "mcopy",
            &[
                "-i".as_ref(),
                image.as_os_str(),
                src.as_os_str(),
                dest.as_ref(),
            ],
        )
        .await?;
    }
    Ok(())
}

async fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .kill_on_drop(true)
        .env("MTOOLS_SKIP_CHECK", "1");
    let out = tokio::time::timeout(TOOL_TIMEOUT, cmd.output())
        .await
        .map_err(|_| Error::Timeout(format!("{program} did not finish within {TOOL_TIMEOUT:?}")))?
        .map_err(|e| {
            Error::Internal(format!(
                "cannot run {program} ({e}); install dosfstools and mtools (scripts/install-deps.sh)"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "{program} failed building the cloud-init seed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mtype(image: &Path, name: &str) -> String {
        let out = std::process::Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(image)
            .arg(format!("::{name}"))
            .output()
            .expect("mtype (mtools)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    #[tokio::test]
    async fn the_seed_is_a_cidata_fat_disk_with_the_instance_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = VmDir::new(tmp.path().join("vm"));
        std::fs::create_dir_all(dir.dir()).expect("mkdir");
        let mut spec = crate::test_support::blank_spec(uuid::Uuid::new_v4(), Vec::new());
        spec.nics.push(NicSpec {
            mac: "52:54:00:00:00:07".into(),
            ip: "10.200.0.7/16".into(),
            gateway: Some("10.200.0.1".into()),
            vni: None,
        });
        let user_data = "#cloud-config\nruncmd: [\"touch /tmp/x\"]\n";
        spec.seed = Some(CloudInitSeed {
            instance_id: spec.id.to_string(),
            hostname: "App_1".into(),
            public_keys: vec!["ssh-ed25519 AAAA key \"quoted\"".into()],
            user_data: Some(base64::engine::general_purpose::STANDARD.encode(user_data)),
        });
        ensure(&dir, &spec).await.expect("seed");
        let image = path(&dir);
        let label = std::process::Command::new("mlabel")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-i"])
            .arg(&image)
            .arg("::")
            .output()
            .expect("mlabel");
        assert!(String::from_utf8_lossy(&label.stdout).contains("CIDATA"));
        let meta: serde_json::Value =
            serde_json::from_str(&mtype(&image, "meta-data")).expect("meta-data is JSON");
        assert_eq!(meta["instance-id"], spec.id.to_string());
        assert_eq!(meta["local-hostname"], "App-1");
        assert_eq!(meta["public-keys"][0], "ssh-ed25519 AAAA key \"quoted\"");
        assert_eq!(mtype(&image, "user-data"), user_data);
        // No tenant network: no metadata service, the final message is the ready marker.
        let vendor = mtype(&image, "vendor-data");
        assert!(vendor.contains(nimbus_agent_api::CLOUD_INIT_READY_MARKER));
        assert!(!vendor.contains("text/x-shellscript"));
        let net: serde_json::Value =
            serde_json::from_str(&mtype(&image, "network-config")).expect("JSON");
        assert_eq!(net["ethernets"]["nic0"]["addresses"][0], "10.200.0.7/16");
        assert_eq!(net["ethernets"]["nic0"]["gateway4"], "10.200.0.1");
        assert_eq!(
            net["ethernets"]["nic0"]["match"]["macaddress"],
            "52:54:00:00:00:07"
        );
        // On a tenant network: the report's script, and a final message that is no marker.
        spec.nics[0].vni = Some(7);
        let files = files(spec.seed.as_ref().expect("seed"), &spec.nics).expect("files");
        let vendor = String::from_utf8(files[2].1.clone()).expect("utf-8");
        assert_eq!(files[2].0, "vendor-data");
        assert!(
            vendor.starts_with("Content-Type: multipart/mixed"),
            "{vendor}"
        );
        assert!(vendor.contains("Content-Type: text/x-shellscript"));
        assert!(vendor.contains(crate::network::metadata::http::READY_PATH));
        assert!(vendor.contains("nimbus: cloud-init finished"));
        assert!(!vendor.contains(nimbus_agent_api::CLOUD_INIT_READY_MARKER));
        // Idempotent; no staging left behind.
        ensure(&dir, &spec).await.expect("again");
        assert!(!dir.dir().join("seed.d").exists());
        assert!(!dir.dir().join("seed.img.tmp").exists());
    }
}
