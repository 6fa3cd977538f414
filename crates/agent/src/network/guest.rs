//! What the guest sees of the network: a virtio NIC per [`NicSpec`] (its MAC, the MTU that
//! fits the VXLAN overlay) and its address on the kernel command line:
//!
//! ```text
//! nimbus.ip=<addr>/<prefix> [nimbus.gw=<addr>]     for the first NIC (the guest's eth0)
//! nimbus.net=dhcp                                   the first NIC is on a tenant network
//! ```
//! On a tenant network the host answers DHCP with the same address ([`super::dhcp`]), and
//! the default image takes eth0's address, gateway and DNS from the lease (`nimbus.net=dhcp`);
//! `nimbus.ip=` stays only as its fallback if no lease comes (it says so on the console).
//! The MTU needs no parameter: virtio's `host_mtu` makes the guest driver use [`NIC_MTU`].

use super::tap::tap_name;
use nimbus_agent_api::{NicSpec, VmSpec};
use nimbus_qemu::config::{NicBackend, NicSection};
use nimbus_qemu::QemuConfig;
use std::net::IpAddr;

/// MTU of the cloud network inside guests, taps, bridges and VXLAN devices: a 1500-byte
/// underlay minus the 50 bytes of VXLAN over IPv4 (outer IP 20, UDP 8, VXLAN 8, inner
/// Ethernet 14).
pub const NIC_MTU: u16 = 1450;
/// Most NICs per VM.
pub const MAX_NICS: usize = 8;

/// The QEMU NICs of a VM, attached to the taps named by [`tap_name`].
pub fn nic_sections(spec: &VmSpec) -> Vec<NicSection> {
    spec.nics
        .iter()
        .enumerate()
        .map(|(i, nic)| NicSection {
            id: format!("net{i}"),
            mac: nic.mac.to_ascii_lowercase(),
            backend: NicBackend::Tap {
                ifname: tap_name(spec.id, i),
                vhost: false,
            },
            mtu: Some(NIC_MTU),
        })
        .collect()
}

/// The kernel parameters that give the guest its address (first NIC only).
pub fn cmdline_params(spec: &VmSpec) -> Vec<String> {
    let Some(nic) = spec.nics.first() else {
        return Vec::new();
    };
    let mut params = vec![format!("nimbus.ip={}", nic.ip)];
    if let Some(gw) = &nic.gateway {
        params.push(format!("nimbus.gw={gw}"));
    }
    if nic.vni.is_some() {
        params.push("nimbus.net=dhcp".into());
    }
    params
}

