//! The copy pass of uploaded images' bytes (issue 12; see [`crate::app::image_copies`]): on
//! every controller, every few seconds,
//! - each digest some image names that this controller is not recorded as holding: if its
//!   file is here (kept from an earlier run, or an upload whose record failed), hashed and
//!   recorded; otherwise copied from a live holder;
//! - each file here that no image names any more (deleted through another controller) is
//!   removed;
//! - holder rows of controllers that are gone are forgotten.
//!
//! So once a pass ran after an upload, every live controller holds the image and any of them
//! can die without losing it.

use crate::app::App;
use crate::background::task::{PassError, Run, Task};
use std::time::Duration;

/// Time between two passes.
const INTERVAL: Duration = Duration::from_secs(3);

/// The copy pass.
pub struct ImageCopies;

#[async_trait::async_trait]
impl Task for ImageCopies {
    const NAME: &'static str = "image_copies";
    const RUN: Run = Run::EveryController;

    fn interval(&self, _app: &App) -> Duration {
        INTERVAL
    }

    async fn pass(&mut self, app: &App) -> Result<(), PassError> {
        let me = app.controller_id();
        for text in app.store().image_digests_missing_on(me).await? {
            let Ok(digest) = text.parse::<nimbus_image::Digest>() else {
                tracing::warn!(digest = text, "an image's digest does not parse; skipped");
                continue;
            };
            if app.image_blobs().has(&digest) && app.record_local_image_blob(&digest).await? {
                continue;
            }
            // The error names the image and is logged once here; the next pass tries again.
            if let Err(e) = app.ensure_image_blob(&digest).await {
                tracing::warn!(%digest, error = %e.message, "image bytes not copied here yet");
            }
        }
        sweep(app).await?;
        let forgotten = app.store().forget_gone_image_holders().await?;
        if forgotten > 0 {
            tracing::debug!(forgotten, "holders of gone controllers or images forgotten");
        }
        Ok(())
    }
}

/// Removes the files here that no image names any more.
async fn sweep(app: &App) -> Result<(), PassError> {
    let local = app.image_blobs().local_digests().map_err(|e| {
        crate::app::AppError::internal(format!("cannot list the stored images: {e}"))
    })?;
    for digest in local {
        if app.drop_unused_image_blob(&digest).await? {
            tracing::info!(%digest, "bytes of a deleted image removed from this controller");
        }
    }
    Ok(())
}
