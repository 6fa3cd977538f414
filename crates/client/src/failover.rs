//! Several controller URLs: a request goes to the controller in use, and moves to the next
//! only when it could not connect there (refused, unreachable, TLS handshake failed), never
//! after an HTTP answer, nor after a request was sent and its answer lost: a create that
//! reached a controller is not sent twice.

use crate::ClientError;
use reqwest::{Request, Response, Url};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The controllers a client may call, and the one in use (shared by the client's clones).
#[derive(Debug, Clone)]
pub(crate) struct Controllers {
    urls: Vec<String>,
    current: Arc<AtomicUsize>,
}

impl Controllers {
    /// `api`: one URL or several separated by commas (`https://ctl1:7700,https://ctl2:7700`).
    pub(crate) fn parse(api: &str) -> Self {
        let mut urls: Vec<String> = api
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            urls.push(api.trim().to_string());
        }
        Self {
            urls,
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The URL of the controller in use.
    pub(crate) fn current(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Sends `req` (built against [`Self::current`]) to the controller in use, then to the
    /// next ones while it cannot connect; the first that answers stays in use.
    pub(crate) async fn execute(
        &self,
        http: &reqwest::Client,
        req: Request,
    ) -> Result<Response, ClientError> {
        let start = self.current.load(Ordering::Relaxed) % self.urls.len();
        let n = self.urls.len();
        let mut pending = Some(req);
        let mut k = 0;
        loop {
            let i = (start + k) % n;
            let Some(mut req) = pending.take() else {
                unreachable!("a request is pending at every attempt");
            };
            // A copy for the next controller (a streamed body cannot be sent again: one try).
            pending = if k + 1 < n { req.try_clone() } else { None };
            if i != start {
                retarget(req.url_mut(), &self.urls[i]);
            }
            match http.execute(req).await {
                Ok(resp) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) if e.is_connect() && pending.is_some() => k += 1,
                Err(e) => {
                    return Err(ClientError::Transport {
                        api: self.tried(start, k + 1),
                        source: e,
                    })
                }
            }
        }
    }

    /// The URLs of the first `count` attempts from `start`, for the error message.
    fn tried(&self, start: usize, count: usize) -> String {
        (0..count)
            .map(|k| self.urls[(start + k) % self.urls.len()].as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Points `url` at the controller `base` (scheme, host and port; the path stays).
fn retarget(url: &mut Url, base: &str) {
    let Ok(b) = Url::parse(base) else { return };
    let _ = url.set_scheme(b.scheme());
    let _ = url.set_host(b.host_str());
    let _ = url.set_port(b.port());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_urls_is_split_and_trimmed() {
        let c = Controllers::parse(" https://a:7700/ , https://b:7700,,");
        assert_eq!(c.urls, vec!["https://a:7700", "https://b:7700"]);
        assert_eq!(c.current(), "https://a:7700");
        assert_eq!(Controllers::parse("http://x").urls, vec!["http://x"]);
    }

    #[test]
    fn retarget_keeps_the_path_and_query() {
        let mut u = Url::parse("https://a:7700/v1/instances?project=p").expect("url");
        retarget(&mut u, "https://10.0.0.2:7701");
        assert_eq!(u.as_str(), "https://10.0.0.2:7701/v1/instances?project=p");
    }

    /// A port nothing listens on (bound, then closed).
    async fn closed_port() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr").port()
    }

    /// Serves `status` with body `body` to every request; answers the URL and a hit counter.
    async fn serve(status: u16, body: &'static str) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = l.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), hits)
    }

    #[tokio::test]
    async fn moves_on_after_a_refused_connection_and_stays_there() {
        let dead = closed_port().await;
        let (alive, hits) = serve(200, "[]").await;
        let client = crate::Client::new(&format!("http://127.0.0.1:{dead},{alive}"), None);
        let flavors = client
            .list_flavors()
            .await
            .expect("the second controller answers");
        assert!(flavors.is_empty());
        assert_eq!(client.api(), alive, "the one that answered stays in use");
        client.list_flavors().await.expect("again");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_http_answer_is_final_even_an_error() {
        let (failing, _) = serve(503, r#"{"code":"unavailable","message":"busy"}"#).await;
        let (other, hits) = serve(200, "[]").await;
        let client = crate::Client::new(&format!("{failing},{other}"), None);
        let e = client
            .list_flavors()
            .await
            .expect_err("the first answered 503");
        assert_eq!(e.status(), Some(503));
        assert_eq!(hits.load(Ordering::SeqCst), 0, "never sent to the next");
    }

    #[tokio::test]
    async fn all_unreachable_names_every_controller_tried() {
        let (a, b) = (closed_port().await, closed_port().await);
        let client =
            crate::Client::new(&format!("http://127.0.0.1:{a},http://127.0.0.1:{b}"), None);
        let e = client.list_flavors().await.expect_err("nobody listens");
        let text = e.to_string();
        assert!(text.contains(&format!("127.0.0.1:{a}")), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{b}")), "{text}");
    }
}
