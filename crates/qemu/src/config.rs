//! A typed QEMU configuration, built from sections and turned into argv.
//!
//! Each section renders its own options; [`QemuConfig::argv`] concatenates them in a fixed
//! order, so the produced command line is stable and checked by golden tests below. Paths are
//! escaped for QEMU's option syntax (a `,` inside a value is written `,,`).

use crate::paths::VmPaths;
use std::path::{Path, PathBuf};

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation (TCG).
    Tcg,
}

impl Accel {
    /// QEMU's name for the accelerator (`-accel <name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The CPU model to pair with the accelerator.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Machine, CPU and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSection {
    /// Guest name shown by QEMU (`-name guest=...`).
    pub name: String,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// Direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
}

/// UEFI boot: OVMF's code (read-only, shared by every VM) and the VM's own variables store
/// (writable: boot entries, Secure Boot keys), as the two pflash devices of q35.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiSection {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// One virtio-blk disk backed by an image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSection {
    /// Node name of the format layer, e.g. `disk0` (the file layer is `<node>-file`).
    pub node: String,
    /// Device id, e.g. `vda`.
    pub device_id: String,
    pub path: PathBuf,
    /// Image format driver, e.g. `qcow2` or `raw`.
    pub format: String,
}

/// A serial port bridged to a unix socket QEMU listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSection {
    /// Chardev id, e.g. `console`.
    pub id: String,
    pub socket: PathBuf,
    /// Everything the guest writes is also appended to this file.
    pub logfile: Option<PathBuf>,
}

/// QMP monitor and pid file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSection {
    pub qmp_socket: PathBuf,
    pub pid_file: PathBuf,
}

/// A virtio-net interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSection {
    /// Netdev id, e.g. `net0`.
    pub id: String,
    /// MAC address, e.g. `52:54:00:12:34:56`.
    pub mac: String,
    pub backend: NicBackend,
    /// MTU the device announces to the guest (virtio `host_mtu`): the guest's driver sets its
    /// interface to it, so the guest needs no MTU configuration of its own.
    pub mtu: Option<u16>,
}

/// Host side of a NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicBackend {
    /// An existing tap device, set up by the agent (no QEMU helper scripts): QEMU only opens
    /// `/dev/net/tun` and attaches to it by name, which the seccomp sandbox allows.
    Tap {
        ifname: String,
        /// In-kernel virtio-net data path (`/dev/vhost-net`); useful with KVM only.
        vhost: bool,
    },
}

/// A complete QEMU configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    pub machine: MachineSection,
    /// `None`: SeaBIOS, QEMU's default firmware.
    pub uefi: Option<UefiSection>,
    pub boot: Option<DirectBoot>,
    pub disks: Vec<DiskSection>,
    pub serials: Vec<SerialSection>,
    pub monitor: MonitorSection,
    /// Empty means `-nic none`.
    pub nics: Vec<NicSection>,
    /// `-incoming <uri>` for the target of a migration (e.g. `defer`).
    pub incoming: Option<String>,
    /// Apply QEMU's seccomp sandbox (`-sandbox on,...`).
    pub sandbox: bool,
    /// Drop to this user once the machine is set up (`-run-with user=UID:GID`): QEMU opens
    /// its disks, kernel, taps and sockets as the launcher, then runs the guest without
    /// privileges, capabilities or supplementary groups.
    pub run_as: Option<RunAs>,
}

