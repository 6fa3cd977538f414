//! `qemu-img` wrapper: copy-on-write overlays, resize, info.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one `qemu-img` run may take.
const IMG_TIMEOUT: Duration = Duration::from_secs(60);

/// What a `qemu-img` run can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ImgError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-img {action} of {path} timed out after {after:?}")]
    Timeout {
        action: &'static str,
        path: PathBuf,
        after: Duration,
    },
    #[error("qemu-img {action} of {path} failed: {stderr}")]
    Failed {
        action: &'static str,
        path: PathBuf,
        stderr: String,
    },
    #[error("qemu-img info of {path} printed unreadable JSON: {detail}")]
    Decode { path: PathBuf, detail: String },
}

/// One image of a backing chain, as `qemu-img info --output=json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub filename: String,
    pub format: String,
    /// Size the guest sees, in bytes.
    pub virtual_size: u64,
    /// Bytes the file occupies on the host.
    #[serde(default)]
    pub actual_size: u64,
    pub backing_filename: Option<String>,
    pub backing_filename_format: Option<String>,
}

/// An image and the images under it (`chain[0]` is the image itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChain {
    pub chain: Vec<ImageInfo>,
}

impl ImageChain {
    /// The image itself.
    pub fn top(&self) -> Option<&ImageInfo> {
        self.chain.first()
    }
}

