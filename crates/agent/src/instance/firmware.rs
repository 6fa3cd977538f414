//! UEFI boot: OVMF from the host's `ovmf` package (scripts/install-deps.sh) and the VM's own
//! copy of its variables store, `efivars.fd` in the VM's directory, made from OVMF's empty
//! template before the first launch and kept across restarts (boot entries written by the
//! guest's installer or `efibootmgr` stay). SeaBIOS (QEMU's default) boots every other image.

use super::files::VmDir;
use crate::error::{Error, Result};
use nimbus_agent_api::VmSpec;
use nimbus_qemu::config::UefiSection;
use std::path::{Path, PathBuf};

/// OVMF's code (4 MiB flash layout, no Secure Boot keys enrolled) and its empty variables
/// store, where Debian and Ubuntu install them.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The VM's variables store.
pub fn vars_path(dir: &VmDir) -> PathBuf {
    dir.dir().join("efivars.fd")
}

/// The firmware section of `spec`'s QEMU configuration (`None`: BIOS).
pub fn section(spec: &VmSpec, dir: &VmDir) -> Option<UefiSection> {
    spec.image.uefi.then(|| UefiSection {
        code: OVMF_CODE.into(),
        vars: vars_path(dir),
    })
}

/// Makes the VM's variables store if it boots through UEFI and has none yet (copied under a
/// temporary name: a crash leaves no half store).
pub async fn ensure(dir: &VmDir, spec: &VmSpec) -> Result<()> {
    if !spec.image.uefi {
        return Ok(());
    }
    for file in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(file).is_file() {
            return Err(Error::ImageUnavailable(format!(
                "image {:?} boots through UEFI, but this host has no {file}: install the \
                 ovmf package (scripts/install-deps.sh)",
                spec.image.name
            )));
        }
    }
    let vars = vars_path(dir);
    if vars.is_file() {
        return Ok(());
    }
    let tmp = dir.dir().join("efivars.fd.tmp");
    tokio::fs::copy(OVMF_VARS, &tmp)
        .await
        .map_err(Error::io("copy the UEFI variables template to", &tmp))?;
    tokio::fs::rename(&tmp, &vars)
        .await
        .map_err(Error::io("rename", &vars))
}
