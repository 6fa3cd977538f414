//! The security-group rules of one host, as its agent enforces them: every port of every
//! instance placed there with the rules of all its groups, and the addresses of the members
//! of every group those rules name, per network. Computed from the store each time (the
//! desired state), so sending it again is always right. With them go the floating IPs of
//! those instances and the names of their networks (for the networks' DNS servers).

use crate::app::{App, AppError};
use nimbus_agent_api::{FirewallRule, GroupMembers, HostFirewall, PortFirewall, Remote};
use nimbus_api::SecurityRuleView;
use nimbus_store::Scope;
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

impl App {
    /// The desired security-group rules of host `host`.
    pub async fn host_firewall(&self, host: &str) -> Result<HostFirewall, AppError> {
        let store = self.store();
        let instances = store.list_instances(&Scope::All).await?;
        let ports = store.list_ports(&Scope::All).await?;
        let mut groups_of: HashMap<Uuid, Vec<String>> = HashMap::new();
        for i in &instances {
            groups_of.insert(i.id, store.instance_secgroups(i.id).await?);
        }
        let project_of: HashMap<Uuid, &str> = instances
            .iter()
            .map(|i| (i.id, i.project.as_str()))
            .collect();
        let mut rules_of: HashMap<(String, String), Vec<SecurityRuleView>> = HashMap::new();
        let mut fw = HostFirewall::default();
        // (project, group, vni) whose members a rule of this host names.
        let mut named = BTreeSet::new();
        // An instance migrating here has its rules here before it resumes here.
        let mut arriving = BTreeSet::new();
        for i in instances.iter().filter(|i| i.operation_id.is_some()) {
            let migrations = store.migrations_of(&Scope::All, i.id).await?;
            if migrations
                .iter()
                .any(|m| m.state == "running" && m.target == host)
            {
                arriving.insert(i.id);
            }
        }
        let here = |i: &&nimbus_store::InstanceRecord| {
            i.host.as_deref() == Some(host) || arriving.contains(&i.id)
        };
        for i in instances.iter().filter(here) {
            let mut rules = Vec::new();
            for g in groups_of.get(&i.id).into_iter().flatten() {
                let key = (i.project.clone(), g.clone());
                if !rules_of.contains_key(&key) {
                    let view = store.get_secgroup(&Scope::project(&i.project), g).await?;
                    rules_of.insert(key.clone(), view.rules);
                }
                rules.extend(rules_of[&key].iter().cloned());
            }
            for p in ports.iter().filter(|p| p.instance_id == i.id) {
                for g in rules.iter().filter_map(|r| r.group.clone()) {
                    named.insert((i.project.clone(), g, p.vni));
                }
                fw.ports.push(PortFirewall {
                    instance_id: i.id,
                    nic: p.nic as usize,
                    vni: p.vni,
                    rules: rules.iter().filter_map(firewall_rule).collect(),
                });
            }
        }
        let here_ids = instances.iter().filter(here).map(|i| i.id).collect();
        fw.floating = self.host_floating(&here_ids, &ports).await?;
        let name_of = instances.iter().map(|i| (i.id, i.name.as_str())).collect();
        let vnis = fw.ports.iter().map(|p| p.vni).collect();
        fw.names = super::dns::network_names(&name_of, &ports, &vnis);
        for (project, group, vni) in named {
            let addresses = ports
                .iter()
                .filter(|p| p.vni == vni && project_of.get(&p.instance_id) == Some(&&*project))
                .filter(|p| {
                    groups_of
                        .get(&p.instance_id)
                        .is_some_and(|g| g.contains(&group))
                })
                .filter_map(|p| p.ip.split('/').next().map(str::to_string))
                .collect();
            fw.groups.push(GroupMembers {
                vni,
                group,
                addresses,
            });
        }
        Ok(fw)
    }
}

/// A stored rule as the agent takes it (a rule without remote, which the store never
/// holds, is left out: it allows nothing).
fn firewall_rule(r: &SecurityRuleView) -> Option<FirewallRule> {
    let remote = match (&r.cidr, &r.group) {
        (Some(cidr), _) => Remote::Cidr(cidr.clone()),
        (None, Some(group)) => Remote::Group(group.clone()),
        (None, None) => return None,
    };
    Some(FirewallRule {
        direction: r.direction,
        protocol: r.protocol,
        port_min: r.port_min,
        port_max: r.port_max,
        remote,
    })
}
