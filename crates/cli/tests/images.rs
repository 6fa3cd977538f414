//! End to end: uploaded images through the real binary, on two hosts that share no path.
//! The image is a tiny raw disk whose boot sector halts the CPU (`cli; hlt`): SeaBIOS boots
//! it from the virtio disk and QEMU runs, which is all distribution needs; booting a real
//! distribution with cloud-init is `real_guest.rs`'s business.
//!
//! What a user checks: the upload shows and verifies the sha256; a host downloads the image
//! once, on first use, and `host show` lists it; the next create prefers that host and
//! downloads nothing; a cached copy with one byte changed is detected and fetched again; the
//! other host downloads once for two concurrent creates; a qcow2 whose backing file is a
//! host file is refused at upload; an upload over 64 MiB of a name taken or over the quota
//! is refused with the reason before a byte is sent; a stopped instance's disk is baked into a new image that
//! boots; an image in use cannot be deleted.
//!
//! UEFI: an image uploaded with `--firmware uefi` boots a real EFI loader through OVMF: the
//! disk `guest/build-efi.sh` builds (GPT, an EFI system partition holding systemd-boot and a
//! loader entry for the default guest's kernel and initramfs) reaches the guest's userspace,
//! which prints its ready line; the kernel sees EFI (`/sys/firmware/efi`). The instance has
//! its own EFI variables file in its VM directory; migrating or snapshotting it is refused,
//! with why.

use nimbus_api::{HostView, ImageView, InstanceState, InstanceView, OperationView};
use nimbus_test_utils::disks::halting_disk;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

fn json<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not the JSON expected ({e}): {text}"))
}

fn host(cloud: &Cloud, name: &str) -> HostView {
    json(&cli_ok(cloud, &["host", "show", name, "-o", "json"]))
}

/// Downloads and repairs a host reported, once its report shows `digest` cached.
async fn cache_of(cloud: &Cloud, name: &str, digest: &str, downloads: u64) -> (u64, u64) {
    wait_until(
        &format!("{name} to report {downloads} download(s) of {digest}"),
        Duration::from_secs(20),
        Duration::from_millis(500),
        || async {
            let c = host(cloud, name).image_cache?;
            let held = c.images.iter().any(|i| i.digest == digest);
            (held && c.downloads >= downloads).then_some((c.downloads, c.repairs))
        },
    )
    .await
    .expect("host report")
}

fn create(cloud: &Cloud, name: &str, wait: bool) -> OperationView {
    let mut args = vec![
        "instance", "create", name, "--flavor", "tiny", "--image", "halt", "-o", "json",
    ];
    if wait {
        args.push("--wait");
    }
    json(&cli_ok(cloud, &args))
}

async fn running_on(cloud: &Cloud, name: &str) -> String {
    let client = cloud.client().expect("client");
    let inst: InstanceView = wait_until(
        &format!("{name} running"),
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let i = client.instance(name).await.ok()?;
            assert_ne!(i.state, InstanceState::Error, "{name}: {:?}", i.reason);
            (i.state == InstanceState::Running).then_some(i)
        },
    )
    .await
    .expect("running");
    inst.host.expect("placed")
}

