//! Images: registered by path (admin, public) or uploaded by a project and stored by digest.
//!
//! Names are unique per project (the key is `(project, name)`), so two projects may each
//! have their own `app-golden`, and a project's private names neither collide with nor
//! reveal another's. A project sees its own images and the public ones; a name resolves to
//! the project's own image first, then to a public one; a private image of another project
//! answers not found. Public names are unique among public images, so that resolution has
//! at most one public candidate. An instance records the project of the image it boots.

use crate::locks::lock_image;
use crate::page::{KeyColumn, Keyset, Page, PageRequest};
use crate::quotas::check_quota;
use crate::{time, Scope, Store, StoreError};
use nimbus_api::{Firmware, ImageView, ImportImage};
use sqlx::{Any, Row, Transaction};

/// An uploaded image whose bytes are stored and inspected.
#[derive(Debug, Clone, PartialEq)]
pub struct NewImage {
    pub name: String,
    pub project: String,
    pub public: bool,
    /// `sha256:<hex>`.
    pub digest: String,
    /// `qcow2` or `raw`.
    pub format: String,
    pub virtual_size: u64,
    pub size_bytes: u64,
    pub firmware: Firmware,
    /// Console line that says the guest is up, if any.
    pub ready_marker: Option<String>,
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<ImageView, StoreError> {
    let firmware: String = r.try_get("firmware")?;
    Ok(ImageView {
        name: r.try_get("name")?,
        project: r.try_get("project")?,
        public: r.try_get::<i64, _>("public")? != 0,
        kernel: r.try_get("kernel")?,
        initrd: r.try_get("initrd")?,
        cmdline: r.try_get("cmdline")?,
        disk: r.try_get("disk")?,
        ready_marker: r.try_get("ready_marker")?,
        size_bytes: r.try_get::<i64, _>("size_bytes")? as u64,
        digest: r.try_get("digest")?,
        format: r.try_get("format")?,
        virtual_size_bytes: r
            .try_get::<Option<i64>, _>("virtual_size")?
            .map(|v| v as u64),
        firmware: Firmware::parse(&firmware)
            .ok_or_else(|| StoreError::Corrupt(format!("image firmware {firmware:?}")))?,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
        copies: None,
    })
}

/// The condition (parameter `$n`) for images `scope` may see: its own and public ones.
fn visible(scope: &Scope, n: usize) -> String {
    match scope {
        Scope::All => "1 = 1".into(),
        Scope::Project(_) => format!("(public = 1 OR project = ${n})"),
    }
}

/// The project of images registered by path (admin, public).
pub const PATH_IMAGE_PROJECT: &str = "default";

/// Refuses a public image `name` of `project` when another project already has a public
/// image of that name (public images are visible to all, so saying so reveals nothing):
/// a name then resolves to at most one public image.
async fn refuse_public_name_taken(
    tx: &mut Transaction<'_, Any>,
    project: &str,
    name: &str,
) -> Result<(), StoreError> {
    let other: Option<String> = sqlx::query(
        "SELECT project FROM images WHERE name = $1 AND public = 1 AND project <> $2 LIMIT 1",
    )
    .bind(name)
    .bind(project)
    .fetch_optional(&mut **tx)
    .await?
    .map(|r| r.try_get("project"))
    .transpose()?;
    match other {
        Some(owner) => Err(StoreError::Conflict(format!(
            "a public image {name:?} already exists (project {owner}); choose another name"
        ))),
        None => Ok(()),
    }
}

impl Store {
    /// Registers an image by path: public, in the default project.
    pub async fn create_image(
        &self,
        img: &ImportImage,
        size_bytes: u64,
    ) -> Result<ImageView, StoreError> {
        let mut tx = self.begin().await?;
        refuse_public_name_taken(&mut tx, PATH_IMAGE_PROJECT, &img.name).await?;
        sqlx::query(
            "INSERT INTO images (project, public, name, kernel, initrd, cmdline, disk, ready_marker, \
             size_bytes, created_at) VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(PATH_IMAGE_PROJECT)
        .bind(&img.name)
        .bind(img.kernel.clone())
        .bind(img.initrd.clone())
        .bind(img.cmdline.clone())
        .bind(img.disk.clone())
        .bind(img.ready_marker.clone())
        .bind(size_bytes as i64)
        .bind(time::now())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::unique_or(e, || {
                format!(
                    "image {:?} already exists in project {PATH_IMAGE_PROJECT}",
                    img.name
                )
            })
        })?;
        tx.commit().await?;
        self.get_image_in(PATH_IMAGE_PROJECT, &img.name).await
    }

