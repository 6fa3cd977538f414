//! Images: read-only bases that instance disks are copy-on-write overlays of.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An image as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageView {
    pub name: String,
    /// Kernel for direct boot (absolute path on the hosts), if any.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    /// Read-only base disk (qcow2 or raw), if any.
    pub disk: Option<String>,
    /// Console line the guest prints when its userspace is up.
    pub ready_marker: Option<String>,
    /// Bytes the image's files occupy.
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/images`: registers files that every host can read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImportImage {
    pub name: String,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub disk: Option<String>,
    pub ready_marker: Option<String>,
}
