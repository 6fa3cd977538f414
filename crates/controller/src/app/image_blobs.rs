//! The bytes of uploaded images, stored by content under the controller's data dir:
//!
//! ```text
//! <data_dir>/images/incoming/<uuid>.part   an upload being received (removed on any failure,
//!                                          and all of them at start: a crash leaves none)
//! <data_dir>/images/sha256/<hex>           a complete, inspected image, named by its digest
//! ```
//!
//! Two images with the same bytes share one file. Everything that touches the store goes
//! through [`ImageBlobs`] (receive, commit, open, remove), so an object store can replace the
//! directory later without changing its callers.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use nimbus_image::{Digest, Sha256Writer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Why receiving an upload failed; nothing of it is kept.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("the upload was cut off after {received} of {expected} bytes; nothing was kept")]
    Short { received: u64, expected: u64 },
    #[error("the upload sent more than the {expected} bytes its Content-Length announced")]
    Long { expected: u64 },
    #[error("the upload failed after {received} bytes ({detail}); nothing was kept")]
    Body { received: u64, detail: String },
    #[error("the controller cannot store the image: {0}")]
    Io(#[from] std::io::Error),
}

/// A received upload in `incoming/`: deleted when dropped unless committed.
#[derive(Debug)]
pub struct Incoming {
    path: PathBuf,
    pub digest: Digest,
    pub size: u64,
}

impl Incoming {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove an upload");
            }
        }
    }
}

/// Content-addressed image storage.
#[derive(Debug)]
pub struct ImageBlobs {
    root: PathBuf,
    /// Serialises commits and removals, so a blob being removed is never one an upload of
    /// the same bytes just committed against.
    lock: tokio::sync::Mutex<()>,
    /// One lock per digest being fetched from another controller, so that concurrent
    /// requests for a missing blob wait for a single download.
    fetching: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageBlobs {
    /// Opens (creating) the store under `data_dir`, removing uploads a crash left behind.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let root = data_dir.join("images");
        let incoming = root.join("incoming");
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming)?;
        }
        std::fs::create_dir_all(&incoming)?;
        std::fs::create_dir_all(root.join("sha256"))?;
        Ok(Self {
            root,
            lock: tokio::sync::Mutex::new(()),
            fetching: Default::default(),
        })
    }

    /// Whether the bytes of `digest` are stored here.
    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Digests of the blobs stored here (files not named by a digest are skipped).
    pub fn local_digests(&self) -> std::io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("sha256"))? {
            let name = entry?.file_name();
            if let Some(d) = name.to_str().and_then(|hex| hex.parse::<Digest>().ok()) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Held while `digest` is fetched from another controller: a second fetch of the same
    /// digest waits, then finds the blob stored.
    pub async fn fetch_guard(&self, digest: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self
                .fetching
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(digest.hex()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Where the bytes of `digest` live.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    /// Receives exactly `expected` bytes into `incoming/`, hashing them on the way.
    pub async fn receive<S, E>(&self, body: S, expected: u64) -> Result<Incoming, ReceiveError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let path = self
            .root
            .join("incoming")
            .join(format!("{}.part", uuid::Uuid::new_v4()));
        let mut file = tokio::fs::File::create(&path).await?;
        // From here on the guard removes the file whatever happens.
        let mut incoming = Incoming {
            path,
            digest: Sha256Writer::default().finish(),
            size: 0,
        };
        let mut hash = Sha256Writer::default();
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ReceiveError::Body {
                received: hash.bytes(),
                detail: e.to_string(),
            })?;
            if hash.bytes() + chunk.len() as u64 > expected {
                return Err(ReceiveError::Long { expected });
            }
            hash.update(&chunk);
            file.write_all(&chunk).await?;
        }
        if hash.bytes() != expected {
            return Err(ReceiveError::Short {
                received: hash.bytes(),
                expected,
            });
        }
        file.sync_all().await?;
        incoming.size = hash.bytes();
        incoming.digest = hash.finish();
        Ok(incoming)
    }

    /// Moves a received upload to its digest's place (or drops it if those bytes are stored
    /// already), then runs `record` under the store lock; if `record` fails, a blob this
    /// commit created is removed again. Returns what `record` returned.
    pub async fn commit<T, E, F>(&self, incoming: Incoming, record: F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: From<std::io::Error>,
    {
        let _held = self.lock.lock().await;
        let target = self.path(&incoming.digest);
        let created = !target.exists();
        if created {
            tokio::fs::rename(&incoming.path, &target).await?;
        }
        drop(incoming);
        let result = record.await;
        if result.is_err() && created {
            remove(&target).await;
        }
        result
    }

    /// Removes the bytes of `digest` if `still_used` (checked under the store lock) says no
    /// image names them any more; answers whether they went.
    pub async fn remove_unused<F>(&self, digest: &Digest, still_used: F) -> bool
    where
        F: std::future::Future<Output = bool>,
    {
        let _held = self.lock.lock().await;
        if still_used.await {
            return false;
        }
        remove(&self.path(digest)).await;
        true
    }

    /// Uploads being received now (their files in `incoming/`).
    pub fn incoming_count(&self) -> usize {
        std::fs::read_dir(self.root.join("incoming"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

async fn remove(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an image's bytes");
        }
    }
}
