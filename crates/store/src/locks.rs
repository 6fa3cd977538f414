//! Row locks that turn check-then-act into one serialised step across controllers.
//!
//! Each is an `UPDATE` that changes nothing: on PostgreSQL it takes the row's lock until
//! the transaction ends, so a second transaction doing the same waits, then sees what the
//! first committed; on SQLite the first write of a transaction takes the database's write
//! lock, which serialises the same way. Lock order, to never deadlock: quota, project,
//! image; placement group, host (capacity claims, see `claims`). (Addresses are claimed by
//! the unique (network, ip) index of ports.)

use crate::StoreError;
use sqlx::{Any, Transaction};

/// Locks the project's row; `NotFound` if there is no such project (deleted meanwhile).
pub(crate) async fn lock_project(
    tx: &mut Transaction<'_, Any>,
    project: &str,
) -> Result<(), StoreError> {
    let r = sqlx::query("UPDATE projects SET name = name WHERE name = $1")
        .bind(project)
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::not_found("project", project));
    }
    Ok(())
}

/// Locks the image's row; `NotFound` if there is no such image (deleted meanwhile).
pub(crate) async fn lock_image(
    tx: &mut Transaction<'_, Any>,
    project: &str,
    image: &str,
) -> Result<(), StoreError> {
    let r = sqlx::query("UPDATE images SET name = name WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(image)
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::not_found("image", image));
    }
    Ok(())
}

/// Holds the image's row against its deletion without serialising the creates that use it:
/// on PostgreSQL a shared row lock (`FOR SHARE`: creates from one image take it together,
/// an image delete's exclusive lock waits for them and they for it, so a create either
/// commits before the delete counts users or finds the image gone); on SQLite a read (its
/// write transactions are serialised anyway). An exclusive lock here made one public image
/// (the default one) a row every create of every project queued on. `NotFound` if there is
/// no such image (deleted meanwhile).
pub(crate) async fn share_image(
    tx: &mut Transaction<'_, Any>,
    postgres: bool,
    project: &str,
    image: &str,
) -> Result<(), StoreError> {
    let sql = if postgres {
        "SELECT name FROM images WHERE project = $1 AND name = $2 FOR SHARE"
    } else {
        "SELECT name FROM images WHERE project = $1 AND name = $2"
    };
    let row = sqlx::query(sql)
        .bind(project)
        .bind(image)
        .fetch_optional(&mut **tx)
        .await?;
    if row.is_none() {
        return Err(StoreError::not_found("image", image));
    }
    Ok(())
}

/// Locks the host's row (capacity claims on it serialise); `NotFound` if it is gone.
pub(crate) async fn lock_host(tx: &mut Transaction<'_, Any>, host: &str) -> Result<(), StoreError> {
    let r = sqlx::query("UPDATE hosts SET name = name WHERE name = $1")
        .bind(host)
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::not_found("host", host));
    }
    Ok(())
}

/// Locks the placement group's row (placements of its members serialise).
pub(crate) async fn lock_placement_group(
    tx: &mut Transaction<'_, Any>,
    group: uuid::Uuid,
) -> Result<(), StoreError> {
    let r = sqlx::query("UPDATE placement_groups SET name = name WHERE id = $1")
        .bind(group.to_string())
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::not_found("placement group", group.to_string()));
    }
    Ok(())
}
