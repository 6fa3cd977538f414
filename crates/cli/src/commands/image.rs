//! `nimbus image ...`

use crate::args::{Connection, ImageCmd, Output};
use crate::{context, output};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use nimbus_api::{ImageView, ImportImage, UploadCheck, UploadImage};
use nimbus_client::Client;
use nimbus_image::Digest;
use std::path::Path;

fn row(i: &ImageView) -> Vec<String> {
    let boot = if i.kernel.is_some() { "kernel" } else { "disk" };
    vec![
        i.name.clone(),
        boot.into(),
        output::opt(&i.format),
        format!("{:.1}", i.size_bytes as f64 / 1048576.0),
        if i.public { "public" } else { "private" }.into(),
        i.project.clone(),
    ]
}

const HEADERS: &[&str] = &[
    "name",
    "boot",
    "format",
    "size_mib",
    "visibility",
    "project",
];

fn show(i: &ImageView) {
    output::fields(&[
        ("name", i.name.clone()),
        ("project", i.project.clone()),
        (
            "visibility",
            if i.public { "public" } else { "private" }.into(),
        ),
        ("format", output::opt(&i.format)),
        ("firmware", i.firmware.as_str().into()),
        ("size", output::bytes(i.size_bytes)),
        (
            "virtual_size",
            output::opt(&i.virtual_size_bytes.map(output::bytes)),
        ),
        ("digest", output::opt(&i.digest)),
        ("copies", output::opt(&i.copies.as_ref().map(copies))),
        ("kernel", output::opt(&i.kernel)),
        ("disk", output::opt(&i.disk)),
        ("ready_marker", output::opt(&i.ready_marker)),
        ("created_at", i.created_at.to_rfc3339()),
    ]);
}

/// `2 of 3 live controllers (https://..., https://...)`: where agents can fetch the bytes.
fn copies(c: &nimbus_api::ImageCopies) -> String {
    let mut s = format!("{} of {} live controllers", c.held, c.controllers);
    if !c.held_by.is_empty() {
        s.push_str(&format!(" ({})", c.held_by.join(", ")));
    }
    if c.held == 0 {
        s.push_str(": no agent can fetch it; upload it again");
    }
    s
}

pub async fn run(conn: &Connection, out: Output, cmd: ImageCmd) -> anyhow::Result<()> {
    let client = context::client(conn)?;
    match cmd {
        ImageCmd::List => output::list(out, &client.list_images().await?, HEADERS, row),
        ImageCmd::Show { name } => print(out, &client.image(&name).await?),
        ImageCmd::Upload {
            name,
            file,
            public,
            firmware,
            ready_marker,
            no_ready_marker,
            wait: _,
        } => {
            let q = UploadImage {
                sha256: None,
                public,
                firmware: Some(firmware),
                ready_marker: if no_ready_marker {
                    Some(String::new())
                } else {
                    ready_marker
                },
            };
            let img = upload(&client, &name, &file, q).await?;
            print(out, &img)
        }
        ImageCmd::Create {
            name,
            from_instance,
            public,
            wait: _,
        } => {
            let req = nimbus_api::CreateImageFromInstance {
                instance: from_instance,
                public,
            };
            print(out, &client.create_image_from_instance(&name, &req).await?)
        }
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

fn print(out: Output, img: &ImageView) -> anyhow::Result<()> {
    match out {
        Output::Json => output::json(img),
        Output::Table => {
            show(img);
            Ok(())
        }
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Asks the controller whether it would take the upload (its reason if not, before any
/// hashing or sending), hashes the file (shown), streams it, and checks the controller
/// stored those bytes.
async fn upload(
    client: &Client,
    name: &str,
    file: &Path,
    mut q: UploadImage,
) -> anyhow::Result<ImageView> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let check = UploadCheck {
        size_bytes: len,
        public: q.public,
    };
    client.check_image_upload(name, &check).await?;
    let path = file.to_path_buf();
    let hashing = bar(len, "sha256");
    let digest = {
        let hashing = hashing.clone();
        tokio::task::spawn_blocking(move || {
            Digest::of_file_with_progress(&path, |n| hashing.set_position(n))
        })
        .await?
        .with_context(|| format!("cannot read {}", file.display()))?
        .to_string()
    };
    hashing.finish_and_clear();
    eprintln!("{}: {}", file.display(), digest);
    q.sha256 = Some(digest.clone());
    let sending = bar(len, "upload");
    let progress = sending.clone();
    let img = client
        .upload_image(name, file, &q, move |sent| progress.set_position(sent))
        .await;
    sending.finish_and_clear();
    let img = img?;
    if img.digest.as_deref() != Some(digest.as_str()) {
        bail!(
            "the controller stored {} but the file is {digest}; delete the image and upload again",
            output::opt(&img.digest)
        );
    }
    eprintln!("image {name} ready: {} verified", digest);
    Ok(img)
}
