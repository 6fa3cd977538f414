//! Golden tests of the produced argv.

use super::*;

fn machine(accel: Accel) -> MachineSection {
    MachineSection {
        name: "web-1".into(),
        accel,
        vcpus: 2,
        memory_mib: 512,
    }
}

fn direct_boot_config() -> QemuConfig {
    let paths = VmPaths::new("/var/lib/nimbus/vms/abc");
    let mut cfg = QemuConfig::standard(machine(Accel::Tcg), &paths);
    cfg.boot = Some(DirectBoot {
        kernel: "/img/vmlinuz".into(),
        initrd: Some("/img/initrd.img".into()),
        cmdline: Some("console=ttyS0 root=/dev/vda quiet".into()),
    });
    cfg.disks.push(DiskSection {
        node: "disk0".into(),
        device_id: "vda".into(),
        path: "/var/lib/nimbus/vms/abc/disk.qcow2".into(),
        format: "qcow2".into(),
    });
    cfg
}

#[test]
fn golden_direct_boot_tcg() {
    let expected = [
        "-name",
        "guest=web-1",
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "512",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-vga",
        "none",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-kernel",
        "/img/vmlinuz",
        "-initrd",
        "/img/initrd.img",
        "-append",
        "console=ttyS0 root=/dev/vda quiet",
        "-blockdev",
        "driver=file,filename=/var/lib/nimbus/vms/abc/disk.qcow2,node-name=disk0-file",
        "-blockdev",
        "driver=qcow2,file=disk0-file,node-name=disk0,discard=ignore",
        "-device",
        "virtio-blk-pci,drive=disk0,id=vda",
        "-chardev",
        "socket,id=console,path=/var/lib/nimbus/vms/abc/console.sock,server=on,wait=off,\
         logfile=/var/lib/nimbus/vms/abc/console.log,logappend=on",
        "-serial",
        "chardev:console",
        "-chardev",
        "socket,id=heartbeat,path=/var/lib/nimbus/vms/abc/heartbeat.sock,server=on,wait=off",
        "-serial",
        "chardev:heartbeat",
        "-chardev",
        "socket,id=exec,path=/var/lib/nimbus/vms/abc/exec.sock,server=on,wait=off",
        "-serial",
        "chardev:exec",
        "-qmp",
        "unix:/var/lib/nimbus/vms/abc/qmp.sock,server=on,wait=off",
        "-pidfile",
        "/var/lib/nimbus/vms/abc/qemu.pid",
        "-nic",
        "none",
    ];
    assert_eq!(direct_boot_config().argv(), expected);
}

#[test]
fn kvm_uses_host_cpu() {
    let paths = VmPaths::new("/d");
    let argv = QemuConfig::standard(machine(Accel::Kvm), &paths).argv();
    let joined = argv.join(" ");
    assert!(
        joined.contains("-accel kvm -cpu host -smp 2 -m 512"),
        "{joined}"
    );
    assert!(!joined.contains("-kernel"));
}

#[test]
fn nics_replace_nic_none_and_incoming_is_last() {
    let mut cfg = direct_boot_config();
    cfg.nics.push(NicSection {
        id: "net0".into(),
        mac: "52:54:00:00:00:01".into(),
        backend: NicBackend::Tap {
            ifname: "nb-tap0".into(),
            vhost: false,
        },
        mtu: Some(1450),
    });
    cfg.incoming = Some("defer".into());
    let argv = cfg.argv();
    assert!(!argv
        .iter()
        .any(|a| a == "none" && argv.contains(&"-nic".to_string())));
    let tail: Vec<&str> = argv[argv.len() - 6..].iter().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "-netdev",
            "tap,id=net0,ifname=nb-tap0,script=no,downscript=no,vhost=off",
            "-device",
            "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,romfile=,host_mtu=1450",
            "-incoming",
            "defer",
        ]
    );
}

#[test]
fn commas_in_paths_are_escaped() {
    let paths = VmPaths::new("/odd,dir");
    let mut cfg = QemuConfig::standard(machine(Accel::Tcg), &paths);
    cfg.sandbox = false;
    let argv = cfg.argv();
    assert!(!argv.contains(&"-sandbox".to_string()));
    assert!(argv.contains(&"unix:/odd,,dir/qmp.sock,server=on,wait=off".to_string()));
    // -pidfile takes a plain path, not an option string.
    assert!(argv.contains(&"/odd,dir/qemu.pid".to_string()));
}

#[test]
fn uefi_boots_from_shared_code_and_the_vms_own_variables() {
    let paths = VmPaths::new("/vms/a,b");
    let mut cfg = QemuConfig::standard(machine(Accel::Tcg), &paths);
    cfg.uefi = Some(UefiSection {
        code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
        vars: "/vms/a,b/efivars.fd".into(),
    });
    let argv = cfg.argv();
    let drives: Vec<&String> = argv
        .windows(2)
        .filter(|w| w[0] == "-drive")
        .map(|w| &w[1])
        .collect();
    assert_eq!(
        drives,
        [
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "if=pflash,format=raw,unit=1,file=/vms/a,,b/efivars.fd",
        ]
    );
    cfg.uefi = None;
    assert!(
        !cfg.argv().contains(&"-drive".to_string()),
        "BIOS: no pflash"
    );
}
