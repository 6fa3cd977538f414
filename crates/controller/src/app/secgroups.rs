//! Security groups of a project (EC2 semantics): create, list, show, delete; their allow
//! rules; and the groups of an instance. The checks of tenant input live here; the store
//! checks, under the project lock, that every group named is of the same project.

use crate::app::{App, AppError, Caller};
use ipnet::Ipv4Net;
use nimbus_api::{
    validate_name, CreateSecurityGroup, CreateSecurityRule, SecurityGroupView, SecurityRuleView,
    SetSecurityGroups, DEFAULT_SECGROUP,
};
use nimbus_store::{NewRule, StoreError};
use nimbus_store::{Page, PageRequest};

/// The most security groups an instance may be in (EC2's default): each port's rules are
/// those of all its groups, compiled on its host.
pub const MAX_GROUPS_PER_INSTANCE: usize = 5;

impl App {
    /// Creates a group in the caller's project: no inbound, all outbound.
    pub async fn create_secgroup(
        &self,
        caller: &Caller,
        req: &CreateSecurityGroup,
    ) -> Result<SecurityGroupView, AppError> {
        caller.require_write()?;
        check_name(&req.name)?;
        let g = self
            .store()
            .create_secgroup(&caller.project, &req.name)
            .await?;
        tracing::info!(project = %caller.project, secgroup = %g.name, "security group created");
        Ok(g)
    }

    pub async fn list_secgroups(
        &self,
        caller: &Caller,
        page: &PageRequest,
    ) -> Result<Page<SecurityGroupView>, AppError> {
        let scope = caller.scope();
        Ok(self.store().list_secgroups_page(&scope, page).await?)
    }

    /// Group `name` of the caller's project (404 for other projects' groups).
    pub async fn find_secgroup(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<SecurityGroupView, AppError> {
        self.store()
            .get_secgroup(&caller.scope(), name)
            .await
            .map_err(secgroup_error)
    }

    /// Deletes a group no instance is in and no other group's rule names; `default` stays.
    pub async fn delete_secgroup(&self, caller: &Caller, name: &str) -> Result<(), AppError> {
        caller.require_write()?;
        if name == DEFAULT_SECGROUP {
            return Err(AppError::bad_request(
                "the default group is where instances go without --secgroup; it stays as long \
                 as its project",
            ));
        }
        self.store()
            .delete_secgroup(&caller.project, name)
            .await
            .map_err(secgroup_error)?;
        tracing::info!(project = %caller.project, secgroup = %name, "security group deleted");
        Ok(())
    }

    /// Adds an allow rule to group `group` of the caller's project.
    pub async fn add_secgroup_rule(
        &self,
        caller: &Caller,
        group: &str,
        req: &CreateSecurityRule,
    ) -> Result<SecurityRuleView, AppError> {
        caller.require_write()?;
        let rule = checked_rule(req)?;
        let r = self
            .store()
            .add_secgroup_rule(&caller.project, group, &rule)
            .await
            .map_err(secgroup_error)?;
        tracing::info!(project = %caller.project, secgroup = %group, rule = r.id, "security group rule added");
        Ok(r)
    }

    /// Deletes rule `rule` of group `group`: new connections it allowed are refused from now
    /// on; tracked ones go on (as in EC2).
    pub async fn delete_secgroup_rule(
        &self,
        caller: &Caller,
        group: &str,
        rule: u64,
    ) -> Result<(), AppError> {
        caller.require_write()?;
        self.store()
            .delete_secgroup_rule(&caller.project, group, rule)
            .await
            .map_err(secgroup_error)?;
        tracing::info!(project = %caller.project, secgroup = %group, rule, "security group rule deleted");
        Ok(())
    }

    /// Sets the groups of instance `id_or_name` (running or not); answers them.
    pub async fn set_instance_secgroups(
        &self,
        caller: &Caller,
        id_or_name: &str,
        req: &SetSecurityGroups,
    ) -> Result<Vec<String>, AppError> {
        caller.require_write()?;
        if req.secgroups.is_empty() {
            return Err(AppError::bad_request(
                "an instance is in at least one security group; name one or more with --secgroup",
            ));
        }
        check_instance_groups(&req.secgroups)?;
        let instance = self.find_instance(caller, id_or_name).await?;
        self.store()
            .set_instance_secgroups(&caller.project, instance.id, &req.secgroups)
            .await
            .map_err(secgroup_error)?;
        tracing::info!(instance_id = %instance.id, secgroups = ?req.secgroups, "instance security groups set");
        Ok(self.store().instance_secgroups(instance.id).await?)
    }
}

/// Checks the groups named for an instance: valid names, at most
/// [`MAX_GROUPS_PER_INSTANCE`] of them.
pub(crate) fn check_instance_groups(names: &[String]) -> Result<(), AppError> {
    if names.len() > MAX_GROUPS_PER_INSTANCE {
        return Err(AppError::bad_request(format!(
            "an instance is in at most {MAX_GROUPS_PER_INSTANCE} security groups; {} were named",
            names.len()
        )));
    }
    names.iter().try_for_each(|name| check_name(name))
}

fn check_name(name: &str) -> Result<(), AppError> {
    validate_name(name)
        .map_err(|e| AppError::bad_request(format!("invalid security group name {name:?}: {e}")))
}

/// Checks a rule as a tenant sent it: ports only for tcp/udp, 1-65535, in order; exactly one
/// remote (a CIDR written as its network address, or a group name).
fn checked_rule(req: &CreateSecurityRule) -> Result<NewRule, AppError> {
    let bad = |m: String| AppError::bad_request(m);
    let (port_min, port_max) = match (req.port_min, req.port_max) {
        (None, None) => (None, None),
        (None, Some(_)) => return Err(bad("port_max needs port_min".into())),
        (Some(min), max) => {
            let max = max.unwrap_or(min);
            if !req.protocol.has_ports() {
                return Err(bad(format!(
                    "ports apply to tcp and udp only, not to {}",
                    req.protocol.as_str()
                )));
            }
            if min == 0 || max < min {
                return Err(bad(format!(
                    "invalid port range {min}-{max}: ports are 1-65535, first <= last"
                )));
            }
            (Some(min), Some(max))
        }
    };
    let cidr = match (&req.cidr, &req.group) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(bad(
                "a rule names exactly one remote: --cidr CIDR or --group G".into(),
            ))
        }
        (Some(cidr), None) => Some(checked_cidr(cidr).map_err(bad)?),
        (None, Some(group)) => {
            check_name(group)?;
            None
        }
    };
    Ok(NewRule {
        direction: req.direction,
        protocol: req.protocol,
        port_min,
        port_max,
        cidr,
        group: req.group.clone(),
    })
}

