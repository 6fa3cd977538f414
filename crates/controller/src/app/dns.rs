//! The names each network's DNS server answers (the agents serve them at the network's
//! gateway, see docs/networking.md): every instance with a port on the network, by its name,
//! in the domain `<network>.internal`. Sent to each host with its firewall, for the networks
//! that have a port there, so a name follows its instance's coming and going within a second.

use nimbus_agent_api::{NameRecord, NetworkNames};
use nimbus_store::PortRecord;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

/// The suffix of every network's DNS domain.
pub const DOMAIN_SUFFIX: &str = "internal";

/// The DNS domain of network `network`.
pub fn domain_of(network: &str) -> String {
    format!("{network}.{DOMAIN_SUFFIX}")
}

/// The names of the networks `vnis`, from every instance's name (by id) and all `ports`.
pub fn network_names(
    name_of: &HashMap<Uuid, &str>,
    ports: &[PortRecord],
    vnis: &BTreeSet<u32>,
) -> Vec<NetworkNames> {
    let mut by_vni: BTreeMap<u32, NetworkNames> = BTreeMap::new();
    for p in ports.iter().filter(|p| vnis.contains(&p.vni)) {
        let Some(name) = name_of.get(&p.instance_id) else {
            continue;
        };
        let names = by_vni.entry(p.vni).or_insert_with(|| NetworkNames {
            vni: p.vni,
            domain: domain_of(&p.network),
            records: Vec::new(),
        });
        let address = p.ip.split('/').next().unwrap_or_default().to_string();
        names.records.push(NameRecord {
            name: name.to_string(),
            address,
        });
    }
    by_vni
        .into_values()
        .map(|mut n| {
            n.records.sort();
            n
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: u128, vni: u32, network: &str, ip: &str) -> PortRecord {
        PortRecord {
            instance_id: Uuid::from_u128(id),
            nic: 0,
            network: network.into(),
            vni,
            cidr: "10.10.0.0/24".into(),
            gateway: "10.10.0.1".into(),
            ip: ip.into(),
            mac: "52:54:00:00:00:01".into(),
        }
    }

    type View<'a> = (u32, &'a str, Vec<(&'a str, &'a str)>);

    #[test]
    fn each_network_has_its_own_instances_only() {
        let names = HashMap::from([
            (Uuid::from_u128(1), "web1"),
            (Uuid::from_u128(2), "db1"),
            (Uuid::from_u128(3), "other"),
        ]);
        let ports = [
            port(2, 4201, "backend", "10.10.0.12/24"),
            port(1, 4201, "backend", "10.10.0.11/24"),
            port(1, 4202, "front", "10.20.0.11/24"),
            port(3, 4300, "theirs", "10.10.0.11/24"),
            port(9, 4201, "backend", "10.10.0.19/24"),
        ];
        let got = network_names(&names, &ports, &BTreeSet::from([4201, 4202]));
        let view: Vec<View> = got
            .iter()
            .map(|n| {
                let records = n.records.iter();
                let records = records.map(|r| (r.name.as_str(), r.address.as_str()));
                (n.vni, n.domain.as_str(), records.collect())
            })
            .collect();
        assert_eq!(
            view,
            vec![
                (
                    4201,
                    "backend.internal",
                    vec![("db1", "10.10.0.12"), ("web1", "10.10.0.11")]
                ),
                (4202, "front.internal", vec![("web1", "10.20.0.11")]),
            ]
        );
    }
}
