//! A VM's snapshots moving with it to another host (live or cold migration, drain); the
//! sequence is in [`nimbus_agent_api::snapshot_move`].
//!
//! - [`export`] (source): what the snapshots are made of, and the stream of a snapshot set:
//!   the frozen disk layers (the top too for a cold move), the manifests with their layer
//!   named instead of a path, and only the chunks the target lacks.
//! - [`import`] (target): checks every frame (chunk digests, layer digests, manifests of this
//!   VM only, names that cannot escape the staging directory) and stages the set in
//!   `arriving/<id>/`; chunks go straight into the chunk store (the staged manifests keep
//!   them from garbage collection).
//! - [`install`] (target): the arriving VM takes the staged set: layers moved into its disk
//!   directory and rebased onto this host's paths (`qemu-img rebase -u`: the bytes the guest
//!   sees are unchanged, only backing names), manifests rewritten with this host's paths and
//!   checksums, `top.qcow2` pointed at the top (a fresh layer for a live move, which the disk
//!   mirror fills, as it fills a fresh disk without snapshots).
//!
//! Nothing is removed on the source here: the source's copy goes with the VM when the
//! controller deletes it after the commit. A failed move deletes the target's copy (the
//! staged set with the VM, or alone).

pub mod export;
pub mod frame;
pub mod import;
pub mod install;

use crate::error::{Error, Result};
use crate::instance::files::{read_json, write_json};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use nimbus_agent_api::snapshot_move::frame::{is_layer_name, ROOT_LAYER};

/// A layer received, and the layer it stands on (`None`: the image's base, or nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedLayer {
    pub name: String,
    pub backing: Option<String>,
}

/// What a complete staged set holds besides the manifests (`set.json`, written last).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StagedSet {
    pub layers: Vec<StagedLayer>,
    /// The top layer's name and whether a fresh layer goes on it.
    pub top: Option<(String, bool)>,
}

/// `arriving/<id>/`: the snapshots of VM `id` received from its source, until the VM is
/// defined here. Laid out like a VM directory (`snapshots/<sid>/manifest.json`), so garbage
/// collection sees the chunks its manifests use.
#[derive(Debug, Clone)]
pub struct Arriving {
    dir: PathBuf,
}

impl Arriving {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }

    fn set_file(&self) -> PathBuf {
        self.dir.join("set.json")
    }

    /// The complete staged set, if one is waiting.
    pub fn read_set(&self) -> Result<Option<StagedSet>> {
        read_json(&self.set_file())
    }

    pub fn write_set(&self, set: &StagedSet) -> Result<()> {
        write_json(&self.set_file(), set)
    }

    /// Removes the staged set; true when there was one.
    pub fn remove(&self) -> Result<bool> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove", &self.dir)(e)),
        }
    }
}

fn check_layer_name(name: &str) -> Result<()> {
    if is_layer_name(name) {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "snapshot stream: {name:?} is not a disk layer name"
        )))
    }
}

#[cfg(test)]
mod tests;
