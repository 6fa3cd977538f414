//! Which projects a query may see. Every query of project-owned rows (instances,
//! operations, migrations; snapshots and scaling groups follow the same pattern) takes a
//! [`Scope`] and filters in SQL, so a handler that forgets a check still cannot read
//! another tenant's rows.
//!
//! Pattern for a new project-owned table: put the scope's condition last in the `WHERE`
//! clause with the next free parameter number, then bind it last:
//!
//! ```ignore
//! let sql = format!("SELECT * FROM snapshots WHERE id = $1 AND {}", scope.condition("project", 2));
//! let row = scope.bind(sqlx::query(&sql).bind(id)).fetch_optional(&pool).await?;
//! ```

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;

/// The projects a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every project: the controller itself (operations, reconciler, metrics).
    All,
    /// One project: a tenant, or an admin acting in that project.
    Project(String),
}

impl Scope {
    /// One project.
    pub fn project(name: impl Into<String>) -> Self {
        Scope::Project(name.into())
    }

    /// The SQL condition on `column` with parameter `$n` (a tautology for [`Scope::All`]).
    pub fn condition(&self, column: &str, n: usize) -> String {
        match self {
            Scope::All => "1 = 1".to_string(),
            Scope::Project(_) => format!("{column} = ${n}"),
        }
    }

    /// Binds the parameter of [`Scope::condition`] (nothing for [`Scope::All`]).
    pub fn bind<'q>(
        &'q self,
        q: Query<'q, Any, AnyArguments<'q>>,
    ) -> Query<'q, Any, AnyArguments<'q>> {
        match self {
            Scope::All => q,
            Scope::Project(p) => q.bind(p.as_str()),
        }
    }

    /// The values [`Scope::bind`] binds, for queries built with parameters in a list.
    pub(crate) fn values(&self) -> Vec<String> {
        match self {
            Scope::All => Vec::new(),
            Scope::Project(p) => vec![p.clone()],
        }
    }

    /// Whether a row of `project` is visible.
    pub fn allows(&self, project: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Project(p) => p == project,
        }
    }
}
