//! Async QMP (QEMU Machine Protocol) client.
//!
//! ```text
//!  client                                 QEMU
//!    |  <---- {"QMP": {...}} greeting -----  |
//!    |  ---- qmp_capabilities, id 0 ------>  |
//!    |  <---- {"return": {}, "id": 0} -----  |
//!    |  ---- {"execute", "id": n} -------->  |   any number in flight
//!    |  <---- {"event": ...} --------------  |   at any time -> broadcast channel
//!    |  <---- {"return"|"error", "id": n} -  |   routed to the caller waiting on id n
//! ```
//! One reader task owns the read half: it routes replies by id to the waiting caller
//! (a oneshot per request) and publishes events on a [`tokio::sync::broadcast`] channel.
//! When QEMU offers out-of-band execution (`oob` in its greeting) it is enabled, so that
//! [`Qmp::execute_oob`] (e.g. `yank`) is run at once even while QEMU's main loop is blocked,
//! as it is when a migration's send hangs on a cut link during switch-over.
//! Each request has a timeout; a reply that arrives after it is dropped. When the
//! connection ends every waiting caller gets [`QmpError::Disconnected`].

mod block;
mod commands;
mod events;
mod layers;

pub use block::{BlockJobInfo, NbdAddress};
pub use commands::{MigrateParameters, MigrationInfo, MigrationRam, SocketAddress, StatusInfo};
pub use events::{EventKind, QmpEvent, QmpTimestamp};
pub use layers::GuestWrites;

use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, oneshot, watch};

/// Default time a command may take.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a QMP exchange can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP handshake failed: {0}")]
    Handshake(String),
    #[error("QMP connection closed")]
    Disconnected,
    #[error("QMP I/O failed")]
    Io(#[from] std::io::Error),
    #[error("QMP command {command} timed out after {after:?}")]
    Timeout { command: String, after: Duration },
    #[error("QMP command {command} failed ({class}): {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("unexpected QMP reply to {command}: {detail}")]
    Decode { command: String, detail: String },
}

type Reply = Result<Value, QmpError>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// A connected QMP client. Cheap to clone; the connection closes when the last clone drops.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

struct Inner {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Receiver<bool>,
    reader: tokio::task::JoinHandle<()>,
    /// Out-of-band execution was negotiated.
    oob: bool,
    timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp").finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects to a QMP unix socket and negotiates capabilities, all within `limit`.
    pub async fn connect(path: &Path, limit: Duration) -> Result<Self, QmpError> {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        Self::handshake(read, write, limit).await
    }

    /// Runs the QMP handshake over any byte stream (used by tests with a fake server).
    pub async fn handshake<R, W>(read: R, write: W, limit: Duration) -> Result<Self, QmpError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(limit, lines.next_line())
            .await
            .map_err(|_| QmpError::Handshake(format!("no greeting within {limit:?}")))??
            .ok_or(QmpError::Disconnected)?;
        let greeting: Value = serde_json::from_str(&greeting)
            .map_err(|e| QmpError::Handshake(format!("greeting is not JSON: {e}")))?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Handshake(format!(
                "not a QMP greeting: {greeting}"
            )));
        }
        let oob = greeting["QMP"]["capabilities"]
            .as_array()
            .is_some_and(|caps| caps.iter().any(|c| c == "oob"));
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed) = watch::channel(false);
        let reader = tokio::spawn(read_loop(lines, pending.clone(), events.clone(), closed_tx));
        let qmp = Qmp {
            inner: Arc::new(Inner {
                writer: tokio::sync::Mutex::new(Box::new(write)),
                pending,
                next_id: AtomicU64::new(0),
                events,
                closed,
                reader,
                oob,
                timeout: limit.max(DEFAULT_COMMAND_TIMEOUT),
            }),
        };
        let enable = oob.then(|| json!({"enable": ["oob"]}));
        qmp.execute_with_timeout("qmp_capabilities", enable, limit)
            .await?;
        Ok(qmp)
    }

    /// Subscribes to the events QEMU sends from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.inner.events.subscribe()
    }

    /// The connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// Waits until the connection ends (QEMU exited or closed the monitor).
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Runs any QMP command with the default timeout and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, self.inner.timeout)
            .await
    }

    /// Runs any QMP command, failing with [`QmpError::Timeout`] after `limit`.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<Value, QmpError> {
        self.request("execute", command, arguments, limit).await
    }

    /// Runs an out-of-band capable command (`yank`, ...) out of band: QEMU executes it at
    /// once, even while its main loop is blocked. Fails when QEMU did not offer out-of-band
    /// execution.
    pub async fn execute_oob(
        &self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<Value, QmpError> {
        if !self.inner.oob {
            return Err(QmpError::Command {
                command: command.to_string(),
                class: "GenericError".into(),
                desc: "this QEMU monitor does not offer out-of-band execution".into(),
            });
        }
        self.request("exec-oob", command, arguments, limit).await
    }

    async fn request(
        &self,
        verb: &str,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = Map::new();
        msg.insert(verb.into(), json!(command));
        if let Some(args) = arguments {
            msg.insert("arguments".into(), args);
        }
        msg.insert("id".into(), json!(id));
        let mut line = Value::Object(msg).to_string();
        line.push('\n');

        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(id, tx);
        if self.is_closed() {
            lock(&self.inner.pending).remove(&id);
            return Err(QmpError::Disconnected);
        }
        tracing::trace!(command, id, "QMP request");
        let sent = async {
            let mut w = self.inner.writer.lock().await;
            w.write_all(line.as_bytes()).await?;
            w.flush().await
        };
        if let Err(e) = sent.await {
            lock(&self.inner.pending).remove(&id);
            return Err(QmpError::Io(e));
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(reply)) => reply.map_err(|e| match e {
                QmpError::Command { class, desc, .. } => QmpError::Command {
                    command: command.to_string(),
                    class,
                    desc,
                },
                other => other,
            }),
            Ok(Err(_)) => Err(QmpError::Disconnected),
            Err(_) => {
                lock(&self.inner.pending).remove(&id);
                Err(QmpError::Timeout {
                    command: command.to_string(),
                    after: limit,
                })
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut lines: tokio::io::Lines<BufReader<R>>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Sender<bool>,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "QMP read failed");
                break;
            }
        };
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, line, "QMP sent a line that is not JSON");
                continue;
            }
        };
        if let Some(event) = QmpEvent::from_json(&msg) {
            tracing::debug!(event = event.name(), "QMP event");
            // No subscriber is fine: nobody is interested right now.
            let _ = events.send(event);
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            tracing::debug!(%msg, "QMP message without a known id");
            continue;
        };
        let reply = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = msg.get("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            Err(QmpError::Command {
                command: String::new(),
                class: field("class"),
                desc: field("desc"),
            })
        } else {
            continue;
        };
        if let Some(tx) = lock(&pending).remove(&id) {
            // The caller may have timed out and gone away.
            let _ = tx.send(reply);
        }
    }
    closed.send_replace(true);
    // Dropping the senders wakes every waiting caller with Disconnected.
    lock(&pending).clear();
}

#[cfg(test)]
mod tests;