/// An image uploaded with `--firmware uefi` boots a real EFI loader through OVMF, with the
/// instance's own EFI variables; moves that would lose them are refused.
async fn uefi_images_boot_through_ovmf(cloud: &Cloud) {
    let disk = cached_image_disk("efi", "guest/build-efi.sh");
    let upload = [
        "image",
        "upload",
        "efi",
        "--file",
        disk.to_str().expect("utf-8"),
        "--firmware",
        "uefi",
        "-o",
        "json",
    ];
    let img: ImageView = json(&cli_ok(cloud, &upload));
    assert_eq!(img.firmware, nimbus_api::Firmware::Uefi);
    assert_eq!(img.ready_marker.as_deref(), Some("nimbus-guest ready"));
    let err = cli_err(
        cloud,
        &[
            "image",
            "upload",
            "x",
            "--file",
            "/dev/null",
            "--firmware",
            "efi",
        ],
    );
    assert!(err.contains("bios or uefi"), "{err}");
    // `--wait` returns once the guest's userspace printed its ready line: OVMF started the
    // disk's loader (systemd-boot), which started the kernel, which started userspace.
    let t0 = std::time::Instant::now();
    cli_ok(
        cloud,
        &[
            "instance", "create", "u1", "--flavor", "tiny", "--image", "efi", "--wait",
        ],
    );
    eprintln!("u1: UEFI create to ready {:?}", t0.elapsed());
    let client = cloud.client().expect("client");
    let u1 = client.instance("u1").await.expect("u1");
    assert_eq!(u1.ready, Some(nimbus_api::ReadySource::Console));
    let log = client.console_log("u1", 0).await.expect("console").data;
    let boot = log
        .find("BdsDxe: starting Boot")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        log[boot..].contains("nimbus-guest ready"),
        "userspace after the firmware's boot: {log}"
    );
    let efi = client
        .exec("u1", "test -d /sys/firmware/efi && echo efi")
        .await
        .expect("exec");
    assert_eq!(
        efi.output.trim(),
        "efi",
        "the kernel was started by EFI: {efi:?}"
    );
    let vars_on = |host: &str| {
        cloud
            .host_dir(host)
            .join("vms")
            .join(u1.id.to_string())
            .join("efivars.fd")
    };
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let first = u1.host.clone().expect("placed");
    let template = read(PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd"));
    let booted = read(vars_on(&first));
    assert_eq!(booted.len(), template.len());
    assert_ne!(
        booted, template,
        "OVMF wrote its boot entries into the VM's own store"
    );

    // Live migration: the variables follow the VM (the flash is in the migration stream and
    // written into the target's file when the guest resumes there).
    cli_ok(cloud, &["instance", "migrate", "u1", "--wait"]);
    let second = client
        .instance("u1")
        .await
        .expect("u1")
        .host
        .expect("placed");
    assert_ne!(second, first);
    let vars = vars_on(&second);
    wait_until(
        "the target's variables file to hold the source's",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async { (std::fs::read(&vars).ok()? == booted).then_some(()) },
    )
    .await
    .expect("the EFI variables followed the VM");
    let alive = client.exec("u1", "echo alive").await.expect("exec");
    assert_eq!(alive.output.trim(), "alive");

    // Snapshot with memory, then the store changes (as a guest writing a variable after
    // it would): the restore brings the snapshot's variables back.
    cli_ok(
        cloud,
        &["snapshot", "create", "u1", "--name", "us1", "--wait"],
    );
    std::fs::write(&vars, &template).expect("change the store");
    cli_ok(cloud, &["snapshot", "restore", "us1", "--wait"]);
    wait_until(
        "the restored variables",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async { (std::fs::read(&vars).ok()? == booted).then_some(()) },
    )
    .await
    .expect("the restore brought the snapshot's EFI variables back");
    let alive = client.exec("u1", "echo alive").await.expect("exec");
    assert_eq!(alive.output.trim(), "alive");

    // No running VM, no stream to carry them: refused, with why.
    cli_ok(cloud, &["instance", "stop", "u1", "--wait"]);
    for refused in [
        vec!["instance", "migrate", "u1", "--wait"],
        vec!["snapshot", "create", "u1", "--disk-only", "--wait"],
    ] {
        let err = cli_err(cloud, &refused);
        assert!(err.contains("boots through UEFI"), "{refused:?}: {err}");
    }
    cli_ok(cloud, &["snapshot", "delete", "us1", "--wait"]);
    cli_ok(cloud, &["instance", "delete", "u1", "--wait"]);
    cli_ok(cloud, &["image", "delete", "efi"]);
}

