//! The tunnel on loopback between two "hosts" of one CA, with unix sockets standing in
//! for the two QEMUs (the subject here is the tunnel, not QEMU: crates/cli/tests/migration.rs
//! migrates real guests through it).

use super::*;
use crate::instance::files::VmDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

struct Hosts {
    _ca_dir: tempfile::TempDir,
    source: TunnelTls,
    target: TunnelTls,
    other: TunnelTls,
}

fn hosts() -> Hosts {
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca = nimbus_pki::CloudCa::load_or_create(ca_dir.path()).expect("ca");
    let tls = |host: &str| {
        let id = ca
            .issue_migration(host, Duration::from_secs(600))
            .expect("issue");
        TunnelTls::new(ca.cert_pem(), &id.cert_pem, &id.key_pem).expect("tls")
    };
    Hosts {
        source: tls("src"),
        target: tls("dst"),
        other: tls("evil"),
        _ca_dir: ca_dir,
    }
}

/// A target tunnel of the migration stream in front of a stand-in QEMU listening on its
/// socket.
async fn target(
    tls: &TunnelTls,
    source: &str,
) -> (tempfile::TempDir, IncomingTunnel, UnixListener) {
    target_of(tls, source, Stream::Memory).await
}

async fn target_of(
    tls: &TunnelTls,
    source: &str,
    stream: Stream,
) -> (tempfile::TempDir, IncomingTunnel, UnixListener) {
    let dir = tempfile::tempdir().expect("tempdir");
    let vm_dir = deep_dir(dir.path());
    let socket = SocketPath::new(&vm_dir, stream.incoming_socket()).expect("socket path");
    let qemu = UnixListener::bind(socket.path()).expect("bind");
    let tunnel = IncomingTunnel::open("127.0.0.1", &vm_dir, stream, tls, Some(source.into()))
        .await
        .expect("open");
    (dir, tunnel, qemu)
}

/// A source tunnel of the migration stream with `ahead` connections opened ahead, and the
/// VM directory its socket is in.
fn source(
    tls: &TunnelTls,
    port: u16,
    target_host: &str,
    ahead: usize,
) -> (tempfile::TempDir, std::path::PathBuf, OutgoingTunnel) {
    source_of(tls, port, target_host, Stream::Memory, ahead)
}

fn source_of(
    tls: &TunnelTls,
    port: u16,
    target_host: &str,
    stream: Stream,
    ahead: usize,
) -> (tempfile::TempDir, std::path::PathBuf, OutgoingTunnel) {
    let dir = tempfile::tempdir().expect("tempdir");
    let vm_dir = deep_dir(dir.path());
    let vm = VmDir::new(vm_dir.clone());
    let address = format!("127.0.0.1:{port}");
    let tunnel = OutgoingTunnel::open(&vm, stream, address, target_host, tls, ahead).expect("open");
    (dir, vm_dir, tunnel)
}

/// A directory under `root` whose sockets' paths are longer than a unix socket address
/// holds (as under a deep `--state-dir`).
fn deep_dir(root: &std::path::Path) -> std::path::PathBuf {
    let dir = root.join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&dir).expect("mkdir");
    assert!(dir.join(OUTGOING_SOCKET).as_os_str().len() > MAX_SOCKET_PATH);
    dir
}

/// Connects to the source tunnel's socket in `vm_dir` as QEMU does.
async fn qemu_connects(vm_dir: &std::path::Path) -> UnixStream {
    let socket = SocketPath::new(vm_dir, OUTGOING_SOCKET).expect("socket path");
    UnixStream::connect(socket.path())
        .await
        .expect("QEMU connects")
}

const LIMIT: Duration = Duration::from_secs(10);

/// Two streams cross intact both ways, one on a connection opened ahead and one opened
/// when asked; then the tunnel drains.
#[tokio::test]
async fn a_stream_crosses_both_ways_and_the_tunnel_drains() {
    let h = hosts();
    let (_t, incoming, qemu_in) = target(&h.target, "src").await;
    let (_sdir, vm_dir, outgoing) = source(&h.source, incoming.port(), "dst", 1);
    for _ in 0..2 {
        cross(&vm_dir, &qemu_in).await;
    }
    tokio::time::timeout(LIMIT, outgoing.finish(LIMIT))
        .await
        .expect("drains in time");
    assert!(
        !vm_dir.join(OUTGOING_SOCKET).exists(),
        "the socket is removed"
    );
    incoming.close_when_done(LIMIT);
}