/// Adds the VM's NICs to `config` and their parameters to its kernel command line (a VM that
/// boots from its disk gets no command line, and must find its address otherwise).
pub fn add_to_config(spec: &VmSpec, config: &mut QemuConfig) {
    config.nics.extend(nic_sections(spec));
    let params = cmdline_params(spec);
    if params.is_empty() {
        return;
    }
    if let Some(boot) = &mut config.boot {
        let base = boot.cmdline.take().unwrap_or_default();
        let joined = std::iter::once(base.trim())
            .filter(|b| !b.is_empty())
            .chain(params.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        boot.cmdline = Some(joined);
    }
}

/// Checks the NICs of a spec: a unicast MAC, an address with its prefix, a gateway address.
pub fn validate(nics: &[NicSpec]) -> Result<(), String> {
    if nics.len() > MAX_NICS {
        return Err(format!("at most {MAX_NICS} NICs, not {}", nics.len()));
    }
    for nic in nics {
        validate_mac(&nic.mac)?;
        validate_cidr(&nic.ip)?;
        if let Some(gw) = &nic.gateway {
            gw.parse::<IpAddr>()
                .map_err(|_| format!("invalid gateway address {gw:?}"))?;
        }
        if let Some(vni) = nic.vni.filter(|v| *v == 0 || *v > super::vxlan::MAX_VNI) {
            return Err(format!("invalid network segment id {vni} (1 to 2^24-1)"));
        }
    }
    Ok(())
}

fn validate_mac(mac: &str) -> Result<(), String> {
    let bad = || format!("invalid MAC address {mac:?} (six hex octets, unicast)");
    let octets: Vec<u8> = mac
        .split(':')
        .map(|o| {
            (o.len() == 2)
                .then(|| u8::from_str_radix(o, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    match octets.as_slice() {
        [first, ..] if octets.len() == 6 && first & 1 == 0 && octets.iter().any(|&o| o != 0) => {
            Ok(())
        }
        _ => Err(bad()),
    }
}

fn validate_cidr(cidr: &str) -> Result<(), String> {
    let bad = || format!("invalid address {cidr:?} (expected <address>/<prefix>)");
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use nimbus_qemu::config::{DirectBoot, MachineSection};
    use nimbus_qemu::{Accel, VmPaths};

    pub fn nic(mac: &str, ip: &str, gw: Option<&str>) -> NicSpec {
        NicSpec {
            mac: mac.into(),
            ip: ip.into(),
            gateway: gw.map(Into::into),
            vni: None,
        }
    }

    pub fn spec(nics: Vec<NicSpec>) -> VmSpec {
        let id = uuid::Uuid::parse_str("0a1b2c3d-4e5f-6789-abcd-ef0123456789").expect("uuid");
        crate::test_support::blank_spec(id, nics)
    }

    pub fn config() -> QemuConfig {
        let machine = MachineSection {
            name: "vm".into(),
            accel: Accel::Tcg,
            vcpus: 1,
            memory_mib: 128,
        };
        QemuConfig::standard(machine, &VmPaths::new("/d"))
    }

    #[test]
    fn a_nic_becomes_a_tap_device_and_kernel_parameters() {
        let s = spec(vec![nic(
            "52:54:0A:C8:00:0A",
            "10.200.0.10/16",
            Some("10.200.0.1"),
        )]);
        let mut cfg = config();
        cfg.boot = Some(DirectBoot {
            kernel: "/k".into(),
            initrd: None,
            cmdline: Some("console=ttyS0 nimbus.hostname=vm".into()),
        });
        add_to_config(&s, &mut cfg);
        let argv = cfg.argv();
        let joined = argv.join(" ");
        assert!(
            joined.contains(
                "-append console=ttyS0 nimbus.hostname=vm nimbus.ip=10.200.0.10/16 \
                 nimbus.gw=10.200.0.1 "
            ),
            "{joined}"
        );
        assert!(joined.contains(
            "-netdev tap,id=net0,ifname=nt0a1b2c3d4e,script=no,downscript=no,vhost=off \
             -device virtio-net-pci,netdev=net0,mac=52:54:0a:c8:00:0a,romfile=,host_mtu=1450"
        ));
        assert!(!argv.iter().any(|a| a == "-nic"));
    }

    #[test]
    fn kernel_parameters_without_gateway_or_nics() {
        let s = spec(vec![nic("52:54:00:00:00:01", "10.200.0.11/16", None)]);
        assert_eq!(cmdline_params(&s), ["nimbus.ip=10.200.0.11/16"]);
        assert!(cmdline_params(&spec(Vec::new())).is_empty());
        let tenant = NicSpec {
            vni: Some(4201),
            ..nic("52:54:00:00:00:01", "10.10.0.11/24", Some("10.10.0.1"))
        };
        assert_eq!(
            cmdline_params(&spec(vec![tenant])),
            [
                "nimbus.ip=10.10.0.11/24",
                "nimbus.gw=10.10.0.1",
                "nimbus.net=dhcp"
            ],
            "a tenant NIC takes its lease by DHCP, the address stays as fallback"
        );
        let mut cfg = config();
        cfg.boot = Some(DirectBoot {
            kernel: "/k".into(),
            initrd: None,
            cmdline: None,
        });
        add_to_config(&s, &mut cfg);
        let boot = cfg.boot.expect("boot");
        assert_eq!(boot.cmdline.as_deref(), Some("nimbus.ip=10.200.0.11/16"));
    }

    #[test]
    fn second_nic_gets_its_own_tap() {
        let s = spec(vec![
            nic("52:54:00:00:00:01", "10.200.0.11/16", None),
            nic("52:54:00:00:00:02", "10.200.0.12/16", None),
        ]);
        let nics = nic_sections(&s);
        assert_eq!(nics[1].id, "net1");
        assert_eq!(
            nics[1].backend,
            NicBackend::Tap {
                ifname: "nt0a1b2c3d4e-1".into(),
                vhost: false
            }
        );
    }

    #[test]
    fn validation() {
        let ok = nic("52:54:00:12:34:56", "10.200.0.5/16", Some("10.200.0.1"));
        assert!(validate(std::slice::from_ref(&ok)).is_ok());
        assert!(validate(&[nic("52:54:00:12:34:56", "fd00::5/64", None)]).is_ok());
        for bad in [
            nic("01:00:5e:00:00:01", "10.200.0.5/16", None),
            nic("00:00:00:00:00:00", "10.200.0.5/16", None),
            nic("52:54:00:12:34", "10.200.0.5/16", None),
            nic("52:54:00:12:34:5g", "10.200.0.5/16", None),
            nic("52:54:00:12:34:56", "10.200.0.5", None),
            nic("52:54:00:12:34:56", "10.200.0.5/33", None),
            nic("52:54:00:12:34:56", "10.200.0.5/16 rm", None),
            nic("52:54:00:12:34:56", "10.200.0.5/16", Some("gw")),
        ] {
            assert!(validate(std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
        assert!(validate(&vec![ok; MAX_NICS + 1]).is_err());
    }
}
