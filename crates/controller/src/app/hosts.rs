//! Hosts: registration by agents, views with capacity, enable/disable.

use crate::app::{App, AppError};
use chrono::Utc;
use nimbus_agent_api::{ImageCacheReport, KsmStats, NetworkConfig, RegisterHost, RegisterResponse};
use nimbus_api::{validate_name, HostCachedImage, HostImageCache, HostKsm, HostState, HostView};
use nimbus_scheduler::{AllocationRatios, HostCapacity, Resources};
use nimbus_store::HostRecord;
use nimbus_store::{Page, PageRequest};

/// Whether a host's agent reports, from the age of its last report (see
/// [`nimbus_agent_api::liveness`] for the timeouts and why they are safe).
pub fn liveness(h: &HostRecord) -> HostState {
    use nimbus_agent_api::liveness::{DOWN_AFTER, UNREACHABLE_AFTER};
    let silent = silence(h);
    if silent >= DOWN_AFTER {
        HostState::Down
    } else if silent >= UNREACHABLE_AFTER {
        HostState::Unreachable
    } else {
        HostState::Up
    }
}

/// How long the host has not reported: by the database's clock, so that every controller,
/// whatever its own clock, judges alike. A row the store has not measured yet (written before
/// the database kept that time) falls back to the recorded time of day, as before.
fn silence(h: &HostRecord) -> std::time::Duration {
    match h.silent_ms {
        Some(ms) => std::time::Duration::from_millis(ms),
        None => (Utc::now() - h.last_seen).to_std().unwrap_or_default(),
    }
}

fn is_up(h: &HostRecord) -> bool {
    liveness(h) == HostState::Up
}

impl App {
    /// Records (or refreshes) a host from its agent's registration, and answers what the
    /// agent must set up (the cloud network and its VXLAN peers).
    pub async fn register_host(&self, req: &RegisterHost) -> Result<RegisterResponse, AppError> {
        let inv = &req.inventory;
        validate_name(&inv.name)
            .map_err(|e| AppError::bad_request(format!("invalid host name {:?}: {e}", inv.name)))?;
        check_agent_url(&req.agent_url)?;
        crate::app::host_capabilities::check_names(&inv.capabilities)?;
        let rec = HostRecord {
            name: inv.name.clone(),
            agent_url: req.agent_url.clone(),
            enabled: true,
            cpus: inv.cpus,
            memory_mib: inv.memory_mib,
            disk_gib: inv.disk_gib,
            accelerator: inv.accelerator.to_string(),
            qemu_version: inv.qemu_version.clone(),
            agent_version: inv.agent_version.clone(),
            shared_storage: inv.shared_storage.clone(),
            cpu_allocation_ratio: inv.cpu_allocation_ratio,
            ram_allocation_ratio: inv.ram_allocation_ratio,
            ksm: inv.ksm.and_then(|k| serde_json::to_string(&k).ok()),
            image_cache: inv
                .image_cache
                .as_ref()
                .and_then(|c| serde_json::to_string(c).ok()),
            capabilities: inv.capabilities.clone(),
            last_seen: self.clock_now(),
            silent_ms: None,
            down_since: None,
            ha_restarted: 0,
        };
        self.store().upsert_host(&rec).await?;
        let Some(net) = &self.config().network else {
            return Ok(RegisterResponse::default());
        };
        let peers = self
            .store()
            .list_hosts()
            .await?
            .into_iter()
            .filter(|h| h.name != inv.name)
            .filter_map(|h| url_host(&h.agent_url))
            .collect();
        Ok(RegisterResponse {
            network: Some(NetworkConfig {
                vni: net.vni,
                peers,
                cidr: format!("{}/{}", net.address, net.prefix_len),
            }),
        })
    }

