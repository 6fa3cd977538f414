//! TLS for connections tests open beside the typed client.

use nimbus_client::Client;

/// A websocket connector trusting what `client` trusts (the cloud's CA).
pub fn console_connector(client: &Client) -> tokio_tungstenite::Connector {
    let ca = client
        .root_ca()
        .and_then(|pem| std::str::from_utf8(pem).ok())
        .expect("the client trusts the cloud's CA (PEM)");
    let tls = nimbus_pki::client_config(ca, None).expect("a TLS client of the cloud's CA");
    tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(tls))
}
