//! What each host's agent can do (the capabilities it reports at registration), checked
//! before an operation chooses a host: in a cloud whose agents are being upgraded one by
//! one, what an older agent would fail midway (it unwinds, the VM stays on its source) is
//! refused up front with the host to upgrade, or that host is skipped when the scheduler
//! chooses (docs/hosts.md, "Upgrades").

use crate::app::{App, AppError};
use nimbus_agent_api::capability;
use nimbus_scheduler::HostCapacity;
use nimbus_store::{HostRecord, InstanceRecord};
use std::collections::BTreeMap;

/// The hosts that cannot take one instance, each with why.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Unfit(BTreeMap<String, String>);

impl Unfit {
    /// Why `host` cannot take the instance; `None`: it can.
    pub fn reason(&self, host: &str) -> Option<&str> {
        self.0.get(host).map(String::as_str)
    }

    /// The hosts of `pool` left out, with why, for a "no host" error; `None` if none was.
    pub fn skipped_in(&self, pool: &[HostCapacity]) -> Option<String> {
        let skipped: Vec<&str> = pool.iter().filter_map(|h| self.reason(&h.name)).collect();
        (!skipped.is_empty()).then(|| format!("not considered: {}", skipped.join("; ")))
    }
}

/// Most capabilities a registration may carry, and the longest name.
const MAX_CAPABILITIES: usize = 64;
const MAX_NAME_LEN: usize = 64;

/// Refuses a registration whose capabilities are not a short list of short names
/// (lowercase letters, digits and `-`): they are stored with the host.
pub fn check_names(names: &[String]) -> Result<(), AppError> {
    let bad = names.iter().find(|n| {
        n.is_empty()
            || n.len() > MAX_NAME_LEN
            || !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if let Some(name) = bad {
        return Err(AppError::bad_request(format!(
            "invalid capability name {name:?} in the registration"
        )));
    }
    if names.len() > MAX_CAPABILITIES {
        return Err(AppError::bad_request(format!(
            "a registration carries at most {MAX_CAPABILITIES} capabilities"
        )));
    }
    Ok(())
}

fn can(host: &HostRecord, name: &str) -> bool {
    host.capabilities.iter().any(|c| c == name)
}

impl App {
    /// The hosts whose agents cannot receive what `inst` holds (its snapshots move with it).
    /// With `source` (a migration; not an HA restart, whose source is gone), an error when
    /// the source's own agent cannot send it.
    pub(crate) async fn unfit_targets(
        &self,
        inst: &InstanceRecord,
        source: Option<&str>,
    ) -> Result<Unfit, AppError> {
        let snapshots = self.store().count_snapshots_of(inst.id).await?;
        if snapshots == 0 {
            return Ok(Unfit::default());
        }
        let mut unfit = BTreeMap::new();
        let hosts = self.store().list_hosts().await?;
        for h in hosts.iter().filter(|h| !can(h, capability::SNAPSHOT_MOVE)) {
            let upgrade = format!(
                "upgrade the agent on host {} first (its agent {} does not report `{}`)",
                h.name,
                h.agent_version,
                capability::SNAPSHOT_MOVE
            );
            if Some(h.name.as_str()) == source {
                return Err(AppError::conflict(format!(
                    "cannot migrate instance {}: its {snapshots} snapshot(s) move with it and \
                     its host's agent cannot send them; {upgrade}",
                    inst.name
                )));
            }
            unfit.insert(
                h.name.clone(),
                format!(
                    "host {} cannot receive instance {}'s {snapshots} snapshot(s): {upgrade}",
                    h.name, inst.name
                ),
            );
        }
        Ok(Unfit(unfit))
    }
}
