//! Store errors.

/// What a store call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    /// A capacity claim found the host full (another claim took the room first): choose
    /// again on fresh figures.
    #[error("no room left on host {host}: {reason}")]
    NoRoom { host: String, reason: String },
    #[error(transparent)]
    QuotaExceeded(#[from] crate::quotas::QuotaExceeded),
    /// A write fenced by a background task's lease found the task held by another
    /// controller now (this one stalled past its lease): nothing was written.
    #[error("the lease of background task {task} moved to another controller (epoch {epoch} is stale): nothing written")]
    TaskLeaseLost { task: String, epoch: i64 },
    #[error("the page token does not belong to this listing; start again without one")]
    BadPageKey,
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The database was migrated by a newer nimbus: this one must not write to it.
    #[error(
        "the database has schema migration {0}, which this nimbus does not know: it was \
         upgraded by a newer nimbus; run that version (or newer) of the controller"
    )]
    NewerSchema(i64),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    pub(crate) fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        StoreError::NotFound {
            kind,
            name: name.into(),
        }
    }

    /// Maps a unique-constraint violation to `Conflict(msg)`.
    pub(crate) fn unique_or(e: sqlx::Error, msg: impl FnOnce() -> String) -> Self {
        let is_unique = match &e {
            sqlx::Error::Database(db) => {
                db.is_unique_violation()
                    || db.message().contains("UNIQUE")
                    || db.message().contains("duplicate key")
            }
            _ => false,
        };
        if is_unique {
            StoreError::Conflict(msg())
        } else {
            StoreError::Db(e)
        }
    }
}
