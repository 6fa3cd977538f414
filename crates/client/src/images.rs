//! Image uploads: the file streamed from disk (never held in memory whole).

use crate::{Client, ClientError};
use futures::StreamExt;
use nimbus_api::{ImageView, UploadCheck, UploadImage};
use reqwest::Method;
use std::path::Path;
use std::time::Duration;

/// The slowest upload rate a request is given time for (bytes per second).
const MIN_UPLOAD_RATE: u64 = 1 << 20;

impl Client {
    /// Streams the file at `path` as image `name`; `on_progress` gets the bytes sent so far.
    /// Answers the image once the controller stored and inspected it (a `sha256` in `q` is
    /// checked against what it received).
    pub async fn upload_image(
        &self,
        name: &str,
        path: &Path,
        q: &UploadImage,
        mut on_progress: impl FnMut(u64) + Send + Sync + 'static,
    ) -> Result<ImageView, ClientError> {
        let file_err = |source| ClientError::File {
            path: path.display().to_string(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(file_err)?;
        let len = file.metadata().await.map_err(file_err)?.len();
        let mut sent = 0u64;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(move |c| {
            if let Ok(chunk) = &c {
                sent += chunk.len() as u64;
                on_progress(sent);
            }
            c
        });
        let timeout = Duration::from_secs(120 + len / MIN_UPLOAD_RATE);
        let r = self
            .req(Method::POST, &format!("/v1/images/{name}/upload"))
            .query(q)
            .header("content-type", "application/octet-stream")
            .header("content-length", len)
            .timeout(timeout)
            .body(reqwest::Body::wrap_stream(stream));
        self.send(r).await
    }

    /// Asks whether an upload of `check.size_bytes` bytes as image `name` would be admitted
    /// now: the reason it would not (a name taken, a quota) comes back as the error, before
    /// a byte is sent.
    pub async fn check_image_upload(
        &self,
        name: &str,
        check: &UploadCheck,
    ) -> Result<(), ClientError> {
        self.post(&format!("/v1/images/{name}/upload-check"), check)
            .await
    }

    /// Bakes the stopped `instance`'s disk into image `name`.
    pub async fn create_image_from_instance(
        &self,
        name: &str,
        req: &nimbus_api::CreateImageFromInstance,
    ) -> Result<ImageView, ClientError> {
        let r = self
            .req(Method::POST, &format!("/v1/images/{name}/from-instance"))
            .json(req)
            .timeout(Duration::from_secs(3600));
        self.send(r).await
    }

    /// An image the project may boot.
    pub async fn image(&self, name: &str) -> Result<ImageView, ClientError> {
        self.get(&format!("/v1/images/{name}")).await
    }
}
