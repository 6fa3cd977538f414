//! Uploaded images on the hosts: what a VM spec names (a digest the agent fetches from the
//! controller, `GET /v1/internal/images/{hex}` with the agent token) and what an agent
//! reports of its cache.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An uploaded image's bytes: the agent fetches them on first use, checks the digest, and
/// keeps them in its cache by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBlob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// `qcow2` or `raw`, as the controller's inspection found it (never probed).
    pub format: String,
    pub size_bytes: u64,
}

/// A host's image cache, reported with its inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCacheReport {
    /// Bound on the cache; least recently used images not in use are evicted beyond it.
    pub max_bytes: u64,
    pub used_bytes: u64,
    /// Downloads since the agent started.
    pub downloads: u64,
    /// Cached images found damaged (digest mismatch) and fetched again since the agent
    /// started.
    pub repairs: u64,
    pub images: Vec<CachedImage>,
}

/// One cached image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedImage {
    pub digest: String,
    pub size_bytes: u64,
    pub last_used: DateTime<Utc>,
    /// Instance disks on this host are overlays of it (never evicted while so).
    pub in_use: bool,
}
