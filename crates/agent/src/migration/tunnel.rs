//! The migration stream and the NBD connection of a mirrored disk between two agents: QEMU
//! talks in clear to unix sockets in its VM directory, and the agents carry the bytes over
//! TLS 1.3 between the hosts, one TCP port of the target per [`Stream`].
//!
//! ```text
//!  source QEMU                source agent                    target agent            target QEMU
//!  migrate                    (outgoing.rs)                   (incoming.rs)           migrate-incoming
//!  unix:migration-out.sock ─▶ accept, take a  ═══ TLS 1.3 ═══▶ accept on the port  ─▶ unix:migration-in.sock
//!                             connection opened  (mTLS)        opened for this          (on the first bytes)
//!  blockdev-add nbd           ahead or connect                 migration; peer must
//!  unix:nbd-out.sock ──────▶  (server name =  ═══ TLS 1.3 ═══▶ be the source host  ─▶ nbd-server-start
//!                             the target host)                                          unix:nbd-in.sock (at once)
//! ```
//! - Why not QEMU's own `tls-creds-x509`: GnuTLS in QEMU writes one TLS record per small
//!   write of the migration stream (strace: 35,909 `sendmsg` against 747 in clear for the
//!   same guest), which made a TLS migration 2.5 times slower than a plain one; and QEMU,
//!   which runs the guest, would hold a key. Here QEMU writes in clear into a local
//!   socket, and the agents move it in 256 KiB reads, sealed into full 16 KiB records (and
//!   on the target, opened records gathered back into 256 KiB writes: gather.rs).
//! - Both ends verify the other against the cloud CA, and the names come from the
//!   controller (`IncomingRequest::source_host`, `MigrateRequest::target_host`), never from
//!   the peer: the source checks the target's certificate names the target host (TLS server
//!   name) and both check the peer's subject is that host's migration or host certificate
//!   ([`nimbus_pki::is_migration_peer`]). Anything else, TLS older than 1.3, or a client
//!   that does not start with a TLS handshake gets the connection closed without a byte.
//! - The sockets are in the VM's directory, which only its confined QEMU user (and root)
//!   may enter; QEMU gets a path relative to its working directory, that directory.
//! - Every connection QEMU opens (the main channel, multifd channels, post-copy's
//!   preemption channel, the NBD client) gets its own TLS connection; those of the memory
//!   stream are opened when the tunnel is (outgoing.rs), before QEMU asks. The tasks live
//!   in a [`Channels`] that ends them all when dropped: cancelling or abandoning a
//!   migration closes its tunnels.
//! - The tunnels live in the agent: a migration in flight (or a disk mirror) does not
//!   survive an agent restart (it fails and the VM runs on at its source).

mod gather;
mod incoming;
mod outgoing;

pub use incoming::IncomingTunnel;
pub use outgoing::OutgoingTunnel;

use super::MigrationError;
use nimbus_pki::rustls;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The target QEMU's migration socket, in its VM directory.
pub const INCOMING_SOCKET: &str = "migration-in.sock";
/// The socket the source QEMU migrates to, in its VM directory.
pub const OUTGOING_SOCKET: &str = "migration-out.sock";
/// The target QEMU's NBD server socket (a mirrored disk), in its VM directory.
pub const NBD_INCOMING_SOCKET: &str = "nbd-in.sock";
/// The socket the source QEMU's NBD client connects to, in its VM directory.
pub const NBD_OUTGOING_SOCKET: &str = "nbd-out.sock";

/// What a tunnel carries; it names the sockets at both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The migration stream: QEMU `migrate` to `migrate-incoming`.
    Memory,
    /// A mirrored disk: QEMU's NBD client node to the target QEMU's NBD server.
    Disk,
}

impl Stream {
    /// The socket the target QEMU listens on, in its VM directory.
    pub fn incoming_socket(self) -> &'static str {
        match self {
            Stream::Memory => INCOMING_SOCKET,
            Stream::Disk => NBD_INCOMING_SOCKET,
        }
    }

    /// The socket the source agent listens on for its QEMU, in the VM directory.
    pub fn outgoing_socket(self) -> &'static str {
        match self {
            Stream::Memory => OUTGOING_SOCKET,
            Stream::Disk => NBD_OUTGOING_SOCKET,
        }
    }

    /// Whether the target QEMU speaks first on a connection (an NBD server's greeting):
    /// then the target agent connects to it at once, else on the connection's first bytes
    /// (see incoming.rs).
    fn qemu_speaks_first(self) -> bool {
        self == Stream::Disk
    }
}
/// Bytes read at once from either side: large reads make full TLS records.
const BUFFER: usize = 256 * 1024;
/// How long a peer may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections one migration opens (QEMU's main channel, multifd, post-copy).
const MAX_CHANNELS: usize = 32;
/// Longest path of a unix socket (`sun_path` less its terminating zero).
const MAX_SOCKET_PATH: usize = 107;

