//! The underlay: the host network VXLAN packets travel on. This host's address on it is the
//! host part of the agent's advertised URL (the address the controller and the other hosts
//! reach it at); peers are given by the controller as addresses or names.

use super::error::NetError;
use std::net::IpAddr;

/// This host's underlay address, from the agent's advertised URL. `None` when the URL names
/// a loopback or unspecified address, which no other host can reach.
pub async fn local_address(advertise_url: &str) -> Result<Option<IpAddr>, NetError> {
    let invalid = || NetError::Invalid {
        what: "advertised URL",
        value: advertise_url.into(),
    };
    let url = reqwest::Url::parse(advertise_url).map_err(|_| invalid())?;
    let host = url.host_str().ok_or_else(invalid)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = match host.parse::<IpAddr>() {
        Ok(a) => a,
        Err(_) => resolve(host, None).await.ok_or_else(|| NetError::Invalid {
            what: "host name (cannot resolve it)",
            value: host.into(),
        })?,
    };
    Ok(usable(addr).then_some(addr))
}

/// A peer's underlay address in the family of `local`; `None` if it cannot be resolved.
pub async fn peer_address(peer: &str, local: IpAddr) -> Option<IpAddr> {
    let peer = peer.trim().trim_start_matches('[').trim_end_matches(']');
    match peer.parse::<IpAddr>() {
        Ok(a) => (a.is_ipv4() == local.is_ipv4()).then_some(a),
        Err(_) => resolve(peer, Some(local.is_ipv4())).await,
    }
}

/// The address and port a URL (e.g. the controller's) points at; `None` when it cannot be
/// parsed or resolved.
pub async fn socket_address(url: &str) -> Option<std::net::SocketAddr> {
    let url = reqwest::Url::parse(url).ok()?;
    let port = url.port_or_known_default()?;
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip = match host.parse::<IpAddr>() {
        Ok(a) => a,
        Err(_) => resolve(host, None).await?,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

fn usable(addr: IpAddr) -> bool {
    !addr.is_loopback() && !addr.is_unspecified() && !addr.is_multicast()
}

async fn resolve(name: &str, ipv4: Option<bool>) -> Option<IpAddr> {
    let found = tokio::net::lookup_host((name, 0)).await.ok()?;
    found
        .map(|s| s.ip())
        .find(|a| ipv4.is_none_or(|v4| a.is_ipv4() == v4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_address_is_the_url_host() {
        let got = local_address("http://10.249.0.11:7701").await.expect("ok");
        assert_eq!(got, Some("10.249.0.11".parse().expect("ip")));
        let got = local_address("http://[fd00::11]:7701/").await.expect("ok");
        assert_eq!(got, Some("fd00::11".parse().expect("ip")));
        assert_eq!(
            local_address("http://127.0.0.1:7711").await.expect("ok"),
            None
        );
        assert_eq!(local_address("http://0.0.0.0:1").await.expect("ok"), None);
        assert_eq!(local_address("http://localhost:1").await.expect("ok"), None);
        assert!(local_address("not a url").await.is_err());
    }

    #[tokio::test]
    async fn peers_in_the_local_family() {
        let local: IpAddr = "10.0.0.1".parse().expect("ip");
        let want: IpAddr = "10.0.0.2".parse().expect("ip");
        assert_eq!(peer_address(" 10.0.0.2 ", local).await, Some(want));
        assert_eq!(peer_address("fd00::2", local).await, None);
        assert_eq!(
            peer_address("localhost", local).await,
            Some("127.0.0.1".parse().expect("ip"))
        );
        assert_eq!(peer_address("no-such-host.invalid", local).await, None);
    }
}
