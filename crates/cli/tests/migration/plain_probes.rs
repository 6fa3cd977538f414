//! Clients on the underlay without the source host's certificate, against a target waiting
//! for a live migration: they must get nothing.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(5);

async fn connect(host: &str, port: u16) -> TcpStream {
    tokio::time::timeout(LIMIT, TcpStream::connect((host, port)))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("the target does not listen on {host}:{port}: {e}"))
}

/// A plain client that starts a migration stream (QEMU's `QEVM` magic, version 3) is
/// cut off without one byte back: the target expected a TLS handshake.
pub async fn migration_port_gives_nothing(uri: &str) {
    let (host, port) = uri
        .strip_prefix("tcp:")
        .and_then(|a| a.rsplit_once(':'))
        .expect("tcp:HOST:PORT");
    let port: u16 = port.parse().expect("port");
    let mut s = connect(host, port).await;
    let mut stream = b"QEVM\x00\x00\x00\x03".to_vec();
    stream.resize(512, 0);
    let _ = s.write_all(&stream).await;
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(LIMIT, s.read(&mut buf))
        .await
        .expect("the target closes the connection");
    match got {
        Ok(0) => {}
        Ok(n) => panic!(
            "the migration port answered a plain client: {:?}",
            &buf[..n]
        ),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "closed with {e}"
        ),
    }
}

/// A client with a valid certificate of the cloud CA that is not the source's (here the
/// target host's own) completes its side of the TLS handshake, then the target closes
/// the connection without sending anything: the target agent's tunnel accepts the source
/// host only. Answers the certificate the target served (DER).
pub async fn other_host_is_refused(uri: &str, host_dir: &std::path::Path, host: &str) -> Vec<u8> {
    use nimbus_pki::rustls;
    use std::io::{Read, Write};
    let addr = uri.strip_prefix("tcp:").expect("tcp:HOST:PORT").to_string();
    let creds = nimbus_pki::HostCredentials::new(host_dir);
    let ca = creds.ca_pem().expect("CA");
    let identity = creds.identity().expect("host identity");
    let config = nimbus_pki::client_config(&ca, Some(&identity)).expect("TLS config");
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("name");
    let outcome = tokio::task::spawn_blocking(move || {
        let tcp = std::net::TcpStream::connect(&addr).expect("connect");
        tcp.set_read_timeout(Some(LIMIT)).expect("timeout");
        let conn =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("TLS client");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // TLS 1.3: the client's handshake ends before the server judges its certificate.
        let handshake = tls.conn.complete_io(&mut tls.sock).map(|_| ());
        let _ = tls.write_all(b"QEVM\x00\x00\x00\x03");
        let _ = tls.flush();
        let served = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        let mut buf = [0u8; 64];
        (handshake, tls.read(&mut buf), served)
    })
    .await
    .expect("probe");
    let (handshake, read, served) = outcome;
    handshake.expect("the certificate of the cloud CA passes the TLS handshake");
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("the target sent {n} bytes to a host that is not the source"),
    }
    served.expect("the target served a certificate")
}

/// The certificate a target serves on its migration port is the one the controller issued for this
/// migration (`OU=migration`, the target's name, expiring within the hour), not the host's
/// long-term one.
pub fn assert_migration_certificate(der: &[u8], host: &str) {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).expect("a certificate");
    let subject = cert.subject().to_string();
    assert!(
        subject.contains("OU=migration") && subject.contains(&format!("CN={host}")),
        "QEMU serves {subject}, not a migration certificate of {host}"
    );
    let left = cert.validity().not_after.timestamp()
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
    assert!(
        (0..3600).contains(&left),
        "the migration certificate expires in {left} s"
    );
    assert!(
        nimbus_pki::PeerIdentity::from_der(der).is_err(),
        "a migration certificate is no identity of the cloud"
    );
}

/// A plain NBD client gets not even the server's greeting from the NBD port (the target
/// agent's tunnel, which expects a TLS handshake first): asking for the export, it is cut
/// off without one byte back, let alone a block of the disk.
pub async fn nbd_port_gives_nothing(host: &str, port: u16, export: &str) {
    const OPT_MAGIC: &[u8; 8] = b"IHAVEOPT";
    const OPT_GO: u32 = 7;
    let mut s = connect(host, port).await;
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the NBD port answered before the client spoke: {early:?}"
    );
    // Client flags (fixed newstyle, no zeroes), then NBD_OPT_GO for the export.
    let mut req = 3u32.to_be_bytes().to_vec();
    req.extend_from_slice(OPT_MAGIC);
    req.extend_from_slice(&OPT_GO.to_be_bytes());
    let len = 4 + export.len() + 2;
    req.extend_from_slice(&(len as u32).to_be_bytes());
    req.extend_from_slice(&(export.len() as u32).to_be_bytes());
    req.extend_from_slice(export.as_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    let _ = s.write_all(&req).await;
    let got = tokio::time::timeout(LIMIT, s.read(&mut buf))
        .await
        .expect("the target closes the connection");
    match got {
        Ok(0) => {}
        Ok(n) => panic!("the NBD port answered a plain client: {:?}", &buf[..n]),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "closed with {e}"
        ),
    }
}
