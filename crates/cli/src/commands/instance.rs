//! `nimbus instance ...`

use super::{follow, follow_then, step_output};
use crate::args::{Connection, HaArg, InstanceCmd, Output};
use crate::{context, output};
use nimbus_api::{CreateInstance, InstanceView, MigrateInstance, MigrationView};
use std::io::Write;
use std::time::Duration;

fn row(i: &InstanceView) -> Vec<String> {
    vec![
        i.name.clone(),
        i.state.to_string(),
        output::opt(&i.host),
        i.flavor.clone(),
        i.image.clone(),
        i.id.to_string(),
    ]
}

const HEADERS: &[&str] = &["name", "state", "host", "flavor", "image", "id"];

fn show(out: Output, i: &InstanceView) -> anyhow::Result<()> {
    match out {
        Output::Json => output::json(i),
        Output::Table => {
            output::fields(&[
                ("id", i.id.to_string()),
                ("name", i.name.clone()),
                ("state", i.state.to_string()),
                ("reason", output::opt(&i.reason)),
                ("ready", ready_text(i)),
                ("host", output::opt(&i.host)),
                (
                    "flavor",
                    format!(
                        "{} ({} vCPU, {} MiB, {} GiB)",
                        i.flavor, i.vcpus, i.memory_mib, i.disk_gib
                    ),
                ),
                ("image", i.image.clone()),
                ("ha", ha_text(i)),
                ("nics", nics(i)),
                ("floating ip", output::opt(&i.floating_ip)),
                ("project", i.project.clone()),
                ("operation", output::opt(&i.operation)),
                ("created", i.created_at.to_rfc3339()),
                ("updated", i.updated_at.to_rfc3339()),
            ]);
            Ok(())
        }
    }
}

/// `yes (metadata)`: what said the guest is up; `no` while it is not (yet).
fn ready_text(i: &InstanceView) -> String {
    match i.ready {
        Some(via) => format!("yes ({})", via.as_str()),
        None => "no".into(),
    }
}

/// `restart (priority high)`, or `none (priority medium)`.
fn ha_text(i: &InstanceView) -> String {
    let policy = if i.ha.is_some() { "restart" } else { "none" };
    format!(
        "{policy} (priority {})",
        nimbus_api::ha_priority_label(i.ha_priority)
    )
}

/// Changes an instance's HA policy or priority, keeping what is not given.
async fn set_ha(
    client: &nimbus_client::Client,
    instance: &str,
    ha: Option<HaArg>,
    ha_priority: Option<u16>,
) -> anyhow::Result<()> {
    let now = client.instance(instance).await?;
    let set = client
        .set_instance_ha(
            instance,
            &nimbus_api::SetInstanceHa {
                ha: ha.map_or(now.ha, HaArg::policy),
                ha_priority: ha_priority.unwrap_or(now.ha_priority),
            },
        )
        .await?;
    let view = InstanceView {
        ha: set.ha,
        ha_priority: set.ha_priority,
        ..now
    };
    println!("instance {instance} HA: {}", ha_text(&view));
    Ok(())
}

/// `backend 10.10.0.20/24 52:54:..., default ...`.
fn nics(i: &InstanceView) -> String {
    let nics: Vec<String> = i
        .nics
        .iter()
        .map(|n| format!("{} {} {}", n.network, n.ip, n.mac))
        .collect();
    if nics.is_empty() {
        "-".into()
    } else {
        nics.join(", ")
    }
}

