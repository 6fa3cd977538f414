//! Instances: their desired state, placement and the operation acting on them.

use crate::locks::{lock_project, share_image};
use crate::page::{Page, PageRequest, OLDEST_FIRST};
use crate::ports::{delete_ports, insert_ports, NicPlan, PickAddress, PortRecord};
use crate::quotas::check_quota;
use crate::secgroups::members::{join_groups, leave_groups};
use crate::{operations::insert_operation, time, NewOperation, Scope, Store, StoreError};
use chrono::{DateTime, Utc};
use nimbus_api::DEFAULT_NETWORK;
use nimbus_api::{InstanceState, InstanceView, NicView};
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

/// An instance row.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub id: Uuid,
    pub project: String,
    pub name: String,
    pub flavor: String,
    pub image: String,
    /// The project owning its image (image names are unique per project).
    pub image_project: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// Where it is placed; holding a host is what reserves capacity there.
    pub host: Option<String>,
    pub state: InstanceState,
    pub reason: Option<String>,
    /// What last said its guest is up since its boot (from the agent's reports).
    pub ready: Option<nimbus_api::ReadySource>,
    /// Address on the cloud network, with prefix (e.g. `10.200.0.10/16`).
    pub ip: Option<String>,
    pub mac: Option<String>,
    /// The scaling group it is a member of.
    pub group_id: Option<Uuid>,
    /// The placement group it belongs to, if any.
    pub placement_group: Option<Uuid>,
    /// Restarted on another host when its host is down (`--ha restart`).
    pub ha_restart: bool,
    /// Its HA restart priority (0 to 1000, higher restarts first).
    pub ha_priority: u16,
    /// The operation acting on it; at most one at a time.
    pub operation_id: Option<Uuid>,
    /// Bumped by every change (compare-and-swap token).
    pub generation: i64,
    /// Highest agent status generation applied.
    pub agent_generation: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl InstanceRecord {
    /// The public view, with the NICs of `ports` that are this instance's.
    pub fn view_with(&self, ports: &[PortRecord]) -> InstanceView {
        let mut view = self.view();
        view.nics = ports
            .iter()
            .filter(|p| p.instance_id == self.id)
            .map(|p| NicView {
                network: p.network.clone(),
                ip: p.ip.clone(),
                mac: p.mac.clone(),
            })
            .collect();
        view
    }

    /// The public view, without NICs (see [`InstanceRecord::view_with`]).
    pub fn view(&self) -> InstanceView {
        InstanceView {
            id: self.id,
            name: self.name.clone(),
            state: self.state,
            host: self.host.clone(),
            flavor: self.flavor.clone(),
            image: self.image.clone(),
            project: self.project.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disk_gib: self.disk_gib,
            reason: self.reason.clone(),
            ready: self.ready,
            ip: self.ip.clone(),
            mac: self.mac.clone(),
            nics: Vec::new(),
            floating_ip: None,
            operation: self.operation_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
            ha: self.ha_restart.then_some(nimbus_api::HaPolicy::Restart),
            ha_priority: self.ha_priority,
        }
    }
}

/// A new instance, sized from its flavor at creation time.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub id: Uuid,
    pub project: String,
    pub name: String,
    pub flavor: String,
    pub image: String,
    /// The project owning its image, as the name resolved for the instance's project.
    pub image_project: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// The scaling group it is created for, if any.
    pub group_id: Option<Uuid>,
    /// Its NICs; none means one on the project's `default` network.
    pub nics: Vec<NicPlan>,
    /// The placement group it joins, if any.
    pub placement_group: Option<Uuid>,
    /// Restart it on another host when its host is down.
    pub ha_restart: bool,
    /// Its HA restart priority (0 to 1000, higher restarts first).
    pub ha_priority: u16,
    /// Key and user-data for its cloud-init seed.
    pub seed: crate::InstanceSeed,
    /// Its security groups; none means the project's `default` group.
    pub secgroups: Vec<String>,
}

pub(crate) fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("uuid {s:?}: {e}")))
}

/// A stored restart priority, refused when out of range (the API never writes one).
fn ha_priority_of(stored: i64) -> Result<u16, StoreError> {
    u16::try_from(stored)
        .ok()
        .filter(|p| *p <= nimbus_api::HA_PRIORITY_MAX)
        .ok_or_else(|| StoreError::Corrupt(format!("ha_priority {stored}")))
}

