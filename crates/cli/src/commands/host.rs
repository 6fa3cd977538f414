//! `nimbus host ...`

use crate::args::{Connection, HostCmd, OrphanCmd, Output};
use crate::{context, output};
use nimbus_api::{HostView, OrphanView};

fn row(h: &HostView) -> Vec<String> {
    vec![
        h.name.clone(),
        format!("{:?}", h.state).to_lowercase(),
        if h.enabled { "yes".into() } else { "no".into() },
        h.accelerator.clone(),
        vcpus(h),
        memory(h),
        format!(
            "{}/{}",
            h.disk_gib_allocated,
            (h.disk_gib as f64 * h.disk_allocation_ratio) as u64
        ),
        h.instances.to_string(),
    ]
}

/// Effective vCPU allocation: "6/32 (8 x 4.0)".
fn vcpus(h: &HostView) -> String {
    format!(
        "{}/{} ({} x {:.1})",
        h.vcpus_allocated,
        h.vcpus_capacity(),
        h.cpus,
        h.cpu_allocation_ratio
    )
}

/// Effective memory allocation: "1024/16384 MiB (16384 x 1.0)".
fn memory(h: &HostView) -> String {
    format!(
        "{}/{} MiB ({} x {:.1})",
        h.memory_mib_allocated,
        h.memory_mib_capacity(),
        h.memory_mib,
        h.ram_allocation_ratio
    )
}

/// The image cache: "2 images, 310.2 MiB of 20.00 GiB, 3 downloads, 1 repair".
fn image_cache(h: &HostView) -> String {
    match &h.image_cache {
        None => "not reported".into(),
        Some(c) => format!(
            "{} images, {} of {}, {} downloads, {} repairs",
            c.images.len(),
            output::bytes(c.used_bytes),
            output::bytes(c.max_bytes),
            c.downloads,
            c.repairs
        ),
    }
}

/// KSM: "on, 1200 pages shared by 4800, 18.8 MiB saved".
fn ksm(h: &HostView) -> String {
    match &h.ksm {
        None => "not available".into(),
        Some(k) => format!(
            "{}, {} pages shared by {} (unshared {}), {:.1} MiB saved (machine-wide)",
            if k.running { "on" } else { "off" },
            k.pages_shared,
            k.pages_sharing,
            k.pages_unshared,
            k.saved_bytes as f64 / (1u64 << 20) as f64
        ),
    }
}

/// "up", "unreachable", or "down since 12:03:10, fenced, 3 instances restarted".
fn state_line(h: &HostView) -> String {
    let state = format!("{:?}", h.state).to_lowercase();
    match h.down_since {
        Some(t) => {
            let fenced = if h.fenced { ", fenced" } else { "" };
            format!(
                "{state} since {}{fenced}, {} instances restarted",
                t.format("%H:%M:%S"),
                h.ha_restarted
            )
        }
        None => state,
    }
}

const HEADERS: &[&str] = &[
    "name",
    "state",
    "enabled",
    "accel",
    "vcpus",
    "memory",
    "disk_gib",
    "instances",
];

fn show(out: Output, h: &HostView) -> anyhow::Result<()> {
    match out {
        Output::Json => output::json(h),
        Output::Table => {
            output::fields(&[
                ("name", h.name.clone()),
                ("state", state_line(h)),
                ("enabled", h.enabled.to_string()),
                ("agent", h.agent_url.clone()),
                (
                    "certificate",
                    h.cert_fingerprint
                        .as_ref()
                        .map_or_else(|| "not enrolled".into(), |f| format!("sha256 {f}")),
                ),
                ("accelerator", h.accelerator.clone()),
                ("qemu", h.qemu_version.clone()),
                ("vcpus", vcpus(h)),
                ("memory", memory(h)),
                (
                    "memory_used",
                    h.memory_mib_used
                        .map_or_else(|| "-".into(), |m| format!("{m} MiB (QEMU RSS)")),
                ),
                (
                    "disk_gib",
                    format!(
                        "{} (ratio {}, {} allocated)",
                        h.disk_gib, h.disk_allocation_ratio, h.disk_gib_allocated
                    ),
                ),
                ("ksm", ksm(h)),
                ("image_cache", image_cache(h)),
                ("instances", h.instances.to_string()),
                ("last_seen", output::opt(&h.last_seen)),
            ]);
            for i in h.image_cache.iter().flat_map(|c| &c.images) {
                println!(
                    "  {}  {}  last used {}{}",
                    i.digest,
                    output::bytes(i.size_bytes),
                    i.last_used.to_rfc3339(),
                    if i.in_use { ", in use" } else { "" }
                );
            }
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
        HostCmd::Evacuate { host, wait } => {
            let result = client.evacuate_host(&host).await?;
            for left in &result.left {
                eprintln!("{} stays on {host}: {}", left.instance, left.reason);
            }
            for op in result.operations {
                eprintln!("restarting {} elsewhere ({})", op.target_name, op.id);
                super::follow(&client, out, op, &wait).await?;
            }
            Ok(())
        }
        HostCmd::JoinToken { expires_in } => {
            let t = client.create_join_token(expires_in.as_secs()).await?;
            match out {
                Output::Json => output::json(&t),
                Output::Table => {
                    println!("{}", t.token);
                    eprintln!(
                        "one-time join token, valid until {}; on the new host:\n  \
                         nimbus agent --controller {} --join TOKEN --name HOST \
                         --advertise-url https://HOST_ADDRESS:7701 --state-dir DIR",
                        t.expires_at,
                        client.api()
                    );
                    Ok(())
                }
            }
        }
        HostCmd::Remove { host } => {
            client.remove_host(&host).await?;
            eprintln!("host {host} removed; its certificate is revoked");
            Ok(())
        }
        HostCmd::Orphans { host, action: None } => output::list(
            out,
            &client.orphans(host.as_deref()).await?,
            ORPHAN_HEADERS,
            orphan_row,
        ),
        HostCmd::Orphans {
            action: Some(OrphanCmd::Delete { host, vm_id }),
            ..
        } => {
            client.delete_orphan(&host, &vm_id).await?;
            eprintln!("orphan VM {vm_id} deleted from {host}");
            Ok(())
        }
    }
}

const ORPHAN_HEADERS: &[&str] = &[
    "host",
    "vm_id",
    "kind",
    "vm_state",
    "placed_on",
    "first_seen",
];

fn orphan_row(o: &OrphanView) -> Vec<String> {
    vec![
        o.host.clone(),
        o.vm_id.to_string(),
        o.kind.as_str().into(),
        o.vm_state.clone(),
        o.placed_on.clone().unwrap_or_else(|| "-".into()),
        o.first_seen.to_rfc3339(),
    ]
}
