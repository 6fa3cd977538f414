//! Keyset pagination of listings.
//!
//! A listing is ordered by a unique key (a few columns, e.g. `(created_at, id)`); a page is
//! the first `limit` rows whose key comes after the last key of the previous page. Unlike
//! `OFFSET`, a page costs the same wherever it starts (an index seek) and rows inserted or
//! deleted between pages neither repeat nor skip any other row.
//!
//! Pattern for a paged listing of project-owned rows:
//!
//! ```ignore
//! const KEY: Keyset = Keyset::ascending(&[KeyColumn::text("created_at"), KeyColumn::text("id")]);
//! let filter = scope.condition("project", 1);
//! let rows = KEY.fetch(&pool, page, "SELECT * FROM t", &filter, &scope.values()).await?;
//! rows.try_map(record_from_row)
//! ```

use crate::{Scope, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

/// One value of a row's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeyPart {
    Int(i64),
    Text(String),
}

/// The key of a row in its listing's order: one value per key column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageKey(pub Vec<KeyPart>);

/// Which page of a listing to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// At most this many rows (at least 1).
    pub limit: u32,
    /// Rows after this key; none: from the start.
    pub after: Option<PageKey>,
}

impl PageRequest {
    /// The first `limit` rows.
    pub fn first(limit: u32) -> Self {
        Self { limit, after: None }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The key to continue after; none when this is the last page.
    pub next: Option<PageKey>,
}

impl<T> Page<T> {
    /// The same page with each item converted, or the first error.
    pub fn try_map<U, E>(self, f: impl FnMut(&T) -> Result<U, E>) -> Result<Page<U>, E> {
        Ok(Page {
            items: self.items.iter().map(f).collect::<Result<_, _>>()?,
            next: self.next,
        })
    }

    /// The same page with each item mapped.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

/// A key column: its SQL expression (`created_at`, `n.name`; the row's column is the part
/// after the dot) and whether it holds integers (otherwise text).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyColumn {
    expr: &'static str,
    integer: bool,
}

impl KeyColumn {
    /// A text column.
    pub(crate) const fn text(expr: &'static str) -> Self {
        Self {
            expr,
            integer: false,
        }
    }

    /// An integer column.
    pub(crate) const fn int(expr: &'static str) -> Self {
        Self {
            expr,
            integer: true,
        }
    }

    fn name(&self) -> &'static str {
        self.expr.rsplit('.').next().unwrap_or(self.expr)
    }

    fn accepts(&self, part: &KeyPart) -> bool {
        matches!(
            (self.integer, part),
            (true, KeyPart::Int(_)) | (false, KeyPart::Text(_))
        )
    }
}

/// Named project-owned resources: by project, then name.
pub(crate) const BY_PROJECT_AND_NAME: Keyset =
    Keyset::ascending(&[KeyColumn::text("project"), KeyColumn::text("name")]);
/// Oldest first (`created_at`, then id).
pub(crate) const OLDEST_FIRST: Keyset =
    Keyset::ascending(&[KeyColumn::text("created_at"), KeyColumn::text("id")]);
/// Newest first (`created_at`, then id).
pub(crate) const NEWEST_FIRST: Keyset =
    Keyset::descending(&[KeyColumn::text("created_at"), KeyColumn::text("id")]);

/// The key columns of a listing and their direction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keyset {
    columns: &'static [KeyColumn],
    descending: bool,
}

impl Keyset {
    /// Smallest key first.
    pub(crate) const fn ascending(columns: &'static [KeyColumn]) -> Self {
        Self {
            columns,
            descending: false,
        }
    }

    /// Largest key first (newest first for time-ordered logs).
    pub(crate) const fn descending(columns: &'static [KeyColumn]) -> Self {
        Self {
            columns,
            descending: true,
        }
    }

    /// Reads one page of `select WHERE filter`, where `filter` uses the parameters `$1`..
    /// bound to `binds` in order (e.g. a [`crate::Scope`]'s condition and
    /// [`crate::Scope::values`]).
    pub(crate) async fn fetch(
        &self,
        pool: &AnyPool,
        page: &PageRequest,
        select: &str,
        filter: &str,
        binds: &[String],
    ) -> Result<Page<AnyRow>, StoreError> {
        self.check(page)?;
        let sql = format!(
            "{select} WHERE {filter} AND {} {}",
            self.condition(page, binds.len() + 1),
            self.order_and_limit(page)
        );
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b.as_str());
        }
        for part in page.after.iter().flat_map(|k| k.0.iter()) {
            q = match part {
                KeyPart::Int(i) => q.bind(*i),
                KeyPart::Text(s) => q.bind(s.as_str()),
            };
        }
        let mut rows = q.fetch_all(pool).await?;
        let limit = page.limit.max(1) as usize;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = match (more, rows.last()) {
            (true, Some(last)) => Some(self.key_of(last)?),
            _ => None,
        };
        Ok(Page { items: rows, next })
    }

    /// Reads one page of `select` restricted to the rows `scope` sees (`column` names their
    /// project).
    pub(crate) async fn fetch_in(
        &self,
        pool: &AnyPool,
        page: &PageRequest,
        select: &str,
        scope: &Scope,
        column: &str,
    ) -> Result<Page<AnyRow>, StoreError> {
        let filter = scope.condition(column, 1);
        self.fetch(pool, page, select, &filter, &scope.values())
            .await
    }

    /// The condition "after the page's key", with parameters `$first`.. (a tautology for the
    /// first page).
    fn condition(&self, page: &PageRequest, first: usize) -> String {
        if page.after.is_none() {
            return "1 = 1".to_string();
        }
        let params: Vec<String> = (0..self.columns.len())
            .map(|i| format!("${}", first + i))
            .collect();
        let op = if self.descending { "<" } else { ">" };
        format!("({}) {op} ({})", self.exprs().join(", "), params.join(", "))
    }

    /// `ORDER BY` the key, one row more than the page (to know whether another follows).
    fn order_and_limit(&self, page: &PageRequest) -> String {
        let dir = if self.descending { " DESC" } else { "" };
        let order: Vec<String> = self.exprs().iter().map(|c| format!("{c}{dir}")).collect();
        format!(
            "ORDER BY {} LIMIT {}",
            order.join(", "),
            u64::from(page.limit.max(1)) + 1
        )
    }

    /// Checks that a key read from a client has one value of the right type per key column,
    /// so a forged key is refused rather than sent to the database.
    fn check(&self, page: &PageRequest) -> Result<(), StoreError> {
        let Some(key) = &page.after else {
            return Ok(());
        };
        let fits = key.0.len() == self.columns.len()
            && self.columns.iter().zip(&key.0).all(|(c, p)| c.accepts(p));
        if fits {
            Ok(())
        } else {
            Err(StoreError::BadPageKey)
        }
    }

    fn exprs(&self) -> Vec<&'static str> {
        self.columns.iter().map(|c| c.expr).collect()
    }

    fn key_of(&self, row: &AnyRow) -> Result<PageKey, StoreError> {
        let parts = self
            .columns
            .iter()
            .map(|c| match c.integer {
                true => row.try_get::<i64, _>(c.name()).map(KeyPart::Int),
                false => row.try_get::<String, _>(c.name()).map(KeyPart::Text),
            })
            .collect::<Result<_, _>>()?;
        Ok(PageKey(parts))
    }
}