/// Image names are per project: another project uploads its own `halt` and `baked` beside
/// the default project's (private, in use), sees and deletes only its own, and the shared
/// bytes stay for the default project's image. No guest is booted for this: the store and
/// controller tests cover how an instance pins the image row of its project.
fn images_are_named_per_project(cloud: &Cloud, file: &str, digest: &str) {
    let globex = project_member(cloud, "globex");
    for name in ["halt", "baked"] {
        let up = ["image", "upload", name, "--file", file, "--no-ready-marker"];
        cli_ok_as(cloud, &globex, &up);
    }
    let again = ["image", "upload", "halt", "--file", file];
    let err = cli_err_as(cloud, &globex, &again);
    assert!(err.contains("already exists in project globex"), "{err}");
    assert!(!err.contains("default"), "names no other project: {err}");
    refused_large_uploads_say_why(cloud, &globex, Path::new(file));
    let list = ["image", "list", "-o", "json"];
    let listed: Vec<ImageView> = json(&cli_ok_as(cloud, &globex, &list));
    let mut own: Vec<(&str, &str)> = listed
        .iter()
        .filter(|i| !i.public)
        .map(|i| (i.name.as_str(), i.project.as_str()))
        .collect();
    own.sort();
    assert_eq!(own, [("baked", "globex"), ("halt", "globex")]);
    let show = ["image", "show", "halt", "-o", "json"];
    let shown: ImageView = json(&cli_ok_as(cloud, &globex, &show));
    assert_eq!(
        (shown.project.as_str(), shown.digest.as_deref()),
        ("globex", Some(digest))
    );
    // The default project's `halt` is in use there; globex's is not, and goes alone.
    for name in ["halt", "baked"] {
        cli_ok_as(cloud, &globex, &["image", "delete", name]);
    }
    let kept: ImageView = json(&cli_ok(cloud, &show));
    assert_eq!(kept.project, "default");
    let blob = cloud
        .data_dir()
        .join("images/sha256")
        .join(digest.trim_start_matches("sha256:"));
    assert!(
        blob.exists(),
        "the default project's image still needs the bytes"
    );
}

