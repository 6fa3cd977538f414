//! `nimbus placement-group ...`

use crate::args::{Connection, Output, PlacementGroupCmd};
use crate::{context, output};
use anyhow::Context;
use nimbus_api::{CreatePlacementGroup, PlacementGroupView, PlacementPolicy};

fn row(g: &PlacementGroupView) -> Vec<String> {
    vec![
        g.name.clone(),
        g.policy.to_string(),
        g.members.len().to_string(),
        g.members.join(" "),
    ]
}

const HEADERS: &[&str] = &["name", "policy", "size", "members"];

pub async fn run(conn: &Connection, out: Output, cmd: PlacementGroupCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        PlacementGroupCmd::Create { name, policy } => {
            let policy = PlacementPolicy::parse(&policy)
                .with_context(|| format!("unknown policy {policy:?}: use spread or pack"))?;
            let g = client
                .create_placement_group(&CreatePlacementGroup { name, policy })
                .await?;
            output::list(out, &[g], HEADERS, row)
        }
        PlacementGroupCmd::List => {
            output::list(out, &client.list_placement_groups().await?, HEADERS, row)
        }
        PlacementGroupCmd::Delete { name } => {
            client.delete_placement_group(&name).await?;
            println!("placement group {name} deleted");
            Ok(())
        }
    }
}
