//! The network endpoints of a migration target: the agent's own address (the host of its
//! advertised URL, which the other agents and the controller already reach) and TCP ports.

use super::MigrationError;
use std::net::{IpAddr, TcpListener};

/// The host part of the agent's advertised URL, e.g. `10.88.0.11` for
/// `http://10.88.0.11:7701` (an IPv6 literal without its brackets).
pub fn agent_host(advertise_url: &str) -> Result<String, MigrationError> {
    let url = reqwest::Url::parse(advertise_url).map_err(|e| {
        MigrationError::Setup(format!("advertised URL {advertise_url:?} is invalid: {e}"))
    })?;
    let host = url.host_str().ok_or_else(|| {
        MigrationError::Setup(format!("advertised URL {advertise_url:?} has no host"))
    })?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

/// The address of a QEMU `tcp:HOST:PORT` URI whose host is an IP literal.
pub fn uri_address(uri: &str) -> Option<IpAddr> {
    let (host, _port) = uri.strip_prefix("tcp:")?.rsplit_once(':')?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// A QEMU `tcp:` URI for `host:port`.
pub fn tcp_uri(host: &str, port: u16) -> String {
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()) {
        format!("tcp:[{host}]:{port}")
    } else {
        format!("tcp:{host}:{port}")
    }
}

/// A TCP port that is free on `host` right now (the kernel's choice). Another process may
/// take it before QEMU binds it: callers retry on failure.
pub fn free_port(host: &str) -> Result<u16, MigrationError> {
    let listener = TcpListener::bind((host, 0))
        .map_err(|e| MigrationError::Setup(format!("cannot bind a TCP port on {host}: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| MigrationError::Setup(format!("cannot read a bound port: {e}")))?
        .port();
    Ok(port)
}

/// The port of a `tcp:<host>:<port>` URI.
pub fn uri_port(uri: &str) -> Option<u16> {
    uri.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_of_a_tcp_uri() {
        let v4: IpAddr = "10.88.0.12".parse().expect("ip");
        assert_eq!(uri_address("tcp:10.88.0.12:49152"), Some(v4));
        let v6: IpAddr = "fd00::1".parse().expect("ip");
        assert_eq!(uri_address(&tcp_uri("fd00::1", 49152)), Some(v6));
        assert_eq!(uri_address("tcp:node-3:49152"), None);
        assert_eq!(uri_address("unix:/run/vm/migrate.sock"), None);
    }

    #[test]
    fn host_of_the_advertised_url() {
        assert_eq!(
            agent_host("http://10.88.0.11:7701").expect("host"),
            "10.88.0.11"
        );
        assert_eq!(agent_host("http://[::1]:7701/").expect("host"), "::1");
        assert_eq!(agent_host("http://node-3:1").expect("host"), "node-3");
        assert!(agent_host("not a url").is_err());
    }

    #[test]
    fn uris_and_ports() {
        assert_eq!(tcp_uri("10.0.0.2", 4444), "tcp:10.0.0.2:4444");
        assert_eq!(tcp_uri("::1", 4444), "tcp:[::1]:4444");
        assert_eq!(uri_port("tcp:[::1]:4444"), Some(4444));
        assert_eq!(uri_port("tcp:10.0.0.2:x"), None);
        let port = free_port("127.0.0.1").expect("port");
        assert!(port > 0);
    }
}