async fn run(
    action: &'static str,
    path: &Path,
    args: &[&std::ffi::OsStr],
) -> Result<Vec<u8>, ImgError> {
    let program = crate::qemu_img_binary();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(args).kill_on_drop(true);
    let out = tokio::time::timeout(IMG_TIMEOUT, cmd.output())
        .await
        .map_err(|_| ImgError::Timeout {
            action,
            path: path.to_path_buf(),
            after: IMG_TIMEOUT,
        })?
        .map_err(|source| ImgError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(ImgError::Failed {
            action,
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Creates a qcow2 overlay at `path` whose backing file is `backing` (of `backing_format`).
/// `backing` should be absolute: qemu-img stores it verbatim. Without `size` the overlay has
/// the backing image's virtual size.
pub async fn create_overlay(
    path: &Path,
    backing: &Path,
    backing_format: &str,
    size: Option<u64>,
) -> Result<(), ImgError> {
    let size = size.map(|s| s.to_string());
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-b".as_ref(),
        backing.as_os_str(),
        "-F".as_ref(),
        backing_format.as_ref(),
        path.as_os_str(),
    ];
    if let Some(s) = &size {
        args.push(s.as_ref());
    }
    run("create", path, &args).await.map(|_| ())
}

/// Creates an empty qcow2 image of `size` bytes.
pub async fn create_blank(path: &Path, size: u64) -> Result<(), ImgError> {
    let size = size.to_string();
    let args: [&std::ffi::OsStr; 6] = [
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        path.as_os_str(),
        size.as_ref(),
    ];
    run("create", path, &args).await.map(|_| ())
}

/// Creates an empty qcow2 overlay of `size` bytes at `path` on `backing` without opening
/// the backing file (as `qemu-img create -u`): for a backing image that a running QEMU
/// holds locked, or that does not exist yet. Written directly ([`crate::qcow2`]): a
/// snapshot does this just before the VM's pause, where a `qemu-img` process costs
/// 6-12 ms.
pub async fn create_overlay_unchecked(
    path: &Path,
    backing: &Path,
    backing_format: &str,
    size: u64,
) -> Result<(), ImgError> {
    let (out, backing, format) = (
        path.to_path_buf(),
        backing.to_path_buf(),
        backing_format.to_string(),
    );
    let written = tokio::task::spawn_blocking(move || {
        crate::qcow2::write_empty_overlay(&out, &backing, &format, size)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    written.map_err(|e| ImgError::Failed {
        action: "create",
        path: path.to_path_buf(),
        stderr: e.to_string(),
    })
}

/// Makes `new_backing` (with its format) the backing of the qcow2 `image`, or none, keeping
/// what the guest sees: every cluster where the old and the new chain differ is copied into
/// `image` first (a safe rebase). Neither chain may be in use by a running QEMU.
pub async fn rebase(image: &Path, new_backing: Option<(&Path, &str)>) -> Result<(), ImgError> {
    rebase_with(image, new_backing, false).await
}

/// Renames the backing file of the qcow2 `image` (or removes it) without touching its data
/// (`rebase -u`): for a chain moved to other paths, where the backing content is the same.
pub async fn rebase_unchecked(
    image: &Path,
    new_backing: Option<(&Path, &str)>,
) -> Result<(), ImgError> {
    rebase_with(image, new_backing, true).await
}

async fn rebase_with(
    image: &Path,
    new_backing: Option<(&Path, &str)>,
    unchecked: bool,
) -> Result<(), ImgError> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["rebase".as_ref(), "-q".as_ref()];
    if unchecked {
        args.push("-u".as_ref());
    }
    for a in ["-f", "qcow2", "-b"] {
        args.push(a.as_ref());
    }
    match new_backing {
        Some((file, format)) => {
            args.push(file.as_os_str());
            args.push("-F".as_ref());
            args.push(format.as_ref());
        }
        None => args.push("".as_ref()),
    }
    args.push(image.as_os_str());
    run("rebase", image, &args).await.map(|_| ())
}

/// Copies what the guest sees through the chain of `source` into a new qcow2 `target`. With
/// `base` the target gets that backing file and only what differs from it is written.
pub async fn convert_onto(
    source: &Path,
    target: &Path,
    base: Option<(&Path, &str)>,
) -> Result<(), ImgError> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "convert".as_ref(),
        "-q".as_ref(),
        "-U".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
    ];
    if let Some((file, format)) = base {
        args.push("-B".as_ref());
        args.push(file.as_os_str());
        args.push("-F".as_ref());
        args.push(format.as_ref());
    }
    args.push(source.as_os_str());
    args.push(target.as_os_str());
    run("convert", target, &args).await.map(|_| ())
}

/// Grows (or shrinks) the virtual size of a qcow2 image to `size` bytes.
pub async fn resize(path: &Path, size: u64) -> Result<(), ImgError> {
    let size = size.to_string();
    let args: [&std::ffi::OsStr; 5] = [
        "resize".as_ref(),
        "-q".as_ref(),
        "--shrink".as_ref(),
        path.as_os_str(),
        size.as_ref(),
    ];
    run("resize", path, &args).await.map(|_| ())
}

/// Reads an image and its backing chain. Works on images in use by a running QEMU (`-U`).
pub async fn info(path: &Path) -> Result<ImageChain, ImgError> {
    let args: [&std::ffi::OsStr; 5] = [
        "info".as_ref(),
        "-U".as_ref(),
        "--output=json".as_ref(),
        "--backing-chain".as_ref(),
        path.as_os_str(),
    ];
    let out = run("info", path, &args).await?;
    parse_info(path, &out)
}

/// Parses `qemu-img info --output=json --backing-chain` output (an array of images).
pub fn parse_info(path: &Path, json: &[u8]) -> Result<ImageChain, ImgError> {
    serde_json::from_slice(json)
        .map(|chain| ImageChain { chain })
        .map_err(|e| ImgError::Decode {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_backing_chain() {
        let json = br#"[
          {"virtual-size": 2147483648, "filename": "/v/disk.qcow2", "format": "qcow2",
           "actual-size": 200704, "backing-filename": "/img/base.qcow2",
           "backing-filename-format": "qcow2", "dirty-flag": false},
          {"virtual-size": 1073741824, "filename": "/img/base.qcow2", "format": "qcow2",
           "actual-size": 52953088}
        ]"#;
        let chain = parse_info(Path::new("/v/disk.qcow2"), json).expect("parse");
        assert_eq!(chain.chain.len(), 2);
        let top = chain.top().expect("top");
        assert_eq!(top.virtual_size, 2 << 30);
        assert_eq!(top.backing_filename.as_deref(), Some("/img/base.qcow2"));
        assert_eq!(chain.chain[1].backing_filename, None);
    }

    #[tokio::test]
    async fn overlay_resize_and_info_with_real_qemu_img() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base.qcow2");
        let top = dir.path().join("top.qcow2");
        create_blank(&base, 64 << 20).await.expect("create base");
        create_overlay(&top, &base, "qcow2", None)
            .await
            .expect("overlay");
        let chain = info(&top).await.expect("info");
        assert_eq!(chain.chain.len(), 2);
        assert_eq!(chain.top().map(|t| t.virtual_size), Some(64 << 20));
        assert_eq!(
            chain.top().and_then(|t| t.backing_filename.clone()),
            Some(base.display().to_string())
        );
        resize(&top, 128 << 20).await.expect("resize");
        let chain = info(&top).await.expect("info");
        assert_eq!(chain.top().map(|t| t.virtual_size), Some(128 << 20));
        // A layer on top, then rebased away from its backing: the chain shrinks.
        let layer = dir.path().join("layer.qcow2");
        create_overlay_unchecked(&layer, &top, "qcow2", 128 << 20)
            .await
            .expect("unchecked overlay");
        assert_eq!(info(&layer).await.expect("info").chain.len(), 3);
        rebase(&layer, Some((&base, "qcow2")))
            .await
            .expect("rebase");
        assert_eq!(info(&layer).await.expect("info").chain.len(), 2);
        let copy = dir.path().join("copy.qcow2");
        convert_onto(&layer, &copy, Some((&base, "qcow2")))
            .await
            .expect("convert");
        assert_eq!(info(&copy).await.expect("info").chain.len(), 2);
        let err = info(&dir.path().join("missing.qcow2"))
            .await
            .expect_err("must fail");
        assert!(matches!(err, ImgError::Failed { .. }), "{err:?}");
    }
}
