//! Hosts, as registered by their agents.

use crate::page::{KeyColumn, Keyset, Page, PageRequest};
use crate::{time, Store, StoreError};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// A host row.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub name: String,
    pub agent_url: String,
    pub enabled: bool,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub accelerator: String,
    pub qemu_version: String,
    pub agent_version: String,
    /// Shared storage directory the host keeps disks in, if any.
    pub shared_storage: Option<String>,
    /// Allocation ratios the host's agent asks for (`None`: the controller's default).
    pub cpu_allocation_ratio: Option<f64>,
    pub ram_allocation_ratio: Option<f64>,
    /// The host's last KSM report, as JSON (the agent API's `KsmStats`).
    pub ksm: Option<String>,
    /// The host's last image cache report, as JSON (the agent API's `ImageCacheReport`).
    pub image_cache: Option<String>,
    /// What the host's agent can do beyond the base protocol (the agent API's
    /// `capability` names); empty for an agent older than capabilities.
    pub capabilities: Vec<String>,
    /// When the host last reported, by the clock of the controller that recorded it (for
    /// display; liveness uses [`HostRecord::silent_ms`]).
    pub last_seen: DateTime<Utc>,
    /// Milliseconds since the host last reported, by the database's clock (read only;
    /// `None` for a row not refreshed since this was recorded: the host counts as silent).
    /// Controllers with skewed clocks agree on it.
    pub silent_ms: Option<u64>,
    /// When the controller declared the host down (`None` while it reports); not written by
    /// [`Store::upsert_host`].
    pub down_since: Option<DateTime<Utc>>,
    /// HA instances restarted elsewhere since the host was last declared down.
    pub ha_restarted: u32,
}

const COLUMNS: &str = "name, agent_url, enabled, cpus, memory_mib, disk_gib, accelerator, \
                       qemu_version, agent_version, last_seen, shared_storage, \
                       cpu_allocation_ratio, ram_allocation_ratio, ksm, image_cache, capabilities";

fn from_row(r: &sqlx::any::AnyRow) -> Result<HostRecord, StoreError> {
    Ok(HostRecord {
        name: r.try_get("name")?,
        agent_url: r.try_get("agent_url")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        cpus: r.try_get::<i64, _>("cpus")? as u32,
        memory_mib: r.try_get::<i64, _>("memory_mib")? as u64,
        disk_gib: r.try_get::<i64, _>("disk_gib")? as u64,
        accelerator: r.try_get("accelerator")?,
        qemu_version: r.try_get("qemu_version")?,
        agent_version: r.try_get("agent_version")?,
        last_seen: time::parse(&r.try_get::<String, _>("last_seen")?)?,
        shared_storage: r.try_get("shared_storage")?,
        cpu_allocation_ratio: r.try_get("cpu_allocation_ratio")?,
        ram_allocation_ratio: r.try_get("ram_allocation_ratio")?,
        ksm: r.try_get("ksm")?,
        image_cache: r.try_get("image_cache")?,
        capabilities: capabilities_from(r.try_get("capabilities")?),
        silent_ms: r
            .try_get::<Option<i64>, _>("silent_ms")?
            .map(|ms| ms.max(0) as u64),
        down_since: time::parse_opt(r.try_get("down_since")?)?,
        ha_restarted: r.try_get::<i64, _>("ha_restarted")? as u32,
    })
}

/// The stored form of a host's capabilities: a JSON list, NULL when it has none.
fn capabilities_to(names: &[String]) -> Option<String> {
    (!names.is_empty()).then(|| serde_json::Value::from(names.to_vec()).to_string())
}

