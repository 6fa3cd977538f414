//! Real qcow2 files made by `qemu-img` (installed by scripts/install-deps.sh), plus headers
//! patched by hand for what qemu-img will not write.

use crate::format::{inspect_file, DiskFormat, FormatError, Inspection};
use std::path::{Path, PathBuf};
use std::process::Command;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs (scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

fn create(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let p = dir.join(name);
    let path = p.to_str().expect("utf-8 path");
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[path, "64M"]);
    qemu_img(&args);
    p
}

fn patch(p: &Path, off: usize, bytes: &[u8]) {
    let mut d = std::fs::read(p).expect("read");
    d[off..off + bytes.len()].copy_from_slice(bytes);
    std::fs::write(p, d).expect("write");
}

#[test]
fn a_plain_qcow2_passes_with_its_virtual_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    for compat in ["0.10", "1.1"] {
        let opt = format!("compat={compat}");
        let p = create(dir.path(), &format!("plain-{compat}"), &["-o", &opt]);
        assert_eq!(
            inspect_file(&p),
            Ok(Inspection {
                format: DiskFormat::Qcow2,
                virtual_size: 64 << 20
            }),
            "compat {compat}"
        );
    }
}

#[test]
fn a_backing_file_pointing_at_a_host_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = create(dir.path(), "b", &["-b", "/etc/passwd", "-F", "raw", "-u"]);
    let err = inspect_file(&p).expect_err("backing file");
    assert!(
        matches!(err, FormatError::UnsafeQcow2(ref m) if m.contains("backing file")),
        "{err}"
    );
    // Clearing the offset but leaving the backing-format extension is still refused.
    patch(&p, 8, &[0; 12]);
    let err = inspect_file(&p).expect_err("backing format extension");
    assert!(err.to_string().contains("backing file format"), "{err}");
}

#[test]
fn an_external_data_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.raw");
    let opt = format!("data_file={}", data.display());
    let p = create(dir.path(), "d", &["-o", &opt]);
    let err = inspect_file(&p).expect_err("data file");
    assert!(err.to_string().contains("external data file"), "{err}");
    // Without the feature bit, the extension naming the file is still found.
    patch(&p, 72, &[0; 8]);
    let err = inspect_file(&p).expect_err("data file extension");
    assert!(err.to_string().contains("data file"), "{err}");
}

#[test]
fn encryption_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = create(
        dir.path(),
        "e",
        &[
            "--object",
            "secret,id=s0,data=hunter2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0",
        ],
    );
    let err = inspect_file(&p).expect_err("encrypted");
    assert!(err.to_string().contains("encrypted"), "{err}");
}

#[test]
fn corrupt_unknown_features_and_bad_fields_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(usize, &[u8], &str); 5] = [
        (79, &[0x02], "corrupt"),
        (79, &[0x80], "unknown incompatible"),
        (4, &[0, 0, 0, 9], "version"),
        (20, &[0, 0, 0, 40], "cluster_bits"),
        (24, &[0xff; 8], "virtual size"),
    ];
    for (i, (off, bytes, want)) in cases.into_iter().enumerate() {
        let p = create(dir.path(), &format!("c{i}"), &[]);
        patch(&p, off, bytes);
        let err = inspect_file(&p).expect_err(want);
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
    let p = create(dir.path(), "short", &[]);
    let head = std::fs::read(&p).expect("read")[..40].to_vec();
    std::fs::write(&p, head).expect("truncate");
    assert!(matches!(
        inspect_file(&p),
        Err(FormatError::MalformedQcow2(_))
    ));
}