pub(crate) fn instance_from_row(r: &sqlx::any::AnyRow) -> Result<InstanceRecord, StoreError> {
    let state: String = r.try_get("state")?;
    Ok(InstanceRecord {
        id: parse_uuid(&r.try_get::<String, _>("id")?)?,
        project: r.try_get("project")?,
        name: r.try_get("name")?,
        flavor: r.try_get("flavor")?,
        image: r.try_get("image")?,
        image_project: r.try_get("image_project")?,
        vcpus: r.try_get::<i64, _>("vcpus")? as u32,
        memory_mib: r.try_get::<i64, _>("memory_mib")? as u64,
        disk_gib: r.try_get::<i64, _>("disk_gib")? as u64,
        host: r.try_get("host")?,
        state: InstanceState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("instance state {state:?}")))?,
        reason: r.try_get("reason")?,
        // An unknown stored source reads as not ready (a newer controller's value).
        ready: r
            .try_get::<Option<String>, _>("guest_ready")?
            .as_deref()
            .and_then(nimbus_api::ReadySource::parse),
        ip: r.try_get("ip")?,
        mac: r.try_get("mac")?,
        group_id: r
            .try_get::<Option<String>, _>("group_id")?
            .as_deref()
            .map(parse_uuid)
            .transpose()?,
        placement_group: r
            .try_get::<Option<String>, _>("placement_group")?
            .as_deref()
            .map(parse_uuid)
            .transpose()?,
        ha_restart: r.try_get::<Option<String>, _>("ha")?.as_deref() == Some("restart"),
        ha_priority: ha_priority_of(r.try_get::<i64, _>("ha_priority")?)?,
        operation_id: r
            .try_get::<Option<String>, _>("operation_id")?
            .as_deref()
            .map(parse_uuid)
            .transpose()?,
        generation: r.try_get("generation")?,
        agent_generation: r.try_get("agent_generation")?,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
        updated_at: time::parse(&r.try_get::<String, _>("updated_at")?)?,
    })
}

impl Store {
    /// Inserts a new instance in `building`, together with the operation that creates it and
    /// its ports (`new.nics`, or one on the project's `default` network). `pick_address`
    /// chooses a port's (ip, mac) given the addresses in use in its network, inside the same
    /// transaction. The project's quota is checked in that transaction too, after locking
    /// the quota row, so concurrent creates at the edge of a quota never overshoot it
    /// ([`StoreError::QuotaExceeded`]).
    pub async fn insert_instance(
        &self,
        new: &NewInstance,
        op: &NewOperation,
        pick_address: impl PickAddress,
    ) -> Result<InstanceRecord, StoreError> {
        let now = time::now();
        let mut tx = self.begin().await?;
        let want = nimbus_api::QuotaUsage {
            instances: 1,
            vcpus: new.vcpus as u64,
            memory_mib: new.memory_mib,
            disk_gib: new.disk_gib,
            ..Default::default()
        };
        check_quota(&mut tx, &new.project, &want).await?;
        // Locked, not just read: a project or image deleted meanwhile is seen as gone, and
        // one being deleted waits and then sees this instance. The image only shared: one
        // image serves every project's creates.
        lock_project(&mut tx, &new.project).await?;
        share_image(&mut tx, self.postgres, &new.image_project, &new.image).await?;
        sqlx::query(
            "INSERT INTO instances (id, project, name, flavor, image, vcpus, memory_mib, disk_gib, \
             host, state, reason, operation_id, generation, agent_generation, created_at, updated_at, ip, mac, group_id, \
             placement_group, ha, ha_priority, image_project) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, NULL, $10, 1, 0, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        )
        .bind(new.id.to_string())
        .bind(&new.project)
        .bind(&new.name)
        .bind(&new.flavor)
        .bind(&new.image)
        .bind(new.vcpus as i64)
        .bind(new.memory_mib as i64)
        .bind(new.disk_gib as i64)
        .bind(InstanceState::Building.as_str())
        .bind(op.id.to_string())
        .bind(&now)
        .bind(&now)
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(new.group_id.map(|g| g.to_string()))
        .bind(new.placement_group.map(|g| g.to_string()))
        .bind(new.ha_restart.then(|| "restart".to_string()))
        .bind(i64::from(new.ha_priority))
        .bind(&new.image_project)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::unique_or(e, || {
                format!("an instance named {:?} already exists in project {:?}", new.name, new.project)
            })
        })?;
        let default_nic = [NicPlan {
            network: DEFAULT_NETWORK.to_string(),
            address: None,
        }];
        let plans = if new.nics.is_empty() {
            &default_nic[..]
        } else {
            &new.nics[..]
        };
        let first = insert_ports(&mut tx, new.id, &new.project, plans, &pick_address).await?;
        if let Some((ip, mac)) = first {
            // instances.ip/mac mirror the first port, for listings.
            sqlx::query("UPDATE instances SET ip = $1, mac = $2 WHERE id = $3")
                .bind(ip)
                .bind(mac)
                .bind(new.id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        if new.seed != crate::InstanceSeed::default() {
            crate::seeds::write_seed(&mut tx, new.id, &new.seed).await?;
        }
        join_groups(&mut tx, &new.project, new.id, &new.secgroups).await?;
        insert_operation(&mut tx, op).await?;
        tx.commit().await?;
        self.get_instance_by_id(&Scope::All, new.id).await
    }

    /// The instance with this id, if `scope` sees it.
    pub async fn get_instance_by_id(
        &self,
        scope: &Scope,
        id: Uuid,
    ) -> Result<InstanceRecord, StoreError> {
        let sql = format!(
            "SELECT * FROM instances WHERE id = $1 AND {}",
            scope.condition("project", 2)
        );
        let row = scope
            .bind(sqlx::query(&sql).bind(id.to_string()))
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("instance", id.to_string()))?;
        instance_from_row(&row)
    }

