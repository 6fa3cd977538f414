//! What the metadata service knows: the instances with a port on this host, by the address
//! port security pins to that port on its network, and the floating IPs the controller sent.

use base64::Engine as _;
use nimbus_agent_api::{FloatingNat, VmSpec};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

/// The metadata of one instance, as its VM spec (from the controller) gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: Uuid,
    /// `hostname` and `local-hostname`: the instance name made a valid host name.
    pub hostname: String,
    /// `local-ipv4`: the first NIC's address, with its network (the key of `public-ipv4`).
    pub local_ipv4: Option<(u32, Ipv4Addr)>,
    pub public_keys: Vec<String>,
    /// The user-data, decoded (`None`: the instance has none).
    pub user_data: Option<Vec<u8>>,
}

impl Instance {
    /// The metadata of `spec`.
    pub fn of(spec: &VmSpec) -> Self {
        let seed = spec.seed.as_ref();
        let engine = base64::engine::general_purpose::STANDARD;
        Self {
            id: spec.id,
            hostname: crate::instance::launch::hostname(&spec.name),
            local_ipv4: spec.nics.first().and_then(address_of),
            public_keys: seed.map(|s| s.public_keys.clone()).unwrap_or_default(),
            // The controller checked it is base64 at create; anything else serves as none.
            user_data: seed
                .and_then(|s| s.user_data.as_deref())
                .and_then(|b64| engine.decode(b64.trim()).ok()),
        }
    }
}

/// The network and address of a NIC on a tenant network.
fn address_of(nic: &nimbus_agent_api::NicSpec) -> Option<(u32, Ipv4Addr)> {
    let vni = nic.vni?;
    let ip = nic.ip.split('/').next()?.parse().ok()?;
    Some((vni, ip))
}

/// The instances and floating IPs of this host, shared by every network's server.
#[derive(Debug, Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (network, address of a port here) → the port's instance.
    ports: HashMap<(u32, Ipv4Addr), Arc<Instance>>,
    /// (network, private address) → floating IP.
    floating: HashMap<(u32, Ipv4Addr), Ipv4Addr>,
    /// Instance → unix ms of its guest's last accepted readiness report. Only instances
    /// with a port here can report, and forgetting the instance drops its entry: bounded.
    ready: HashMap<Uuid, u64>,
}

/// Why a readiness report was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportRefused {
    /// The instance reported less than [`REPORT_INTERVAL_MS`] ago; retry after this many ms.
    TooSoon(u64),
}

/// The shortest time between two accepted readiness reports of one instance: a guest that
/// reports in a loop costs one map write per interval.
pub const REPORT_INTERVAL_MS: u64 = 2_000;

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers every tenant NIC of `spec` (again: a relaunch may bring a changed spec).
    pub fn register(&self, spec: &VmSpec) {
        let inst = Arc::new(Instance::of(spec));
        let mut inner = self.write();
        for key in spec.nics.iter().filter_map(address_of) {
            inner.ports.insert(key, inst.clone());
        }
    }

    /// Forgets `spec`'s NICs, unless another instance holds their address by now, and its
    /// readiness report.
    pub fn forget(&self, spec: &VmSpec) {
        let mut inner = self.write();
        inner.ready.remove(&spec.id);
        for key in spec.nics.iter().filter_map(address_of) {
            if inner.ports.get(&key).is_some_and(|i| i.id == spec.id) {
                inner.ports.remove(&key);
            }
        }
    }

    /// Replaces the floating IPs (the controller's last list for this host).
    pub fn set_floating(&self, nats: &[FloatingNat]) {
        let floating = nats
            .iter()
            .filter_map(|n| Some(((n.vni, n.private.parse().ok()?), n.floating.parse().ok()?)))
            .collect();
        self.write().floating = floating;
    }

    /// The instance whose port on network `vni` has address `ip`.
    pub fn instance(&self, vni: u32, ip: Ipv4Addr) -> Option<Arc<Instance>> {
        self.read().ports.get(&(vni, ip)).cloned()
    }

    /// Records that `inst`'s guest reported ready at `now_ms`, at most once per
    /// [`REPORT_INTERVAL_MS`].
    pub fn report_ready(&self, inst: &Instance, now_ms: u64) -> Result<(), ReportRefused> {
        let mut inner = self.write();
        if let Some(last) = inner.ready.get(&inst.id) {
            let since = now_ms.saturating_sub(*last);
            if since < REPORT_INTERVAL_MS {
                return Err(ReportRefused::TooSoon(REPORT_INTERVAL_MS - since));
            }
        }
        inner.ready.insert(inst.id, now_ms);
        Ok(())
    }

    /// When instance `id`'s guest last reported ready (unix ms).
    pub fn ready_report(&self, id: Uuid) -> Option<u64> {
        self.read().ready.get(&id).copied()
    }

    /// The floating IP of `inst`, if one is attached.
    pub fn public_ipv4(&self, inst: &Instance) -> Option<Ipv4Addr> {
        let key = inst.local_ipv4?;
        self.read().floating.get(&key).copied()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::network::guest::tests::{nic, spec};

    /// A VM spec with one NIC at `ip` on network `vni`.
    pub(crate) fn vm(ip: &str, vni: u32) -> VmSpec {
        let mut n = nic("52:54:00:00:00:01", &format!("{ip}/24"), Some("10.0.0.1"));
        n.vni = Some(vni);
        spec(vec![n])
    }

    #[test]
    fn ports_are_found_by_network_and_address_and_forgotten_by_owner_only() {
        let reg = Registry::default();
        let a = vm("10.0.0.11", 7);
        reg.register(&a);
        let ip = "10.0.0.11".parse().expect("ip");
        assert_eq!(reg.instance(7, ip).expect("a").id, a.id);
        assert!(reg.instance(8, ip).is_none(), "same address, other network");
        // The address moved to another VM (deleted, then reused): forgetting `a` keeps it.
        let mut b = vm("10.0.0.11", 7);
        b.id = Uuid::new_v4();
        reg.register(&b);
        reg.forget(&a);
        assert_eq!(reg.instance(7, ip).expect("b").id, b.id);
        reg.forget(&b);
        assert!(reg.instance(7, ip).is_none());
    }

    #[test]
    fn the_public_address_is_the_floating_ip_of_the_first_nic() {
        let reg = Registry::default();
        let a = Instance::of(&vm("10.0.0.11", 7));
        assert_eq!(reg.public_ipv4(&a), None);
        reg.set_floating(&[FloatingNat {
            vni: 7,
            floating: "203.0.113.5".into(),
            private: "10.0.0.11".into(),
        }]);
        assert_eq!(
            reg.public_ipv4(&a),
            Some("203.0.113.5".parse().expect("ip"))
        );
        reg.set_floating(&[]);
        assert_eq!(reg.public_ipv4(&a), None);
    }
}
