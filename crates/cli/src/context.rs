//! Where the CLI finds its cloud: flags and environment first, then the files `nimbus up`
//! wrote into its data directory.

use crate::args::Connection;
use anyhow::Context;
use nimbus_client::Client;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What `nimbus up` leaves for local CLI calls (`<data dir>/cli.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct LocalCloud {
    pub api: String,
    pub token_file: PathBuf,
    /// The cloud's CA certificate (the API's HTTPS certificate is checked against it).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
}

/// Default data directory: `/var/lib/nimbus` as root, `~/.local/share/nimbus` otherwise.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/nimbus");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("nimbus")
}

pub fn local_cloud_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cli.json")
}

/// A client for the selected cloud.
pub fn client(conn: &Connection) -> anyhow::Result<Client> {
    let data_dir = conn.data_dir.clone().unwrap_or_else(default_data_dir);
    let local: Option<LocalCloud> = std::fs::read(local_cloud_path(&data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let api = conn
        .api
        .clone()
        .or_else(|| local.as_ref().map(|l| l.api.clone()))
        .unwrap_or_else(|| "https://127.0.0.1:7700".into());
    let token = match &conn.token {
        Some(t) => Some(t.clone()),
        None => match &local {
            Some(l) => Some(
                std::fs::read_to_string(&l.token_file)
                    .with_context(|| {
                        format!(
                            "cannot read the admin token {} (run as the user that ran `nimbus up`, or pass --token)",
                            l.token_file.display()
                        )
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        },
    };
    let client = Client::new(&api, token).with_project(conn.project.clone());
    let ca_file = conn
        .ca_cert
        .clone()
        .or_else(|| local.as_ref().and_then(|l| l.ca_cert.clone()));
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(&path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            client
                .with_root_ca(&pem)
                .with_context(|| format!("bad CA certificate {}", path.display()))
        }
        None => Ok(client),
    }
}