    /// The pool as the scheduler sees it.
    pub async fn host_capacities(&self) -> Result<Vec<HostCapacity>, AppError> {
        let hosts = self.store().list_hosts().await?;
        let alloc = self.store().allocations().await?;
        Ok(hosts
            .iter()
            .map(|h| {
                let a = alloc.get(&h.name).copied().unwrap_or_default();
                HostCapacity {
                    name: h.name.clone(),
                    schedulable: h.enabled && is_up(h),
                    physical: Resources {
                        vcpus: h.cpus as u64,
                        memory_mib: h.memory_mib,
                        disk_gib: h.disk_gib,
                    },
                    allocated: Resources {
                        vcpus: a.vcpus,
                        memory_mib: a.memory_mib,
                        disk_gib: a.disk_gib,
                    },
                    ratios: self.ratios_of(h),
                }
            })
            .collect())
    }

    /// The allocation ratios of a host: its agent's, else the controller's defaults.
    pub fn ratios_of(&self, h: &HostRecord) -> AllocationRatios {
        let default = self.config().ratios;
        AllocationRatios {
            cpu: h.cpu_allocation_ratio.unwrap_or(default.cpu),
            ram: h.ram_allocation_ratio.unwrap_or(default.ram),
            disk: default.disk,
        }
    }

    pub async fn list_hosts(&self) -> Result<Vec<HostView>, AppError> {
        let hosts = self.store().list_hosts().await?;
        self.host_views(hosts).await
    }

    /// One page of the hosts, by name.
    pub async fn list_hosts_page(&self, page: &PageRequest) -> Result<Page<HostView>, AppError> {
        let hosts = self.store().list_hosts_page(page).await?;
        Ok(Page {
            items: self.host_views(hosts.items).await?,
            next: hosts.next,
        })
    }

    async fn host_views(&self, hosts: Vec<HostRecord>) -> Result<Vec<HostView>, AppError> {
        let alloc = self.store().allocations().await?;
        let rss = self.host_rss_bytes().await?;
        let identities: std::collections::HashMap<String, String> = self
            .store()
            .list_host_identities()
            .await?
            .into_iter()
            .map(|i| (i.name, i.fingerprint))
            .collect();
        Ok(hosts
            .into_iter()
            .map(|h| {
                let a = alloc.get(&h.name).copied().unwrap_or_default();
                let r = self.ratios_of(&h);
                let ksm = h.ksm.as_deref().and_then(ksm_view);
                let image_cache = h.image_cache.as_deref().and_then(image_cache_view);
                let memory_mib_used = rss.get(&h.name).map(|b| b >> 20);
                HostView {
                    cert_fingerprint: identities.get(&h.name).cloned(),
                    state: liveness(&h),
                    fenced: liveness(&h) == HostState::Down,
                    down_since: h.down_since,
                    ha_restarted: h.ha_restarted,
                    name: h.name,
                    enabled: h.enabled,
                    agent_url: h.agent_url,
                    accelerator: h.accelerator,
                    qemu_version: h.qemu_version,
                    cpus: h.cpus,
                    memory_mib: h.memory_mib,
                    disk_gib: h.disk_gib,
                    cpu_allocation_ratio: r.cpu,
                    ram_allocation_ratio: r.ram,
                    disk_allocation_ratio: r.disk,
                    vcpus_allocated: a.vcpus as u32,
                    memory_mib_allocated: a.memory_mib,
                    disk_gib_allocated: a.disk_gib,
                    instances: a.instances,
                    last_seen: Some(h.last_seen),
                    memory_mib_used,
                    ksm,
                    image_cache,
                }
            })
            .collect())
    }

