//! Paging of listings: every `GET` of a collection answers one page.
//!
//! A page is a JSON array (the same shape as before paging, so existing clients keep
//! working); when more rows follow, the response carries the header
//! [`NEXT_PAGE_TOKEN_HEADER`], whose value is passed back as `page_token` to read the next
//! page. Tokens are opaque: a client must not build or change them. The order of a listing
//! is stable (a unique key per row), so rows created or deleted between two pages never make
//! another row repeat or disappear.

use serde::{Deserialize, Serialize};

/// Rows per page when the request names no `limit`.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// The largest `limit` accepted.
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// Response header with the token of the next page (absent on the last page).
pub const NEXT_PAGE_TOKEN_HEADER: &str = "next-page-token";

/// Query parameters of a paged listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Rows per page, 1 to 1000 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next-page-token` header of the previous page; absent for the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_token: Option<String>,
}
