//! The host's bridge, [`BRIDGE`]: the VMs' taps and the VXLAN device are its ports. It needs
//! no address: the host only switches the cloud network's frames, it does not route them.

use super::command::{Cmd, Shell};
use super::error::NetError;
use super::link;

/// Name of the bridge of the cloud's default network on every host.
pub const BRIDGE: &str = "nimbus0";

/// `ip link add nimbus0 type bridge`.
pub fn add_cmd(shell: &Shell, bridge: &str) -> Cmd {
    shell.ip(&["link", "add", bridge, "type", "bridge"])
}

/// `ip link set dev nimbus0 mtu <mtu> up`.
pub fn set_up_cmd(shell: &Shell, bridge: &str, mtu: u16) -> Cmd {
    shell.ip(&["link", "set", "dev", bridge, "mtu", &mtu.to_string(), "up"])
}

/// Creates the bridge unless it exists, and brings it up with `mtu`. Returns whether it was
/// created.
pub async fn ensure(shell: &Shell, bridge: &str, mtu: u16) -> Result<bool, NetError> {
    let existing = link::show(shell, bridge).await?;
    let created = match &existing {
        Some(l) if l.kind.as_deref() == Some("bridge") => false,
        Some(l) => {
            return Err(NetError::WrongKind {
                name: bridge.into(),
                found: l.kind.clone().unwrap_or_else(|| "plain".into()),
                expected: "bridge",
            })
        }
        None => {
            add_cmd(shell, bridge).run().await?;
            true
        }
    };
    let ready = existing.is_some_and(|l| l.up && l.mtu == u32::from(mtu));
    if !ready {
        set_up_cmd(shell, bridge, mtu).run().await?;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let shell = Shell::here();
        assert_eq!(
            add_cmd(&shell, BRIDGE).to_string(),
            "ip link add nimbus0 type bridge"
        );
        assert_eq!(
            set_up_cmd(&shell, BRIDGE, 1450).to_string(),
            "ip link set dev nimbus0 mtu 1450 up"
        );
    }
}
