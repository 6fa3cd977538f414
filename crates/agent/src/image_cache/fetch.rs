//! Downloading an image from the controller into the cache: streamed to `incoming/`, hashed
//! on the way, bounded by the announced size, then checked (digest, size, and the format
//! inspected again here: an agent trusts bytes it verified, not the wire) before the rename
//! that makes it visible.

use super::ImageSource;
use crate::error::{Error, Result};
use futures::StreamExt;
use nimbus_agent_api::ImageBlob;
use nimbus_image::{Digest, Sha256Writer};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// A download's file in `incoming/`, removed unless it made it into the cache.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn unavailable(digest: &Digest, why: impl std::fmt::Display) -> Error {
    Error::ImageUnavailable(format!(
        "cannot fetch image {digest} from the controller: {why}"
    ))
}

/// Fetches `blob` into `target` (inside `cache_dir`), checked: from the first controller of
/// the source that serves it (any controller serves every image; one that is down, or that
/// sent bytes that fail the checks, is passed over for the next).
pub async fn download(
    http: &reqwest::Client,
    source: &ImageSource,
    blob: &ImageBlob,
    digest: &Digest,
    cache_dir: &Path,
    target: &Path,
) -> Result<()> {
    let mut failed = None;
    for base in &source.controller_urls {
        match download_from(http, base, source, blob, digest, cache_dir, target).await {
            Ok(()) => return Ok(()),
            Err(e @ Error::ImageUnavailable(_)) => {
                tracing::warn!(controller = base, error = %e, "image download failed; trying the next controller");
                failed = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(failed.unwrap_or_else(|| unavailable(digest, "no controller URL is configured")))
}

async fn download_from(
    http: &reqwest::Client,
    base: &str,
    source: &ImageSource,
    blob: &ImageBlob,
    digest: &Digest,
    cache_dir: &Path,
    target: &Path,
) -> Result<()> {
    let url = format!(
        "{}/v1/internal/images/{}",
        base.trim_end_matches('/'),
        digest.hex()
    );
    let resp = crate::controller_link::authorize(http.get(&url), source.token.as_deref())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| unavailable(digest, e))?;
    let partial = Partial(
        cache_dir
            .join("incoming")
            .join(format!("{}.part", uuid::Uuid::new_v4())),
    );
    let mut file = tokio::fs::File::create(&partial.0)
        .await
        .map_err(Error::io("create", &partial.0))?;
    let mut hash = Sha256Writer::default();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| unavailable(digest, e))?;
        if hash.bytes() + chunk.len() as u64 > blob.size_bytes {
            return Err(unavailable(
                digest,
                "the controller sent more bytes than the image has",
            ));
        }
        hash.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(Error::io("write", &partial.0))?;
    }
    // Read-only from here on: nothing on this host writes a cached image (instance disks
    // are overlays), and a slip by a tool not running as root cannot either.
    file.set_permissions(std::fs::Permissions::from_mode(0o444))
        .await
        .map_err(Error::io("chmod", &partial.0))?;
    file.sync_all()
        .await
        .map_err(Error::io("sync", &partial.0))?;
    drop(file);
    let received = hash.bytes();
    let got = hash.finish();
    if received != blob.size_bytes || got != *digest {
        return Err(unavailable(
            digest,
            format!("received {received} bytes hashing to {got}; nothing was kept"),
        ));
    }
    check_format(&partial.0, blob, digest).await?;
    std::fs::rename(&partial.0, target).map_err(Error::io("rename", target))
}

/// Inspects the downloaded file and checks it is the format the spec says.
async fn check_format(path: &Path, blob: &ImageBlob, digest: &Digest) -> Result<()> {
    let p = path.to_path_buf();
    let found = tokio::task::spawn_blocking(move || nimbus_image::inspect_file(&p))
        .await
        .map_err(|e| Error::Internal(format!("image inspection panicked: {e}")))?
        .map_err(|e| unavailable(digest, e))?;
    if found.format.as_str() != blob.format {
        return Err(unavailable(
            digest,
            format!("it is {}, not {}", found.format.as_str(), blob.format),
        ));
    }
    Ok(())
}
