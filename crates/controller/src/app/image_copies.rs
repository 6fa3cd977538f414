//! Uploaded images' bytes reachable from every controller (issue 12). Each controller keeps
//! its own content-addressed copies ([`super::image_blobs`]); the database records which
//! controllers hold which digest (`image_holders`, store migration 0031):
//!
//! - a controller asked for bytes it lacks (an agent's fetch) fetches them first from a live
//!   holder over the controllers' mutual TLS (`GET /v1/internal/peers/images/{hex}`, a
//!   controller certificate of the cloud's CA only), checks the length and the sha256
//!   against the image's, stores them, records itself as a holder, then serves them: bytes
//!   that do not hash to the digest are never kept nor served;
//! - a background pass on every controller (`background::image_copies`) copies each blob it
//!   lacks the same way, and records what it finds on disk (hashed first), so a holder's
//!   death loses no image once the pass ran;
//! - a blob on no live controller gives an error naming the image and what to do.
//!
//! The holders table names digests only: an object store can replace the copies later.

use crate::app::image_blobs::ReceiveError;
use crate::app::{App, AppError};
use futures::TryStreamExt;
use nimbus_image::Digest;
use nimbus_store::{BlobHolder, Scope};

/// Why fetching a blob from one holder failed (the next holder is tried).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    #[error("it sent bytes hashing to {got}, not {want}; nothing was kept")]
    Mismatch { got: Digest, want: Digest },
    #[error("{0}")]
    Record(#[from] AppError),
}

impl App {
    /// Makes sure this controller holds a verified copy of `digest` (named by an image),
    /// fetching it from a live controller that holds one.
    pub(crate) async fn ensure_image_blob(&self, digest: &Digest) -> Result<(), AppError> {
        if self.image_blobs().has(digest) {
            return Ok(());
        }
        let _fetching = self.image_blobs().fetch_guard(digest).await;
        if self.image_blobs().has(digest) {
            return Ok(());
        }
        let text = digest.to_string();
        let names = self.store().image_names_of_digest(&text).await?;
        let Some(first) = names.first() else {
            return Err(AppError::not_found(format!("no image has digest {digest}")));
        };
        let size = self.store().get_image(first, &Scope::All).await?.size_bytes;
        let me = self.controller_id();
        // A row saying we hold it while the file is gone (removed by hand) is wrong: drop it.
        self.store().remove_image_holder(&text, me).await?;
        let holders = self
            .store()
            .live_image_holders(&text, self.config().lease_ttl)
            .await?;
        let tried =
            match from_first_holder(&holders, me, |h| self.fetch_image_blob(h, digest, size)).await
            {
                Ok(copied) => {
                    tracing::info!(%digest, from = %copied.from, bytes = size, ms = copied.ms,
                    "image bytes copied from another controller");
                    return Ok(());
                }
                Err(tried) => tried,
            };
        Err(AppError::unavailable(format!(
            "the bytes of image {} ({digest}) are not on this controller and {tried}; \
             if the controllers that held them are gone, upload the image again",
            names.join(", ")
        )))
    }

    /// Streams `digest` from `holder`, checks it and stores it as held here.
    async fn fetch_image_blob(
        &self,
        holder: &BlobHolder,
        digest: &Digest,
        size: u64,
    ) -> Result<(), FetchError> {
        let url = format!(
            "{}/v1/internal/peers/images/{}",
            holder.url.trim_end_matches('/'),
            digest.hex()
        );
        let resp = self
            .tls()
            .peer_http
            .get(&url)
            .send()
            .await?
            .error_for_status()?;
        let body = resp.bytes_stream().map_err(|e| e.to_string());
        let incoming = self.image_blobs().receive(body, size).await?;
        if incoming.digest != *digest {
            return Err(FetchError::Mismatch {
                got: incoming.digest,
                want: *digest,
            });
        }
        let store = self.store();
        let (text, me) = (digest.to_string(), self.controller_id());
        self.image_blobs()
            .commit(incoming, async {
                store
                    .add_image_holder(&text, me)
                    .await
                    .map_err(AppError::from)
            })
            .await?;
        Ok(())
    }

    /// Records this controller as a holder of `digest`, whose file is here, once its bytes
    /// hash to it (a damaged file is removed instead, and fetched again later). Answers
    /// whether it is held.
    pub(crate) async fn record_local_image_blob(&self, digest: &Digest) -> Result<bool, AppError> {
        let path = self.image_blobs().path(digest);
        let hashed = tokio::task::spawn_blocking(move || Digest::of_file(&path))
            .await
            .map_err(|e| AppError::internal(format!("hashing an image panicked: {e}")))?;
        match hashed {
            Ok(got) if got == *digest => {
                self.store()
                    .add_image_holder(&digest.to_string(), self.controller_id())
                    .await?;
                Ok(true)
            }
            Ok(got) => {
                tracing::warn!(%digest, %got, "a stored image's bytes are damaged; removed");
                self.image_blobs()
                    .remove_unused(digest, async { false })
                    .await;
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot read a stored image's bytes");
                Ok(false)
            }
        }
    }

    /// Removes this controller's copy of `digest` and its holder row if no image names the
    /// digest any more (checked under the blob store's lock; when unsure, the copy stays: an
    /// orphan file is better than a lost image). Answers whether it went.
    pub(crate) async fn drop_unused_image_blob(&self, digest: &Digest) -> Result<bool, AppError> {
        let store = self.store();
        let text = digest.to_string();
        let removed = self
            .image_blobs()
            .remove_unused(digest, async {
                store.image_digest_used(&text).await.unwrap_or(true)
            })
            .await;
        if removed {
            store
                .remove_image_holder(&text, self.controller_id())
                .await?;
        }
        Ok(removed)
    }
}

/// A copy made by [`from_first_holder`].
pub(crate) struct Copied<T> {
    pub value: T,
    /// The holder's URL.
    pub from: String,
    pub ms: u64,
}

/// Tries `copy` from each live holder but this controller (`me`), freshest first, until
/// one succeeds; each failure is logged. Otherwise answers why none could give a copy
/// (`no live controller holds one`, or each holder's failure), for the caller's message.
pub(crate) async fn from_first_holder<'h, T, E, F, Fut>(
    holders: &'h [BlobHolder],
    me: uuid::Uuid,
    mut copy: F,
) -> Result<Copied<T>, String>
where
    F: FnMut(&'h BlobHolder) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut failures = Vec::new();
    for holder in holders.iter().filter(|h| h.controller != me) {
        let started = std::time::Instant::now();
        match copy(holder).await {
            Ok(value) => {
                return Ok(Copied {
                    value,
                    from: holder.url.clone(),
                    ms: started.elapsed().as_millis() as u64,
                })
            }
            Err(e) => {
                tracing::warn!(from = %holder.url, error = %e, "cannot copy from another controller");
                failures.push(format!("{}: {e}", holder.url));
            }
        }
    }
    Err(if failures.is_empty() {
        "no live controller holds one".to_string()
    } else {
        format!("every live holder failed ({})", failures.join("; "))
    })
}
