//! `nimbus keypair ...`

use crate::args::{Connection, KeypairCmd, Output};
use crate::{context, output};
use anyhow::Context;
use nimbus_api::{CreateKeypair, KeypairView};

fn row(k: &KeypairView) -> Vec<String> {
    vec![
        k.name.clone(),
        k.fingerprint.clone(),
        k.created_at.to_rfc3339(),
    ]
}

const HEADERS: &[&str] = &["name", "fingerprint", "created_at"];

pub async fn run(conn: &Connection, out: Output, cmd: KeypairCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        KeypairCmd::Import {
            name,
            public_key_file,
        } => {
            let text = std::fs::read_to_string(&public_key_file)
                .with_context(|| format!("cannot read {}", public_key_file.display()))?;
            let req = CreateKeypair {
                name,
                public_key: Some(text),
            };
            let created = client.create_keypair(&req).await?;
            output::list(out, &[created.keypair], HEADERS, row)
        }
        KeypairCmd::Create { name } => {
            let req = CreateKeypair {
                name,
                public_key: None,
            };
            let created = client.create_keypair(&req).await?;
            match out {
                Output::Json => output::json(&created),
                Output::Table => {
                    // The private key alone on stdout, so `> key.pem` saves a usable file.
                    print!("{}", created.private_key.unwrap_or_default());
                    eprintln!(
                        "keypair {} created ({}); its private key was printed once and is not kept",
                        created.keypair.name, created.keypair.fingerprint
                    );
                    Ok(())
                }
            }
        }
        KeypairCmd::List => output::list(out, &client.list_keypairs().await?, HEADERS, row),
        KeypairCmd::Delete { name } => {
            client.delete_keypair(&name).await?;
            println!("keypair {name} deleted");
            Ok(())
        }
    }
}
