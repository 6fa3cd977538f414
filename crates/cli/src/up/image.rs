//! The default image: built once from Debian packages by `guest/build.sh` into the image
//! cache, then registered as image `default`.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use nimbus_agent::ImageManifest;
use nimbus_api::ImportImage;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `guest/build.sh` is: `$NIMBUS_GUEST_DIR`, next to the source tree the binary was
/// built in, or `./guest`.
fn guest_dir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("NIMBUS_GUEST_DIR") {
        candidates.push(PathBuf::from(d));
    }
    candidates.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../guest"
    )));
    if let Ok(exe) = std::env::current_exe() {
        if let Some(root) = exe.ancestors().nth(3) {
            candidates.push(root.join("guest"));
        }
    }
    candidates.push(PathBuf::from("guest"));
    candidates
        .into_iter()
        .find(|d| d.join("build.sh").is_file())
}

/// Builds the default image if the cache lacks it, and returns its registration.
pub async fn ensure_default_image(data_dir: &Path) -> anyhow::Result<ImportImage> {
    let dir = ImageManifest::default_dir();
    if ImageManifest::load(&dir).is_err() {
        build(&dir, data_dir).await?;
    }
    let m = ImageManifest::load(&dir)?;
    Ok(ImportImage {
        name: "default".into(),
        kernel: Some(m.kernel.display().to_string()),
        initrd: Some(m.initrd.display().to_string()),
        cmdline: Some(m.cmdline),
        disk: Some(m.disk.display().to_string()),
        ready_marker: Some(m.ready_marker),
    })
}

async fn build(dir: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let Some(guest) = guest_dir() else {
        bail!(
            "the default image is not built and guest/build.sh was not found; run guest/build.sh \
             from the nimbus source tree or set NIMBUS_GUEST_DIR"
        );
    };
    let log_path = data_dir.join("image-build.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message(format!(
        "building the default guest image into {} (first run only)",
        dir.display()
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let status = tokio::process::Command::new("bash")
        .arg(guest.join("build.sh"))
        .arg(dir)
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .await
        .context("cannot run bash")?;
    spinner.finish_and_clear();
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        bail!(
            "building the default image failed ({status}); last lines of {}:\n{}",
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}
