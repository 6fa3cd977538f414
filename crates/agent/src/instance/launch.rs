//! How a [`VmSpec`] becomes a QEMU configuration.

use super::files::VmDir;
use crate::network::{HostNetwork, NetError};
use nimbus_agent_api::VmSpec;
use nimbus_qemu::config::{DirectBoot, DiskSection, MachineSection};
use nimbus_qemu::{Accel, QemuConfig};

/// The QEMU configuration of a VM: the standard layout of its directory, direct boot when
/// the image has a kernel, the top disk layer (the instance disk until a snapshot) as `vda`.
pub fn qemu_config(spec: &VmSpec, dir: &VmDir, accel: Accel) -> QemuConfig {
    let machine = MachineSection {
        name: spec.name.clone(),
        accel,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
    };
    let mut config = QemuConfig::standard(machine, dir.paths());
    config.uefi = super::firmware::section(spec, dir);
    let image = &spec.image;
    config.boot = image.kernel.as_ref().map(|kernel| DirectBoot {
        kernel: kernel.clone(),
        initrd: image.initrd.clone(),
        cmdline: Some(guest_cmdline(image.cmdline.as_deref(), &spec.name)),
    });
    config.disks.push(DiskSection {
        node: "disk0".into(),
        device_id: "vda".into(),
        path: dir.top_disk(),
        format: "qcow2".into(),
    });
    if spec.seed.is_some() {
        config.disks.push(DiskSection {
            node: "seed0".into(),
            device_id: "vdb".into(),
            path: super::seed::path(dir),
            format: "raw".into(),
        });
    }
    config
}

/// The configuration of a launch with the host made ready for it: the VM's taps exist and its
/// NICs (with `nimbus.ip=`/`nimbus.gw=` on the kernel command line) are in the configuration.
/// Every QEMU launch goes through here (a start, a migration target).
pub async fn prepare(
    spec: &VmSpec,
    dir: &VmDir,
    accel: Accel,
    network: &HostNetwork,
) -> Result<QemuConfig, NetError> {
    let mut config = qemu_config(spec, dir, accel);
    network.plug(spec, &mut config).await?;
    Ok(config)
}

/// The image's kernel command line plus `nimbus.hostname=<name>` (the default guest sets its
/// hostname from it), the name reduced to a valid hostname.
pub fn guest_cmdline(base: Option<&str>, name: &str) -> String {
    let host = hostname(name);
    let base = base.unwrap_or("").trim();
    match (base.is_empty(), host.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => format!("nimbus.hostname={host}"),
        (false, false) => format!("{base} nimbus.hostname={host}"),
    }
}

/// An instance name reduced to a valid hostname (letters, digits, inner dashes; 63 at most).
pub fn hostname(name: &str) -> String {
    let host: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    host.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_agent_api::{DiskSpec, GuestImage};

    #[test]
    fn cmdline_gets_a_clean_hostname() {
        assert_eq!(
            guest_cmdline(Some("console=ttyS0 quiet"), "web_1.prod"),
            "console=ttyS0 quiet nimbus.hostname=web-1-prod"
        );
        assert_eq!(guest_cmdline(None, "a"), "nimbus.hostname=a");
        assert_eq!(guest_cmdline(Some("x"), "!!"), "x");
    }

    #[test]
    fn spec_to_argv() {
        let spec = VmSpec {
            id: uuid::Uuid::nil(),
            name: "vm1".into(),
            vcpus: 1,
            memory_mib: 256,
            image: GuestImage {
                name: "default".into(),
                kernel: Some("/img/vmlinuz".into()),
                initrd: Some("/img/initrd.img".into()),
                cmdline: Some("console=ttyS0".into()),
                base_disk: Some("/img/disk.qcow2".into()),
                blob: None,
                ready_marker: Some("nimbus-guest ready".into()),
                uefi: false,
            },
            disk: DiskSpec { size_gib: 2 },
            ha: false,
            nics: Vec::new(),
            seed: None,
        };
        let dir = VmDir::new("/s/vms/1".into());
        let argv = qemu_config(&spec, &dir, Accel::Tcg).argv().join(" ");
        assert!(
            argv.contains("-append console=ttyS0 nimbus.hostname=vm1"),
            "{argv}"
        );
        assert!(argv.contains("driver=file,filename=/s/vms/1/disk.qcow2,node-name=disk0-file"));
        assert!(argv.contains("-smp 1 -m 256"));
    }
}