    /// Finds an instance `scope` sees by id or by name (names are unique per project: in
    /// [`Scope::All`] a name used by several projects is a conflict).
    pub async fn get_instance(
        &self,
        scope: &Scope,
        id_or_name: &str,
    ) -> Result<InstanceRecord, StoreError> {
        if let Ok(id) = Uuid::parse_str(id_or_name) {
            return self.get_instance_by_id(scope, id).await;
        }
        let sql = format!(
            "SELECT * FROM instances WHERE name = $1 AND {}",
            scope.condition("project", 2)
        );
        let rows = scope
            .bind(sqlx::query(&sql).bind(id_or_name))
            .fetch_all(&self.pool)
            .await?;
        match rows.as_slice() {
            [] => Err(StoreError::not_found("instance", id_or_name)),
            [row] => instance_from_row(row),
            _ => Err(StoreError::Conflict(format!(
                "several projects have an instance named {id_or_name:?}; name the project"
            ))),
        }
    }

    /// Instances `scope` sees, by creation time.
    pub async fn list_instances(&self, scope: &Scope) -> Result<Vec<InstanceRecord>, StoreError> {
        let sql = format!(
            "SELECT * FROM instances WHERE {} ORDER BY created_at, name",
            scope.condition("project", 1)
        );
        let rows = scope.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        rows.iter().map(instance_from_row).collect()
    }

