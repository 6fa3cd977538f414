//! Choosing a host and claiming room there, correct with any number of controllers.
//!
//! The choice is made on a snapshot of the allocations; the claim (`nimbus_store`'s
//! `claim_*`) re-checks the chosen host inside one database transaction. When another
//! controller took the room first the claim says `NoRoom`, and the choice is made again on
//! fresh figures, so it moves on to the next candidate host (as OpenStack Placement retries
//! generation conflicts).

use super::placement_groups::GroupContext;
use super::{App, AppError};
use nimbus_api::{ErrorCode, PlacementPolicy};
use nimbus_scheduler::HostCapacity;
use nimbus_store::{Allocation, HostClaim, InstanceRecord, StoreError};
use std::future::Future;

/// Choices made again after a lost claim before giving up. Each lost claim means another
/// placement succeeded, so this is only reached under a storm of placements on full hosts.
const CLAIM_ATTEMPTS: u32 = 10;

impl App {
    /// Chooses a host for `inst` with `choose` (given the hosts' figures and the instance's
    /// placement group) and claims it with `take`; again on fresh figures when another
    /// placement took the room first. Answers the host.
    pub(crate) async fn choose_and_claim<C, T, Fut>(
        &self,
        inst: &InstanceRecord,
        choose: C,
        take: T,
    ) -> Result<String, AppError>
    where
        C: Fn(&[HostCapacity], Option<&GroupContext>) -> Result<String, AppError>,
        T: Fn(HostClaim) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        for attempt in 1..=CLAIM_ATTEMPTS {
            let pool = self.host_capacities().await?;
            let group = self.group_context(inst).await?;
            let host = choose(&pool, group.as_ref())?;
            let chosen = pool
                .iter()
                .find(|h| h.name == host)
                .ok_or_else(|| AppError::internal(format!("chosen host {host} is unknown")))?;
            match take(claim_of(chosen, inst, group.as_ref())).await {
                Ok(()) => return Ok(host),
                Err(StoreError::NoRoom { host, reason }) => {
                    tracing::info!(instance_id = %inst.id, %host, attempt, %reason, "claim lost; choosing again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::new(
            ErrorCode::NoCapacity,
            "the hosts kept filling up while this instance was placed; retry",
        ))
    }
}

/// The claim of room for `inst` on `host`.
fn claim_of(host: &HostCapacity, inst: &InstanceRecord, group: Option<&GroupContext>) -> HostClaim {
    let offered = host.offered();
    let spread = group.is_some_and(|g| g.policy == PlacementPolicy::Spread);
    HostClaim {
        host: host.name.clone(),
        offered: Allocation {
            vcpus: offered.vcpus,
            memory_mib: offered.memory_mib,
            disk_gib: offered.disk_gib,
            instances: 0,
        },
        spread_group: inst.placement_group.filter(|_| spread),
    }
}
