//! Images: files registered by path that every host reads, or uploaded images (see
//! `image_upload`) that agents fetch from the controller.

use crate::app::{App, AppError, Caller};
use nimbus_api::{validate_name, ImageView, ImportImage};
use nimbus_image::Digest;
use nimbus_store::{Page, PageRequest};
use nimbus_store::{Scope, StoreError};
use std::collections::HashSet;
use std::path::Path;

fn check_file(what: &str, path: &Option<String>) -> Result<u64, AppError> {
    let Some(p) = path else { return Ok(0) };
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(AppError::bad_request(format!(
            "{what} path {p:?} must be absolute (every host reads it at that path)"
        )));
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| AppError::bad_request(format!("{what} {p:?} cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(AppError::bad_request(format!("{what} {p:?} is not a file")));
    }
    Ok(meta.len())
}

impl App {
    /// Registers an image whose files exist at the same absolute paths on every host.
    pub async fn import_image(&self, req: &ImportImage) -> Result<ImageView, AppError> {
        validate_name(&req.name).map_err(|e| {
            AppError::bad_request(format!("invalid image name {:?}: {e}", req.name))
        })?;
        if req.kernel.is_none() && req.disk.is_none() {
            return Err(AppError::bad_request(
                "an image needs a kernel (direct boot) or a disk",
            ));
        }
        if req.initrd.is_some() && req.kernel.is_none() {
            return Err(AppError::bad_request("an initrd needs a kernel"));
        }
        let size = check_file("kernel", &req.kernel)?
            + check_file("initrd", &req.initrd)?
            + check_file("disk", &req.disk)?;
        Ok(self.store().create_image(req, size).await?)
    }

    /// Registers an image unless one of that name exists.
    pub async fn ensure_image(&self, req: &ImportImage) -> Result<(), AppError> {
        match self
            .store()
            .get_image_in(nimbus_store::PATH_IMAGE_PROJECT, &req.name)
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound { .. }) => self.import_image(req).await.map(|_| ()),
            Err(e) => Err(e.into()),
        }
    }

    /// Hosts whose cache holds the bytes of image `name` of `project`, by their agents' last
    /// reports (none for images registered by path, which every host reads in place).
    pub async fn hosts_holding(
        &self,
        project: &str,
        name: &str,
    ) -> Result<HashSet<String>, AppError> {
        let img = self.store().get_image_in(project, name).await?;
        let Some(digest) = img.digest else {
            return Ok(HashSet::new());
        };
        Ok(self
            .list_hosts()
            .await?
            .into_iter()
            .filter(|h| {
                h.image_cache
                    .as_ref()
                    .is_some_and(|c| c.images.iter().any(|i| i.digest == digest))
            })
            .map(|h| h.name)
            .collect())
    }

    /// Opens the bytes of `digest` for an agent, if an image names them: their length and
    /// the file. Bytes this controller lacks are first fetched from another controller.
    pub async fn open_image_blob(&self, digest: &str) -> Result<(u64, tokio::fs::File), AppError> {
        let digest = self.named_digest(digest).await?;
        self.ensure_image_blob(&digest).await?;
        self.open_stored_blob(&digest).await
    }

    /// Opens the bytes of `digest` for another controller: only a copy held here (a peer
    /// asks only holders; fetching on its behalf could loop).
    pub async fn open_held_image_blob(
        &self,
        digest: &str,
    ) -> Result<(u64, tokio::fs::File), AppError> {
        let digest = self.named_digest(digest).await?;
        self.open_stored_blob(&digest).await
    }

    /// `digest` parsed, if some image names it.
    async fn named_digest(&self, digest: &str) -> Result<Digest, AppError> {
        let digest: Digest = digest
            .parse()
            .map_err(|e| AppError::bad_request(format!("{e}")))?;
        if !self.store().image_digest_used(&digest.to_string()).await? {
            return Err(AppError::not_found(format!("no image has digest {digest}")));
        }
        Ok(digest)
    }

    async fn open_stored_blob(&self, digest: &Digest) -> Result<(u64, tokio::fs::File), AppError> {
        let path = self.image_blobs().path(digest);
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "an image's bytes are missing");
            AppError::unavailable(format!(
                "the bytes of image {digest} are missing on this controller"
            ))
        })?;
        let len = file.metadata().await.map_err(AppError::from)?.len();
        Ok((len, file))
    }

    /// The caller's project's images and the public ones.
    pub async fn list_images(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<ImageView>, AppError> {
        Ok(self.store().list_images_page(&caller.scope(), page).await?)
    }

    /// An image the caller may boot.
    pub async fn get_image(&self, caller: &Caller, name: &str) -> Result<ImageView, AppError> {
        let mut img = self.store().get_image(name, &caller.scope()).await?;
        if let Some(digest) = &img.digest {
            img.copies = Some(self.image_copies(caller, digest).await?);
        }
        Ok(img)
    }

    /// Which live controllers hold the bytes of `digest` (their URLs for admins only: the
    /// controllers' addresses are the operator's).
    async fn image_copies(
        &self,
        caller: &Caller,
        digest: &str,
    ) -> Result<nimbus_api::ImageCopies, AppError> {
        let ttl = self.config().lease_ttl;
        let holders = self.store().live_image_holders(digest, ttl).await?;
        let controllers = self.store().list_controllers(ttl).await?.len();
        let admin = caller.role == nimbus_api::Role::Admin;
        Ok(nimbus_api::ImageCopies {
            held: holders.len() as u32,
            controllers: controllers as u32,
            held_by: if admin {
                holders.into_iter().map(|h| h.url).collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Deletes image `name` as the caller's project resolves it (its own first, then a
    /// public one), if it is the project's own or the caller is an admin; refused while
    /// instances use it. An uploaded image's bytes go when no image names them any more;
    /// files registered by path stay.
    pub async fn delete_image(&self, caller: &Caller, name: &str) -> Result<(), AppError> {
        caller.require_write()?;
        let img = self.store().get_image(name, &caller.scope()).await?;
        if img.project != caller.project && caller.role != nimbus_api::Role::Admin {
            return Err(AppError::new(
                nimbus_api::ErrorCode::Forbidden,
                format!(
                    "image {name:?} belongs to project {}; only its project or an admin may delete it",
                    img.project
                ),
            ));
        }
        // The owner's scope names exactly this row: a project's own image wins there.
        let img = self
            .store()
            .delete_image(name, &Scope::project(&img.project))
            .await?;
        if let Some(digest) = img.digest.as_deref().and_then(|d| d.parse::<Digest>().ok()) {
            // Other controllers remove their copies at their next copy pass.
            self.drop_unused_image_blob(&digest).await?;
        }
        Ok(())
    }
}

/// Refuses a flavor whose disk is smaller than the image's (the instance disk grows the
/// image to the flavor's size; it can never shrink it).
pub(crate) fn check_image_fits(img: &ImageView, disk_gib: u64) -> Result<(), AppError> {
    match img.virtual_size_bytes {
        Some(v) if v > disk_gib << 30 => Err(AppError::bad_request(format!(
            "image {:?} is a {:.1} GiB disk; it needs a flavor with at least {} GiB of disk",
            img.name,
            v as f64 / (1u64 << 30) as f64,
            v.div_ceil(1 << 30)
        ))),
        _ => Ok(()),
    }
}

/// What an agent fetches for an uploaded image (none for images registered by path).
pub(crate) fn blob_of(img: &ImageView) -> Option<nimbus_agent_api::ImageBlob> {
    Some(nimbus_agent_api::ImageBlob {
        digest: img.digest.clone()?,
        format: img.format.clone()?,
        size_bytes: img.size_bytes,
    })
}
