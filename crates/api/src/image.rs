//! Images: read-only bases that instance disks are copy-on-write overlays of.
//!
//! Two kinds: images an admin registers by path (files every host reads at that path, such as
//! the default image) and images a project uploads (`POST /v1/images/{image}/upload`), which
//! the controller stores by digest and agents fetch and cache on first use.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// An image as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageView {
    pub name: String,
    /// The project that owns the image.
    pub project: String,
    /// Whether every project may boot it (only admins publish).
    pub public: bool,
    /// Kernel for direct boot (absolute path on the hosts), if any.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    /// Read-only base disk registered by path (qcow2 or raw), if any.
    pub disk: Option<String>,
    /// Console line the guest prints when its userspace is up.
    pub ready_marker: Option<String>,
    /// Bytes the image's files occupy.
    pub size_bytes: u64,
    /// `sha256:<hex>` of an uploaded image's bytes.
    pub digest: Option<String>,
    /// `qcow2` or `raw`, as inspection found it (uploaded images).
    pub format: Option<String>,
    /// Size of the disk the guest sees (uploaded images).
    pub virtual_size_bytes: Option<u64>,
    /// Firmware a disk image boots with.
    pub firmware: Firmware,
    pub created_at: DateTime<Utc>,
    /// Which live controllers hold a copy of an uploaded image's bytes (shown by
    /// `GET /v1/images/{image}`; absent in listings and for images registered by path).
    #[serde(default)]
    pub copies: Option<ImageCopies>,
}

/// Where an uploaded image's bytes are: every controller keeps its own verified copy, and
/// copies what it lacks from another within seconds (docs/control-plane.md). While `held` is
/// 0 no agent can fetch the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageCopies {
    /// Live controllers holding a verified copy.
    pub held: u32,
    /// Live controllers in all.
    pub controllers: u32,
    /// The URLs of the holders (for admins; empty for other callers).
    pub held_by: Vec<String>,
}

/// Firmware that boots a disk image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS: images with an MBR boot loader (most cloud images boot either way).
    #[default]
    Bios,
    /// OVMF: images that boot only through UEFI.
    Uefi,
}

impl Firmware {
    pub fn as_str(&self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bios" => Some(Firmware::Bios),
            "uefi" => Some(Firmware::Uefi),
            _ => None,
        }
    }
}

/// Body of `POST /v1/images`: registers files that every host can read (admin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImportImage {
    pub name: String,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub disk: Option<String>,
    pub ready_marker: Option<String>,
}

/// Query of `POST /v1/images/{image}/upload`; the body is the image's bytes
/// (`application/octet-stream`, with a `Content-Length`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadImage {
    /// The digest the client computed (`sha256:<hex>` or bare hex): the upload is refused,
    /// and nothing kept, unless the bytes received match it.
    pub sha256: Option<String>,
    /// Let every project boot the image (admin only).
    #[serde(default)]
    pub public: bool,
    /// Boot through UEFI (OVMF) instead of BIOS.
    #[serde(default)]
    pub firmware: Option<Firmware>,
    /// The console line that says the guest is up. Default: the line nimbus's cloud-init
    /// seed makes cloud-init print when it has finished (`nimbus-guest ready`); empty: none
    /// (the instance is running once QEMU runs, for images without cloud-init).
    #[serde(default)]
    pub ready_marker: Option<String>,
}

/// Body of `POST /v1/images/{image}/upload-check`: whether an upload of that many bytes
/// would be admitted now (caller's rights, name, size, quota), asked before the bytes are
/// sent. A refused upload is answered early, while the client still sends, and a client
/// that does not read the answer until it has sent everything sees a broken connection
/// instead of the reason; this answer comes first. The upload itself checks everything again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UploadCheck {
    /// The size of the image to upload, in bytes (its `Content-Length`).
    pub size_bytes: u64,
    /// The upload would publish it to every project (admin only).
    #[serde(default)]
    pub public: bool,
}

/// Body of `POST /v1/images/{image}/from-instance`: bakes a stopped instance's disk into a
/// new image of its project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateImageFromInstance {
    /// The instance (name or id); it must be stopped.
    pub instance: String,
    /// Let every project boot it (admin only).
    #[serde(default)]
    pub public: bool,
}