/// A refused upload of more than the controller reads of a refused body (64 MiB) is
/// answered with the reason, not a broken pipe: the CLI asks before it hashes or sends a
/// byte. `globex` (a member's token) already has an image `halt`; `small` is a disk.
fn refused_large_uploads_say_why(cloud: &Cloud, globex: &str, small: &Path) {
    let big = small.with_file_name("big.raw");
    std::fs::copy(small, &big).expect("copy");
    std::fs::File::options()
        .write(true)
        .open(&big)
        .and_then(|f| f.set_len(200 << 20))
        .expect("a sparse 200 MiB disk");
    let big = big.to_str().expect("utf-8");
    let err = cli_err_as(cloud, globex, &["image", "upload", "halt", "--file", big]);
    assert!(
        err.contains("image \"halt\" already exists in project globex; choose another name"),
        "{err}"
    );
    assert!(!err.contains("sha256:"), "refused before hashing: {err}");
    cli_ok(cloud, &["quota", "set", "globex", "--image-mib", "100"]);
    let err = cli_err_as(cloud, globex, &["image", "upload", "big", "--file", big]);
    assert!(
        err.contains("image_mib quota 100 would be exceeded"),
        "{err}"
    );
    assert!(!err.contains("sha256:"), "refused before hashing: {err}");
    cli_ok(
        cloud,
        &["quota", "set", "globex", "--image-mib", "unlimited"],
    );
    assert!(cli_err_as(cloud, globex, &["image", "show", "big"]).contains("not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_images_are_fetched_once_per_host_verified_and_preferred() {
    let cloud = Cloud::start(Path::new(BIN), CloudOptions::default())
        .await
        .expect("start the cloud");
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = halting_disk(tmp.path());
    let file = disk.to_str().expect("utf-8");

    // Upload: the digest is shown, and the controller verified it.
    let out = cloud
        .cli(&[
            "image",
            "upload",
            "halt",
            "--file",
            file,
            "--no-ready-marker",
            "--wait",
            "-o",
            "json",
        ])
        .expect("run nimbus");
    assert!(out.status.success(), "{out:?}");
    let img: ImageView = json(&String::from_utf8_lossy(&out.stdout));
    let digest = img.digest.clone().expect("digest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{digest} verified")), "{stderr}");
    assert_eq!(
        (img.format.as_deref(), img.virtual_size_bytes),
        (Some("raw"), Some(4 << 20))
    );

    // First use: the chosen host downloads it once.
    create(&cloud, "a1", true);
    let first = running_on(&cloud, "a1").await;
    let other = if first == "host1" { "host2" } else { "host1" };
    assert_eq!(cache_of(&cloud, &first, &digest, 1).await, (1, 0));
    assert!(host(&cloud, other)
        .image_cache
        .is_some_and(|c| c.images.is_empty()));
    let cached = cloud
        .host_dir(&first)
        .join("images/sha256")
        .join(digest.trim_start_matches("sha256:"));
    assert_eq!(
        std::fs::read(&cached).expect("cached copy"),
        std::fs::read(&disk).expect("disk")
    );

    // Spread alone would pick the emptier host; the one holding the image wins.
    create(&cloud, "a2", true);
    assert_eq!(running_on(&cloud, "a2").await, first);
    assert_eq!(
        cache_of(&cloud, &first, &digest, 1).await,
        (1, 0),
        "no second download"
    );

    // One byte changed in the cache: detected on next use, fetched again.
    let mut bytes = std::fs::read(&cached).expect("read");
    bytes[3 << 20] ^= 0x01;
    std::fs::write(&cached, &bytes).expect("damage");
    create(&cloud, "a3", true);
    assert_eq!(running_on(&cloud, "a3").await, first);
    assert_eq!(cache_of(&cloud, &first, &digest, 2).await, (2, 1));
    assert_eq!(
        std::fs::read(&cached).expect("repaired"),
        std::fs::read(&disk).expect("disk")
    );

    // The other host: two concurrent creates, one download.
    cli_ok(&cloud, &["host", "disable", &first]);
    create(&cloud, "b1", false);
    create(&cloud, "b2", false);
    assert_eq!(running_on(&cloud, "b1").await, other);
    assert_eq!(running_on(&cloud, "b2").await, other);
    assert_eq!(cache_of(&cloud, other, &digest, 1).await, (1, 0));
    cli_ok(&cloud, &["host", "enable", &first]);

    // A qcow2 whose backing file is a host file never gets in.
    let evil = tmp.path().join("evil.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/etc/shadow",
            "-F",
            "raw",
            "-u",
        ])
        .arg(&evil)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(made.success());
    let err = cli_err(
        &cloud,
        &[
            "image",
            "upload",
            "evil",
            "--file",
            evil.to_str().expect("utf-8"),
        ],
    );
    assert!(err.contains("backing file"), "{err}");
    assert!(cli_err(&cloud, &["image", "show", "evil"]).contains("not found"));

    // Bake: a running instance is refused; a stopped one's disk becomes a new image, which
    // boots (the halting guest never powers off: the stop is forced after its timeout).
    let bake = [
        "image",
        "create",
        "baked",
        "--from-instance",
        "a1",
        "-o",
        "json",
    ];
    assert!(cli_err(&cloud, &bake).contains("stop it first"));
    cli_ok(&cloud, &["instance", "stop", "a1", "--wait"]);
    let baked: ImageView = json(&cli_ok(&cloud, &bake));
    assert_eq!(baked.format.as_deref(), Some("qcow2"));
    assert_ne!(baked.digest, img.digest);
    assert_eq!(baked.ready_marker, None, "as its source image");
    cli_ok(
        &cloud,
        &[
            "instance", "create", "c1", "--flavor", "tiny", "--image", "baked", "--wait",
        ],
    );
    running_on(&cloud, "c1").await;

    uefi_images_boot_through_ovmf(&cloud).await;
    images_are_named_per_project(&cloud, file, &digest);

    // In use: not deletable; once its instances are gone, it goes.
    let err = cli_err(&cloud, &["image", "delete", "halt"]);
    assert!(err.contains("used by 5 instance"), "{err}");
    for vm in ["a1", "a2", "a3", "b1", "b2", "c1"] {
        cli_ok(&cloud, &["instance", "delete", vm, "--wait"]);
    }
    cli_ok(&cloud, &["image", "delete", "halt"]);
    cli_ok(&cloud, &["image", "delete", "baked"]);
    let stored = cloud.data_dir().join("images/sha256");
    assert_eq!(std::fs::read_dir(stored).expect("store").count(), 0);
}
