//! Paged listings: one page, or every page followed through `next-page-token`.

use crate::{Client, ClientError};
use nimbus_api::{PageParams, MAX_PAGE_LIMIT, NEXT_PAGE_TOKEN_HEADER};
use reqwest::Method;
use serde::de::DeserializeOwned;

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage<T> {
    pub items: Vec<T>,
    /// Pass as `page_token` to read the next page; none on the last page.
    pub next_page_token: Option<String>,
}

impl Client {
    /// One page of the listing at `path` (e.g. `/v1/instances`), with the query `filter`.
    pub async fn list_page<T: DeserializeOwned>(
        &self,
        path: &str,
        filter: &[(&str, &str)],
        params: &PageParams,
    ) -> Result<ListPage<T>, ClientError> {
        let r = self.req(Method::GET, path).query(filter).query(params);
        let (headers, bytes) = self.exchange(r).await?;
        let items =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))?;
        let next_page_token = headers
            .get(NEXT_PAGE_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(ListPage {
            items,
            next_page_token,
        })
    }

    /// Every row of the listing at `path`, reading the largest pages the API allows.
    pub async fn list_all<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ClientError> {
        self.list_up_to(path, &[], usize::MAX).await
    }

    /// The first `max` rows of the listing at `path` with the query `filter` (every row for
    /// `usize::MAX`).
    pub async fn list_up_to<T: DeserializeOwned>(
        &self,
        path: &str,
        filter: &[(&str, &str)],
        max: usize,
    ) -> Result<Vec<T>, ClientError> {
        let mut all = Vec::new();
        let mut params = PageParams::default();
        while all.len() < max {
            let want = (max - all.len()).min(MAX_PAGE_LIMIT as usize);
            params.limit = Some(want as u32);
            let page = self.list_page::<T>(path, filter, &params).await?;
            all.extend(page.items);
            match page.next_page_token {
                // A token that does not move would loop forever: stop there.
                Some(t) if params.page_token.as_ref() != Some(&t) => params.page_token = Some(t),
                _ => break,
            }
        }
        Ok(all)
    }
}
