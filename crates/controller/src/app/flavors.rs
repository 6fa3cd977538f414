//! Flavors.

use crate::app::{App, AppError};
use nimbus_api::{validate_name, CreateFlavor, FlavorView};
use nimbus_store::{Page, PageRequest};

impl App {
    pub async fn create_flavor(&self, req: &CreateFlavor) -> Result<FlavorView, AppError> {
        validate_name(&req.name).map_err(|e| {
            AppError::bad_request(format!("invalid flavor name {:?}: {e}", req.name))
        })?;
        if !(1..=256).contains(&req.vcpus) {
            return Err(AppError::bad_request("vcpus must be between 1 and 256"));
        }
        if !(64..=4 * 1024 * 1024).contains(&req.memory_mib) {
            return Err(AppError::bad_request(
                "memory_mib must be between 64 and 4194304 (4 TiB)",
            ));
        }
        if !(1..=65536).contains(&req.disk_gib) {
            return Err(AppError::bad_request(
                "disk_gib must be between 1 and 65536",
            ));
        }
        Ok(self
            .store()
            .create_flavor(&req.name, req.vcpus, req.memory_mib, req.disk_gib)
            .await?)
    }

    pub async fn list_flavors(&self, page: &PageRequest) -> Result<Page<FlavorView>, AppError> {
        Ok(self.store().list_flavors_page(page).await?)
    }

    pub async fn get_flavor(&self, name: &str) -> Result<FlavorView, AppError> {
        Ok(self.store().get_flavor(name).await?)
    }

    /// Deletes a flavor; instances created from it keep their sizes.
    pub async fn delete_flavor(&self, name: &str) -> Result<(), AppError> {
        Ok(self.store().delete_flavor(name).await?)
    }
}
