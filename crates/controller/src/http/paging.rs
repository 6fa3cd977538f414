//! Page tokens and paged responses (see `nimbus_api::page`).
//!
//! A token is base64url of `{"listing": ..., "after": [key values]}`: opaque to clients, and
//! tied to its listing, so a token of `/v1/images` given to `/v1/instances` is refused
//! rather than read as a position in the wrong order. A token carries no rights: the caller's
//! scope still filters every page.

use super::ApiError;
use crate::app::AppError;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nimbus_api::{PageParams, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, NEXT_PAGE_TOKEN_HEADER};
use nimbus_store::{Page, PageKey, PageRequest};
use serde::{Deserialize, Serialize};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::Modify;

/// Longest token accepted (a key is a few short values).
const MAX_TOKEN_CHARS: usize = 1024;

#[derive(Serialize, Deserialize)]
struct Token {
    listing: String,
    after: PageKey,
}

/// The page of `listing` that `params` asks for.
pub fn page_request(listing: &str, params: &PageParams) -> Result<PageRequest, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE_LIMIT);
    if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
        return Err(bad(format!(
            "limit must be between 1 and {MAX_PAGE_LIMIT} (default {DEFAULT_PAGE_LIMIT})"
        )));
    }
    let after = match params.page_token.as_deref() {
        None | Some("") => None,
        Some(t) => Some(decode(listing, t)?),
    };
    Ok(PageRequest { limit, after })
}

fn decode(listing: &str, token: &str) -> Result<PageKey, ApiError> {
    let invalid = || {
        bad(
            "page_token is not a token of this API; pass the next-page-token header of the \
             previous page unchanged, or omit it to start from the first page",
        )
    };
    if token.len() > MAX_TOKEN_CHARS {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if token.listing != listing {
        return Err(bad(format!(
            "page_token belongs to the listing of {}, not of {listing}; omit it to start from \
             the first page",
            token.listing
        )));
    }
    Ok(token.after)
}

fn encode(listing: &str, after: PageKey) -> String {
    let token = Token {
        listing: listing.to_string(),
        after,
    };
    // Serialising plain strings and integers cannot fail.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(AppError::bad_request(message))
}

/// One page as a response: the JSON array of its rows, and the next page's token in the
/// `next-page-token` header when more rows follow.
#[derive(Debug)]
pub struct Paged<T> {
    items: Vec<T>,
    next_token: Option<String>,
}

impl<T> Paged<T> {
    /// `page` of `listing` (the name its tokens carry).
    pub fn new(listing: &str, page: Page<T>) -> Self {
        Self {
            items: page.items,
            next_token: page.next.map(|k| encode(listing, k)),
        }
    }
}

impl<T: Serialize> IntoResponse for Paged<T> {
    fn into_response(self) -> Response {
        let mut resp = Json(self.items).into_response();
        if let Some(token) = self.next_token.and_then(|t| HeaderValue::from_str(&t).ok()) {
            resp.headers_mut()
                .insert(HeaderName::from_static(NEXT_PAGE_TOKEN_HEADER), token);
        }
        resp
    }
}

/// Declares on every paged listing (a `GET` with a `page_token` parameter) the
/// `next-page-token` header of its answer and the 400 of a bad token or limit.
pub struct PagedAnswers;

impl Modify for PagedAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let Some(op) = item.get.as_mut() else {
                continue;
            };
            let paged = op
                .parameters
                .iter()
                .flatten()
                .any(|p| p.name == "page_token");
            if paged {
                declare_paged_answers(op);
            }
        }
    }
}

fn declare_paged_answers(op: &mut Operation) {
    if let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200") {
        let header = HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String))
            .description(Some(
                "Token of the next page (pass it as `page_token`); absent on the last page.",
            ))
            .build();
        ok.headers
            .insert(NEXT_PAGE_TOKEN_HEADER.to_string(), header);
    }
    if !op.responses.responses.contains_key("400") {
        let body = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build();
        let answer = ResponseBuilder::new()
            .description("`limit` out of range, or a `page_token` not of this listing.")
            .content("application/json", body)
            .build();
        op.responses
            .responses
            .insert("400".to_string(), RefOr::T(answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_store::KeyPart;

    fn params(limit: Option<u32>, token: Option<&str>) -> PageParams {
        PageParams {
            limit,
            page_token: token.map(str::to_string),
        }
    }

    #[test]
    fn a_token_round_trips_within_its_listing_only() {
        let key = PageKey(vec![KeyPart::Text("2026".into()), KeyPart::Int(7)]);
        let token = encode("instances", key.clone());
        let req = page_request("instances", &params(Some(5), Some(&token))).expect("valid");
        assert_eq!(
            req,
            PageRequest {
                limit: 5,
                after: Some(key)
            }
        );
        let err = page_request("images", &params(None, Some(&token))).expect_err("other listing");
        assert!(
            err.0
                .message
                .contains("belongs to the listing of instances"),
            "{}",
            err.0.message
        );
    }

    #[test]
    fn bad_tokens_and_limits_are_refused_clearly() {
        for token in ["%%%", "bm90IGpzb24", &"A".repeat(2000)] {
            let err = page_request("instances", &params(None, Some(token))).expect_err(token);
            assert!(
                err.0.message.contains("not a token of this API"),
                "{}",
                err.0.message
            );
        }
        for limit in [0, MAX_PAGE_LIMIT + 1] {
            let err = page_request("instances", &params(Some(limit), None)).expect_err("limit");
            assert!(err.0.message.contains("limit must be between 1 and 1000"));
        }
        let first = page_request("instances", &params(None, None)).expect("defaults");
        assert_eq!(first, PageRequest::first(DEFAULT_PAGE_LIMIT));
    }
}
