//! Uploading an image: stream to disk while hashing, check the digest, inspect the format
//! in Rust before any tool opens the file, store by digest, record within the quota.
//! Any failure on the way keeps nothing: no row, no file, no quota used.

use crate::app::image_blobs::{Incoming, ReceiveError};
use crate::app::{App, AppError, Caller};
use bytes::Bytes;
use futures::Stream;
use nimbus_api::{validate_name, ErrorCode, ImageView, UploadCheck, UploadImage};
use nimbus_image::{Digest, FormatError};
use nimbus_store::NewImage;

/// Largest image accepted (1 TiB): a bound on what one request may write to the controller.
pub const MAX_IMAGE_BYTES: u64 = 1 << 40;

impl From<ReceiveError> for AppError {
    fn from(e: ReceiveError) -> Self {
        match e {
            ReceiveError::Io(io) => {
                tracing::error!(error = %io, "cannot store an uploaded image");
                AppError::unavailable(
                    "the controller cannot store the image now (see its log); nothing was kept",
                )
            }
            other => AppError::bad_request(other.to_string()),
        }
    }
}

impl From<std::io::Error> for AppError {
    fn from(e: std::io::Error) -> Self {
        ReceiveError::Io(e).into()
    }
}

fn refused(e: FormatError) -> AppError {
    AppError::bad_request(format!("{e}; nothing was kept"))
}

impl App {
    /// Receives image `name`'s bytes (`length` of them, as the request's Content-Length
    /// announced) into the caller's project.
    pub async fn upload_image<S, E>(
        &self,
        caller: &Caller,
        name: &str,
        q: &UploadImage,
        length: Option<u64>,
        body: S,
    ) -> Result<ImageView, AppError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let expected = self.admit_upload(caller, name, q.public, length).await?;
        let want: Option<Digest> = q
            .sha256
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| AppError::bad_request(format!("{e}")))?;
        let incoming = self.image_blobs().receive(body, expected).await?;
        if let Some(want) = want.filter(|w| *w != incoming.digest) {
            return Err(AppError::bad_request(format!(
                "digest mismatch: the client computed {want}, the controller received {}; \
                 nothing was kept (retry the upload)",
                incoming.digest
            )));
        }
        let path = incoming.path().to_path_buf();
        let found = tokio::task::spawn_blocking(move || nimbus_image::inspect_file(&path))
            .await
            .map_err(|e| AppError::internal(format!("image inspection panicked: {e}")))?
            .map_err(refused)?;
        let new = NewImage {
            name: name.to_string(),
            project: caller.project.clone(),
            public: q.public,
            digest: incoming.digest.to_string(),
            format: found.format.as_str().to_string(),
            virtual_size: found.virtual_size,
            size_bytes: incoming.size,
            firmware: q.firmware.unwrap_or_default(),
            ready_marker: match q.ready_marker.as_deref() {
                None => Some(nimbus_agent_api::CLOUD_INIT_READY_MARKER.to_string()),
                Some("") => None,
                Some(line) => Some(line.to_string()),
            },
        };
        tracing::info!(image = name, project = %new.project, digest = %new.digest,
            format = %new.format, bytes = new.size_bytes, "image uploaded");
        self.keep_image(incoming, &new).await
    }

    /// Moves received bytes into the store by digest and records the image (within the
    /// quota); if the record fails, bytes this call stored go again.
    pub(crate) async fn keep_image(
        &self,
        incoming: Incoming,
        new: &NewImage,
    ) -> Result<ImageView, AppError> {
        let store = self.store();
        let digest = incoming.digest.to_string();
        let image = self
            .image_blobs()
            .commit(incoming, async {
                store
                    .insert_uploaded_image(new)
                    .await
                    .map_err(AppError::from)
            })
            .await?;
        // Held here, hashed on receipt: other controllers copy it from here. If this fails,
        // the copy pass records it later.
        if let Err(e) = store.add_image_holder(&digest, self.controller_id()).await {
            tracing::warn!(%digest, error = %e, "cannot record this controller as the image's holder yet");
        }
        Ok(image)
    }

    /// Whether an upload of `check.size_bytes` bytes as image `name` would be admitted now:
    /// what [`App::upload_image`] checks before it reads a byte, asked before the client
    /// sends any (the upload checks it all again).
    pub async fn check_upload(
        &self,
        caller: &Caller,
        name: &str,
        check: &UploadCheck,
    ) -> Result<(), AppError> {
        self.admit_upload(caller, name, check.public, Some(check.size_bytes))
            .await
            .map(|_| ())
    }

    /// Checks everything that can be checked before a byte is received; returns the number
    /// of bytes to receive.
    async fn admit_upload(
        &self,
        caller: &Caller,
        name: &str,
        public: bool,
        length: Option<u64>,
    ) -> Result<u64, AppError> {
        caller.require_write()?;
        if public {
            caller.require_admin().map_err(|_| {
                AppError::new(
                    ErrorCode::Forbidden,
                    "only an admin may publish an image to every project; upload it without --public",
                )
            })?;
        }
        validate_name(name)
            .map_err(|e| AppError::bad_request(format!("invalid image name {name:?}: {e}")))?;
        let length = length.ok_or_else(|| {
            AppError::bad_request("an upload needs a Content-Length (the image's size in bytes)")
        })?;
        if length == 0 || length > MAX_IMAGE_BYTES {
            return Err(AppError::new(
                ErrorCode::PayloadTooLarge,
                format!("an image must have 1 to {MAX_IMAGE_BYTES} bytes, not {length}"),
            ));
        }
        self.store()
            .check_image_name_free(&caller.project, name, public)
            .await?;
        self.store()
            .check_image_quota(&caller.project, length)
            .await?;
        Ok(length)
    }
}
