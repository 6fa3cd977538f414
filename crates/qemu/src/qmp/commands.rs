//! Typed QMP commands. Anything not here goes through [`Qmp::execute`].

use super::{Qmp, QmpError};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// The guest's CPUs run.
    pub running: bool,
    /// QEMU's run state, e.g. `running`, `paused`, `shutdown`, `inmigrate`, `postmigrate`.
    pub status: String,
}

/// RAM statistics of a migration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationRam {
    #[serde(default)]
    pub transferred: u64,
    #[serde(default)]
    pub remaining: u64,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub dirty_pages_rate: u64,
    #[serde(default)]
    pub dirty_sync_count: u64,
    #[serde(default)]
    pub mbps: f64,
    /// Size of a guest page, in bytes (`dirty-pages-rate` counts pages).
    #[serde(default)]
    pub page_size: u64,
    /// Pages sent with their content.
    #[serde(default)]
    pub normal: u64,
    /// Pages sent as all-zero (nothing but a flag).
    #[serde(default)]
    pub duplicate: u64,
}

/// Reply of `query-migrate`. Fields are absent before a migration started; statistics may
/// be missing right after `completed` (re-read, or wait for the MIGRATION event).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    pub status: Option<String>,
    pub ram: Option<MigrationRam>,
    /// Milliseconds since the migration started.
    pub total_time: Option<u64>,
    /// QEMU's own downtime figure in ms (understates the real pause: prefer STOP/RESUME).
    pub downtime: Option<u64>,
    pub expected_downtime: Option<u64>,
    pub setup_time: Option<u64>,
    pub error_desc: Option<String>,
    /// vCPU throttle applied by auto-converge, in percent (absent when not throttling).
    pub cpu_throttle_percentage: Option<u64>,
    /// Where an incoming migration listens (target side), with the port actually bound.
    pub socket_address: Option<Vec<SocketAddress>>,
}

/// A socket address as QMP reports it (`SocketAddress`, flat form).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SocketAddress {
    /// `inet`, `unix`, `vsock` or `fd`.
    #[serde(rename = "type")]
    pub kind: String,
    pub host: Option<String>,
    /// The port, as a string (QMP's `InetSocketAddress`).
    pub port: Option<String>,
}

/// Parameters for `migrate-set-parameters`; unset fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrateParameters {
    /// Maximum pause of the final stage, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_limit: Option<u64>,
    /// Bandwidth cap in bytes per second (QEMU's default is 128 MiB/s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_initial: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_increment: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multifd_channels: Option<u8>,
    /// Highest vCPU throttle auto-converge may apply, in percent (QEMU's default is 99).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cpu_throttle: Option<u8>,
    /// Id of a `tls-creds-x509` object for QEMU's own TLS on the migration stream; nimbus
    /// only ever sets it empty (off: the agents carry the stream over TLS), since a QEMU
    /// keeps the parameters of its previous migrations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_creds: Option<String>,
    /// The name QEMU's own TLS would check on the target's certificate (set empty too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_hostname: Option<String>,
}

fn decode<T: DeserializeOwned>(command: &str, value: Value) -> Result<T, QmpError> {
    serde_json::from_value(value).map_err(|e| QmpError::Decode {
        command: command.to_string(),
        detail: e.to_string(),
    })
}

impl Qmp {
    async fn run(&self, command: &str, args: Option<Value>) -> Result<(), QmpError> {
        self.execute(command, args).await.map(|_| ())
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        let v = self.execute("query-status", None).await?;
        decode("query-status", v)
    }

    /// `system_powerdown`: presses the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.run("system_powerdown", None).await
    }

    /// `system_reset`: hard reset of the machine.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.run("system_reset", None).await
    }

    /// `quit`: QEMU exits at once. A connection closed before the reply counts as done.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.run("quit", None).await {
            Err(QmpError::Disconnected) => Ok(()),
            other => other,
        }
    }

    /// `stop`: pauses the guest's CPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.run("stop", None).await
    }

    /// `cont`: resumes the guest's CPUs.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.run("cont", None).await
    }

    /// `query-migrate`.
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        let v = self.execute("query-migrate", None).await?;
        decode("query-migrate", v)
    }

    /// `migrate-set-capabilities` with `(capability, state)` pairs, e.g. `("auto-converge", true)`.
    pub async fn migrate_set_capabilities(&self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(name, state)| json!({"capability": name, "state": state}))
            .collect();
        self.run(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .await
    }

    /// `migrate-set-parameters`.
    pub async fn migrate_set_parameters(&self, params: &MigrateParameters) -> Result<(), QmpError> {
        let args = serde_json::to_value(params).unwrap_or_else(|_| Value::Object(Map::new()));
        self.run("migrate-set-parameters", Some(args)).await
    }

    /// `migrate` to `uri` (e.g. `tcp:10.0.0.2:4444`); returns once the migration started.
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.run("migrate", Some(json!({ "uri": uri }))).await
    }

    /// `migrate-incoming` on `uri` (QEMU must run with `-incoming defer`).
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.run("migrate-incoming", Some(json!({ "uri": uri })))
            .await
    }

    /// `migrate_cancel`.
    pub async fn migrate_cancel(&self) -> Result<(), QmpError> {
        self.run("migrate_cancel", None).await
    }

    /// `yank`, out of band: shuts down the network connections of `instance` (e.g.
    /// `{"type": "migration"}`, `{"type": "block-node", "node-name": ...}`) at once, so that
    /// a transfer blocked on a dead link fails instead of holding QEMU for minutes.
    pub async fn yank(&self, instance: Value, limit: Duration) -> Result<(), QmpError> {
        self.execute_oob("yank", Some(json!({ "instances": [instance] })), limit)
            .await
            .map(|_| ())
    }

    /// `migrate-start-postcopy`: the target starts running and pulls the remaining pages
    /// (both sides must have the `postcopy-ram` capability).
    pub async fn migrate_start_postcopy(&self) -> Result<(), QmpError> {
        self.run("migrate-start-postcopy", None).await
    }

    /// `migrate-continue` from the paused `state` (e.g. `pre-switchover`, with the
    /// `pause-before-switchover` capability).
    pub async fn migrate_continue(&self, state: &str) -> Result<(), QmpError> {
        self.run("migrate-continue", Some(json!({ "state": state })))
            .await
    }

    /// `announce-self` with QEMU's default timing (50 ms, then +100 ms, 5 rounds): the
    /// NICs send gratuitous ARP/RARP so that the network learns where the VM now is.
    pub async fn announce_self(&self) -> Result<(), QmpError> {
        let args = json!({"initial": 50, "max": 550, "rounds": 5, "step": 100});
        self.run("announce-self", Some(args)).await
    }
}
