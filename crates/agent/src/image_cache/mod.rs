//! The host's cache of uploaded images, by digest:
//!
//! ```text
//! <state_dir>/images/sha256/<hex>          a verified image, read-only (instance disks overlay it)
//! <state_dir>/images/verified/<hex>        what its last hash saw of the file; its last use
//! <state_dir>/images/incoming/<uuid>.part  a download in progress (all removed at start)
//! ```
//!
//! [`ImageCache::ensure`] returns a verified local copy. A cached file is hashed again
//! before use unless its marker shows it untouched since a hash ([`verified`]: same inode,
//! size and change times), so the creates after the first pay no hash; a damaged one (even
//! by one byte) is removed and fetched again. A missing one is fetched from the controller
//! ([`fetch`]), its digest, size and format checked before it enters the cache. Concurrent
//! calls for one digest wait for a single download. After a download, least recently used
//! images beyond the size bound are evicted, never one that an instance disk on this host
//! overlays or that a define is using ([`Lease`]).

mod fetch;
mod verified;

use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use nimbus_agent_api::{CachedImage, ImageBlob, ImageCacheReport};
use nimbus_image::Digest;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use verified::{Markers, Seen};

/// Where the cache fetches images from.
#[derive(Debug, Clone)]
pub struct ImageSource {
    /// The controllers' URLs, in the order they are tried (each serves every image).
    pub controller_urls: Vec<String>,
    /// TLS of the calls to the controller.
    pub tls: Option<nimbus_pki::rustls::ClientConfig>,
    /// The agent token (without TLS), which the controller's internal routes accept.
    pub token: Option<String>,
}

/// The image cache of this host.
pub struct ImageCache {
    dir: PathBuf,
    markers: Markers,
    source: Option<ImageSource>,
    max_bytes: u64,
    http: reqwest::Client,
    /// One lock per digest: concurrent ensures of one image download it once.
    locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Digests held by a [`Lease`] (a define between ensure and writing its spec).
    leases: Arc<Mutex<HashMap<Digest, usize>>>,
    downloads: AtomicU64,
    repairs: AtomicU64,
    /// Cached images hashed to verify them (a use whose marker holds hashes nothing).
    hashes: AtomicU64,
}

/// Keeps an image from eviction while it lives.
pub struct Lease {
    digest: Digest,
    leases: Arc<Mutex<HashMap<Digest, usize>>>,
    /// The verified local copy.
    pub path: PathBuf,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut l = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = l.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                l.remove(&self.digest);
            }
        }
    }
}

fn parse_digest(blob: &ImageBlob) -> Result<Digest> {
    blob.digest
        .parse()
        .map_err(|e| Error::BadRequest(format!("image blob: {e}")))
}