/// An IPv4 prefix written as its network address (`0.0.0.0/0` for everywhere).
fn checked_cidr(s: &str) -> Result<String, String> {
    let net: Ipv4Net = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 prefix like 10.10.0.0/24 or 0.0.0.0/0"))?;
    if net.network() != net.addr() {
        return Err(format!(
            "{s} is not the network address of its prefix (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net.to_string())
}

fn secgroup_error(e: StoreError) -> AppError {
    match e {
        StoreError::NotFound { .. } => AppError::not_found(format!(
            "{e}; `nimbus secgroup list` shows the project's security groups"
        )),
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::{Direction, Protocol};

    fn rule(
        protocol: Protocol,
        ports: (Option<u16>, Option<u16>),
        cidr: Option<&str>,
    ) -> CreateSecurityRule {
        CreateSecurityRule {
            direction: Direction::Ingress,
            protocol,
            port_min: ports.0,
            port_max: ports.1,
            cidr: cidr.map(str::to_string),
            group: None,
        }
    }

    #[test]
    fn rules_are_checked() {
        let ok = checked_rule(&rule(Protocol::Tcp, (Some(22), None), Some("0.0.0.0/0")));
        assert_eq!(ok.expect("ok").port_max, Some(22));
        for bad in [
            rule(Protocol::Icmp, (Some(22), None), Some("0.0.0.0/0")),
            rule(Protocol::Tcp, (Some(0), None), Some("0.0.0.0/0")),
            rule(Protocol::Tcp, (Some(90), Some(80)), Some("0.0.0.0/0")),
            rule(Protocol::Tcp, (None, Some(80)), Some("0.0.0.0/0")),
            rule(Protocol::Udp, (None, None), Some("10.0.0.1/24")),
            rule(Protocol::Udp, (None, None), Some("nope")),
            rule(Protocol::Udp, (None, None), None),
        ] {
            assert!(checked_rule(&bad).is_err(), "{bad:?}");
        }
        let mut both = rule(Protocol::Any, (None, None), Some("10.0.0.0/8"));
        both.group = Some("web".into());
        assert!(checked_rule(&both).is_err());
    }
}
