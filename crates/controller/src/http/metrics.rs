//! `/metrics`: Prometheus text exposition of the pool and the instances.

use super::ApiError;
use crate::app::{App, AppError};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use nimbus_store::Scope;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Renders the metrics. Unauthenticated, like most Prometheus endpoints; it reveals counts
/// and capacities only, no names of tenants' instances.
pub async fn serve(State(app): State<App>) -> Result<impl IntoResponse, ApiError> {
    let text = render(&app).await?;
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// A per-host gauge: name, help text, how to read it.
type HostGauge = (&'static str, &'static str, fn(&nimbus_api::HostView) -> f64);

async fn render(app: &App) -> Result<String, AppError> {
    let hosts = app.list_hosts().await?;
    let instances = app.store().list_instances(&Scope::All).await?;
    let mut out = String::new();
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for i in &instances {
        *by_state.entry(i.state.as_str()).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "# HELP nimbus_instances Instances by state.\n# TYPE nimbus_instances gauge"
    );
    for (state, n) in by_state {
        let _ = writeln!(out, "nimbus_instances{{state=\"{state}\"}} {n}");
    }
    let gauges: [HostGauge; 8] = [
        ("nimbus_host_up", "1 if the host's agent reports in.", |h| {
            (h.state == nimbus_api::HostState::Up) as u8 as f64
        }),
        (
            "nimbus_host_enabled",
            "1 if the host takes new instances.",
            |h| h.enabled as u8 as f64,
        ),
        ("nimbus_host_cpus", "Physical CPUs.", |h| h.cpus as f64),
        ("nimbus_host_memory_mib", "Physical memory.", |h| {
            h.memory_mib as f64
        }),
        (
            "nimbus_host_vcpus_allocated",
            "vCPUs allocated to instances.",
            |h| h.vcpus_allocated as f64,
        ),
        (
            "nimbus_host_memory_mib_allocated",
            "Memory allocated to instances.",
            |h| h.memory_mib_allocated as f64,
        ),
        (
            "nimbus_host_disk_gib_allocated",
            "Disk allocated to instances.",
            |h| h.disk_gib_allocated as f64,
        ),
        (
            "nimbus_host_instances",
            "Instances placed on the host.",
            |h| h.instances as f64,
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for h in &hosts {
            let _ = writeln!(out, "{name}{{host=\"{}\"}} {}", h.name, get(h));
        }
    }
    Ok(out)
}
