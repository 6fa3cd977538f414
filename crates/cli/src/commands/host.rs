//! `nimbus host ...`

use crate::args::{Connection, HostCmd, Output};
use crate::{context, output};
use nimbus_api::HostView;

fn row(h: &HostView) -> Vec<String> {
    vec![
        h.name.clone(),
        format!("{:?}", h.state).to_lowercase(),
        if h.enabled { "yes".into() } else { "no".into() },
        h.accelerator.clone(),
        format!(
            "{}/{}",
            h.vcpus_allocated,
            (h.cpus as f64 * h.cpu_allocation_ratio) as u64
        ),
        format!(
            "{}/{}",
            h.memory_mib_allocated,
            (h.memory_mib as f64 * h.ram_allocation_ratio) as u64
        ),
        format!(
            "{}/{}",
            h.disk_gib_allocated,
            (h.disk_gib as f64 * h.disk_allocation_ratio) as u64
        ),
        h.instances.to_string(),
    ]
}

const HEADERS: &[&str] = &[
    "name",
    "state",
    "enabled",
    "accel",
    "vcpus",
    "memory_mib",
    "disk_gib",
    "instances",
];

fn show(out: Output, h: &HostView) -> anyhow::Result<()> {
    match out {
        Output::Json => output::json(h),
        Output::Table => {
            output::fields(&[
                ("name", h.name.clone()),
                ("state", format!("{:?}", h.state).to_lowercase()),
                ("enabled", h.enabled.to_string()),
                ("agent", h.agent_url.clone()),
                ("accelerator", h.accelerator.clone()),
                ("qemu", h.qemu_version.clone()),
                (
                    "cpus",
                    format!(
                        "{} (ratio {}, {} vCPUs allocated)",
                        h.cpus, h.cpu_allocation_ratio, h.vcpus_allocated
                    ),
                ),
                (
                    "memory_mib",
                    format!(
                        "{} (ratio {}, {} allocated)",
                        h.memory_mib, h.ram_allocation_ratio, h.memory_mib_allocated
                    ),
                ),
                (
                    "disk_gib",
                    format!(
                        "{} (ratio {}, {} allocated)",
                        h.disk_gib, h.disk_allocation_ratio, h.disk_gib_allocated
                    ),
                ),
                ("instances", h.instances.to_string()),
                ("last_seen", output::opt(&h.last_seen)),
            ]);
            Ok(())
        }
    }
}

pub async fn run(conn: &Connection, out: Output, cmd: HostCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        HostCmd::List => output::list(out, &client.list_hosts().await?, HEADERS, row),
        HostCmd::Show { host } => show(out, &client.host(&host).await?),
        HostCmd::Enable { host } => show(out, &client.host_action(&host, "enable").await?),
        HostCmd::Disable { host } => show(out, &client.host_action(&host, "disable").await?),
        HostCmd::Drain { host, wait } => {
            let op = client.drain_host(&host).await?;
            super::follow(&client, out, op, &wait).await
        }
    }
}
