//! The serial console: its log, and a websocket bridged to `console.sock`.

use super::{Json, Path};
use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::instance::ConsoleClaim;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use nimbus_agent_api::ConsoleChunk;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use uuid::Uuid;

#[derive(Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    offset: u64,
}

pub async fn log(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    query: std::result::Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConsoleChunk>> {
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    Ok(Json(agent.vm(id)?.console_log(q.offset)?))
}

/// Upgrades to a websocket carrying raw console bytes both ways. The console socket is
/// connected before the upgrade, so a VM that is not running or a console already in use
/// is an HTTP error (409), not a websocket that closes at once.
pub async fn websocket(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let upgrade = upgrade.map_err(|e| Error::BadRequest(e.body_text()))?;
    let (stream, claim) = agent.vm(id)?.console_connect().await?;
    Ok(upgrade.on_upgrade(move |socket| bridge(id, socket, stream, claim)))
}

async fn bridge(id: Uuid, socket: WebSocket, stream: UnixStream, claim: ConsoleClaim) {
    tracing::info!(instance_id = %id, "console client attached");
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut sock_rx, mut sock_tx) = stream.into_split();
    let to_guest = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let bytes = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_str().as_bytes().to_vec(),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if sock_tx.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    let from_guest = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match sock_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = Message::Binary(buf[..n].to_vec().into());
                    if ws_tx.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    tokio::select! {
        () = to_guest => {}
        () = from_guest => {}
    }
    drop(claim);
    tracing::info!(instance_id = %id, "console client detached");
}
