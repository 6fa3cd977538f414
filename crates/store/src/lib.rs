//! Persistence of nimbus's desired state.
//!
//! One [`Store`] over sqlx's `Any` driver, so the same queries run on embedded SQLite (the
//! default, `sqlite:///var/lib/nimbus/nimbus.db`) and on PostgreSQL (`postgres://...`, for
//! several controllers over one database). Queries therefore stick to portable SQL with `$N`
//! parameters in order. State changes of instances are compare-and-swap on their
//! `generation`, so no in-memory lock is needed across controllers.
//!
//! Tenancy lives here too: every query of project-owned rows takes a [`Scope`] and filters
//! in SQL, and quotas are checked inside the insert transaction (see `quotas`).

mod audit;
mod claims;
mod error;
mod flavors;
mod floating_ips;
mod group_events;
mod groups;
mod ha;
mod host_identities;
mod hosts;
mod image_holders;
mod images;
mod instances;
mod keypairs;
mod leases;
mod locks;
mod migrations;
mod networks;
mod operations;
mod orphans;
mod page;
mod placement;
mod placement_groups;
mod ports;
mod projects;
mod quotas;
mod replica_holders;
mod retention;
mod scope;
mod secgroups;
mod seeds;
mod snapshot_replicas;
mod snapshots;
mod task_leases;
mod time;
mod tokens;
mod usage;

pub use claims::HostClaim;
pub use error::StoreError;
pub use floating_ips::FloatingIpRecord;
pub use group_events::NewGroupEvent;
pub use groups::{GroupRecord, GroupSizes, NewGroup, GROUP_ACTIVE, GROUP_DELETING};
pub use host_identities::{HostIdentityRecord, JoinRefusal, RemoveRefusal};
pub use hosts::HostRecord;
pub use image_holders::BlobHolder;
pub use images::{NewImage, PATH_IMAGE_PROJECT};
pub use instances::{InstanceRecord, NewInstance};
pub use leases::{ControllerRecord, FencedLog, OperationClaim};
pub use migrations::NewMigration;
pub use networks::{NetworkRecord, NewNetwork, FIRST_VNI, MAX_VNI};
pub use operations::NewOperation;
pub use orphans::SeenOrphan;
pub use page::{KeyPart, Page, PageKey, PageRequest};
pub use placement::Allocation;
pub use placement_groups::{PlacementGroupRecord, PlacementMember};
pub use ports::{NicPlan, PickAddress, PortRecord};
pub use quotas::{admit, QuotaExceeded};
pub use retention::HOUR_MS;
pub use scope::Scope;
pub use secgroups::NewRule;
pub use seeds::InstanceSeed;
pub use snapshots::{NewSnapshot, SnapshotFigures, SnapshotRecord};
pub use task_leases::{TaskHolder, TaskLease};
pub use tokens::{NewToken, TokenRecord};
pub use usage::{UsageRow, UsageTotals};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::AnyPool;
use std::str::FromStr;

