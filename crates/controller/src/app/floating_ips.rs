//! Floating IPs: allocate from the operator's pool (`nimbus controller --floating-ip-pool`),
//! attach to an instance of the same project, detach, release; and the 1:1 NAT each host
//! enforces (in [`App::host_firewall`], so an attach reaches the host within a second and a
//! migrating instance's address is on its target before it resumes there).

use crate::app::{App, AppError, Caller};
use ipnet::Ipv4Net;
use nimbus_agent_api::FloatingNat;
use nimbus_api::{FloatingIpView, InstanceView};
use nimbus_store::{FloatingIpRecord, Page, PageRequest, PortRecord, Scope};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use uuid::Uuid;

/// The addresses of `pool` a floating IP may have: every host address (not the network or
/// broadcast address of a pool larger than /31).
pub fn pool_addresses(pool: Ipv4Net) -> Box<dyn Iterator<Item = String>> {
    // (ipnet's hosts of a /31 or /32 are all its addresses.)
    Box::new(pool.hosts().map(|a| a.to_string()))
}

impl App {
    /// The pool, or a clear refusal when the operator configured none.
    fn floating_pool(&self) -> Result<Ipv4Net, AppError> {
        self.config().floating_ip_pool.ok_or_else(|| {
            AppError::conflict(
                "this cloud has no floating IP pool; an admin starts the controller with \
                 --floating-ip-pool CIDR",
            )
        })
    }

    /// The public view of `f` (with its instance's private address).
    async fn floating_view(&self, f: &FloatingIpRecord) -> Result<FloatingIpView, AppError> {
        let private_ip = match f.instance_id {
            Some(id) => self.store().instance_ports(id).await?.first().map(private),
            None => None,
        };
        Ok(FloatingIpView {
            address: f.address.clone(),
            project: f.project.clone(),
            instance: f.instance.clone(),
            private_ip,
            created_at: f.created_at,
        })
    }

    /// Allocates a floating IP to the caller's project (within its quota).
    pub async fn allocate_floating_ip(&self, caller: &Caller) -> Result<FloatingIpView, AppError> {
        caller.require_write()?;
        let pool = self.floating_pool()?;
        let f = self
            .store()
            .allocate_floating_ip(&caller.project, || pool_addresses(pool))
            .await?;
        tracing::info!(project = %caller.project, address = %f.address, "floating IP allocated");
        self.floating_view(&f).await
    }

    /// One page of the caller's floating IPs, by address.
    pub async fn list_floating_ips(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<FloatingIpView>, AppError> {
        let records = self
            .store()
            .list_floating_ips_page(&caller.scope(), page)
            .await?;
        let mut items = Vec::with_capacity(records.items.len());
        for f in &records.items {
            items.push(self.floating_view(f).await?);
        }
        Ok(Page {
            items,
            next: records.next,
        })
    }

    /// Floating IP `address` of the caller's project (404 for other projects' and unknown
    /// addresses alike).
    async fn find_floating_ip(
        &self,
        caller: &Caller,
        address: &str,
    ) -> Result<FloatingIpRecord, AppError> {
        let bad = || AppError::bad_request(format!("{address:?} is not an IPv4 address"));
        let parsed: Ipv4Addr = address.parse().map_err(|_| bad())?;
        Ok(self
            .store()
            .get_floating_ip(&caller.scope(), &parsed.to_string())
            .await?)
    }

    /// Attaches `address` to instance `instance` of the same project.
    pub async fn attach_floating_ip(
        &self,
        caller: &Caller,
        address: &str,
        instance: &str,
    ) -> Result<FloatingIpView, AppError> {
        caller.require_write()?;
        let f = self.find_floating_ip(caller, address).await?;
        let inst = self.find_instance(caller, instance).await?;
        if self.store().instance_ports(inst.id).await?.is_empty() {
            return Err(AppError::conflict(format!(
                "instance {:?} has no NIC to translate {address} to",
                inst.name
            )));
        }
        let f = self
            .store()
            .attach_floating_ip(&caller.scope(), &f.address, inst.id)
            .await?;
        tracing::info!(project = %caller.project, address = %f.address, instance = %inst.name, "floating IP attached");
        self.floating_view(&f).await
    }

    /// Detaches `address` from its instance.
    pub async fn detach_floating_ip(
        &self,
        caller: &Caller,
        address: &str,
    ) -> Result<FloatingIpView, AppError> {
        caller.require_write()?;
        let f = self.find_floating_ip(caller, address).await?;
        let f = self
            .store()
            .detach_floating_ip(&caller.scope(), &f.address)
            .await?;
        tracing::info!(project = %caller.project, address = %f.address, "floating IP detached");
        self.floating_view(&f).await
    }

    /// Returns `address` to the pool (refused while attached).
    pub async fn release_floating_ip(
        &self,
        caller: &Caller,
        address: &str,
    ) -> Result<(), AppError> {
        caller.require_write()?;
        let f = self.find_floating_ip(caller, address).await?;
        self.store()
            .release_floating_ip(&caller.scope(), &f.address)
            .await?;
        tracing::info!(project = %caller.project, address = %f.address, "floating IP released");
        Ok(())
    }

    /// Adds the instance's floating IP to its view.
    pub(crate) async fn with_floating_ip(
        &self,
        mut view: InstanceView,
    ) -> Result<InstanceView, AppError> {
        view.floating_ip = self.store().floating_ip_of(view.id).await?;
        Ok(view)
    }

    /// The 1:1 NATs of the instances `here` (placed on, or migrating to, one host): each
    /// attached floating IP to its instance's first NIC.
    pub(crate) async fn host_floating(
        &self,
        here: &BTreeSet<Uuid>,
        ports: &[PortRecord],
    ) -> Result<Vec<FloatingNat>, AppError> {
        let attached = self.store().list_floating_ips(&Scope::All).await?;
        Ok(attached
            .iter()
            .filter_map(|f| {
                let id = f.instance_id.filter(|id| here.contains(id))?;
                let port = ports.iter().find(|p| p.instance_id == id && p.nic == 0)?;
                Some(FloatingNat {
                    vni: port.vni,
                    floating: f.address.clone(),
                    private: private(port),
                })
            })
            .collect())
    }
}

/// A port's address without its prefix length.
fn private(p: &PortRecord) -> String {
    p.ip.split('/').next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_addresses_are_its_hosts() {
        let pool: Ipv4Net = "10.249.7.192/30".parse().expect("net");
        let all: Vec<String> = pool_addresses(pool).collect();
        assert_eq!(all, ["10.249.7.193", "10.249.7.194"]);
        let one: Ipv4Net = "192.0.2.7/32".parse().expect("net");
        assert_eq!(pool_addresses(one).collect::<Vec<_>>(), ["192.0.2.7"]);
    }
}
