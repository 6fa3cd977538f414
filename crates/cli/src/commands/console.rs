//! `nimbus instance console`: the guest's serial console in this terminal. Ctrl-] detaches.

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use nimbus_client::Client;
use nix::sys::termios::{self, SetArg, Termios};
use std::io::Write;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The byte Ctrl-] sends.
const DETACH: u8 = 0x1d;

/// Puts the terminal in raw mode and restores it when dropped.
struct RawTerminal(Option<Termios>);

impl RawTerminal {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else {
            return RawTerminal(None); // not a terminal: pass bytes through as they are
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawTerminal(None);
        }
        RawTerminal(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}

pub async fn attach(client: &Client, instance: &str) -> anyhow::Result<()> {
    // Resolve first so that a wrong name gives the API's clear error.
    let inst = client.instance(instance).await?;
    let mut req = client
        .console_url(&inst.name)
        .into_client_request()
        .context("bad API URL")?;
    if let Some(t) = client.token() {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().context("bad token")?,
        );
    }
    let connector = match client.root_ca() {
        Some(ca) => {
            let ca = std::str::from_utf8(ca).context("the CA certificate is not PEM text")?;
            let tls = nimbus_pki::client_config(ca, None).context("bad CA certificate")?;
            Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
                tls,
            )))
        }
        None => None,
    };
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector)
        .await
        .context("cannot open the console (is another console attached?)")?;
    eprintln!("connected to {} (detach with Ctrl-])\r", inst.name);
    let (mut tx, mut rx) = ws.split();
    let _raw = RawTerminal::enter();
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 1024];
    // Wake the shell so the user sees a prompt.
    let _ = tx.send(Message::Binary(b"\n".to_vec().into())).await;
    loop {
        tokio::select! {
            n = stdin.read(&mut buf) => {
                let n = n?;
                if n == 0 { break; }
                let data = &buf[..n];
                if let Some(pos) = data.iter().position(|b| *b == DETACH) {
                    if pos > 0 {
                        tx.send(Message::Binary(data[..pos].to_vec().into())).await?;
                    }
                    break;
                }
                tx.send(Message::Binary(data.to_vec().into())).await?;
            }
            msg = rx.next() => {
                match msg {
                    Some(Ok(Message::Binary(b))) => { std::io::stdout().write_all(&b)?; std::io::stdout().flush()?; }
                    Some(Ok(Message::Text(t))) => { std::io::stdout().write_all(t.as_bytes())?; std::io::stdout().flush()?; }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                }
            }
        }
    }
    drop(_raw);
    eprintln!("\ndetached from {}", inst.name);
    Ok(())
}
