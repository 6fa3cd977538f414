//! The CA, host enrolment and the TLS listener, end to end on loopback.

use crate::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

fn ca() -> (tempfile::TempDir, CloudCa) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CloudCa::load_or_create(dir.path()).expect("ca");
    (dir, ca)
}

fn enrol(ca: &CloudCa, dir: &std::path::Path, name: &str, addr: &str) -> (TlsIdentity, IssuedHost) {
    let creds = HostCredentials::new(dir);
    let csr = creds.new_request(name).expect("csr");
    let issued = ca.sign_host(&csr, name, &[addr.to_string()]).expect("sign");
    creds.save(&issued.cert_pem, ca.cert_pem()).expect("save");
    (creds.identity().expect("identity"), issued)
}

#[test]
fn the_ca_is_private_and_reused() {
    let (dir, ca) = ca();
    let mode = std::fs::metadata(dir.path().join("ca.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = CloudCa::load_or_create(dir.path()).expect("reload");
    assert_eq!(again.fingerprint(), ca.fingerprint());
    assert_eq!(again.cert_pem(), ca.cert_pem());
}

#[test]
fn a_host_certificate_names_the_host_and_its_address_only() {
    let (_d, ca) = ca();
    let host_dir = tempfile::tempdir().expect("tempdir");
    let (_, issued) = enrol(&ca, host_dir.path(), "host3", "10.0.0.3");
    let der = certs_from_pem(&issued.cert_pem).expect("pem");
    let id = PeerIdentity::from_der(&der[0]).expect("identity");
    assert_eq!(id.role, Role::Host);
    assert_eq!(id.name, "host3");
    assert_eq!(id.serial, issued.serial);
    assert_eq!(id.fingerprint, issued.fingerprint);
    assert!(id.names_address("10.0.0.3"));
    assert!(!id.names_address("10.0.0.4"));
    let key_mode = std::fs::metadata(host_dir.path().join(HOST_KEY_FILE))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    // The CSR's own subject is ignored: a host cannot ask to be a controller.
    let creds = HostCredentials::new(host_dir.path());
    let csr = creds.new_request("nimbus-controller").expect("csr");
    let issued = ca.sign_host(&csr, "host4", &[]).expect("sign");
    let der = certs_from_pem(&issued.cert_pem).expect("pem");
    let id = PeerIdentity::from_der(&der[0]).expect("identity");
    assert_eq!((id.role, id.name.as_str()), (Role::Host, "host4"));
    assert!(ca.sign_host("garbage", "host5", &[]).is_err());
}

/// Serves TLS that only a controller may use; answers one byte per connection.
/// QEMU's `tls-creds-x509` (GnuTLS) refuses a certificate whose critical key usage lacks
/// digitalSignature or keyEncipherment, and one whose extended key usage does not allow its
/// role: a host certificate serves as the server (migration target) and as the client
/// (migration source). The subject is what the targets' authz matches.
#[test]
fn host_certificates_are_usable_by_qemu_on_both_ends_of_a_migration() {
    use x509_parser::prelude::*;
    let (_d, ca) = ca();
    let host_dir = tempfile::tempdir().expect("tempdir");
    let (_, issued) = enrol(&ca, host_dir.path(), "host3", "10.0.0.3");
    let der = certs_from_pem(&issued.cert_pem).expect("pem");
    let (_, cert) = X509Certificate::from_der(&der[0]).expect("parse");
    let ku = cert.key_usage().expect("key usage").expect("present");
    assert!(
        ku.value.digital_signature() && ku.value.key_encipherment(),
        "{:?}",
        ku.value
    );
    let eku = cert.extended_key_usage().expect("eku").expect("present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    let subject = cert.subject().to_string();
    assert!(
        host_subject_forms("host3")
            .iter()
            .any(|f| f.replace(',', ", ") == subject),
        "{subject}"
    );
}

async fn serve_controller_only(ca: &CloudCa) -> std::net::SocketAddr {
    let server_dir = tempfile::tempdir().expect("tempdir");
    let (server_id, _) = enrol(ca, server_dir.path(), "host1", "127.0.0.1");
    let config = server_config(ca.cert_pem(), &server_id, ClientAuth::Required).expect("cfg");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let mut listener = TlsListener::new(tcp, config, Some(Role::Controller)).expect("listener");
    tokio::spawn(async move {
        use axum::serve::Listener;
        use tokio::io::AsyncWriteExt;
        loop {
            let (mut io, peer) = listener.accept().await;
            assert_eq!(peer.identity.map(|i| i.role), Some(Role::Controller));
            let _ = io.write_all(b"k").await;
            let _ = io.shutdown().await;
        }
    });
    addr
}

async fn talk(addr: std::net::SocketAddr, config: rustls::ClientConfig) -> bool {
    use tokio::io::AsyncReadExt;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return false;
    };
    let mut buf = [0u8; 1];
    matches!(tls.read(&mut buf).await, Ok(1))
}

#[tokio::test]
async fn only_the_controller_of_this_ca_gets_through() {
    let (_d, ca) = ca();
    let addr = serve_controller_only(&ca).await;
    let controller = ca
        .issue_controller(&["127.0.0.1".into()])
        .expect("controller");
    let ok = client_config(ca.cert_pem(), Some(&controller)).expect("cfg");
    assert!(talk(addr, ok).await, "the controller is served");
    // No certificate, a host's certificate, a controller of another CA: refused.
    let none = client_config(ca.cert_pem(), None).expect("cfg");
    assert!(!talk(addr, none).await);
    let host_dir = tempfile::tempdir().expect("tempdir");
    let (host, _) = enrol(&ca, host_dir.path(), "host2", "127.0.0.1");
    assert!(
        !talk(
            addr,
            client_config(ca.cert_pem(), Some(&host)).expect("cfg")
        )
        .await
    );
    let (_d2, other) = self::ca();
    let stranger = other
        .issue_controller(&["127.0.0.1".into()])
        .expect("other");
    assert!(
        !talk(
            addr,
            client_config(ca.cert_pem(), Some(&stranger)).expect("cfg")
        )
        .await
    );
    // A client that trusts another CA refuses the server.
    let wary = client_config(other.cert_pem(), Some(&controller)).expect("cfg");
    assert!(!talk(addr, wary).await);
}

/// A migration's certificate: the host's name (what QEMU checks), QEMU-usable on both ends,
/// expiring with the migration, and no identity anywhere else: a listener of the cloud
/// refuses it even where any certificate of the CA would do.
#[tokio::test]
async fn a_migration_certificate_is_short_lived_and_no_identity() {
    use x509_parser::prelude::*;
    let (_d, ca) = ca();
    let started = std::time::Instant::now();
    let issued = ca
        .issue_migration("host3", std::time::Duration::from_secs(600))
        .expect("issue");
    // What a migration pays for its two certificates (printed, never asserted).
    eprintln!(
        "one migration certificate issued in {:?}",
        started.elapsed()
    );
    let der = certs_from_pem(&issued.cert_pem).expect("pem");
    let (_, cert) = X509Certificate::from_der(&der[0]).expect("parse");
    let subject = cert.subject().to_string();
    assert!(
        migration_subject_forms("host3")
            .iter()
            .any(|f| f.replace(',', ", ") == subject),
        "{subject}"
    );
    let lifetime =
        cert.validity().not_after.timestamp() - ::time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((590..=600).contains(&lifetime), "expires in {lifetime} s");
    let eku = cert.extended_key_usage().expect("eku").expect("present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    let san = cert
        .subject_alternative_name()
        .expect("san")
        .expect("present");
    assert_eq!(san.value.general_names, vec![GeneralName::DNSName("host3")]);
    assert!(PeerIdentity::from_der(&der[0]).is_err());
    // Presented to a listener that takes any certificate of this CA: refused.
    let server_dir = tempfile::tempdir().expect("tempdir");
    let (server_id, _) = enrol(&ca, server_dir.path(), "host1", "127.0.0.1");
    let config = server_config(ca.cert_pem(), &server_id, ClientAuth::Required).expect("cfg");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let mut listener = TlsListener::new(tcp, config, None).expect("listener");
    tokio::spawn(async move {
        use axum::serve::Listener;
        use tokio::io::AsyncWriteExt;
        loop {
            let (mut io, _) = listener.accept().await;
            let _ = io.write_all(b"k").await;
            let _ = io.shutdown().await;
        }
    });
    let host_dir = tempfile::tempdir().expect("tempdir");
    let (host, _) = enrol(&ca, host_dir.path(), "host3", "127.0.0.1");
    let host_cfg = client_config(ca.cert_pem(), Some(&host)).expect("cfg");
    assert!(
        talk(addr, host_cfg).await,
        "the host's own certificate is served"
    );
    let migration_cfg = client_config(ca.cert_pem(), Some(&issued)).expect("cfg");
    assert!(
        !talk(addr, migration_cfg).await,
        "a migration certificate is no identity"
    );
}

/// The agents' migration tunnel accepts host `name`'s migration or host certificate, and
/// nothing else: not another host's, not the controller's.
#[test]
fn a_migration_peer_is_the_named_host_only() {
    let (_d, ca) = ca();
    let der = |pem: &str| certs_from_pem(pem).expect("pem").remove(0);
    let issued = ca
        .issue_migration("host3", std::time::Duration::from_secs(60))
        .expect("issue");
    assert!(is_migration_peer(&der(&issued.cert_pem), "host3"));
    assert!(!is_migration_peer(&der(&issued.cert_pem), "host4"));
    let host_dir = tempfile::tempdir().expect("tempdir");
    let (host, _) = enrol(&ca, host_dir.path(), "host3", "127.0.0.1");
    assert!(is_migration_peer(&der(&host.cert_pem), "host3"));
    let controller = ca
        .issue_controller(&["host3".to_string()])
        .expect("controller");
    assert!(!is_migration_peer(&der(&controller.cert_pem), "host3"));
    assert!(!is_migration_peer(b"not a certificate", "host3"));
}
