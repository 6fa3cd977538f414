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

pub async fn run(conn: &Connection, out: Output, cmd: NetworkCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        NetworkCmd::List => output::list(out, &client.list_networks().await?, HEADERS, row),
        NetworkCmd::Create { name, cidr } => {
            let n = client.create_network(&CreateNetwork { name, cidr }).await?;
            output::list(out, &[n], HEADERS, row)
        }
        NetworkCmd::Show { name } => {
            output::list(out, &[client.network(&name).await?], HEADERS, row)
        }
        NetworkCmd::Delete { name } => {
            client.delete_network(&name).await?;
            println!("network {name} deleted");
            Ok(())
        }
    }
}
