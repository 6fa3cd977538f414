//! `nimbus image ...` arguments.

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// The project's images and the public ones.
    List,
    /// One image: format, sizes, digest, owner.
    Show { name: String },
    /// Upload a disk image (qcow2 or raw) as a stream; its sha256 is computed here, shown,
    /// and checked by the controller, which inspects the format before keeping it.
    Upload {
        name: String,
        /// The image file.
        #[arg(long)]
        file: PathBuf,
        /// Let every project boot it (admin).
        #[arg(long)]
        public: bool,
        /// Firmware its instances boot with: `bios` (SeaBIOS, an MBR boot loader) or `uefi`
        /// (OVMF, an EFI system partition; each instance gets its own EFI variables).
        #[arg(long, default_value = "bios", value_parser = parse_firmware)]
        firmware: nimbus_api::Firmware,
        /// Console line that says the guest is up (default: the line nimbus's cloud-init
        /// seed makes cloud-init print when it has finished).
        #[arg(long, conflicts_with = "no_ready_marker")]
        ready_marker: Option<String>,
        /// The image has no cloud-init: its instances are running once QEMU runs.
        #[arg(long)]
        no_ready_marker: bool,
        /// Accepted for symmetry with other long actions: the command always returns once
        /// the image is stored, inspected and ready to boot.
        #[arg(long)]
        wait: bool,
    },
    /// Bake a stopped instance's disk into a new image of the project.
    Create {
        name: String,
        /// The instance (it must be stopped: the copy is then consistent).
        #[arg(long)]
        from_instance: String,
        /// Let every project boot it (admin).
        #[arg(long)]
        public: bool,
        /// Accepted for symmetry: the command returns once the image is stored.
        #[arg(long)]
        wait: bool,
    },
    /// Register image files (absolute paths every host can read; admin).
    Import {
        name: String,
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long)]
        initrd: Option<String>,
        #[arg(long)]
        cmdline: Option<String>,
        #[arg(long)]
        disk: Option<String>,
        /// Console line the guest prints when ready.
        #[arg(long)]
        ready_marker: Option<String>,
    },
    /// Delete an image of the project (refused while instances use it).
    Delete { name: String },
}

fn parse_firmware(s: &str) -> Result<nimbus_api::Firmware, String> {
    nimbus_api::Firmware::parse(s).ok_or_else(|| format!("{s:?}: the firmware is bios or uefi"))
}
