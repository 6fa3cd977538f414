//! `nimbus quota ...`

use crate::args::{Connection, Limit, Output, QuotaCmd};
use crate::{context, output};
use nimbus_api::QuotaView;

fn show(out: Output, q: &QuotaView) -> anyhow::Result<()> {
    if out == Output::Json {
        return output::json(q);
    }
    let limit = |l: Option<u64>| {
        l.map(|n| n.to_string())
            .unwrap_or_else(|| "unlimited".into())
    };
    let rows = [
        ("instances", q.usage.instances, q.limits.instances),
        ("vcpus", q.usage.vcpus, q.limits.vcpus),
        ("memory_mib", q.usage.memory_mib, q.limits.memory_mib),
        ("disk_gib", q.usage.disk_gib, q.limits.disk_gib),
        ("snapshots", q.usage.snapshots, q.limits.snapshots),
        ("image_mib", q.usage.image_mib, q.limits.image_mib),
        ("floating_ips", q.usage.floating_ips, q.limits.floating_ips),
    ]
    .iter()
    .map(|(name, used, lim)| vec![name.to_string(), used.to_string(), limit(*lim)])
    .collect::<Vec<_>>();
    println!("project {}", q.project);
    output::table(&["resource", "in use", "limit"], &rows);
    Ok(())
}

pub async fn run(conn: &Connection, out: Output, cmd: QuotaCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        QuotaCmd::Show { project } => show(out, &client.quota(&project).await?),
        QuotaCmd::Set {
            project,
            instances,
            vcpus,
            memory_mib,
            disk_gib,
            snapshots,
            image_mib,
            floating_ips,
        } => {
            let mut limits = client.quota(&project).await?.limits;
            let apply = |cur: &mut Option<u64>, new: Option<Limit>| {
                if let Some(Limit(v)) = new {
                    *cur = v;
                }
            };
            apply(&mut limits.instances, instances);
            apply(&mut limits.vcpus, vcpus);
            apply(&mut limits.memory_mib, memory_mib);
            apply(&mut limits.disk_gib, disk_gib);
            apply(&mut limits.snapshots, snapshots);
            apply(&mut limits.image_mib, image_mib);
            apply(&mut limits.floating_ips, floating_ips);
            show(out, &client.set_quota(&project, &limits).await?)
        }
    }
}
