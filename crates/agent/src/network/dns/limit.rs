//! Rate limit of the DNS server, per source address: a guest is hostile, and one that floods
//! its gateway with queries must not take the server (or the host's CPU) from the others.
//! A token bucket per address; the table of addresses is bounded too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Queries a source may send per second, sustained.
pub const QUERIES_PER_SEC: f64 = 100.0;
/// Queries a source may send at once (a resolver asking A and AAAA for a few names).
pub const BURST: f64 = 200.0;
/// The most sources tracked; past it the ones with a full bucket are forgotten (a network
/// has at most as many sources as ports: port security keeps a guest to its own address).
const MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of one server.
#[derive(Debug, Default)]
pub struct RateLimit {
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimit {
    /// Whether a query from `source` at `now` is answered (and counts).
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&source) {
            self.forget_idle(now);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * QUERIES_PER_SEC;
        bucket.tokens = (bucket.tokens + refill).min(BURST);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }

    /// Forgets the sources whose bucket would be full again by `now`.
    fn forget_idle(&mut self, now: Instant) {
        self.buckets.retain(|_, b| {
            let refill = now.saturating_duration_since(b.at).as_secs_f64() * QUERIES_PER_SEC;
            b.tokens + refill < BURST
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_cut_at_the_burst_and_refills_at_the_rate() {
        let (mut limit, now) = (RateLimit::default(), Instant::now());
        let guest: IpAddr = "10.10.0.20".parse().expect("ip");
        let other: IpAddr = "10.10.0.21".parse().expect("ip");
        let answered = (0..1000).filter(|_| limit.allow(guest, now)).count();
        assert_eq!(answered, BURST as usize);
        assert!(limit.allow(other, now), "another guest is not affected");
        let later = now + Duration::from_millis(100);
        let refilled = (0..1000).filter(|_| limit.allow(guest, later)).count();
        assert_eq!(refilled, (QUERIES_PER_SEC / 10.0) as usize);
    }

    #[test]
    fn the_table_of_sources_is_bounded() {
        let (mut limit, now) = (RateLimit::default(), Instant::now());
        for i in 0..MAX_SOURCES as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            limit.allow(ip, now);
        }
        let new: IpAddr = "192.168.0.1".parse().expect("ip");
        assert!(!limit.allow(new, now), "full of busy sources: refused");
        let idle = now + Duration::from_secs(10);
        assert!(limit.allow(new, idle), "idle sources are forgotten");
        assert_eq!(limit.buckets.len(), 1);
    }
}