    /// Whether `project` could add an image `name` now (a quick refusal before an upload or
    /// a bake starts; the insert checks again): refused if the project has one of that name,
    /// or, for a public image, if another project has a public one. Another project's
    /// private image of that name is no conflict and is never mentioned.
    pub async fn check_image_name_free(
        &self,
        project: &str,
        name: &str,
        public: bool,
    ) -> Result<(), StoreError> {
        match self.get_image_in(project, name).await {
            Ok(_) => {
                return Err(StoreError::Conflict(format!(
                    "image {name:?} already exists in project {project}; choose another name"
                )))
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        if public {
            let mut tx = self.begin().await?;
            refuse_public_name_taken(&mut tx, project, name).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Whether `project` could add an image of `size_bytes` now (a quick refusal before an
    /// upload starts; [`Store::insert_uploaded_image`] checks again under the quota lock).
    pub async fn check_image_quota(
        &self,
        project: &str,
        size_bytes: u64,
    ) -> Result<(), StoreError> {
        let limits = self.quota(project).await?;
        let in_use = self.quota_usage(project).await?;
        let want = nimbus_api::QuotaUsage {
            image_mib: size_bytes.div_ceil(1 << 20),
            ..Default::default()
        };
        Ok(crate::quotas::admit(project, &limits, &in_use, &want)?)
    }

    /// Records an uploaded image once its bytes are stored, inside the project's quota.
    pub async fn insert_uploaded_image(&self, new: &NewImage) -> Result<ImageView, StoreError> {
        let mut tx = self.begin().await?;
        let want = nimbus_api::QuotaUsage {
            image_mib: new.size_bytes.div_ceil(1 << 20),
            ..Default::default()
        };
        check_quota(&mut tx, &new.project, &want).await?;
        if new.public {
            refuse_public_name_taken(&mut tx, &new.project, &new.name).await?;
        }
        sqlx::query(
            "INSERT INTO images (name, project, public, digest, format, virtual_size, firmware, \
             size_bytes, created_at, ready_marker) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&new.name)
        .bind(&new.project)
        .bind(new.public as i64)
        .bind(&new.digest)
        .bind(&new.format)
        .bind(new.virtual_size.min(i64::MAX as u64) as i64)
        .bind(new.firmware.as_str())
        .bind(new.size_bytes.min(i64::MAX as u64) as i64)
        .bind(time::now())
        .bind(new.ready_marker.clone())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            // Names only the caller's own project: another project's image of that name,
            // private or public, is no conflict.
            StoreError::unique_or(e, || {
                format!(
                    "image {:?} already exists in project {}",
                    new.name, new.project
                )
            })
        })?;
        tx.commit().await?;
        self.get_image_in(&new.project, &new.name).await
    }

    /// Image `name` as `scope` resolves it: a project's own image first, else a public one
    /// (a private image of another project is not found). [`Scope::All`] (the controller
    /// itself) prefers a public image, then the first project by name.
    pub async fn get_image(&self, name: &str, scope: &Scope) -> Result<ImageView, StoreError> {
        let query = match scope {
            Scope::Project(project) => sqlx::query(
                "SELECT * FROM images WHERE name = $1 AND (public = 1 OR project = $2) \
                 ORDER BY CASE WHEN project = $3 THEN 0 ELSE 1 END, project LIMIT 1",
            )
            .bind(name)
            .bind(project.as_str())
            .bind(project.as_str()),
            Scope::All => sqlx::query(
                "SELECT * FROM images WHERE name = $1 ORDER BY public DESC, project LIMIT 1",
            )
            .bind(name),
        };
        let row = query
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("image", name))?;
        from_row(&row)
    }

    /// The image `name` of `project` exactly (how an instance refers to the image it boots).
    pub async fn get_image_in(&self, project: &str, name: &str) -> Result<ImageView, StoreError> {
        let row = sqlx::query("SELECT * FROM images WHERE project = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("image", name))?;
        from_row(&row)
    }

    /// The images `scope` may see.
    pub async fn list_images(&self, scope: &Scope) -> Result<Vec<ImageView>, StoreError> {
        let sql = format!(
            "SELECT * FROM images WHERE {} ORDER BY name, project",
            visible(scope, 1)
        );
        let rows = scope.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// One page of the images `scope` may see, by name.
    pub async fn list_images_page(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<ImageView>, StoreError> {
        const KEY: Keyset =
            Keyset::ascending(&[KeyColumn::text("name"), KeyColumn::text("project")]);
        let filter = visible(scope, 1);
        let rows = KEY
            .fetch(
                &self.pool,
                page,
                "SELECT * FROM images",
                &filter,
                &scope.values(),
            )
            .await?;
        rows.try_map(from_row)
    }

    /// Whether any image names `digest` (its stored bytes are still needed).
    pub async fn image_digest_used(&self, digest: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM images WHERE digest = $1")
            .bind(digest)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(n > 0)
    }

    /// Deletes image `name` as `scope` resolves it, if it is the scope's project's own (a
    /// public image of another project is visible but not deletable: an admin passes that
    /// image's project); refused while instances use it (their disks are overlays of it).
    /// Returns the deleted image.
    pub async fn delete_image(&self, name: &str, scope: &Scope) -> Result<ImageView, StoreError> {
        let img = self.get_image(name, scope).await?;
        if !scope.allows(&img.project) {
            return Err(StoreError::Conflict(format!(
                "image {name:?} belongs to project {}; only its project or an admin may delete it",
                img.project
            )));
        }
        // Locked first: a create using the image either committed (and is counted) or
        // waits and then finds the image gone.
        let mut tx = self.begin().await?;
        lock_image(&mut tx, &img.project, name).await?;
        let users: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM instances WHERE image = $1 AND image_project = $2",
        )
        .bind(name)
        .bind(&img.project)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if users > 0 {
            return Err(StoreError::Conflict(format!(
                "image {name:?} is used by {users} instance(s); delete them first"
            )));
        }
        sqlx::query("DELETE FROM images WHERE project = $1 AND name = $2")
            .bind(&img.project)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(img)
    }
}

#[cfg(test)]
mod name_tests;
#[cfg(test)]
mod tests;
