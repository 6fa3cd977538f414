//! Stall detection: a transfer whose progress counter (memory bytes sent, disk mirror bytes
//! copied) has not grown for the policy's `stall_timeout_secs` is given up, so a cut link
//! aborts a migration in seconds instead of at its overall timeout (TCP would keep QEMU's
//! send blocked for many minutes). Pure: fed the counter and the time by its caller.

use std::time::Duration;
use tokio::time::Instant;

/// Watches one progress counter.
#[derive(Debug, Clone)]
pub struct StallWatch {
    what: &'static str,
    bound: Duration,
    best: u64,
    since: Instant,
}

/// A transfer that made no progress for the bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no progress for {:.0} s ({what} stuck at {} MiB): the link to the target may be down",
    quiet.as_secs_f64(),
    at >> 20
)]
pub struct Stalled {
    pub what: &'static str,
    pub quiet: Duration,
    pub at: u64,
}

impl StallWatch {
    /// Starts watching `what` (e.g. "memory sent") from `now`.
    pub fn new(what: &'static str, bound: Duration, now: Instant) -> Self {
        Self {
            what,
            bound,
            best: 0,
            since: now,
        }
    }

    /// Feeds the counter's latest value; fails once it has not grown for the bound.
    pub fn observe(&mut self, value: u64, now: Instant) -> Result<(), Stalled> {
        if value > self.best {
            self.best = value;
            self.since = now;
            return Ok(());
        }
        let quiet = now.saturating_duration_since(self.since);
        if quiet >= self.bound {
            return Err(Stalled {
                what: self.what,
                quiet,
                at: self.best,
            });
        }
        Ok(())
    }

    /// Starts the quiet time over (after a pause nimbus made on purpose).
    pub fn restart(&mut self, now: Instant) {
        self.since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_keeps_it_alive_and_silence_ends_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = StallWatch::new("memory sent", s(10), t0);
        assert_eq!(
            w.observe(0, t0 + s(9)),
            Ok(()),
            "within the bound from the start"
        );
        assert_eq!(w.observe(5 << 20, t0 + s(12)), Ok(()), "grew: alive");
        assert_eq!(w.observe(5 << 20, t0 + s(21)), Ok(()));
        assert_eq!(
            w.observe(4 << 20, t0 + s(21)),
            Ok(()),
            "a smaller value is no progress"
        );
        let stalled = w
            .observe(5 << 20, t0 + s(22))
            .expect_err("10 s without growth");
        assert_eq!(stalled.at, 5 << 20);
        assert_eq!(stalled.quiet, s(10));
        assert_eq!(
            stalled.to_string(),
            "no progress for 10 s (memory sent stuck at 5 MiB): the link to the target may be down"
        );
        w.restart(t0 + s(22));
        assert_eq!(w.observe(5 << 20, t0 + s(31)), Ok(()), "restarted");
    }

    #[test]
    fn a_transfer_that_never_starts_stalls() {
        let t0 = Instant::now();
        let mut w = StallWatch::new("disk copied", Duration::from_secs(10), t0);
        assert!(w.observe(0, t0 + Duration::from_secs(10)).is_err());
    }
}
