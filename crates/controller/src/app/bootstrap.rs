//! First-start setup: the admin token, default flavors, the default image.

use crate::app::auth::{generate_token, hash_token};
use crate::app::{App, AppError};
use nimbus_api::{Role, DEFAULT_PROJECT};
use nimbus_store::{NewToken, StoreError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Id of the admin token created at first start.
const ADMIN_TOKEN_ID: &str = "admin";

/// Flavors every new cloud has, from "little" to "big" machines: (name, vCPUs, MiB, GiB).
pub const DEFAULT_FLAVORS: &[(&str, u32, u64, u64)] = &[
    ("tiny", 1, 256, 1),
    ("small", 1, 512, 2),
    ("medium", 2, 1024, 4),
    ("large", 4, 4096, 8),
];

/// Path of the file holding the admin token for the local CLI.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

impl App {
    /// Idempotent first-start setup.
    pub async fn bootstrap(&self) -> Result<(), AppError> {
        self.ensure_admin_token().await?;
        for (name, vcpus, mem, disk) in DEFAULT_FLAVORS {
            match self.store().create_flavor(name, *vcpus, *mem, *disk).await {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(img) = &self.config().default_image {
            self.ensure_image(img).await?;
        }
        Ok(())
    }

    /// Creates the admin token at first start and writes it (mode 0600) to the data dir for
    /// the local CLI. If the file was lost, a new token replaces the old one.
    async fn ensure_admin_token(&self) -> Result<(), AppError> {
        let path = admin_token_path(&self.config().data_dir);
        let exists = self.store().token_exists(ADMIN_TOKEN_ID).await?;
        if exists && path.exists() {
            return Ok(());
        }
        let token = generate_token();
        write_secret(&path, &token).map_err(|e| {
            AppError::internal(format!(
                "cannot write the admin token to {}: {e}",
                path.display()
            ))
        })?;
        let hash = hash_token(&token);
        if exists {
            self.store()
                .replace_token_hash(ADMIN_TOKEN_ID, &hash)
                .await?;
        } else {
            self.store()
                .insert_token(&NewToken {
                    id: ADMIN_TOKEN_ID,
                    name: Some("bootstrap admin"),
                    hash: &hash,
                    role: Role::Admin.as_str(),
                    project: DEFAULT_PROJECT,
                    expires_at: None,
                })
                .await?;
        }
        tracing::info!(path = %path.display(), "admin token written");
        Ok(())
    }
}

/// Writes a secret readable only by its owner.
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}