/// The TLS settings of one migration's tunnel, from the credentials of this end.
#[derive(Clone)]
pub struct TunnelTls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TunnelTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelTls").finish_non_exhaustive()
    }
}

impl TunnelTls {
    /// Settings presenting `cert_pem`/`key_pem` and trusting only `ca_pem`.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, MigrationError> {
        let id = nimbus_pki::TlsIdentity {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        };
        let bad = |e: nimbus_pki::PkiError| {
            MigrationError::Setup(format!("the migration's TLS credentials are unusable: {e}"))
        };
        let server = nimbus_pki::server_config(ca_pem, &id, nimbus_pki::ClientAuth::Required)
            .map_err(bad)?;
        let client = nimbus_pki::client_config(ca_pem, Some(&id)).map_err(bad)?;
        Ok(Self {
            server,
            client: Arc::new(client),
        })
    }
}

/// Why a peer was refused after its handshake; `None` when it is `expected` over TLS 1.3.
fn refusal(conn: &rustls::CommonState, expected: Option<&str>) -> Option<String> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Some(format!("TLS {:?}, not 1.3", conn.protocol_version()));
    }
    let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Some("no certificate".into());
    };
    match expected {
        Some(host) if !nimbus_pki::is_migration_peer(cert, host) => Some(format!(
            "its certificate is not host {host}'s (the controller named {host})"
        )),
        Some(_) => None,
        None => {
            // An older controller named no peer: any host of the cloud CA.
            match nimbus_pki::PeerIdentity::from_der(cert) {
                Ok(id) if id.role == nimbus_pki::Role::Host => None,
                _ => Some("not a host certificate of the cloud".into()),
            }
        }
    }
}

/// Copies both ways until both sides closed; answers the bytes each way.
async fn carry<A, B>(mut a: A, mut b: B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUFFER, BUFFER).await
}

/// The path to bind or connect unix socket `name` of directory `dir` by, whatever the
/// length of `dir`'s path (`sun_path` holds [`MAX_SOCKET_PATH`] bytes; a deep `--state-dir`
/// exceeds it): the path itself when short enough, else `/proc/self/fd/N/name` through a
/// handle on `dir` that this keeps open. Either way the kernel checks the directory's
/// permissions as for the path itself.
struct SocketPath {
    path: std::path::PathBuf,
    _dir: Option<std::fs::File>,
}

impl SocketPath {
    fn new(dir: &std::path::Path, name: &str) -> Result<Self, MigrationError> {
        let full = dir.join(name);
        if full.as_os_str().len() <= MAX_SOCKET_PATH {
            return Ok(Self {
                path: full,
                _dir: None,
            });
        }
        let handle = std::fs::File::open(dir)
            .map_err(|e| MigrationError::Setup(format!("cannot open {}: {e}", dir.display())))?;
        use std::os::fd::AsRawFd;
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{}/{name}", handle.as_raw_fd()));
        Ok(Self {
            path,
            _dir: Some(handle),
        })
    }

    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// The work of one accepted connection.
type ChannelTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Where a tunnel's connections come from.
trait Accept: Send + 'static {
    /// The next connection, as the task that serves it; `None` when none could be taken
    /// (logged). Cancel-safe.
    fn next(&mut self) -> impl std::future::Future<Output = Option<ChannelTask>> + Send;
}

/// The connections of one tunnel: an accept loop and a task per channel, all ended when
/// this is dropped; [`Channels::close`] stops accepting and lets the channels finish.
struct Channels {
    task: Option<JoinHandle<()>>,
    closing: watch::Sender<bool>,
}

impl Channels {
    /// Serves each connection `accept` takes in a task of its own, at most
    /// [`MAX_CHANNELS`] at a time.
    fn spawn(mut accept: impl Accept) -> Self {
        let (closing, mut closing_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut channels = JoinSet::new();
            loop {
                tokio::select! {
                    _ = closing_rx.changed() => break,
                    conn = accept.next(), if channels.len() < MAX_CHANNELS => {
                        if let Some(work) = conn {
                            channels.spawn(work);
                        }
                    }
                    Some(_) = channels.join_next(), if !channels.is_empty() => {}
                }
            }
            drop(accept);
            while channels.join_next().await.is_some() {}
        });
        Self {
            task: Some(task),
            closing,
        }
    }

    /// Stops accepting; waits up to `limit` for the open channels to end, then ends them.
    async fn close(mut self, limit: Duration) {
        self.closing.send_replace(true);
        let Some(mut task) = self.task.take() else {
            return;
        };
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            tracing::warn!(
                limit = ?limit,
                "migration tunnel channels still open after the migration; closing them"
            );
            task.abort();
        }
    }
}

impl Drop for Channels {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
