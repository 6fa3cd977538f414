//! `nimbus agent`'s identity: enrol on the first start (with `--join`), then load the
//! certificate of the state dir and check it still fits the flags (name, address).

use anyhow::{bail, Context};
use nimbus_pki::rustls::{ClientConfig, ServerConfig};
use nimbus_pki::{ClientAuth, HostCredentials, PeerIdentity};
use std::path::Path;
use std::sync::Arc;

/// The TLS settings of an enrolled agent.
pub struct HostTrust {
    /// Calls to the controller: its certificate checked against the CA, the host's presented.
    pub client: ClientConfig,
    /// The agent API: the host's certificate; only the controller's accepted from clients.
    pub server: Arc<ServerConfig>,
}

/// Enrols the host if it is not yet (needs `join`), then builds its TLS settings.
pub async fn load(
    state_dir: &Path,
    name: &str,
    controller: &str,
    advertise_url: &str,
    join: Option<&str>,
) -> anyhow::Result<HostTrust> {
    let address = check_advertise_url(advertise_url)?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let creds = HostCredentials::new(state_dir);
    match (creds.enrolled(), join) {
        (false, Some(token)) => {
            nimbus_agent::enrol::enrol(controller, token, name, advertise_url, &creds).await?
        }
        (false, None) => bail!(
            "host {name:?} is not enrolled (no certificate in {}): ask an admin for a token \
             (`nimbus host join-token`) and start the agent with --join TOKEN",
            state_dir.display()
        ),
        (true, Some(_)) => {
            tracing::info!(
                "already enrolled: the certificate of the state dir is used, --join is not"
            )
        }
        (true, None) => {}
    }
    let identity = creds.identity()?;
    let ca = creds.ca_pem()?;
    let der = nimbus_pki::certs_from_pem(&identity.cert_pem)?;
    let cert = PeerIdentity::from_der(&der[0])?;
    if cert.name != name {
        bail!(
            "the certificate in {} is host {:?}'s, not {name:?}: start the agent with --name {:?}, \
             or give it a state dir of its own",
            state_dir.display(),
            cert.name,
            cert.name
        );
    }
    if !cert.names_address(&address) {
        bail!(
            "the advertise URL {advertise_url} is not an address of this host's certificate ({}): \
             use one of those, or remove the host (`nimbus host remove {name}`) and enrol it again",
            cert.addresses.join(", ")
        );
    }
    Ok(HostTrust {
        client: nimbus_pki::client_config(&ca, Some(&identity))?,
        server: nimbus_pki::server_config(&ca, &identity, ClientAuth::Required)?,
    })
}

/// The address of an advertise URL: `https`, not the wildcard.
fn check_advertise_url(url: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url).with_context(|| format!("bad --advertise-url {url:?}"))?;
    if parsed.scheme() != "https" {
        bail!(
            "--advertise-url must be https://ADDRESS:PORT (the agent API is TLS only), not {url:?}"
        );
    }
    let host = match parsed.host() {
        Some(url::Host::Ipv4(ip)) if ip.is_unspecified() => None,
        Some(url::Host::Ipv6(ip)) if ip.is_unspecified() => None,
        Some(url::Host::Ipv4(ip)) => Some(ip.to_string()),
        Some(url::Host::Ipv6(ip)) => Some(ip.to_string()),
        Some(url::Host::Domain(d)) => Some(d.to_string()),
        None => None,
    };
    host.with_context(|| {
        format!(
            "--advertise-url {url:?} does not name an address the controller can call back: \
             set --advertise-url to the address the controller reaches this host at"
        )
    })
}