/// No nimbus transaction waits on anything but the database: one idle this long inside a
/// transaction belongs to a stalled process.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "SET idle_in_transaction_session_timeout = 5000";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// PostgreSQL (several controllers possible), else SQLite.
    postgres: bool,
    /// The background task lease every transaction of this handle is fenced by (see
    /// [`Store::fenced`]).
    fence: Option<std::sync::Arc<TaskLease>>,
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`), creating a SQLite file if
    /// needed, and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_string()
        };
        let opts = AnyConnectOptions::from_str(&url).map_err(|e| StoreError::Connect {
            url: url.clone(),
            source: e,
        })?;
        let sqlite = url.starts_with("sqlite:");
        let max = if sqlite { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if !sqlite {
                        // A controller paused or cut off inside a transaction would hold its
                        // row locks, and block every other controller, for as long as it is
                        // stalled: the server ends such a session after this idle time.
                        sqlx::Executor::execute(&mut *conn, IDLE_IN_TRANSACTION_TIMEOUT).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Connect {
                url: url.clone(),
                source: e,
            })?;
        if url.starts_with("sqlite:") {
            // WAL lets readers proceed during writes; busy_timeout rides out short locks.
            for pragma in [
                "PRAGMA journal_mode=WAL",
                "PRAGMA busy_timeout=5000",
                "PRAGMA synchronous=NORMAL",
            ] {
                sqlx::query(pragma).execute(&pool).await?;
            }
        }
        // On PostgreSQL, sqlx runs the migrations under an advisory lock: controllers
        // starting together apply each migration once.
        MIGRATOR.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(v) => StoreError::NewerSchema(v),
            e => e.into(),
        })?;
        let postgres = !url.starts_with("sqlite:");
        Ok(Self {
            pool,
            postgres,
            fence: None,
        })
    }

    /// The underlying pool, for health checks.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

#[cfg(test)]
mod guest_ready_tests;
#[cfg(test)]
mod page_tests;
#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod retention_tests;
#[cfg(test)]
mod tenancy_tests;

#[cfg(test)]
pub(crate) mod testing {
    use super::{NetworkRecord, NewInstance, NewNetwork, NewOperation, Store};
    use nimbus_api::OperationKind;
    use std::collections::HashSet;
    use uuid::Uuid;

    /// Picks the first free address of 10.200.0.10-249 (MAC 52:54:00:00:00:<last octet>).
    pub fn pick(_net: &NetworkRecord, used: &HashSet<String>) -> Option<(String, String)> {
        (10..250)
            .find(|i| !used.contains(&format!("10.200.0.{i}/16")))
            .map(|i| {
                (
                    format!("10.200.0.{i}/16"),
                    format!("52:54:00:00:00:{i:02x}"),
                )
            })
    }

    /// A SQLite database `up.db` in `dir` with the migrations before `first_missing` applied
    /// (for upgrade tests: fill it, close the pool, then [`Store::connect`] applies the rest).
    pub async fn database_before(dir: &std::path::Path, first_missing: &str) -> sqlx::AnyPool {
        let old = dir.join("migrations");
        std::fs::create_dir(&old).expect("mkdir");
        let all = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        for entry in std::fs::read_dir(all).expect("migrations") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string();
            if name.as_str() < first_missing {
                std::fs::copy(&path, old.join(&name)).expect("copy");
            }
        }
        let url = format!("sqlite://{}/up.db?mode=rwc", dir.display());
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
        sqlx::migrate::Migrator::new(old.as_path())
            .await
            .expect("migrator")
            .run(&pool)
            .await
            .expect("migrate");
        pool
    }

    /// Closes `pool` (made by [`database_before`] in `dir`) and opens its database as a
    /// store, which applies the migrations it lacks.
    pub async fn upgraded(pool: sqlx::AnyPool, dir: &std::path::Path) -> Store {
        pool.close().await;
        Store::connect(&format!("sqlite://{}/up.db", dir.display()))
            .await
            .expect("upgrade")
    }

    /// Adds project `name` to a database made by [`database_before`] (raw SQL: the store's
    /// API speaks the newest schema).
    pub async fn old_project(pool: &sqlx::AnyPool, name: &str) {
        sqlx::query(
            "INSERT INTO projects (name, created_at) VALUES ($1, '2026-01-01T00:00:00.000000Z')",
        )
        .bind(name)
        .execute(pool)
        .await
        .expect("project");
    }

    /// Registers a new controller (at a loopback URL of its own) with lease `ttl`.
    pub async fn controller(s: &Store, ttl: std::time::Duration) -> Uuid {
        let id = Uuid::new_v4();
        let url = format!("http://127.0.0.1:{}", 10000 + (id.as_u128() % 50000) as u16);
        s.register_controller(id, &url, "test", ttl)
            .await
            .expect("register");
        id
    }

    /// Creates project `name` with no quota limits and the default network.
    pub async fn project(s: &Store, name: &str) {
        s.create_project(
            name,
            None,
            &nimbus_api::QuotaLimits::UNLIMITED,
            &default_network(),
        )
        .await
        .expect("project");
    }

    /// The default network of new projects in tests.
    pub fn default_network() -> NewNetwork {
        NewNetwork {
            name: "default".into(),
            cidr: "10.200.0.0/16".into(),
            gateway: "10.200.0.1".into(),
        }
    }

    /// A host `name` that reported just now, with room for `cpus` vCPUs and `memory_mib`.
    pub fn host_record(name: &str, cpus: u32, memory_mib: u64) -> super::HostRecord {
        super::HostRecord {
            name: name.into(),
            agent_url: format!("http://{name}:7701"),
            enabled: true,
            cpus,
            memory_mib,
            disk_gib: 1000,
            accelerator: "tcg".into(),
            qemu_version: "10".into(),
            agent_version: "test".into(),
            shared_storage: None,
            cpu_allocation_ratio: None,
            ram_allocation_ratio: None,
            ksm: None,
            image_cache: None,
            capabilities: vec!["snapshot-move".into()],
            last_seen: chrono::Utc::now(),
            silent_ms: None,
            down_since: None,
            ha_restarted: 0,
        }
    }

    /// A small instance of `project` and the operation that creates it.
    pub fn new_instance(project: &str, name: &str) -> (NewInstance, NewOperation) {
        let id = Uuid::new_v4();
        (
            NewInstance {
                id,
                project: project.into(),
                name: name.into(),
                flavor: "small".into(),
                image: DEFAULT_IMAGE.into(),
                image_project: "default".into(),
                vcpus: 1,
                memory_mib: 512,
                disk_gib: 2,
                group_id: None,
                nics: Vec::new(),
                placement_group: None,
                ha_restart: false,
                ha_priority: nimbus_api::HA_PRIORITY_MEDIUM,
                seed: Default::default(),
                secgroups: Vec::new(),
            },
            NewOperation {
                id: Uuid::new_v4(),
                kind: OperationKind::InstanceCreate,
                project: project.into(),
                target_id: id,
                target_name: name.into(),
                params: serde_json::json!({}),
            },
        )
    }

    /// What keeps a test store's backing alive; dropping it removes it (the SQLite directory,
    /// or the PostgreSQL database).
    pub enum Backing {
        Sqlite(#[allow(dead_code)] tempfile::TempDir),
        Postgres { admin_url: String, name: String },
    }

    impl Drop for Backing {
        fn drop(&mut self) {
            let Backing::Postgres { admin_url, name } = self else {
                return;
            };
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop cannot await: a thread of its own with its own runtime drops the database
            // (FORCE ends the test's pool connections).
            let dropped = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let admin = sqlx::AnyPool::connect(&admin_url).await.ok()?;
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    sqlx::query(&sql).execute(&admin).await.ok()
                })
            })
            .join();
            if !matches!(dropped, Ok(Some(_))) {
                eprintln!("warning: could not drop the test database");
            }
        }
    }

    /// A fresh store on every backend available: SQLite in a temporary directory, and a new
    /// PostgreSQL database when `NIMBUS_TEST_POSTGRES_URL` names a server (CI sets it), so
    /// each test proves its queries on both. The database goes when the test ends; the
    /// server's own database is only used to create and drop it.
    pub async fn stores() -> Vec<(Store, Backing)> {
        let mut out = bare_stores().await;
        for (s, _) in &mut out {
            s.create_image(&image(DEFAULT_IMAGE), 0)
                .await
                .expect("default image");
        }
        out
    }

    /// The image [`new_instance`] uses; every store of [`stores`] has it.
    pub const DEFAULT_IMAGE: &str = "default";

    /// An image record named `name` (its files do not matter to the store).
    pub fn image(name: &str) -> nimbus_api::ImportImage {
        nimbus_api::ImportImage {
            name: name.into(),
            kernel: Some("/boot/vmlinuz".into()),
            initrd: None,
            cmdline: None,
            disk: None,
            ready_marker: None,
        }
    }

    async fn bare_stores() -> Vec<(Store, Backing)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/test.db", dir.path().display());
        let mut out = vec![(
            Store::connect(&url).await.expect("connect sqlite"),
            Backing::Sqlite(dir),
        )];
        if let Ok(admin_url) = std::env::var("NIMBUS_TEST_POSTGRES_URL") {
            sqlx::any::install_default_drivers();
            let admin = sqlx::AnyPool::connect(&admin_url)
                .await
                .expect("connect postgres");
            let name = format!("nimbus_test_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin)
                .await
                .expect("create database");
            admin.close().await;
            let (base, _) = admin_url.rsplit_once('/').expect("url with a database");
            let store = Store::connect(&format!("{base}/{name}"))
                .await
                .expect("connect");
            out.push((store, Backing::Postgres { admin_url, name }));
        }
        out
    }
}
