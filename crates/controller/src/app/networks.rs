//! Tenant networks of a project: create (CIDR checks, a VNI from the store), list, show,
//! delete; and the NICs an instance create asks for.

use crate::app::network::{fixed_address, gateway_of, overlaps, parse_cidr};
use crate::app::{App, AppError, Caller};
use nimbus_api::{validate_name, CreateNetwork, NetworkView, DEFAULT_NETWORK};
use nimbus_store::{NetworkRecord, NewNetwork, NicPlan, StoreError};
use nimbus_store::{Page, PageRequest};

/// The most NICs an instance may have (one per network): each is a PCI device of the VM and
/// puts its network's segment, router and servers on the VM's host.
pub const MAX_NICS: usize = 8;

impl App {
    /// Creates a network in the caller's project.
    pub async fn create_network(
        &self,
        caller: &Caller,
        req: &CreateNetwork,
    ) -> Result<NetworkView, AppError> {
        caller.require_write()?;
        validate_name(&req.name).map_err(|e| {
            AppError::bad_request(format!("invalid network name {:?}: {e}", req.name))
        })?;
        let cidr = parse_cidr(&req.cidr)
            .map_err(|e| AppError::bad_request(format!("invalid network CIDR: {e}")))?;
        let new = NewNetwork {
            name: req.name.clone(),
            cidr: cidr.to_string(),
            gateway: gateway_of(&cidr).to_string(),
        };
        let net = self
            .store()
            .create_network(&caller.project, &new, |other| {
                other.parse().is_ok_and(|other| overlaps(&cidr, &other))
            })
            .await?;
        tracing::info!(project = %caller.project, network = %net.name, vni = net.vni, cidr = %net.cidr, "network created");
        Ok(net.view())
    }

    pub async fn list_networks(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<NetworkView>, AppError> {
        let scope = caller.scope();
        let nets = self.store().list_networks_page(&scope, page).await?;
        Ok(nets.map(|n| n.view()))
    }

    /// Network `name` of the caller's project (404 for other projects' networks).
    pub async fn find_network(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<NetworkRecord, AppError> {
        self.store()
            .get_network(&caller.scope(), name)
            .await
            .map_err(|e| network_error(e, name))
    }

    /// Deletes a network no instance is on; the `default` network stays.
    pub async fn delete_network(&self, caller: &Caller, name: &str) -> Result<(), AppError> {
        caller.require_write()?;
        if name == DEFAULT_NETWORK {
            return Err(AppError::bad_request(
                "the default network is where instances go without --network; it stays as \
                 long as its project",
            ));
        }
        self.store()
            .delete_network(&caller.project, name)
            .await
            .map_err(|e| network_error(e, name))?;
        tracing::info!(project = %caller.project, network = %name, "network deleted");
        Ok(())
    }

    /// The `default` network a new project gets: the cloud network's prefix.
    pub fn default_network(&self) -> NewNetwork {
        let settings = self.config().network.clone().unwrap_or_default();
        let cidr = format!("{}/{}", settings.address, settings.prefix_len);
        let gateway = cidr
            .parse()
            .map(|net| gateway_of(&net).to_string())
            .unwrap_or_default();
        NewNetwork {
            name: DEFAULT_NETWORK.to_string(),
            cidr,
            gateway,
        }
    }

    /// The NICs of a new instance of the caller's project: one per network named (the
    /// `default` network if none), `ip` on the first one. Unknown networks answer 404, an
    /// `ip` outside its network or reserved 400; the store claims the addresses.
    pub async fn plan_nics(
        &self,
        caller: &Caller,
        networks: &[String],
        ip: Option<&str>,
    ) -> Result<Vec<NicPlan>, AppError> {
        let default = [DEFAULT_NETWORK.to_string()];
        let names = if networks.is_empty() {
            &default[..]
        } else {
            networks
        };
        if names.len() > MAX_NICS {
            return Err(AppError::bad_request(format!(
                "an instance has at most {MAX_NICS} NICs, one per --network; {} were asked for",
                names.len()
            )));
        }
        let mut plans = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(AppError::bad_request(format!(
                    "network {name:?} is named twice: an instance has one NIC per network"
                )));
            }
            let net = self.find_network(caller, name).await?;
            let address = match ip.filter(|_| i == 0) {
                Some(ip) => {
                    let cidr = parse_cidr(&net.cidr)
                        .map_err(|e| AppError::internal(format!("stored network {name:?}: {e}")))?;
                    Some(fixed_address(&cidr, ip).map_err(|e| {
                        AppError::bad_request(format!("--ip on network {name:?}: {e}"))
                    })?)
                }
                None => None,
            };
            plans.push(NicPlan {
                network: name.clone(),
                address,
            });
        }
        Ok(plans)
    }
}

fn network_error(e: StoreError, name: &str) -> AppError {
    match e {
        StoreError::NotFound { .. } => AppError::not_found(format!(
            "network {name:?} not found; `nimbus network list` shows the project's networks"
        )),
        e => e.into(),
    }
}
