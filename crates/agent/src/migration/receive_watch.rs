//! Stall bound on the receiving side: a target whose incoming stream stops is given up
//! (its waiting QEMU killed; the VM runs on at its source), so a target does not wait
//! forever when neither its source nor the controller can tell it the migration is over
//! (the source host or the controller died, or the link to both was cut).
//!
//! The target's QEMU reports no progress while it receives (`query-migrate` on the
//! destination gives only a status), so progress is what the kernel counts: the bytes
//! received on the established connections of the migration port and of the NBD port (the
//! disk mirror), read with `ss` (iproute2). Any change of that sum is progress.
//!
//! The source decides first: its own stall bound (`stall_timeout_secs`, 10 s by default)
//! aborts a cut migration and the controller deletes the target. The target's bound is
//! twice that, so it acts only when the source could not; before the first byte it waits
//! [`FIRST_BYTE_WAIT`] (the source starts sending in the operation's next step, which a
//! controller taking the operation over may delay). A target that has resumed the guest
//! is never given up: from then on it *is* the VM.

use super::stall::StallWatch;
use nimbus_agent_api::{IncomingReady, MigrationPolicy};
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for the first byte from the source.
pub const FIRST_BYTE_WAIT: Duration = Duration::from_secs(60);
/// How often the counters are read.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watches what an incoming VM receives.
#[derive(Debug, Clone)]
pub struct ReceiveWatch {
    ports: Vec<u16>,
    listening_since: Instant,
    next_check: Instant,
    last: Option<u64>,
    /// How many times the received sum changed (the watched progress counter).
    changes: u64,
    stall: StallWatch,
}

/// Why the target gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GaveUp {
    #[error("the source sent nothing for {} s after the target was ready", .0.as_secs())]
    NothingArrived(Duration),
    #[error("nothing received from the source for {} s (the link may be down)", .0.as_secs())]
    Stalled(Duration),
}

impl ReceiveWatch {
    /// Starts watching the endpoints of `ready`, opened at `now`.
    pub fn new(ready: &IncomingReady, policy: &MigrationPolicy, now: Instant) -> Self {
        let mut ports: Vec<u16> = ready.nbd.iter().map(|n| n.port).collect();
        ports.extend(uri_port(&ready.migration_uri));
        let bound = Duration::from_secs(policy.stall_timeout_secs.max(1) * 2);
        Self {
            ports,
            listening_since: now,
            next_check: now,
            last: None,
            changes: 0,
            stall: StallWatch::new("bytes received", bound, now),
        }
    }

    /// The ports whose connections are counted.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Whether the counters should be read again.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_check
    }

    /// Feeds the bytes received so far (over the watched ports' current connections).
    pub fn observe(&mut self, received: u64, now: Instant) -> Result<(), GaveUp> {
        self.next_check = now + CHECK_EVERY;
        if self.last.is_none() && received == 0 {
            let waited = now.saturating_duration_since(self.listening_since);
            if waited >= FIRST_BYTE_WAIT {
                return Err(GaveUp::NothingArrived(waited));
            }
            self.stall.restart(now);
            return Ok(());
        }
        if self.last != Some(received) {
            self.last = Some(received);
            self.changes += 1;
        }
        self.stall
            .observe(self.changes, now)
            .map_err(|e| GaveUp::Stalled(e.quiet))
    }
}

/// The port of `tcp:HOST:PORT` (or `tcp:[V6]:PORT`).
fn uri_port(uri: &str) -> Option<u16> {
    uri.rsplit(':').next()?.parse().ok()
}

/// Bytes received so far on the established TCP connections whose local port is one of
/// `ports` (this network namespace), from `ss -tin`.
pub async fn bytes_received(ports: &[u16]) -> std::io::Result<u64> {
    if ports.is_empty() {
        return Ok(0);
    }
    let filter = ports
        .iter()
        .map(|p| format!("sport = :{p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let out = tokio::process::Command::new("ss")
        .args(["-tinH", "state", "established"])
        .arg(format!("( {filter} )"))
        .output()
        .await?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ss failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(sum_bytes_received(&String::from_utf8_lossy(&out.stdout)))
}

/// The sum of the `bytes_received:N` fields of `ss -i` output.
fn sum_bytes_received(ss: &str) -> u64 {
    ss.split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_received:"))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_agent_api::NbdTarget;

    fn ready() -> IncomingReady {
        IncomingReady {
            migration_uri: "tcp:10.249.0.12:49152".into(),
            nbd: Some(NbdTarget {
                host: "10.249.0.12".into(),
                port: 40000,
                export: "disk-x".into(),
            }),
            tls: true,
        }
    }

    fn policy() -> MigrationPolicy {
        MigrationPolicy::default()
    }

    #[test]
    fn watches_the_migration_and_nbd_ports() {
        let w = ReceiveWatch::new(&ready(), &policy(), Instant::now());
        assert_eq!(w.ports(), &[40000, 49152]);
        assert_eq!(uri_port("tcp:[fd00::1]:5000"), Some(5000));
    }

    #[test]
    fn reads_the_received_bytes_of_every_connection() {
        let ss = "0 0 10.249.0.12:49152 10.249.0.11:51234\n\t cubic wscale:7,7 rto:204 \
                  bytes_sent:120 bytes_acked:121 bytes_received:7340032 segs_out:10\n\
                  0 0 10.249.0.12:40000 10.249.0.11:40100\n\t bytes_received:4096 lastrcv:8\n";
        assert_eq!(sum_bytes_received(ss), 7340032 + 4096);
        assert_eq!(sum_bytes_received(""), 0);
    }

    #[test]
    fn gives_up_after_twice_the_stall_bound_or_when_nothing_ever_came() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Default stall bound 10 s: the target's is 20 s.
        let mut w = ReceiveWatch::new(&ready(), &policy(), t0);
        assert_eq!(w.observe(0, t0 + s(30)), Ok(()), "waiting for the source");
        assert_eq!(w.observe(1 << 20, t0 + s(31)), Ok(()));
        assert_eq!(w.observe(5 << 20, t0 + s(40)), Ok(()), "grew");
        assert_eq!(w.observe(5 << 20, t0 + s(59)), Ok(()), "19 s quiet");
        // A connection that closed makes the sum drop: a change, so progress.
        assert_eq!(w.observe(1 << 20, t0 + s(61)), Ok(()));
        let err = w.observe(1 << 20, t0 + s(82)).expect_err("21 s quiet");
        assert_eq!(err, GaveUp::Stalled(s(21)));
        assert!(
            err.to_string()
                .contains("nothing received from the source for 21 s"),
            "{err}"
        );

        let mut never = ReceiveWatch::new(&ready(), &policy(), t0);
        assert_eq!(never.observe(0, t0 + s(59)), Ok(()));
        let err = never.observe(0, t0 + s(60)).expect_err("nothing came");
        assert_eq!(err, GaveUp::NothingArrived(s(60)));
        assert!(!never.due(t0 + s(60)) && never.due(t0 + s(61)));
    }
}