    /// One page of the instances `scope` sees, by creation time (then id).
    pub async fn list_instances_page(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<InstanceRecord>, StoreError> {
        let rows = OLDEST_FIRST
            .fetch_in(
                &self.pool,
                page,
                "SELECT * FROM instances",
                scope,
                "project",
            )
            .await?;
        rows.try_map(instance_from_row)
    }

    /// Sets the state (and reason) of an instance.
    pub async fn set_instance_state(
        &self,
        id: Uuid,
        state: InstanceState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instances SET state = $1, reason = $2, generation = generation + 1, \
             updated_at = $3 WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(reason.map(str::to_string))
        .bind(time::now())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Starts an operation on an existing instance; refused while another one runs.
    pub async fn begin_instance_operation(
        &self,
        id: Uuid,
        op: &NewOperation,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        claim_instance(&mut tx, id, op).await?;
        insert_operation(&mut tx, op).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Detaches a finished operation from its instance (no-op if another one is attached).
    pub async fn end_instance_operation(&self, id: Uuid, op: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instances SET operation_id = NULL, generation = generation + 1, updated_at = $1 \
             WHERE id = $2 AND operation_id = $3",
        )
        .bind(time::now())
        .bind(id.to_string())
        .bind(op.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Applies an agent's status report, compare-and-swap on the instance generation the
    /// caller read, and only while no operation owns the instance and the report is newer
    /// than the last applied. Returns whether it was applied.
    pub async fn apply_agent_report(
        &self,
        id: Uuid,
        expected_generation: i64,
        agent_generation: i64,
        state: InstanceState,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE instances SET state = $1, reason = $2, agent_generation = $3, \
             generation = generation + 1, updated_at = $4 \
             WHERE id = $5 AND generation = $6 AND operation_id IS NULL AND agent_generation < $7",
        )
        .bind(state.as_str())
        .bind(reason.map(str::to_string))
        .bind(agent_generation)
        .bind(time::now())
        .bind(id.to_string())
        .bind(expected_generation)
        .bind(agent_generation)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Records what the agent last said of the guest's readiness (`None`: not ready). Kept
    /// apart from the state: it is informative, and changes while operations run.
    pub async fn set_guest_ready(
        &self,
        id: Uuid,
        ready: Option<nimbus_api::ReadySource>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET guest_ready = $1 WHERE id = $2")
            .bind(ready.map(|r| r.as_str().to_string()))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the agent generation seen without changing anything else.
    pub async fn note_agent_generation(
        &self,
        id: Uuid,
        agent_generation: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instances SET agent_generation = $1 WHERE id = $2 AND agent_generation < $3",
        )
        .bind(agent_generation)
        .bind(id.to_string())
        .bind(agent_generation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes the instance row (the last step of a delete) and leaves a tombstone in the
    /// same transaction: the proof that lets the reconciler remove a VM still running for it.
    pub async fn delete_instance_row(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query("SELECT project, name, host FROM instances WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO tombstones (instance_id, project, name, host, deleted_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (instance_id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(row.try_get::<String, _>("project")?)
        .bind(row.try_get::<String, _>("name")?)
        .bind(row.try_get::<Option<String>, _>("host")?)
        .bind(time::now())
        .execute(&mut *tx)
        .await?;
        delete_ports(&mut tx, id).await?;
        leave_groups(&mut tx, id).await?;
        crate::floating_ips::detach_instance(&mut tx, id).await?;
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Attaches operation `op` to instance `id` inside `tx`; refused while another one runs.
pub(crate) async fn claim_instance(
    tx: &mut Transaction<'_, Any>,
    id: Uuid,
    op: &NewOperation,
) -> Result<(), StoreError> {
    let r = sqlx::query(
        "UPDATE instances SET operation_id = $1, generation = generation + 1, updated_at = $2 \
         WHERE id = $3 AND operation_id IS NULL",
    )
    .bind(op.id.to_string())
    .bind(time::now())
    .bind(id.to_string())
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() > 0 {
        return Ok(());
    }
    let busy: Option<String> = sqlx::query("SELECT operation_id FROM instances WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .map(|row| row.try_get::<Option<String>, _>("operation_id"))
        .transpose()?
        .flatten();
    Err(match busy {
        Some(other) => StoreError::Conflict(format!(
            "instance is busy with operation {other}; wait for it (`nimbus operation wait {other}`) or cancel it"
        )),
        None => StoreError::not_found("instance", id.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pick, stores};

    fn new(name: &str) -> (NewInstance, NewOperation) {
        crate::testing::new_instance("default", name)
    }

    #[tokio::test]
    async fn duplicate_names_conflict_and_leave_no_operation() {
        for (s, _d) in stores().await {
            let (a, op) = new("web1");
            s.insert_instance(&a, &op, pick).await.expect("insert");
            let (b, op2) = new("web1");
            let err = s.insert_instance(&b, &op2, pick).await;
            assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
            assert!(s.get_operation(&Scope::All, op2.id).await.is_err());
        }
    }

    #[tokio::test]
    async fn one_operation_at_a_time_and_allocations() {
        for (s, _d) in stores().await {
            let (a, op) = new("web1");
            let rec = s.insert_instance(&a, &op, pick).await.expect("insert");
            s.reserve_host(rec.id, "host1").await.expect("reserve");
            assert!(s.reserve_host(rec.id, "host2").await.is_err());
            let alloc = s.allocations().await.expect("alloc");
            assert_eq!(alloc["host1"].memory_mib, 512);
            let (_, mut op2) = new("x");
            op2.target_id = rec.id;
            let busy = s.begin_instance_operation(rec.id, &op2).await;
            assert!(matches!(busy, Err(StoreError::Conflict(_))), "{busy:?}");
            s.end_instance_operation(rec.id, op.id).await.expect("end");
            s.begin_instance_operation(rec.id, &op2)
                .await
                .expect("begin");
            s.release_host(rec.id).await.expect("release");
            assert!(s.allocations().await.expect("alloc").is_empty());
        }
    }

    #[tokio::test]
    async fn agent_reports_apply_once_and_not_during_operations() {
        for (s, _d) in stores().await {
            let (a, op) = new("web1");
            let rec = s.insert_instance(&a, &op, pick).await.expect("insert");
            let changed = s
                .apply_agent_report(
                    rec.id,
                    rec.generation,
                    3,
                    InstanceState::Error,
                    Some("died"),
                )
                .await
                .expect("apply");
            assert!(!changed, "an operation owns the instance");
            s.end_instance_operation(rec.id, op.id).await.expect("end");
            let rec = s
                .get_instance_by_id(&Scope::All, rec.id)
                .await
                .expect("get");
            let stale =
                s.apply_agent_report(rec.id, rec.generation - 1, 3, InstanceState::Error, None);
            assert!(!stale.await.expect("apply"), "stale generation");
            assert!(s
                .apply_agent_report(
                    rec.id,
                    rec.generation,
                    3,
                    InstanceState::Error,
                    Some("died")
                )
                .await
                .expect("apply"));
            let rec = s
                .get_instance_by_id(&Scope::All, rec.id)
                .await
                .expect("get");
            assert!(
                !s.apply_agent_report(rec.id, rec.generation, 3, InstanceState::Running, None)
                    .await
                    .expect("apply"),
                "old agent generation"
            );
            let got = s
                .get_instance(&Scope::project("default"), "web1")
                .await
                .expect("get");
            assert_eq!(got.state, InstanceState::Error);
            assert_eq!(got.reason.as_deref(), Some("died"));
        }
    }
}