/// What QEMU does on one channel: 4 MiB to the target, 3 bytes back.
async fn cross(vm_dir: &std::path::Path, qemu_in: &UnixListener) {
    let mut qemu_out = qemu_connects(vm_dir).await;
    let stream: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = stream.clone();
    let writer = tokio::spawn(async move {
        qemu_out.write_all(&sent).await.expect("write");
        // The return path (QEMU's target answers on the same connection).
        let mut ack = [0u8; 3];
        qemu_out.read_exact(&mut ack).await.expect("ack");
        assert_eq!(&ack, b"ack");
    });
    let (mut arrived, _) = tokio::time::timeout(LIMIT, qemu_in.accept())
        .await
        .expect("in time")
        .expect("the target QEMU gets the channel");
    let mut got = vec![0u8; stream.len()];
    tokio::time::timeout(LIMIT, arrived.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert!(got == stream, "the stream arrives intact");
    arrived.write_all(b"ack").await.expect("ack");
    tokio::time::timeout(LIMIT, writer)
        .await
        .expect("in time")
        .expect("writer");
}

/// Connections opened ahead that QEMU never uses never reach the target's QEMU (which
/// would wait for their first bytes), and go with the tunnel.
#[tokio::test]
async fn connections_opened_ahead_reach_qemu_only_when_used() {
    let h = hosts();
    let (_t, incoming, qemu_in) = target(&h.target, "src").await;
    let (_sdir, vm_dir, outgoing) = source(&h.source, incoming.port(), "dst", 3);
    // Time for the three handshakes: QEMU's side sees none of them.
    let early = tokio::time::timeout(Duration::from_millis(500), qemu_in.accept()).await;
    assert!(early.is_err(), "a connection opened ahead reached QEMU");
    cross(&vm_dir, &qemu_in).await;
    tokio::time::timeout(LIMIT, outgoing.finish(LIMIT))
        .await
        .expect("drains in time");
    let late = tokio::time::timeout(Duration::from_millis(500), qemu_in.accept()).await;
    assert!(late.is_err(), "an unused connection reached QEMU");
    incoming.close_when_done(LIMIT);
}

/// An NBD server speaks first: the target agent connects to it as soon as the source is
/// authenticated, and its greeting reaches the source's QEMU before that sent anything.
#[tokio::test]
async fn a_server_that_speaks_first_is_reached_at_once() {
    let h = hosts();
    let (_t, incoming, server) = target_of(&h.target, "src", Stream::Disk).await;
    let greeter = tokio::spawn(async move {
        let (mut conn, _) = server.accept().await.expect("accept");
        conn.write_all(b"NBDMAGIC").await.expect("greet");
        let mut option = [0u8; 4];
        conn.read_exact(&mut option).await.expect("option");
        option
    });
    let port = incoming.port();
    let (_sdir, vm_dir, outgoing) = source_of(&h.source, port, "dst", Stream::Disk, 0);
    let socket = SocketPath::new(&vm_dir, NBD_OUTGOING_SOCKET).expect("socket path");
    let mut client = UnixStream::connect(socket.path()).await.expect("connect");
    let mut greeting = [0u8; 8];
    tokio::time::timeout(LIMIT, client.read_exact(&mut greeting))
        .await
        .expect("in time")
        .expect("greeting");
    assert_eq!(&greeting, b"NBDMAGIC");
    client.write_all(b"OPTS").await.expect("option");
    let option = tokio::time::timeout(LIMIT, greeter)
        .await
        .expect("in time")
        .expect("greeter");
    assert_eq!(&option, b"OPTS");
    drop(client);
    tokio::time::timeout(LIMIT, outgoing.finish(LIMIT))
        .await
        .expect("drains in time");
    incoming.close_when_done(LIMIT);
}

/// A host of the cloud other than the one the controller named gets no channel to QEMU,
/// and a source never sends to a target that is not the named host.
#[tokio::test]
async fn only_the_named_hosts_are_carried() {
    let h = hosts();
    let (_t, incoming, qemu_in) = target(&h.target, "src").await;
    let (_sdir, vm_dir, _outgoing) = source(&h.other, incoming.port(), "dst", 1);
    let mut qemu_out = qemu_connects(&vm_dir).await;
    let _ = qemu_out.write_all(b"QEVM").await;
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(LIMIT, qemu_out.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "the impostor is cut off");
    let nothing = tokio::time::timeout(Duration::from_millis(300), qemu_in.accept()).await;
    assert!(nothing.is_err(), "the target QEMU got a connection");
    // The source names "other" as its target: the real target's certificate is refused.
    let (_sdir, vm_dir, _outgoing) = source(&h.source, incoming.port(), "evil", 0);
    let mut qemu_out = qemu_connects(&vm_dir).await;
    let _ = qemu_out.write_all(b"QEVM").await;
    let read = tokio::time::timeout(LIMIT, qemu_out.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "not sent to the wrong host");
}

/// A plain client (a migration stream in clear) gets the connection closed without a byte.
#[tokio::test]
async fn a_plain_client_gets_nothing() {
    let h = hosts();
    let (_t, incoming, _qemu_in) = target(&h.target, "src").await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", incoming.port()))
        .await
        .expect("connect");
    let _ = tcp.write_all(b"QEVM\x00\x00\x00\x03").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, tcp.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "answered: {read:?}");
}