/// The user-data file, base64 for the API; refused here when over the limit.
fn user_data(file: &std::path::Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    let bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    if bytes.len() > nimbus_api::MAX_USER_DATA_BYTES {
        anyhow::bail!(
            "{} has {} bytes; user-data may have at most {} (16 KiB, as EC2): compress it (gzip) or fetch the rest from the guest",
            file.display(),
            bytes.len(),
            nimbus_api::MAX_USER_DATA_BYTES
        );
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub async fn run(conn: &Connection, out: Output, cmd: InstanceCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        InstanceCmd::Create {
            name,
            flavor,
            image,
            from_snapshot,
            networks,
            ip,
            placement_group,
            ha,
            ha_priority,
            key_name,
            user_data_file,
            secgroups,
            wait,
        } => {
            let user_data = user_data_file.map(|f| user_data(&f)).transpose()?;
            let op = client
                .create_instance(&CreateInstance {
                    name,
                    flavor,
                    image,
                    from_snapshot,
                    networks,
                    ip,
                    placement_group,
                    ha: ha.and_then(HaArg::policy),
                    ha_priority,
                    key_name,
                    user_data,
                    secgroups,
                })
                .await?;
            follow(&client, out, op, &wait).await
        }
        InstanceCmd::Set {
            instance,
            secgroups,
            ha,
            ha_priority,
        } => {
            if !secgroups.is_empty() {
                let set = client.set_instance_secgroups(&instance, secgroups).await?;
                println!("instance {instance} is in {}", set.secgroups.join(", "));
            }
            if ha.is_some() || ha_priority.is_some() {
                set_ha(&client, &instance, ha, ha_priority).await?;
            }
            Ok(())
        }
        InstanceCmd::List => output::list(out, &client.list_instances().await?, HEADERS, row),
        InstanceCmd::Show { instance } => show(out, &client.instance(&instance).await?),
        InstanceCmd::Start { instance, wait } => {
            follow(
                &client,
                out,
                client.instance_action(&instance, "start").await?,
                &wait,
            )
            .await
        }
        InstanceCmd::Stop { instance, wait } => {
            follow(
                &client,
                out,
                client.instance_action(&instance, "stop").await?,
                &wait,
            )
            .await
        }
        InstanceCmd::Reboot { instance, wait } => {
            follow(
                &client,
                out,
                client.instance_action(&instance, "reboot").await?,
                &wait,
            )
            .await
        }
        InstanceCmd::Delete { instance, wait } => {
            let op = client.delete_instance(&instance).await?;
            let op = follow_then(&client, out, op, &wait).await?;
            let snapshots = step_output::<serde_json::Value>(&op, "remove_record")
                .and_then(|o| o.get("snapshots_deleted")?.as_u64())
                .unwrap_or(0);
            if snapshots > 0 && out == Output::Table {
                println!("deleted its {snapshots} snapshot(s) too");
            }
            Ok(())
        }
        InstanceCmd::Migrate {
            instance,
            to,
            max_downtime_ms,
            allow_postcopy,
            wait,
        } => {
            let req = MigrateInstance {
                to,
                max_downtime_ms,
                allow_postcopy: Some(allow_postcopy),
            };
            let op = client.migrate_instance(&instance, &req).await?;
            let id = op.id.to_string();
            follow(&client, out, op, &wait).await?;
            if wait.wait && out == Output::Table {
                print_migration(&client.migration(&id).await?);
            }
            Ok(())
        }
        InstanceCmd::Log { instance, follow } => log(&client, &instance, follow).await,
        InstanceCmd::Console { instance } => super::console::attach(&client, &instance).await,
        InstanceCmd::Exec { instance, command } => {
            let res = client.exec(&instance, &command.join(" ")).await?;
            match out {
                Output::Json => output::json(&res)?,
                Output::Table => print!("{}", res.output),
            }
            if res.exit_code != 0 {
                std::process::exit(res.exit_code.clamp(1, 255));
            }
            Ok(())
        }
    }
}

async fn log(client: &nimbus_client::Client, instance: &str, follow: bool) -> anyhow::Result<()> {
    let mut offset = 0;
    loop {
        let chunk = client.console_log(instance, offset).await?;
        print!("{}", chunk.data);
        std::io::stdout().flush()?;
        let more = chunk.next_offset > offset;
        offset = chunk.next_offset;
        if !more {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn print_migration(m: &MigrationView) {
    let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
    output::fields(&[
        ("moved", format!("{} -> {}", m.source, m.target)),
        ("disk", m.stats.disk_transfer.clone()),
        ("rounds", m.stats.rounds.to_string()),
        (
            "sent",
            format!(
                "{:.1} MiB of {:.0} MiB",
                m.stats.transferred_bytes as f64 / 1048576.0,
                m.stats.total_bytes as f64 / 1048576.0
            ),
        ),
        ("total time", format!("{} ms", m.stats.total_ms)),
        ("downtime", ms(m.stats.downtime_ms)),
        ("guest-visible pause", ms(m.stats.guest_pause_ms)),
        (
            "escalations",
            if m.stats.escalations.is_empty() {
                "none".into()
            } else {
                m.stats.escalations.join("; ")
            },
        ),
    ]);
}