/// An unprivileged identity for a QEMU process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl QemuConfig {
    /// The standard nimbus layout for a VM directory: console, heartbeat and exec serial
    /// ports, QMP and pid file in `paths`, no boot, no disks, no NICs, sandbox on.
    pub fn standard(machine: MachineSection, paths: &VmPaths) -> Self {
        let serial = |id: &str, socket: PathBuf, logfile: Option<PathBuf>| SerialSection {
            id: id.to_string(),
            socket,
            logfile,
        };
        Self {
            machine,
            uefi: None,
            boot: None,
            disks: Vec::new(),
            serials: vec![
                serial("console", paths.console_sock(), Some(paths.console_log())),
                serial("heartbeat", paths.heartbeat_sock(), None),
                serial("exec", paths.exec_sock(), None),
            ],
            monitor: MonitorSection {
                qmp_socket: paths.qmp_sock(),
                pid_file: paths.pid_file(),
            },
            nics: Vec::new(),
            incoming: None,
            sandbox: true,
            run_as: None,
        }
    }

    /// The arguments after the program name.
    pub fn argv(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.machine_args(&mut out);
        if let Some(uefi) = &self.uefi {
            uefi_args(uefi, &mut out);
        }
        if let Some(boot) = &self.boot {
            boot_args(boot, &mut out);
        }
        for disk in &self.disks {
            disk_args(disk, &mut out);
        }
        for serial in &self.serials {
            serial_args(serial, &mut out);
        }
        push(&mut out, "-qmp");
        out.push(format!(
            "unix:{},server=on,wait=off",
            opt_path(&self.monitor.qmp_socket)
        ));
        push(&mut out, "-pidfile");
        out.push(path_str(&self.monitor.pid_file));
        if self.nics.is_empty() {
            push(&mut out, "-nic");
            push(&mut out, "none");
        }
        for nic in &self.nics {
            nic_args(nic, &mut out);
        }
        if let Some(uri) = &self.incoming {
            push(&mut out, "-incoming");
            out.push(uri.clone());
        }
        out
    }

    fn machine_args(&self, out: &mut Vec<String>) {
        let m = &self.machine;
        push(out, "-name");
        out.push(format!("guest={}", escape_opt(&m.name)));
        for a in ["-machine", "q35", "-accel", m.accel.as_str()] {
            push(out, a);
        }
        push(out, "-cpu");
        push(out, m.accel.cpu_model());
        push(out, "-smp");
        out.push(m.vcpus.to_string());
        push(out, "-m");
        out.push(m.memory_mib.to_string());
        for a in [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-vga",
            "none",
        ] {
            push(out, a);
        }
        if let Some(r) = self.run_as {
            push(out, "-run-with");
            out.push(format!("user={}:{}", r.uid, r.gid));
        }
        if self.sandbox {
            // Checked with QEMU 10.0.2: a guest boots and QMP, the serial sockets, the
            // console logfile and the pid file all work with every option of the seccomp
            // sandbox on. `spawn=deny` forbids `exec:` migration URIs (use tcp/unix).
            // The sandbox is installed before `-run-with` drops privileges, so dropping
            // needs set*id allowed; once dropped, QEMU has no capability to regain any
            // (and runs with no_new_privs), which is what `elevateprivileges=deny` is for.
            let elevate = if self.run_as.is_some() {
                "allow"
            } else {
                "deny"
            };
            push(out, "-sandbox");
            out.push(format!(
                "on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"
            ));
        }
    }
}

fn boot_args(boot: &DirectBoot, out: &mut Vec<String>) {
    push(out, "-kernel");
    out.push(path_str(&boot.kernel));
    if let Some(initrd) = &boot.initrd {
        push(out, "-initrd");
        out.push(path_str(initrd));
    }
    if let Some(cmdline) = &boot.cmdline {
        push(out, "-append");
        out.push(cmdline.clone());
    }
}

fn uefi_args(uefi: &UefiSection, out: &mut Vec<String>) {
    push(out, "-drive");
    out.push(format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={}",
        opt_path(&uefi.code)
    ));
    push(out, "-drive");
    out.push(format!(
        "if=pflash,format=raw,unit=1,file={}",
        opt_path(&uefi.vars)
    ));
}

fn disk_args(disk: &DiskSection, out: &mut Vec<String>) {
    let file_node = format!("{}-file", disk.node);
    push(out, "-blockdev");
    out.push(format!(
        "driver=file,filename={},node-name={file_node}",
        opt_path(&disk.path)
    ));
    // `discard=ignore` (QEMU's default, stated): a guest's discards change nothing, which
    // a snapshot's proof that the guest did not write relies on (its write counters do
    // not count discards).
    push(out, "-blockdev");
    out.push(format!(
        "driver={},file={file_node},node-name={},discard=ignore",
        disk.format, disk.node
    ));
    push(out, "-device");
    out.push(format!(
        "virtio-blk-pci,drive={},id={}",
        disk.node, disk.device_id
    ));
}

fn serial_args(serial: &SerialSection, out: &mut Vec<String>) {
    let mut chardev = format!(
        "socket,id={},path={},server=on,wait=off",
        serial.id,
        opt_path(&serial.socket)
    );
    if let Some(log) = &serial.logfile {
        chardev.push_str(&format!(",logfile={},logappend=on", opt_path(log)));
    }
    push(out, "-chardev");
    out.push(chardev);
    push(out, "-serial");
    out.push(format!("chardev:{}", serial.id));
}

fn nic_args(nic: &NicSection, out: &mut Vec<String>) {
    match &nic.backend {
        NicBackend::Tap { ifname, vhost } => {
            push(out, "-netdev");
            out.push(format!(
                "tap,id={},ifname={},script=no,downscript=no,vhost={}",
                nic.id,
                escape_opt(ifname),
                if *vhost { "on" } else { "off" }
            ));
        }
    }
    // No option ROM: nimbus never boots from the network, and the ROM's initialisation costs
    // about a second of boot under TCG (measured with the default guest).
    let mut device = format!("virtio-net-pci,netdev={},mac={},romfile=", nic.id, nic.mac);
    if let Some(mtu) = nic.mtu {
        device.push_str(&format!(",host_mtu={mtu}"));
    }
    push(out, "-device");
    out.push(device);
}

fn push(out: &mut Vec<String>, s: &str) {
    out.push(s.to_string());
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A path as the value of a `key=value` QEMU option.
fn opt_path(p: &Path) -> String {
    escape_opt(&p.to_string_lossy())
}

/// Escapes a value for QEMU's `key=value,...` syntax: a comma is doubled.
pub fn escape_opt(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests;
