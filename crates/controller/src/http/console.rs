//! `GET /v1/instances/{instance}/console`: a websocket to the guest's serial console,
//! proxied to the agent of the instance's host.

use super::error::ApiPath;
use super::ApiError;
use crate::app::instances::placed_host;
use crate::app::{App, AppError, Caller};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as TMessage;

/// Upgrades to a websocket carrying raw console bytes both ways.
pub async fn attach(
    State(app): State<App>,
    caller: Caller,
    ApiPath(instance): ApiPath<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // The console takes keystrokes: a write, whatever the HTTP method.
    caller.require_write()?;
    let inst = app.find_instance(&caller, &instance).await?;
    let agent = app.agent_of(placed_host(&inst)?).await?;
    let url = agent
        .url(&format!("/vms/{}/console", inst.id))
        .replacen("http", "ws", 1);
    let mut req = url
        .into_client_request()
        .map_err(|e| AppError::internal(format!("bad agent URL: {e}")))?;
    if let Some(token) = agent.token() {
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| AppError::internal("agent token is not a valid header"))?;
        req.headers_mut().insert("authorization", auth);
    }
    // The controller's certificate is the credential (mutual TLS).
    let tls = tokio_tungstenite::Connector::Rustls(app.tls().client.clone());
    let (upstream, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(tls))
            .await
            .map_err(|e| {
                AppError::unavailable(format!("cannot reach the console on the host: {e}"))
            })?;
    Ok(ws.on_upgrade(move |socket| pump(socket, upstream)))
}

async fn pump(
    client: WebSocket,
    upstream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) {
    let (mut c_tx, mut c_rx) = client.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    let down = async {
        while let Some(Ok(msg)) = u_rx.next().await {
            let out = match msg {
                TMessage::Binary(b) => Message::Binary(b),
                TMessage::Text(t) => Message::Text(t.as_str().into()),
                TMessage::Close(_) => break,
                _ => continue,
            };
            if c_tx.send(out).await.is_err() {
                break;
            }
        }
    };
    let up = async {
        while let Some(Ok(msg)) = c_rx.next().await {
            let out = match msg {
                Message::Binary(b) => TMessage::Binary(b),
                Message::Text(t) => TMessage::Text(t.as_str().into()),
                Message::Close(_) => break,
                _ => continue,
            };
            if u_tx.send(out).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = down => {},
        _ = up => {},
    }
}
