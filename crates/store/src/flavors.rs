//! Flavors.

use crate::page::{KeyColumn, Keyset, Page, PageRequest};
use crate::{time, Store, StoreError};
use nimbus_api::FlavorView;
use sqlx::Row;

fn from_row(r: &sqlx::any::AnyRow) -> Result<FlavorView, StoreError> {
    Ok(FlavorView {
        name: r.try_get("name")?,
        vcpus: r.try_get::<i64, _>("vcpus")? as u32,
        memory_mib: r.try_get::<i64, _>("memory_mib")? as u64,
        disk_gib: r.try_get::<i64, _>("disk_gib")? as u64,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
    })
}

impl Store {
    pub async fn create_flavor(
        &self,
        name: &str,
        vcpus: u32,
        memory_mib: u64,
        disk_gib: u64,
    ) -> Result<FlavorView, StoreError> {
        sqlx::query(
            "INSERT INTO flavors (name, vcpus, memory_mib, disk_gib, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(name)
        .bind(vcpus as i64)
        .bind(memory_mib as i64)
        .bind(disk_gib as i64)
        .bind(time::now())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::unique_or(e, || format!("flavor {name:?} already exists")))?;
        self.get_flavor(name).await
    }

    pub async fn get_flavor(&self, name: &str) -> Result<FlavorView, StoreError> {
        let row = sqlx::query("SELECT * FROM flavors WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("flavor", name))?;
        from_row(&row)
    }

    /// Flavors, smallest first.
    pub async fn list_flavors(&self) -> Result<Vec<FlavorView>, StoreError> {
        let rows = sqlx::query("SELECT * FROM flavors ORDER BY memory_mib, vcpus, name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// One page of the flavors, smallest first.
    pub async fn list_flavors_page(
        &self,
        page: &PageRequest,
    ) -> Result<Page<FlavorView>, StoreError> {
        const KEY: Keyset = Keyset::ascending(&[
            KeyColumn::int("memory_mib"),
            KeyColumn::int("vcpus"),
            KeyColumn::text("name"),
        ]);
        let rows = KEY
            .fetch(&self.pool, page, "SELECT * FROM flavors", "1 = 1", &[])
            .await?;
        rows.try_map(from_row)
    }

    pub async fn delete_flavor(&self, name: &str) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM flavors WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::not_found("flavor", name));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::stores;

    #[tokio::test]
    async fn flavor_roundtrip_and_duplicate() {
        for (s, _d) in stores().await {
            let f = s.create_flavor("small", 1, 512, 2).await.expect("create");
            assert_eq!((f.vcpus, f.memory_mib, f.disk_gib), (1, 512, 2));
            let dup = s.create_flavor("small", 1, 512, 2).await;
            assert!(
                matches!(dup, Err(crate::StoreError::Conflict(_))),
                "{dup:?}"
            );
            s.delete_flavor("small").await.expect("delete");
            assert!(s.get_flavor("small").await.is_err());
        }
    }
}