/// A host's capabilities from their stored form; what cannot be read counts as none (the
/// next registration writes them again).
fn capabilities_from(stored: Option<String>) -> Vec<String> {
    stored
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

impl Store {
    /// The columns a [`HostRecord`] is read from, with the host's silence measured by the
    /// database's clock.
    fn host_columns(&self) -> String {
        format!(
            "{COLUMNS}, down_since, ha_restarted, ({} - last_seen_ms) AS silent_ms",
            self.now_ms()
        )
    }

    /// Inserts or refreshes a host from its agent's registration; keeps `enabled` as set by
    /// the operator.
    pub async fn upsert_host(&self, h: &HostRecord) -> Result<(), StoreError> {
        let now = time::now();
        let updated = sqlx::query(&format!(
            "UPDATE hosts SET agent_url = $1, cpus = $2, memory_mib = $3, disk_gib = $4, \
             accelerator = $5, qemu_version = $6, agent_version = $7, last_seen = $8, \
             shared_storage = $9, cpu_allocation_ratio = $10, ram_allocation_ratio = $11, \
             ksm = $12, image_cache = $13, capabilities = $14, last_seen_ms = {} WHERE name = $15",
            self.now_ms()
        ))
        .bind(&h.agent_url)
        .bind(h.cpus as i64)
        .bind(h.memory_mib as i64)
        .bind(h.disk_gib as i64)
        .bind(&h.accelerator)
        .bind(&h.qemu_version)
        .bind(&h.agent_version)
        .bind(&now)
        .bind(h.shared_storage.clone())
        .bind(h.cpu_allocation_ratio)
        .bind(h.ram_allocation_ratio)
        .bind(h.ksm.clone())
        .bind(h.image_cache.clone())
        .bind(capabilities_to(&h.capabilities))
        .bind(&h.name)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() > 0 {
            return Ok(());
        }
        sqlx::query(&format!(
            "INSERT INTO hosts ({COLUMNS}, created_at, last_seen_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, {})",
            self.now_ms()
        ))
        .bind(&h.name)
        .bind(&h.agent_url)
        .bind(1i64)
        .bind(h.cpus as i64)
        .bind(h.memory_mib as i64)
        .bind(h.disk_gib as i64)
        .bind(&h.accelerator)
        .bind(&h.qemu_version)
        .bind(&h.agent_version)
        .bind(&now)
        .bind(h.shared_storage.clone())
        .bind(h.cpu_allocation_ratio)
        .bind(h.ram_allocation_ratio)
        .bind(h.ksm.clone())
        .bind(h.image_cache.clone())
        .bind(capabilities_to(&h.capabilities))
        .bind(&now)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::unique_or(e, || format!("host {} registered twice", h.name)))?;
        Ok(())
    }

    pub async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM hosts ORDER BY name",
            self.host_columns()
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// One page of the hosts, by name.
    pub async fn list_hosts_page(
        &self,
        page: &PageRequest,
    ) -> Result<Page<HostRecord>, StoreError> {
        const KEY: Keyset = Keyset::ascending(&[KeyColumn::text("name")]);
        let select = format!("SELECT {} FROM hosts", self.host_columns());
        let rows = KEY.fetch(&self.pool, page, &select, "1 = 1", &[]).await?;
        rows.try_map(from_row)
    }

    pub async fn get_host(&self, name: &str) -> Result<HostRecord, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM hosts WHERE name = $1",
            self.host_columns()
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found("host", name))?;
        from_row(&row)
    }

    /// Enables or disables a host for placement.
    pub async fn set_host_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE hosts SET enabled = $1 WHERE name = $2")
            .bind(enabled as i64)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::not_found("host", name));
        }
        Ok(())
    }

    /// Declares a host down since `since`, once (returns whether this call did).
    pub async fn mark_host_down(
        &self,
        name: &str,
        since: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let r =
            sqlx::query("UPDATE hosts SET down_since = $1, ha_restarted = 0 WHERE name = $2 AND down_since IS NULL")
                .bind(time::to_text(since))
                .bind(name)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() > 0)
    }

    /// A down host reports again: clears its down mark and forgets the agent generations of
    /// its idle instances in `error`, so that the agent's next report is applied whatever it
    /// says (the reconciler relearns them instead of trusting what it concluded while the
    /// host was silent). Returns whether the host was down.
    pub async fn mark_host_back(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let r = sqlx::query(
            "UPDATE hosts SET down_since = NULL WHERE name = $1 AND down_since IS NOT NULL",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE instances SET agent_generation = 0, generation = generation + 1, \
             updated_at = $1 WHERE host = $2 AND state = 'error' AND operation_id IS NULL",
        )
        .bind(time::now())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Counts an HA instance of down host `name` restarted elsewhere.
    pub async fn count_ha_restart(&self, name: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET ha_restarted = ha_restarted + 1 WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