impl ImageCache {
    /// Opens (creating) the cache under `state_dir`, bounded to `max_bytes`; without a
    /// source, images not cached cannot be fetched.
    pub fn open(state_dir: &Path, source: Option<ImageSource>, max_bytes: u64) -> Result<Self> {
        let dir = state_dir.join("images");
        let incoming = dir.join("incoming");
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming).map_err(Error::io("clean", &incoming))?;
        }
        for d in [&incoming, &dir.join("sha256"), &dir.join("verified")] {
            std::fs::create_dir_all(d).map_err(Error::io("create", d))?;
        }
        let builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .read_timeout(std::time::Duration::from_secs(30));
        let http =
            crate::controller_link::client(builder, source.as_ref().and_then(|s| s.tls.as_ref()))
                .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            markers: Markers::new(dir.join("verified")),
            dir,
            source,
            max_bytes,
            http,
            locks: Mutex::default(),
            leases: Arc::default(),
            downloads: AtomicU64::new(0),
            repairs: AtomicU64::new(0),
            hashes: AtomicU64::new(0),
        })
    }

    /// Where the bytes of `digest` live once cached.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    fn lock_of(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(*digest).or_default().clone()
    }

    fn lease(&self, digest: Digest, path: PathBuf) -> Lease {
        let mut l = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        *l.entry(digest).or_default() += 1;
        Lease {
            digest,
            leases: self.leases.clone(),
            path,
        }
    }

    /// A verified local copy of `blob`, fetched if missing or damaged. `in_use` are the
    /// digests this host's instance disks overlay (kept by eviction).
    pub async fn ensure(&self, blob: &ImageBlob, in_use: &HashSet<Digest>) -> Result<Lease> {
        let digest = parse_digest(blob)?;
        let lock = self.lock_of(&digest);
        let _held = lock.lock().await;
        let path = self.path(&digest);
        if path.is_file() {
            if self.markers.hold(&digest, &path) || self.verify(&digest, &path).await? {
                self.touch(&digest, &path);
                return Ok(self.lease(digest, path));
            }
            self.repairs.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%digest, "cached image is damaged (digest mismatch); fetching it again");
            self.markers.remove(&digest);
            std::fs::remove_file(&path).map_err(Error::io("remove", &path))?;
        }
        let source = self.source.as_ref().ok_or_else(|| {
            Error::ImageUnavailable(format!(
                "image {digest} is not cached and this agent has no controller to fetch it from"
            ))
        })?;
        let started = std::time::Instant::now();
        self.markers.remove(&digest);
        fetch::download(&self.http, source, blob, &digest, &self.dir, &path).await?;
        self.downloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%digest, bytes = blob.size_bytes, secs = started.elapsed().as_secs_f64(),
            "image fetched from the controller");
        let lease = self.lease(digest, path);
        self.evict(in_use);
        Ok(lease)
    }

    /// Removes least recently used images until the cache fits its bound, sparing those in
    /// use, leased, or being fetched or verified.
    fn evict(&self, in_use: &HashSet<Digest>) {
        let mut entries = self.entries();
        let mut used: u64 = entries.iter().map(|e| e.size).sum();
        entries.sort_by_key(|e| e.last_used);
        let leased: HashSet<Digest> = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        for e in entries {
            if used <= self.max_bytes {
                break;
            }
            if in_use.contains(&e.digest) || leased.contains(&e.digest) {
                continue;
            }
            let lock = self.lock_of(&e.digest);
            let Ok(_busy) = lock.try_lock() else { continue };
            self.markers.remove(&e.digest);
            match std::fs::remove_file(&e.path) {
                Ok(()) => {
                    used -= e.size;
                    tracing::info!(digest = %e.digest, bytes = e.size, "image evicted from the cache");
                }
                Err(err) => {
                    tracing::warn!(digest = %e.digest, error = %err, "cannot evict an image")
                }
            }
        }
    }

    fn entries(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(self.dir.join("sha256")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let digest: Digest = e.file_name().to_str()?.parse().ok()?;
                let meta = e.metadata().ok()?;
                let written = meta.modified().ok()?;
                Some(Entry {
                    path: e.path(),
                    size: meta.len(),
                    last_used: self
                        .markers
                        .last_used(&digest)
                        .map_or(written, |used| used.max(written)),
                    digest,
                })
            })
            .collect()
    }

    /// How many times a cached image was hashed to verify it since the agent started.
    pub fn hashes(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }

    /// Whether the cached file of `digest` still hashes to it (off the async threads);
    /// remembered in its marker when the file had settled (see [`verified`]).
    async fn verify(&self, digest: &Digest, path: &Path) -> Result<bool> {
        let before = Seen::of(path).map_err(Error::io("stat", path))?;
        let began = std::time::SystemTime::now();
        let p = path.to_path_buf();
        self.hashes.fetch_add(1, Ordering::Relaxed);
        let found = tokio::task::spawn_blocking(move || Digest::of_file(&p))
            .await
            .map_err(|e| Error::Internal(format!("image verification panicked: {e}")))?
            .map_err(Error::io("read", path))?;
        if found != *digest {
            return Ok(false);
        }
        self.markers.record(digest, path, before, began);
        Ok(true)
    }

    /// Marks the image used now (the order of eviction): in its marker, or, without one,
    /// the image's own mtime (it is hashed at its next use anyway).
    fn touch(&self, digest: &Digest, path: &Path) {
        if self.markers.touch(digest) {
            return;
        }
        if let Err(e) =
            std::fs::File::open(path).and_then(|f| f.set_modified(std::time::SystemTime::now()))
        {
            tracing::debug!(path = %path.display(), error = %e, "cannot mark an image used");
        }
    }

    /// What the cache holds, for the host's inventory.
    pub fn report(&self, in_use: &HashSet<Digest>) -> ImageCacheReport {
        let mut images: Vec<CachedImage> = self
            .entries()
            .into_iter()
            .map(|e| CachedImage {
                digest: e.digest.to_string(),
                size_bytes: e.size,
                last_used: DateTime::<Utc>::from(e.last_used),
                in_use: in_use.contains(&e.digest),
            })
            .collect();
        images.sort_by_key(|i| std::cmp::Reverse(i.last_used));
        ImageCacheReport {
            max_bytes: self.max_bytes,
            used_bytes: images.iter().map(|i| i.size_bytes).sum(),
            downloads: self.downloads.load(Ordering::Relaxed),
            repairs: self.repairs.load(Ordering::Relaxed),
            images,
        }
    }
}

struct Entry {
    digest: Digest,
    path: PathBuf,
    size: u64,
    /// The later of the image's mtime (its download) and its marker's (its last use).
    last_used: std::time::SystemTime,
}

#[cfg(test)]
mod tests;