    pub async fn get_host(&self, name: &str) -> Result<HostView, AppError> {
        self.list_hosts()
            .await?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| AppError::not_found(format!("host {name:?} not found")))
    }

    /// Refuses (503 `unavailable`) to act on a host whose agent is not reporting.
    pub async fn require_host_up(&self, name: &str, why: &str) -> Result<(), AppError> {
        let host = self.store().get_host(name).await.map_err(|e| match e {
            nimbus_store::StoreError::NotFound { .. } => {
                AppError::not_found(format!("host {name:?} not found"))
            }
            e => e.into(),
        })?;
        let state = liveness(&host);
        if state == HostState::Up {
            return Ok(());
        }
        let state = format!("{state:?}").to_lowercase();
        let seen = format!(" (last report {} s ago)", silence(&host).as_secs());
        Err(AppError::unavailable(format!(
            "host {name}, {why}, is {state}{seen}; try again once it is back (`nimbus host list`)"
        )))
    }

    /// Refuses (409 `no_capacity`) when host `name` cannot take `want` now.
    pub async fn check_room_on(&self, name: &str, want: &Resources) -> Result<(), AppError> {
        let pool = self.host_capacities().await?;
        let host = pool
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| AppError::not_found(format!("host {name:?} not found")))?;
        nimbus_scheduler::place(std::slice::from_ref(host), want, self.config().strategy)
            .map(|_| ())
            .map_err(|e| AppError::new(nimbus_api::ErrorCode::NoCapacity, e.to_string()))
    }

    /// Enables or disables a host for placement.
    pub async fn set_host_enabled(&self, name: &str, enabled: bool) -> Result<HostView, AppError> {
        self.store().set_host_enabled(name, enabled).await?;
        self.get_host(name).await
    }
}

/// The API's view of a host's stored KSM report.
fn ksm_view(json: &str) -> Option<HostKsm> {
    let k: KsmStats = serde_json::from_str(json).ok()?;
    Some(HostKsm {
        running: k.run == 1,
        pages_shared: k.pages_shared,
        pages_sharing: k.pages_sharing,
        pages_unshared: k.pages_unshared,
        saved_bytes: k.saved_bytes(),
    })
}

/// Refuses an agent URL the controller cannot call back on: not http(s), or an unspecified
/// address (`0.0.0.0`, `::`), which an agent started without `--advertise-url` would send.
fn check_agent_url(url: &str) -> Result<(), AppError> {
    let host = url_host(url).unwrap_or_default();
    let unspecified = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    let http = url.starts_with("http://") || url.starts_with("https://");
    if host.is_empty() || unspecified || !http {
        tracing::warn!(agent_url = url, "registration refused: unusable agent URL");
        return Err(AppError::bad_request(format!(
            "agent URL {url:?} cannot be called back; start the agent with --advertise-url \
             set to the address the controller reaches it at"
        )));
    }
    Ok(())
}

/// The host part of an agent URL (`http://10.249.0.11:7701` -> `10.249.0.11`).
pub(crate) fn url_host(url: &str) -> Option<String> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// The API's view of a host's stored image cache report.
fn image_cache_view(json: &str) -> Option<HostImageCache> {
    let c: ImageCacheReport = serde_json::from_str(json).ok()?;
    Some(HostImageCache {
        max_bytes: c.max_bytes,
        used_bytes: c.used_bytes,
        downloads: c.downloads,
        repairs: c.repairs,
        images: c
            .images
            .into_iter()
            .map(|i| HostCachedImage {
                digest: i.digest,
                size_bytes: i.size_bytes,
                last_used: i.last_used,
                in_use: i.in_use,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_host_takes_the_address() {
        assert_eq!(
            super::url_host("http://10.249.0.11:7701").as_deref(),
            Some("10.249.0.11")
        );
        assert_eq!(
            super::url_host("http://agent.example/").as_deref(),
            Some("agent.example")
        );
        assert_eq!(super::url_host("nonsense"), None);
    }

    #[test]
    fn unusable_agent_urls_are_refused() {
        assert!(super::check_agent_url("http://10.249.0.11:7701").is_ok());
        for bad in [
            "http://0.0.0.0:7701",
            "http://[::]:7701",
            "ftp://10.0.0.1",
            "nonsense",
        ] {
            let e = super::check_agent_url(bad).expect_err(bad);
            assert!(e.message.contains("--advertise-url"), "{}", e.message);
        }
    }
}
