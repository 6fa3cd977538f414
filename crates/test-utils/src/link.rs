//! Faults on the network between two hosts of a test cloud, as a failed or congested switch
//! port would make, while each host keeps its link to the controller.
//!
//! An nftables table in the first host's namespace (`inet nimbus-link-<pid>-<n>`) drops every
//! packet to and from the second host's address ([`LinkFault::cut`]), or those beyond a rate
//! ([`LinkFault::throttle`]). Dropping the [`LinkFault`] (or [`LinkFault::restore`]) deletes
//! the table; the namespace's removal at the end of the test would too.

use anyhow::{bail, Context};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fault on a link; removed when dropped.
pub struct LinkFault {
    netns: String,
    table: String,
    restored: bool,
}

impl LinkFault {
    /// Drops all traffic between the namespace `netns` and `peer`.
    pub fn cut(netns: &str, peer: Ipv4Addr) -> anyhow::Result<Self> {
        Self::apply(netns, peer, "drop")
    }

    /// Drops the traffic between `netns` and `peer` beyond `mbytes_per_s` in each direction.
    pub fn throttle(netns: &str, peer: Ipv4Addr, mbytes_per_s: u32) -> anyhow::Result<Self> {
        Self::apply(
            netns,
            peer,
            &format!("limit rate over {mbytes_per_s} mbytes/second drop"),
        )
    }

    fn apply(netns: &str, peer: Ipv4Addr, verdict: &str) -> anyhow::Result<Self> {
        let table = format!(
            "nimbus-link-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let rules = format!(
            "table inet {table} {{\n\
             \tchain input {{ type filter hook input priority -10; ip saddr {peer} {verdict}; }}\n\
             \tchain output {{ type filter hook output priority -10; ip daddr {peer} {verdict}; }}\n\
             }}\n"
        );
        nft(netns, &["-f", "-"], Some(&rules))?;
        Ok(Self {
            netns: netns.to_string(),
            table,
            restored: false,
        })
    }

    /// Removes the fault.
    pub fn restore(mut self) -> anyhow::Result<()> {
        self.restored = true;
        nft(&self.netns, &["delete", "table", "inet", &self.table], None)
    }
}

impl Drop for LinkFault {
    fn drop(&mut self) {
        if !self.restored {
            let _ = nft(&self.netns, &["delete", "table", "inet", &self.table], None);
        }
    }
}

fn nft(netns: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (install nftables)")?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .context("nft's stdin")?
            .write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft {args:?} in {netns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
