//! `nimbus flavor ...`

use crate::args::{Connection, FlavorCmd, Output};
use crate::{context, output};
use nimbus_api::{CreateFlavor, FlavorView};

fn row(f: &FlavorView) -> Vec<String> {
    vec![
        f.name.clone(),
        f.vcpus.to_string(),
        f.memory_mib.to_string(),
        f.disk_gib.to_string(),
    ]
}

const HEADERS: &[&str] = &["name", "vcpus", "memory_mib", "disk_gib"];

pub async fn run(conn: &Connection, out: Output, cmd: FlavorCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        FlavorCmd::List => output::list(out, &client.list_flavors().await?, HEADERS, row),
        FlavorCmd::Create {
            name,
            vcpus,
            memory_mib,
            disk_gib,
        } => {
            let f = client
                .create_flavor(&CreateFlavor {
                    name,
                    vcpus,
                    memory_mib,
                    disk_gib,
                })
                .await?;
            output::list(out, &[f], HEADERS, row)
        }
        FlavorCmd::Delete { name } => {
            client.delete_flavor(&name).await?;
            println!("flavor {name} deleted");
            Ok(())
        }
    }
}
