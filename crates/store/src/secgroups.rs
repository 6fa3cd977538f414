//! Security groups of a project, their allow rules and their members (instances).
//!
//! Group and rule ids are numbers allocated in the insert transaction (the next above the
//! highest), under [`lock_project`]: changes of one project's groups are serialised, so the
//! in-use check of a delete and the same-project check of a rule see every committed change.
//! Two projects that pick the same id collide on the primary key and the loser retries.

use crate::locks::lock_project;
use crate::page::{Page, PageRequest, BY_PROJECT_AND_NAME};
use crate::{time, Scope, Store, StoreError};
use nimbus_api::{Direction, Protocol, SecurityGroupView, SecurityRuleView, DEFAULT_SECGROUP};
use sqlx::{Any, Row, Transaction};

pub(crate) mod members;
mod rules;

pub use rules::NewRule;

/// Attempts at an id when concurrent inserts take the same one.
const ID_ATTEMPTS: usize = 5;

impl Store {
    /// Creates group `name` in `project`: no inbound, all outbound (EC2's new group).
    pub async fn create_secgroup(
        &self,
        project: &str,
        name: &str,
    ) -> Result<SecurityGroupView, StoreError> {
        for attempt in 1..=ID_ATTEMPTS {
            let mut tx = self.begin().await?;
            lock_project(&mut tx, project).await?;
            if group_id(&mut tx, project, name).await.is_ok() {
                return Err(StoreError::Conflict(format!(
                    "security group {name:?} already exists in project {project:?}"
                )));
            }
            match insert_group(&mut tx, project, name, false).await {
                Ok(_) => {
                    tx.commit().await?;
                    return self.get_secgroup(&Scope::project(project), name).await;
                }
                Err(StoreError::Conflict(msg)) if attempt < ID_ATTEMPTS => {
                    tracing::debug!(
                        attempt,
                        msg,
                        "security group id taken concurrently; retrying"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(
            "could not allocate a security group id; try again".into(),
        ))
    }

    /// Group `name` of the project `scope` names, with its rules and member count.
    pub async fn get_secgroup(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<SecurityGroupView, StoreError> {
        let sql = format!(
            "SELECT * FROM secgroups WHERE name = $1 AND {}",
            scope.condition("project", 2)
        );
        let rows = scope
            .bind(sqlx::query(&sql).bind(name))
            .fetch_all(&self.pool)
            .await?;
        match rows.as_slice() {
            [] => Err(StoreError::not_found("security group", name)),
            [row] => self.group_view(row).await,
            _ => Err(StoreError::Conflict(format!(
                "several projects have a security group named {name:?}; name the project"
            ))),
        }
    }

    /// Groups `scope` sees, by project and name.
    pub async fn list_secgroups(
        &self,
        scope: &Scope,
    ) -> Result<Vec<SecurityGroupView>, StoreError> {
        let sql = format!(
            "SELECT * FROM secgroups WHERE {} ORDER BY project, name",
            scope.condition("project", 1)
        );
        let rows = scope.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        let mut views = Vec::with_capacity(rows.len());
        for row in &rows {
            views.push(self.group_view(row).await?);
        }
        Ok(views)
    }

    /// One page of the groups `scope` sees, by project and name.
    pub async fn list_secgroups_page(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<SecurityGroupView>, StoreError> {
        let rows = BY_PROJECT_AND_NAME
            .fetch_in(
                &self.pool,
                page,
                "SELECT * FROM secgroups",
                scope,
                "project",
            )
            .await?;
        let mut views = Vec::with_capacity(rows.items.len());
        for row in &rows.items {
            views.push(self.group_view(row).await?);
        }
        Ok(Page {
            items: views,
            next: rows.next,
        })
    }

    /// Deletes group `name` of `project`: refused while an instance is in it or a rule of
    /// another group names it.
    pub async fn delete_secgroup(&self, project: &str, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        lock_project(&mut tx, project).await?;
        let id = group_id(&mut tx, project, name).await?;
        let members = count(&mut tx, "instance_secgroups WHERE group_id = $1", id).await?;
        if members > 0 {
            return Err(StoreError::Conflict(format!(
                "security group {name:?} still has {members} instance(s); move them to other \
                 groups (`nimbus instance set N --secgroup G`) or delete them first"
            )));
        }
        let sql = "secgroup_rules WHERE remote_group_id = $1 AND group_id <> remote_group_id";
        let referring = count(&mut tx, sql, id).await?;
        if referring > 0 {
            return Err(StoreError::Conflict(format!(
                "{referring} rule(s) of other groups name security group {name:?}; delete \
                 those rules first"
            )));
        }
        for sql in [
            "DELETE FROM secgroup_rules WHERE group_id = $1",
            "DELETE FROM secgroups WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn group_view(&self, row: &sqlx::any::AnyRow) -> Result<SecurityGroupView, StoreError> {
        let id: i64 = row.try_get("id")?;
        let members: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM instance_secgroups WHERE group_id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
        Ok(SecurityGroupView {
            name: row.try_get("name")?,
            project: row.try_get("project")?,
            rules: self.group_rules(id).await?,
            members: members.max(0) as u64,
            created_at: time::parse(&row.try_get::<String, _>("created_at")?)?,
        })
    }

    async fn group_rules(&self, group: i64) -> Result<Vec<SecurityRuleView>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.*, g.name AS remote_name FROM secgroup_rules r \
             LEFT JOIN secgroups g ON g.id = r.remote_group_id \
             WHERE r.group_id = $1 ORDER BY r.id",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rule_from_row).collect()
    }
}

fn rule_from_row(r: &sqlx::any::AnyRow) -> Result<SecurityRuleView, StoreError> {
    let corrupt = |what: &str, v: &dyn std::fmt::Debug| {
        StoreError::Corrupt(format!("security group rule {what}: {v:?}"))
    };
    let direction: String = r.try_get("direction")?;
    let protocol: String = r.try_get("protocol")?;
    let port = |col: &str| -> Result<Option<u16>, StoreError> {
        r.try_get::<Option<i64>, _>(col)?
            .map(|p| u16::try_from(p).map_err(|_| corrupt(col, &p)))
            .transpose()
    };
    Ok(SecurityRuleView {
        id: r.try_get::<i64, _>("id")?.max(0) as u64,
        direction: Direction::parse(&direction).ok_or_else(|| corrupt("direction", &direction))?,
        protocol: Protocol::parse(&protocol).ok_or_else(|| corrupt("protocol", &protocol))?,
        port_min: port("port_min")?,
        port_max: port("port_max")?,
        cidr: r.try_get("cidr")?,
        group: r.try_get("remote_name")?,
    })
}

/// Inserts group `name` of `project` inside `tx` with its initial rules: all outbound, and
/// for the `default` group (`with_self`) inbound from its own members. Answers its id; a
/// taken id or name is a conflict.
async fn insert_group(
    tx: &mut Transaction<'_, Any>,
    project: &str,
    name: &str,
    with_self: bool,
) -> Result<i64, StoreError> {
    let id = next_id(tx, "secgroups").await?;
    sqlx::query("INSERT INTO secgroups (id, project, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(project)
        .bind(name)
        .bind(time::now())
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            StoreError::unique_or(e, || format!("security group {name:?} or id {id} is taken"))
        })?;
    // Same order as the rules migration 0012 gives existing projects' default groups.
    let mut initial = Vec::new();
    if with_self {
        initial.push((NewRule::all(Direction::Ingress, None, Some(name)), Some(id)));
    }
    initial.push((
        NewRule::all(Direction::Egress, Some("0.0.0.0/0"), None),
        None,
    ));
    for (rule, remote) in &initial {
        rules::insert_rule(tx, id, rule, *remote).await?;
    }
    Ok(id)
}

/// Inserts the `default` group of a new project inside `tx` (the project's own transaction).
pub(crate) async fn insert_default_group(
    tx: &mut Transaction<'_, Any>,
    project: &str,
) -> Result<(), StoreError> {
    insert_group(tx, project, DEFAULT_SECGROUP, true)
        .await
        .map(|_| ())
}

/// The next id of `table` (above the highest in use).
pub(crate) async fn next_id(
    tx: &mut Transaction<'_, Any>,
    table: &'static str,
) -> Result<i64, StoreError> {
    let top: Option<i64> = sqlx::query(&format!("SELECT MAX(id) AS top FROM {table}"))
        .fetch_one(&mut **tx)
        .await?
        .try_get("top")?;
    Ok(top.unwrap_or(0) + 1)
}

/// Id of group `name` of `project` (not found for other projects' groups).
pub(crate) async fn group_id(
    tx: &mut Transaction<'_, Any>,
    project: &str,
    name: &str,
) -> Result<i64, StoreError> {
    sqlx::query("SELECT id FROM secgroups WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::not_found("security group", name))?
        .try_get("id")
        .map_err(StoreError::from)
}

async fn count(
    tx: &mut Transaction<'_, Any>,
    from_where: &str,
    id: i64,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query(&format!("SELECT COUNT(*) AS n FROM {from_where}"))
            .bind(id)
            .fetch_one(&mut **tx)
            .await?
            .try_get("n")?,
    )
}

#[cfg(test)]
mod tests;
