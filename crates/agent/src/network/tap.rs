//! A VM's tap devices: created by the agent before QEMU starts (QEMU only attaches to them by
//! name, so it needs neither helper scripts nor privileges), ports of the bridge, removed
//! when the VM is deleted. A stopped VM keeps its taps; a restarted agent leaves the taps of
//! running VMs alone.

use super::command::{no_such_device, Cmd, Shell};
use super::error::NetError;
use super::link;
use uuid::Uuid;

/// First characters of every tap name.
pub const TAP_PREFIX: &str = "nt";
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// The tap of a VM's NIC number `index`: `nt` and the first 10 hex digits of the instance id,
/// then `-<index>` for NICs after the first (at most 15 characters for index < 100).
pub fn tap_name(id: Uuid, index: usize) -> String {
    let hex = id.simple().to_string();
    let mut name = format!("{TAP_PREFIX}{}", &hex[..10]);
    if index > 0 {
        name.push_str(&format!("-{index}"));
    }
    name
}

/// `ip tuntap add dev <name> mode tap user <uid>`: a persistent tap the agent's user owns.
pub fn add_cmd(shell: &Shell, name: &str, uid: u32) -> Cmd {
    shell.ip(&[
        "tuntap",
        "add",
        "dev",
        name,
        "mode",
        "tap",
        "user",
        &uid.to_string(),
    ])
}

/// `ip link del <name>`.
pub fn del_cmd(shell: &Shell, name: &str) -> Cmd {
    shell.ip(&["link", "del", name])
}

/// Creates the tap unless it exists and makes it an up port of the bridge with `mtu`.
/// Returns whether it was created.
pub async fn ensure(shell: &Shell, name: &str, bridge: &str, mtu: u16) -> Result<bool, NetError> {
    if name.len() > IFNAME_MAX {
        return Err(NetError::Invalid {
            what: "interface name (15 characters at most)",
            value: name.into(),
        });
    }
    let existing = link::show(shell, name).await?;
    match &existing {
        Some(l) if l.kind.as_deref() == Some("tun") => {}
        Some(l) => {
            return Err(NetError::WrongKind {
                name: name.into(),
                found: l.kind.clone().unwrap_or_else(|| "plain".into()),
                expected: "tap",
            })
        }
        None => {
            let uid = nix::unistd::geteuid().as_raw();
            add_cmd(shell, name, uid).run().await?;
        }
    }
    link::ensure_port(shell, name, existing.as_ref(), bridge, mtu).await?;
    Ok(existing.is_none())
}

/// Removes the tap; an absent one is fine. Returns whether one was removed.
pub async fn remove(shell: &Shell, name: &str) -> Result<bool, NetError> {
    let cmd = del_cmd(shell, name);
    let done = cmd.output().await?;
    match (done.success, no_such_device(&done.stderr)) {
        (true, _) => Ok(true),
        (false, true) => Ok(false),
        (false, false) => Err(cmd.failed(&done)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_and_are_stable() {
        let id = Uuid::parse_str("0a1b2c3d-4e5f-6789-abcd-ef0123456789").expect("uuid");
        assert_eq!(tap_name(id, 0), "nt0a1b2c3d4e");
        assert_eq!(tap_name(id, 1), "nt0a1b2c3d4e-1");
        assert!(tap_name(id, 99).len() <= IFNAME_MAX);
        assert_ne!(tap_name(Uuid::new_v4(), 0), tap_name(Uuid::new_v4(), 0));
    }

    #[test]
    fn commands() {
        let shell = Shell::in_netns("h2");
        assert_eq!(
            add_cmd(&shell, "nt0a1b2c3d4e", 0).to_string(),
            "ip -n h2 tuntap add dev nt0a1b2c3d4e mode tap user 0"
        );
        assert_eq!(
            del_cmd(&shell, "nt0a1b2c3d4e").to_string(),
            "ip -n h2 link del nt0a1b2c3d4e"
        );
    }
}
