//! `nimbus image ...`

use crate::args::{Connection, ImageCmd, Output};
use crate::{context, output};
use nimbus_api::{ImageView, ImportImage};

fn row(i: &ImageView) -> Vec<String> {
    let boot = if i.kernel.is_some() { "kernel" } else { "disk" };
    vec![
        i.name.clone(),
        boot.into(),
        format!("{:.1}", i.size_bytes as f64 / 1048576.0),
        output::opt(&i.ready_marker),
    ]
}

const HEADERS: &[&str] = &["name", "boot", "size_mib", "ready_marker"];

pub async fn run(conn: &Connection, out: Output, cmd: ImageCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        ImageCmd::List => output::list(out, &client.list_images().await?, HEADERS, row),
        ImageCmd::Import {
            name,
            kernel,
            initrd,
            cmdline,
            disk,
            ready_marker,
        } => {
            let abs = |p: Option<String>| -> anyhow::Result<Option<String>> {
                p.map(|p| Ok(std::path::absolute(&p)?.display().to_string()))
                    .transpose()
            };
            let req = ImportImage {
                name,
                kernel: abs(kernel)?,
                initrd: abs(initrd)?,
                cmdline,
                disk: abs(disk)?,
                ready_marker,
            };
            let img = client.import_image(&req).await?;
            output::list(out, &[img], HEADERS, row)
        }
        ImageCmd::Delete { name } => {
            client.delete_image(&name).await?;
            println!("image {name} deleted");
            Ok(())
        }
    }
}
