//! VM specs for tests that need a VM but no guest OS.

use nimbus_agent_api::{DiskSpec, GuestImage, VmSpec};
use uuid::Uuid;

/// A VM `name` with nothing to boot (no kernel, no base disk, no ready marker: QEMU runs its
/// firmware only), 1 vCPU, 128 MiB, a 1 GiB disk and no NIC. Tests set what they need:
/// `VmSpec { nics, ..blank_vm_spec(id, "vm") }`.
pub fn blank_vm_spec(id: Uuid, name: &str) -> VmSpec {
    VmSpec {
        id,
        name: name.into(),
        vcpus: 1,
        memory_mib: 128,
        image: GuestImage {
            name: "none".into(),
            kernel: None,
            initrd: None,
            cmdline: None,
            base_disk: None,
            blob: None,
            ready_marker: None,
            uefi: false,
        },
        disk: DiskSpec { size_gib: 1 },
        nics: Vec::new(),
        ha: false,
        seed: None,
    }
}
