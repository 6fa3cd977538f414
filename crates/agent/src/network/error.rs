//! What host networking can fail with: every variant names the command or the datum at fault.

/// A failure of host network setup.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot run `{command}` (is iproute2 installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {secs} s")]
    Timeout { command: String, secs: u64 },
    #[error("cannot read the output of `{command}`: {detail}")]
    Output { command: String, detail: String },
    #[error("link {name} exists but is a {found} device, not a {expected} one")]
    WrongKind {
        name: String,
        found: String,
        expected: &'static str,
    },
    #[error("invalid {what} {value:?}")]
    Invalid { what: &'static str, value: String },
    #[error("cannot serve metadata in {netns}: {detail}")]
    Metadata { netns: String, detail: String },
    #[error("cannot answer DHCP on {bridge}: {detail}")]
    Dhcp { bridge: String, detail: String },
    #[error("cannot answer DNS in {netns}: {detail}")]
    Dns { netns: String, detail: String },
}
