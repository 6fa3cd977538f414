//! `nimbus network ...`

use crate::args::{Connection, NetworkCmd, Output};
use crate::{context, output};
use nimbus_api::{CreateNetwork, NetworkView};

fn row(n: &NetworkView) -> Vec<String> {
    vec![
        n.name.clone(),
        n.cidr.clone(),
        n.gateway.clone(),
        n.vni.to_string(),
        n.ports.to_string(),
    ]
}

const HEADERS: &[&str] = &["name", "cidr", "gateway", "vni", "ports"];

fn show(out: Output, n: &NetworkView) -> anyhow::Result<()> {
    match out {
        Output::Json => output::json(n),
        Output::Table => {
            output::fields(&[
                ("name", n.name.clone()),
                ("project", n.project.clone()),
                ("cidr", n.cidr.clone()),
                ("gateway", n.gateway.clone()),
                ("vni", n.vni.to_string()),
                ("ports", n.ports.to_string()),
                ("created", n.created_at.to_rfc3339()),
            ]);
            Ok(())
        }
    }
}

pub async fn run(conn: &Connection, out: Output, cmd: NetworkCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        NetworkCmd::List => output::list(out, &client.list_networks().await?, HEADERS, row),
        NetworkCmd::Create { name, cidr } => {
            let n = client.create_network(&CreateNetwork { name, cidr }).await?;
            output::list(out, &[n], HEADERS, row)
        }
        NetworkCmd::Show { name } => show(out, &client.network(&name).await?),
        NetworkCmd::Delete { name } => {
            client.delete_network(&name).await?;
            println!("network {name} deleted");
            Ok(())
        }
    }
}
