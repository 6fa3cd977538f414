//! The overlay written here against `qemu-img` and `qemu-io` (real tools, from qemu-utils):
//! QEMU must read it as the overlay `qemu-img create -u` makes, write into it, and find
//! nothing wrong with it.

use super::*;
use std::process::Command;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (qemu-utils is needed): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn info(path: &Path) -> serde_json::Value {
    let out = run(
        "qemu-img",
        &["info", "-U", "--output=json", &path.display().to_string()],
    );
    serde_json::from_str(&out).expect("qemu-img info prints JSON")
}

#[test]
fn an_empty_overlay_is_what_qemu_img_would_make() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.qcow2");
    let base_s = base.display().to_string();
    // Sizes not a multiple of a cluster (nor of 512: rounded up, as qemu-img does), and one
    // whose L1 table needs several entries.
    for size in [(1u64 << 30) + 4096, (64 << 20) + 1000, 20 << 30, 512 << 20] {
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", &base_s, &size.to_string()],
        );
        let ours = dir.path().join(format!("ours-{size}.qcow2"));
        let theirs = dir.path().join(format!("theirs-{size}.qcow2"));
        write_empty_overlay(&ours, &base, "qcow2", size).expect("write");
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-u",
                "-f",
                "qcow2",
                "-b",
                &base_s,
                "-F",
                "qcow2",
                &theirs.display().to_string(),
                &size.to_string(),
            ],
        );
        let (a, b) = (info(&ours), info(&theirs));
        for key in [
            "virtual-size",
            "cluster-size",
            "backing-filename",
            "backing-filename-format",
        ] {
            assert_eq!(a[key], b[key], "{key} for size {size}");
        }
        assert_eq!(a["format-specific"]["data"]["compat"], "1.1");
        assert_eq!(a["format-specific"]["data"]["refcount-bits"], 16);
        run("qemu-img", &["check", "-q", &ours.display().to_string()]);
        assert_eq!(
            std::fs::metadata(&ours).expect("stat").len(),
            std::fs::metadata(&theirs).expect("stat").len()
        );
        assert_eq!(virtual_size(&ours), Some(size.next_multiple_of(512)));
        assert_eq!(
            backing(&ours),
            Some(Some((base.clone(), "qcow2".to_string())))
        );
        assert_eq!(backing(&theirs), backing(&ours));
    }
}

#[test]
fn qemu_writes_into_the_overlay_and_reads_through_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    let (base_s, top_s) = (base.display().to_string(), top.display().to_string());
    run("qemu-img", &["create", "-q", "-f", "qcow2", &base_s, "64M"]);
    run("qemu-io", &["-c", "write -P 0xab 0 1M", &base_s]);
    write_empty_overlay(&top, &base, "qcow2", 64 << 20).expect("write");
    // What the backing holds shows through; writes land in the overlay only.
    run("qemu-io", &["-c", "read -P 0xab 0 1M", &top_s]);
    run("qemu-io", &["-c", "write -P 0xcd 512K 2M", &top_s]);
    run(
        "qemu-io",
        &[
            "-c",
            "read -P 0xab 0 512K",
            "-c",
            "read -P 0xcd 512K 2M",
            &top_s,
        ],
    );
    run("qemu-io", &["-c", "read -P 0xab 512K 512K", &base_s]);
    run("qemu-img", &["check", "-q", &top_s]);
}

#[test]
fn what_qemu_would_not_open_is_refused_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("o.qcow2");
    let long = PathBuf::from(format!("/{}", "x".repeat(MAX_BACKING_NAME)));
    let err = write_empty_overlay(&out, &long, "qcow2", 1 << 30).expect_err("too long");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("1 to 1023 bytes"), "{err}");
    let base = dir.path().join("base.qcow2");
    for size in [0, 4 << 50] {
        let err = write_empty_overlay(&out, &base, "qcow2", size).expect_err("size");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{size}");
    }
    assert!(!out.exists());
    std::fs::write(&out, b"held by someone").expect("write");
    let err = write_empty_overlay(&out, &base, "qcow2", 1 << 30).expect_err("exists");
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&out).expect("read"), b"held by someone");
}
