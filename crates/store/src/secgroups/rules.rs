//! Allow rules of a security group (validated by the caller; the store checks that a named
//! remote group belongs to the same project).

use super::{group_id, next_id, ID_ATTEMPTS};
use crate::locks::lock_project;
use crate::{time, Scope, Store, StoreError};
use nimbus_api::{Direction, Protocol, SecurityRuleView};
use sqlx::{Any, Row, Transaction};

/// The most rules a group may have: every rule is compiled into the rule chain of every port
/// in the group, on every host, so no tenant may add them without bound.
pub const MAX_RULES_PER_GROUP: i64 = 100;

/// A rule to add.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRule {
    pub direction: Direction,
    pub protocol: Protocol,
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    /// Remote IPv4 prefix (exactly one of `cidr` and `group`).
    pub cidr: Option<String>,
    /// Remote group of the same project.
    pub group: Option<String>,
}

impl NewRule {
    /// A rule for every protocol and port in `direction`.
    pub fn all(direction: Direction, cidr: Option<&str>, group: Option<&str>) -> Self {
        NewRule {
            direction,
            protocol: Protocol::Any,
            port_min: None,
            port_max: None,
            cidr: cidr.map(str::to_string),
            group: group.map(str::to_string),
        }
    }
}

impl Store {
    /// Adds `rule` to group `group` of `project`; a remote group must be of the same project
    /// (not found otherwise). Answers the rule with its id.
    pub async fn add_secgroup_rule(
        &self,
        project: &str,
        group: &str,
        rule: &NewRule,
    ) -> Result<SecurityRuleView, StoreError> {
        for attempt in 1..=ID_ATTEMPTS {
            let mut tx = self.begin().await?;
            lock_project(&mut tx, project).await?;
            let id = group_id(&mut tx, project, group).await?;
            let rules: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM secgroup_rules WHERE group_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            if rules >= MAX_RULES_PER_GROUP {
                return Err(StoreError::Conflict(format!(
                    "security group {group:?} has {rules} rules, the most a group may have; \
                     delete one first (`nimbus secgroup show {group}` lists them)"
                )));
            }
            let remote = match &rule.group {
                Some(name) => Some(group_id(&mut tx, project, name).await?),
                None => None,
            };
            match insert_rule(&mut tx, id, rule, remote).await {
                Ok(rule_id) => {
                    tx.commit().await?;
                    let view = self.get_secgroup(&Scope::project(project), group).await?;
                    return view
                        .rules
                        .into_iter()
                        .find(|r| r.id == rule_id as u64)
                        .ok_or_else(|| StoreError::not_found("security group rule", "new"));
                }
                Err(StoreError::Conflict(msg)) if attempt < ID_ATTEMPTS => {
                    tracing::debug!(attempt, msg, "rule id taken concurrently; retrying");
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(
            "could not allocate a rule id; try again".into(),
        ))
    }

    /// Deletes rule `rule_id` of group `group` of `project`.
    pub async fn delete_secgroup_rule(
        &self,
        project: &str,
        group: &str,
        rule_id: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        lock_project(&mut tx, project).await?;
        let id = group_id(&mut tx, project, group).await?;
        let deleted = sqlx::query("DELETE FROM secgroup_rules WHERE id = $1 AND group_id = $2")
            .bind(i64::try_from(rule_id).unwrap_or(i64::MAX))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::not_found(
                "security group rule",
                rule_id.to_string(),
            ));
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Inserts `rule` of group `group` (remote group `remote`, already resolved) inside `tx`;
/// answers its id.
pub(crate) async fn insert_rule(
    tx: &mut Transaction<'_, Any>,
    group: i64,
    rule: &NewRule,
    remote: Option<i64>,
) -> Result<i64, StoreError> {
    let id = next_id(tx, "secgroup_rules").await?;
    sqlx::query(
        "INSERT INTO secgroup_rules (id, group_id, direction, protocol, port_min, port_max, \
         cidr, remote_group_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(group)
    .bind(rule.direction.as_str())
    .bind(rule.protocol.as_str())
    .bind(rule.port_min.map(i64::from))
    .bind(rule.port_max.map(i64::from))
    .bind(rule.cidr.clone())
    .bind(remote)
    .bind(time::now())
    .execute(&mut **tx)
    .await
    .map_err(|e| StoreError::unique_or(e, || format!("rule id {id} is taken")))?;
    Ok(id)
}
