//! `/metrics`: Prometheus text exposition of the pool, the instances and their usage:
//! per-host capacity (physical x allocation ratio), allocation and use gauges, KSM gauges,
//! and per-project usage counters (totals since metering began).

use super::auth::MetricsCaller;
use super::ApiError;
use crate::app::usage::derive::Clipped;
use crate::app::{App, AppError};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use nimbus_store::Scope;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Renders the metrics, for an admin or a metrics token (`nimbus token create --role
/// metrics`): they name every project and host.
pub async fn serve(
    State(app): State<App>,
    _caller: MetricsCaller,
) -> Result<impl IntoResponse, ApiError> {
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
    let gauges: [HostGauge; 17] = [
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
        (
            "nimbus_host_cpu_allocation_ratio",
            "vCPUs offered per physical CPU.",
            |h| h.cpu_allocation_ratio,
        ),
        (
            "nimbus_host_ram_allocation_ratio",
            "Memory offered per MiB of physical memory.",
            |h| h.ram_allocation_ratio,
        ),
        (
            "nimbus_host_vcpus_capacity",
            "vCPUs that may be allocated (CPUs x ratio).",
            |h| h.vcpus_capacity() as f64,
        ),
        (
            "nimbus_host_memory_mib_capacity",
            "Memory that may be allocated (physical x ratio).",
            |h| h.memory_mib_capacity() as f64,
        ),
        (
            "nimbus_host_memory_mib_used",
            "Resident memory of the host's running VMs (QEMU RSS), as last sampled.",
            |h| h.memory_mib_used.unwrap_or(0) as f64,
        ),
        (
            "nimbus_host_ksm_pages_shared",
            "KSM shared pages (machine-wide counter of the host's kernel).",
            |h| h.ksm.map_or(0.0, |k| k.pages_shared as f64),
        ),
        (
            "nimbus_host_ksm_pages_sharing",
            "Guest pages merged into KSM shared pages.",
            |h| h.ksm.map_or(0.0, |k| k.pages_sharing as f64),
        ),
        (
            "nimbus_host_ksm_pages_unshared",
            "Pages KSM checked that are unique so far.",
            |h| h.ksm.map_or(0.0, |k| k.pages_unshared as f64),
        ),
        (
            "nimbus_host_ksm_saved_bytes",
            "Memory saved by KSM merging.",
            |h| h.ksm.map_or(0.0, |k| k.saved_bytes as f64),
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for h in &hosts {
            let _ = writeln!(out, "{name}{{host=\"{}\"}} {}", h.name, get(h));
        }
    }
    render_orphans(app, &mut out).await?;
    render_usage(app, &mut out).await?;
    Ok(out)
}

/// Orphan VMs per host and kind: a non-zero value needs an operator (alert on it).
async fn render_orphans(app: &App, out: &mut String) -> Result<(), AppError> {
    let mut count: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for o in app.store().list_orphans(None).await? {
        *count.entry((o.host, o.kind.as_str())).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "# HELP nimbus_orphan_vms VMs a host runs that the store does not account for \
         (left running; see `nimbus host orphans`).\n# TYPE nimbus_orphan_vms gauge"
    );
    for ((host, kind), n) in count {
        let _ = writeln!(
            out,
            "nimbus_orphan_vms{{host=\"{host}\",kind=\"{kind}\"}} {n}"
        );
    }
    Ok(())
}

/// A per-project usage counter: name, help text, how to read it.
type UsageCounter = (&'static str, &'static str, fn(&Clipped) -> f64);

/// Per-project usage counters.
async fn render_usage(app: &App, out: &mut String) -> Result<(), AppError> {
    let by_project = app.usage_by_project().await?;
    let counters: [UsageCounter; 7] = [
        (
            "nimbus_usage_vcpu_seconds_allocated_total",
            "vCPUs allocated x seconds running.",
            |u| u.vcpu_s,
        ),
        (
            "nimbus_usage_cpu_seconds_used_total",
            "CPU time used by the project's VMs.",
            |u| u.cpu_s,
        ),
        (
            "nimbus_usage_memory_mib_seconds_total",
            "Memory allocated x seconds running.",
            |u| u.memory_mib_s,
        ),
        (
            "nimbus_usage_disk_gib_hours_total",
            "Allocated disk x hours.",
            |u| u.disk_gib_h,
        ),
        (
            "nimbus_usage_snapshot_gib_hours_total",
            "Snapshot storage x hours.",
            |u| u.snapshot_gib_h,
        ),
        (
            "nimbus_usage_net_rx_bytes_total",
            "Bytes received by the project's guests.",
            |u| u.net_rx,
        ),
        (
            "nimbus_usage_net_tx_bytes_total",
            "Bytes sent by the project's guests.",
            |u| u.net_tx,
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (project, used) in &by_project {
            let _ = writeln!(out, "{name}{{project=\"{project}\"}} {}", get(used));
        }
    }
    Ok(())
}
