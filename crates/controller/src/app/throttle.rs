//! Throttling of repeated authentication failures per client address: after `limit`
//! failures within `window`, a further failure from that address is answered 429 (with
//! `Retry-After`) instead of 401 until the oldest failure leaves the window. A valid token
//! is never refused (see `http/auth.rs`), so a bad client cannot lock out the operator.
//! Held in memory per controller; the address is the TCP peer's, or the client's from
//! `X-Forwarded-For` when the peer is a configured trusted proxy (docs/security.md).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Beyond this many tracked addresses, stale ones are pruned.
const PRUNE_ABOVE: usize = 10_000;

/// Failure counts per client address.
#[derive(Debug)]
pub struct AuthThrottle {
    limit: usize,
    window: Duration,
    failures: Mutex<HashMap<Option<IpAddr>, VecDeque<Instant>>>,
}

impl AuthThrottle {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1) as usize,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` while the address is blocked.
    pub fn check(&self, ip: Option<IpAddr>, now: Instant) -> Result<(), u64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(times) = map.get_mut(&ip) else {
            return Ok(());
        };
        self.expire(times, now);
        if times.len() < self.limit {
            return Ok(());
        }
        let oldest = times.front().copied().unwrap_or(now);
        let wait = self.window.saturating_sub(now.duration_since(oldest));
        Err(wait.as_secs().max(1))
    }

    /// Counts one failed authentication.
    pub fn record_failure(&self, ip: Option<IpAddr>, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, t| {
                t.back()
                    .is_some_and(|last| now.duration_since(*last) < self.window)
            });
        }
        let times = map.entry(ip).or_default();
        self.expire(times, now);
        times.push_back(now);
    }

    fn expire(&self, times: &mut VecDeque<Instant>, now: Instant) {
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_within_the_window_and_recovers() {
        let t = AuthThrottle::new(3, Duration::from_secs(60));
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(t.check(a, t0).is_ok(), "failure {i} is still allowed");
            t.record_failure(a, t0 + Duration::from_secs(i));
        }
        let wait = t
            .check(a, t0 + Duration::from_secs(10))
            .expect_err("blocked");
        assert_eq!(wait, 50, "until the first failure is 60 s old");
        assert!(t.check(b, t0).is_ok(), "other addresses are not affected");
        assert!(
            t.check(a, t0 + Duration::from_secs(60)).is_ok(),
            "window passed"
        );
    }
}
