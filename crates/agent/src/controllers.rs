//! The controllers an agent reports to: `--controller URL1,URL2,...` (several controllers over
//! one PostgreSQL serve the same cloud). Calls go to the current one; a failed call moves to
//! the next, so the agent reports to whichever is alive.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A list of controller base URLs with the one in use.
#[derive(Debug)]
pub struct ControllerUrls {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl ControllerUrls {
    /// Parses a comma-separated list (blanks ignored, trailing slashes dropped).
    pub fn parse(list: &str) -> Self {
        let urls = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        Self {
            urls,
            current: AtomicUsize::new(0),
        }
    }

    /// `path` on the controller in use (`None` when the list is empty).
    pub fn url(&self, path: &str) -> Option<String> {
        let i = self.current.load(Ordering::Relaxed) % self.urls.len().max(1);
        self.urls.get(i).map(|base| format!("{base}{path}"))
    }

    /// The call to the controller in use failed: use the next one from now on.
    pub fn failed(&self) {
        if self.urls.len() > 1 {
            let next = self.current.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(
                controller = self.urls[next % self.urls.len()],
                "trying the next controller"
            );
        }
    }

    /// The first URL (the gateways' protected address).
    pub fn first(&self) -> Option<&str> {
        self.urls.first().map(String::as_str)
    }

    /// Every URL, in the order given (image downloads try each in turn).
    pub fn all(&self) -> &[String] {
        &self.urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_over_round_robin() {
        let c = ControllerUrls::parse("http://a:7700/, http://b:7700,,");
        assert_eq!(c.url("/v1/x").as_deref(), Some("http://a:7700/v1/x"));
        c.failed();
        assert_eq!(c.url("/v1/x").as_deref(), Some("http://b:7700/v1/x"));
        c.failed();
        assert_eq!(c.url("/v1/x").as_deref(), Some("http://a:7700/v1/x"));
        assert_eq!(ControllerUrls::parse(" ").url("/v1/x"), None);
        let one = ControllerUrls::parse("http://a:7700");
        one.failed();
        assert_eq!(one.url("/p").as_deref(), Some("http://a:7700/p"));
    }
}
