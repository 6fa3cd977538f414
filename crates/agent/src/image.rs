//! The manifest (`image.json`) of a directly bootable guest image, as `guest/build.sh`
//! writes it: file names relative to the image directory.

use nimbus_agent_api::GuestImage;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A guest image directory, with its paths made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: PathBuf,
    pub cmdline: String,
    pub ready_marker: String,
}

#[derive(Deserialize)]
struct RawManifest {
    name: String,
    kernel: String,
    initrd: String,
    disk: String,
    cmdline: String,
    ready_marker: String,
}

impl ImageManifest {
    /// Where the default image lives: `<host cache>/images/default` (see [`host_cache_dir`]).
    pub fn default_dir() -> PathBuf {
        host_cache_dir().join("images").join("default")
    }

    /// Reads `<dir>/image.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("image.json");
        let bytes = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let raw: RawManifest = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!("{} is not a valid image manifest: {e}", path.display())
        })?;
        let dir = std::path::absolute(dir)?;
        Ok(Self {
            name: raw.name,
            kernel: dir.join(raw.kernel),
            initrd: dir.join(raw.initrd),
            disk: dir.join(raw.disk),
            cmdline: raw.cmdline,
            ready_marker: raw.ready_marker,
        })
    }

    /// The image as a VM spec names it.
    pub fn guest_image(&self) -> GuestImage {
        GuestImage {
            name: self.name.clone(),
            kernel: Some(self.kernel.clone()),
            initrd: Some(self.initrd.clone()),
            cmdline: Some(self.cmdline.clone()),
            base_disk: Some(self.disk.clone()),
            blob: None,
            ready_marker: Some(self.ready_marker.clone()),
            uefi: false,
        }
    }

    /// Kernel, initrd and command line for the accelerator probe.
    pub fn probe_image(&self) -> (PathBuf, PathBuf, String) {
        (
            self.kernel.clone(),
            self.initrd.clone(),
            self.cmdline.clone(),
        )
    }
}

/// What the host keeps for every agent and cloud on it (the default image, the accelerator
/// probe's answer): `${NIMBUS_IMAGE_CACHE:-/var/cache/nimbus}`.
pub fn host_cache_dir() -> PathBuf {
    std::env::var_os("NIMBUS_IMAGE_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/nimbus"), PathBuf::from)
}

/// The default image's probe boot, if the image exists.
pub fn default_probe_image() -> Option<(PathBuf, PathBuf, String)> {
    ImageManifest::load(&ImageManifest::default_dir())
        .ok()
        .map(|m| m.probe_image())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_manifest_with_relative_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("image.json"),
            r#"{"name": "default", "version": "1-abc", "kernel": "vmlinuz",
                "initrd": "initrd.img", "disk": "disk.qcow2",
                "cmdline": "console=ttyS0 quiet", "ready_marker": "nimbus-guest ready",
                "os": "x"}"#,
        )
        .expect("write");
        let m = ImageManifest::load(dir.path()).expect("load");
        assert_eq!(m.kernel, dir.path().join("vmlinuz"));
        assert_eq!(
            m.guest_image().ready_marker.as_deref(),
            Some("nimbus-guest ready")
        );
        assert!(ImageManifest::load(&dir.path().join("nope")).is_err());
    }
}
