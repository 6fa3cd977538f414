//! Images: files on the hosts that instance disks overlay.

use crate::app::{App, AppError};
use nimbus_api::{validate_name, ImageView, ImportImage};
use nimbus_store::StoreError;
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
        match self.store().get_image(&req.name).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound { .. }) => self.import_image(req).await.map(|_| ()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list_images(&self) -> Result<Vec<ImageView>, AppError> {
        Ok(self.store().list_images().await?)
    }

    pub async fn get_image(&self, name: &str) -> Result<ImageView, AppError> {
        Ok(self.store().get_image(name).await?)
    }

    /// Unregisters an image (its files stay); refused while instances use it.
    pub async fn delete_image(&self, name: &str) -> Result<(), AppError> {
        Ok(self.store().delete_image(name).await?)
    }
}
