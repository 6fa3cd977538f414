//! Ports: an instance's NICs, one per network it is on, each with its address there. The
//! unique (network, ip) index is what claims an address: two creates that pick the same one
//! cannot both commit.

use crate::instances::parse_uuid;
use crate::networks::NetworkRecord;
use crate::{time, Scope, Store, StoreError};
use sqlx::{Any, Row, Transaction};
use std::collections::HashSet;
use uuid::Uuid;

/// A NIC asked for at creation: a network of the instance's project by name, and the
/// address (`ip/prefix`, MAC) to claim there, or `None` for the lowest free one.
#[derive(Debug, Clone, PartialEq)]
pub struct NicPlan {
    pub network: String,
    pub address: Option<(String, String)>,
}

/// Chooses an address (`ip/prefix`, MAC) in a network, given the addresses in use there.
pub trait PickAddress: Fn(&NetworkRecord, &HashSet<String>) -> Option<(String, String)> {}
impl<F: Fn(&NetworkRecord, &HashSet<String>) -> Option<(String, String)>> PickAddress for F {}

/// One NIC of an instance, with what a host needs of its network.
#[derive(Debug, Clone, PartialEq)]
pub struct PortRecord {
    pub instance_id: Uuid,
    /// Position of the NIC in the guest (0 is its first).
    pub nic: u32,
    pub network: String,
    pub vni: u32,
    pub cidr: String,
    pub gateway: String,
    /// Address with the network's prefix length.
    pub ip: String,
    pub mac: String,
}

const SELECT: &str = "SELECT p.instance_id, p.nic, p.ip, p.mac, n.name, n.vni, n.cidr, \
                      n.gateway FROM ports p JOIN networks n ON n.vni = p.network_vni";

fn from_row(r: &sqlx::any::AnyRow) -> Result<PortRecord, StoreError> {
    Ok(PortRecord {
        instance_id: parse_uuid(&r.try_get::<String, _>("instance_id")?)?,
        nic: r.try_get::<i64, _>("nic")?.max(0) as u32,
        network: r.try_get("name")?,
        vni: r.try_get::<i64, _>("vni")?.max(0) as u32,
        cidr: r.try_get("cidr")?,
        gateway: r.try_get("gateway")?,
        ip: r.try_get("ip")?,
        mac: r.try_get("mac")?,
    })
}

impl Store {
    /// The ports of instance `id`, in NIC order.
    pub async fn instance_ports(&self, id: Uuid) -> Result<Vec<PortRecord>, StoreError> {
        let rows = sqlx::query(&format!("{SELECT} WHERE p.instance_id = $1 ORDER BY p.nic"))
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// The ports of the instances `ids` (one page of a listing), by instance and NIC.
    pub async fn ports_of(&self, ids: &[Uuid]) -> Result<Vec<PortRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let params: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "{SELECT} WHERE p.instance_id IN ({}) ORDER BY p.instance_id, p.nic",
            params.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(id.to_string());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// Every port of the networks `scope` sees, by instance and NIC.
    pub async fn list_ports(&self, scope: &Scope) -> Result<Vec<PortRecord>, StoreError> {
        let sql = format!(
            "{SELECT} WHERE {} ORDER BY p.instance_id, p.nic",
            scope.condition("n.project", 1)
        );
        let rows = scope.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }
}

/// Creates the ports of instance `id` of `project` inside `tx` (the project is locked by
/// the caller), and answers the first one's address.
pub(crate) async fn insert_ports(
    tx: &mut Transaction<'_, Any>,
    id: Uuid,
    project: &str,
    plans: &[NicPlan],
    pick: &impl PickAddress,
) -> Result<Option<(String, String)>, StoreError> {
    let mut first = None;
    for (nic, plan) in plans.iter().enumerate() {
        let net = network_in_tx(tx, project, &plan.network).await?;
        let used = used_addresses(tx, net.vni).await?;
        let (ip, mac) = match &plan.address {
            Some((ip, _)) if used.contains(ip) => {
                return Err(StoreError::Conflict(format!(
                    "address {ip} is taken in network {:?}",
                    net.name
                )))
            }
            Some(addr) => addr.clone(),
            None => pick(&net, &used).ok_or_else(|| {
                StoreError::Conflict(format!("network {:?} has no free address left", net.name))
            })?,
        };
        sqlx::query(
            "INSERT INTO ports (instance_id, nic, network_vni, ip, mac, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(nic as i64)
        .bind(i64::from(net.vni))
        .bind(&ip)
        .bind(&mac)
        .bind(time::now())
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            StoreError::unique_or(e, || {
                format!(
                    "address {ip} is taken in network {:?} (or the instance is on it twice)",
                    net.name
                )
            })
        })?;
        first.get_or_insert((ip, mac));
    }
    Ok(first)
}

/// Removes the ports of instance `id` inside `tx`.
pub(crate) async fn delete_ports(
    tx: &mut Transaction<'_, Any>,
    id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM ports WHERE instance_id = $1")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn network_in_tx(
    tx: &mut Transaction<'_, Any>,
    project: &str,
    name: &str,
) -> Result<NetworkRecord, StoreError> {
    let row = sqlx::query("SELECT * FROM networks WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::not_found("network", name))?;
    Ok(NetworkRecord {
        vni: row.try_get::<i64, _>("vni")?.max(0) as u32,
        project: row.try_get("project")?,
        name: row.try_get("name")?,
        cidr: row.try_get("cidr")?,
        gateway: row.try_get("gateway")?,
        ports: 0,
        created_at: time::parse(&row.try_get::<String, _>("created_at")?)?,
    })
}

async fn used_addresses(
    tx: &mut Transaction<'_, Any>,
    vni: u32,
) -> Result<HashSet<String>, StoreError> {
    sqlx::query("SELECT ip FROM ports WHERE network_vni = $1")
        .bind(i64::from(vni))
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("ip").map_err(StoreError::from))
        .collect()
}
