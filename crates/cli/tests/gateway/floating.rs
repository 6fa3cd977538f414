//! Floating-IP steps of the gateway test: reach a guest from the root namespace, across attach,
//! detach and a live migration.

use nimbus_client::Client;
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// What a TCP server at `addr` says first (within 3 s), or `None` if it cannot be reached.
pub fn greeting(addr: SocketAddr) -> Option<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(&mut conn)
        .read_line(&mut line)
        .ok()?;
    Some(line.trim().to_string())
}

/// Waits (bounded: 20 tries) until `addr` answers `want` (`Some`) or cannot be reached
/// (`None`); answers whether it came to that.
pub async fn greeting_becomes(addr: SocketAddr, want: Option<&str>) -> bool {
    for _ in 0..20 {
        let got = tokio::task::spawn_blocking(move || greeting(addr))
            .await
            .expect("probe");
        if got.as_deref() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Starts in guest `name` a server on `port` that greets every connection with `pong`.
pub async fn serve_pong(client: &Client, name: &str, port: u16) {
    let cmd =
        format!("(while true; do echo pong | nc -l -p {port}; done) </dev/null >/dev/null 2>&1 &");
    client.exec(name, &cmd).await.expect("start the server");
}

/// Starts in guest `name` a server on `port` that writes what its one connection sends to
/// `/tmp/got-<port>` (the connection stays open: its input never ends).
pub async fn serve_sink(client: &Client, name: &str, port: u16) {
    let cmd = format!(
        "(sleep 100000 </dev/null 2>/dev/null | nc -l -p {port} >/tmp/got-{port} 2>&1 &) \
         </dev/null >/dev/null 2>&1"
    );
    client.exec(name, &cmd).await.expect("start the sink");
}

/// What the sink on `port` of guest `name` received.
pub async fn received(client: &Client, name: &str, port: u16) -> String {
    let out = client
        .exec(name, &format!("cat /tmp/got-{port}"))
        .await
        .expect("exec");
    out.output
}

/// A connection from the root namespace to `addr` that stays open.
pub fn open(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Sends `line` on `conn`; a connection the network lost fails here or on the next write.
pub fn send(conn: &mut TcpStream, line: &str) {
    conn.write_all(format!("{line}\n").as_bytes())
        .unwrap_or_else(|e| panic!("send {line:?}: {e}"));
    conn.flush().expect("flush");
}

/// Opens in guest `from` a connection to `ip:port` whose lines come from the fifo
/// `/tmp/to-<port>`, and sends `line` on it.
pub async fn open_from_guest(client: &Client, from: &str, ip: &str, port: u16, line: &str) {
    let fifo = format!("/tmp/to-{port}");
    let cmd = format!(
        "mkfifo {fifo}; (sleep 100000 >{fifo} 2>/dev/null </dev/null &); \
         (nc {ip} {port} <{fifo} >/dev/null 2>&1 &) </dev/null >/dev/null 2>&1; \
         sleep 1; echo {line} >{fifo}"
    );
    client.exec(from, &cmd).await.expect("open from the guest");
}

/// Sends `line` on the connection [`open_from_guest`] opened in guest `from`.
pub async fn send_from_guest(client: &Client, from: &str, port: u16, line: &str) {
    let cmd = format!("echo {line} >/tmp/to-{port}");
    client.exec(from, &cmd).await.expect("send from the guest");
}

/// Whether host namespace `ns` still routes `addr` as a floating IP.
pub fn routes_floating(ns: &str, addr: Ipv4Addr) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-4", "route", "show", "proto", "77"])
        .output()
        .expect("ip");
    let mut text = String::new();
    let _ = out.stdout.as_slice().read_to_string(&mut text);
    text.lines().any(|l| l.starts_with(&format!("{addr} ")))
}
