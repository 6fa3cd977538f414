//! What the kernel says about one network device (`ip -j -d link show dev <name>`).

use super::command::{no_such_device, Cmd, Shell};
use super::error::NetError;
use serde::Deserialize;
use std::net::IpAddr;

/// The facts about a link that setup compares with what it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// `bridge`, `vxlan`, `tun`, `veth`... (`None` for plain devices).
    pub kind: Option<String>,
    /// The bridge it is enslaved to.
    pub master: Option<String>,
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// VXLAN parameters, for a VXLAN device.
    pub vxlan: Option<VxlanInfo>,
}

/// The parameters of an existing VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<IpAddr>,
    pub port: u16,
}

#[derive(Deserialize)]
struct RawLink {
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    mtu: u32,
    master: Option<String>,
    linkinfo: Option<RawLinkInfo>,
}

#[derive(Deserialize)]
struct RawLinkInfo {
    info_kind: Option<String>,
    info_data: Option<serde_json::Value>,
}

/// The link `name`, or `None` if there is no such device.
pub async fn show(shell: &Shell, name: &str) -> Result<Option<Link>, NetError> {
    let cmd = shell.ip(&["-j", "-d", "link", "show", "dev", name]);
    let done = cmd.output().await?;
    if !done.success {
        if no_such_device(&done.stderr) {
            return Ok(None);
        }
        return Err(cmd.failed(&done));
    }
    parse(&done.stdout).map_err(|detail| NetError::Output {
        command: cmd.to_string(),
        detail,
    })
}

/// `ip link set dev <name> mtu <mtu> master <bridge> up`.
pub fn set_port_cmd(shell: &Shell, name: &str, bridge: &str, mtu: u16) -> Cmd {
    let mtu = mtu.to_string();
    shell.ip(&[
        "link", "set", "dev", name, "mtu", &mtu, "master", bridge, "up",
    ])
}

/// Makes the link `name` (whose state was just read as `current`) an up port of `bridge`
/// with `mtu`; runs nothing when it already is one.
pub async fn ensure_port(
    shell: &Shell,
    name: &str,
    current: Option<&Link>,
    bridge: &str,
    mtu: u16,
) -> Result<(), NetError> {
    let ready = current
        .is_some_and(|l| l.up && l.mtu == u32::from(mtu) && l.master.as_deref() == Some(bridge));
    if !ready {
        set_port_cmd(shell, name, bridge, mtu).run().await?;
    }
    Ok(())
}

/// Parses the JSON of `ip -j -d link show dev <name>`.
pub fn parse(json: &str) -> Result<Option<Link>, String> {
    let links: Vec<RawLink> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let Some(raw) = links.into_iter().next() else {
        return Ok(None);
    };
    let (kind, data) = match raw.linkinfo {
        Some(info) => (info.info_kind, info.info_data),
        None => (None, None),
    };
    let vxlan = match (kind.as_deref(), data) {
        (Some("vxlan"), Some(data)) => Some(vxlan_info(&data)?),
        _ => None,
    };
    Ok(Some(Link {
        kind,
        master: raw.master,
        mtu: raw.mtu,
        up: raw.flags.iter().any(|f| f == "UP"),
        vxlan,
    }))
}

fn vxlan_info(data: &serde_json::Value) -> Result<VxlanInfo, String> {
    let vni = data
        .get("id")
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or("VXLAN device without an id")?;
    let port = data
        .get("port")
        .and_then(serde_json::Value::as_u64)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or("VXLAN device without a port")?;
    let local = data
        .get("local")
        .or_else(|| data.get("local6"))
        .and_then(serde_json::Value::as_str)
        .and_then(|s| s.parse().ok());
    Ok(VxlanInfo { vni, local, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_vxlan_port_of_a_bridge() {
        let json = r#"[{"ifindex":3,"ifname":"nimbus-vx","flags":["BROADCAST","MULTICAST","UP"],
            "mtu":1450,"master":"nimbus0","linkinfo":{"info_kind":"vxlan","info_data":{"id":42,
            "local":"10.1.1.1","port_range":{"low":0,"high":0},"port":4789,"learning":true},
            "info_slave_kind":"bridge"}}]"#;
        let link = parse(json).expect("parses").expect("a link");
        assert_eq!(link.kind.as_deref(), Some("vxlan"));
        assert_eq!(link.master.as_deref(), Some("nimbus0"));
        assert_eq!(link.mtu, 1450);
        assert!(link.up);
        assert_eq!(
            link.vxlan,
            Some(VxlanInfo {
                vni: 42,
                local: Some("10.1.1.1".parse().expect("ip")),
                port: 4789
            })
        );
    }

    #[test]
    fn parses_a_tap_that_is_down() {
        let json = r#"[{"ifname":"nt0123456789","flags":["BROADCAST","MULTICAST"],"mtu":1500,
            "linkinfo":{"info_kind":"tun","info_data":{"type":"tap","user":"root"}}}]"#;
        let link = parse(json).expect("parses").expect("a link");
        assert_eq!(link.kind.as_deref(), Some("tun"));
        assert!(!link.up);
        assert_eq!(link.master, None);
        assert_eq!(link.vxlan, None);
    }

    #[test]
    fn port_command() {
        let cmd = set_port_cmd(&Shell::in_netns("h1"), "nimbus-vx", "nimbus0", 1450);
        assert_eq!(
            cmd.to_string(),
            "ip -n h1 link set dev nimbus-vx mtu 1450 master nimbus0 up"
        );
    }

    #[test]
    fn empty_and_broken_output() {
        assert_eq!(parse("[]").expect("parses"), None);
        assert!(parse("not json").is_err());
        let no_id = r#"[{"flags":[],"mtu":1500,"linkinfo":{"info_kind":"vxlan","info_data":{}}}]"#;
        assert!(parse(no_id).is_err());
    }
}
