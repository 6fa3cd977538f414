//! Images.

use crate::locks::lock_image;
use crate::{time, Store, StoreError};
use nimbus_api::{ImageView, ImportImage};
use sqlx::Row;

fn from_row(r: &sqlx::any::AnyRow) -> Result<ImageView, StoreError> {
    Ok(ImageView {
        name: r.try_get("name")?,
        kernel: r.try_get("kernel")?,
        initrd: r.try_get("initrd")?,
        cmdline: r.try_get("cmdline")?,
        disk: r.try_get("disk")?,
        ready_marker: r.try_get("ready_marker")?,
        size_bytes: r.try_get::<i64, _>("size_bytes")? as u64,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
    })
}

impl Store {
    pub async fn create_image(
        &self,
        img: &ImportImage,
        size_bytes: u64,
    ) -> Result<ImageView, StoreError> {
        sqlx::query(
            "INSERT INTO images (name, kernel, initrd, cmdline, disk, ready_marker, size_bytes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&img.name)
        .bind(img.kernel.clone())
        .bind(img.initrd.clone())
        .bind(img.cmdline.clone())
        .bind(img.disk.clone())
        .bind(img.ready_marker.clone())
        .bind(size_bytes as i64)
        .bind(time::now())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::unique_or(e, || format!("image {:?} already exists", img.name)))?;
        self.get_image(&img.name).await
    }

    pub async fn get_image(&self, name: &str) -> Result<ImageView, StoreError> {
        let row = sqlx::query("SELECT * FROM images WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("image", name))?;
        from_row(&row)
    }

    pub async fn list_images(&self) -> Result<Vec<ImageView>, StoreError> {
        let rows = sqlx::query("SELECT * FROM images ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Deletes an image; refused while instances use it (their disks are overlays of it).
    pub async fn delete_image(&self, name: &str) -> Result<(), StoreError> {
        // Locked first: a create using the image either committed (and is counted) or
        // waits and then finds the image gone.
        let mut tx = self.pool.begin().await?;
        lock_image(&mut tx, name).await?;
        let users: i64 = sqlx::query("SELECT COUNT(*) AS n FROM instances WHERE image = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if users > 0 {
            return Err(StoreError::Conflict(format!(
                "image {name:?} is used by {users} instance(s); delete them first"
            )));
        }
        sqlx::query("DELETE FROM images WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
