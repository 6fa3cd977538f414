//! IMDSv2 session tokens: stateless, so a guest asking for tokens in a loop costs the agent
//! no memory. A token is `<expiry unix seconds>.<keyed BLAKE3 of (instance id, expiry)>`
//! under a key the agent draws at start: it is valid only for the instance it was issued to
//! (the server recomputes it for the instance the request comes from) and until it expires.
//! A restarted agent, or the host a VM migrated to, has another key: the guest's next request
//! gets 401 and asks for a new token, as EC2 clients do when a token goes stale.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// EC2's bounds of `X-aws-ec2-metadata-token-ttl-seconds`.
pub const MIN_TTL_SECS: u64 = 1;
pub const MAX_TTL_SECS: u64 = 21_600;

/// Issues and checks the tokens of one agent.
#[derive(Clone)]
pub struct Tokens {
    key: [u8; 32],
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { key: <secret> }")
    }
}

impl Tokens {
    /// Tokens under a fresh random key.
    pub fn random() -> Self {
        Self {
            key: rand::random(),
        }
    }

    /// A token for `instance`, valid for `ttl` from `now`.
    pub fn issue(&self, instance: Uuid, ttl: Duration, now: SystemTime) -> String {
        let expiry = unix_secs(now).saturating_add(ttl.as_secs());
        format!("{expiry}.{}", self.mac(instance, expiry).to_hex())
    }

    /// The seconds `token` has left for `instance` at `now`; `None` if it is not one of ours,
    /// belongs to another instance, or has expired.
    pub fn check(&self, token: &str, instance: Uuid, now: SystemTime) -> Option<u64> {
        let (expiry, mac) = token.split_once('.')?;
        let expiry: u64 = expiry.parse().ok()?;
        let mac = blake3::Hash::from_hex(mac).ok()?;
        // blake3::Hash compares in constant time.
        if mac != self.mac(instance, expiry) {
            return None;
        }
        expiry.checked_sub(unix_secs(now)).filter(|left| *left > 0)
    }

    fn mac(&self, instance: Uuid, expiry: u64) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(b"nimbus-imds-token-v1");
        h.update(instance.as_bytes());
        h.update(&expiry.to_be_bytes());
        h.finalize()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_bound_to_its_instance_its_key_and_its_lifetime() {
        let tokens = Tokens::random();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = SystemTime::now();
        let t = tokens.issue(a, Duration::from_secs(60), now);
        assert_eq!(tokens.check(&t, a, now), Some(60));
        assert_eq!(tokens.check(&t, b, now), None, "another instance");
        assert_eq!(Tokens::random().check(&t, a, now), None, "another agent");
        let later = now + Duration::from_secs(60);
        assert_eq!(tokens.check(&t, a, later), None, "expired");
        let (expiry, mac) = t.split_once('.').expect("dot");
        let longer = format!("{}.{mac}", expiry.parse::<u64>().expect("n") + 3600);
        assert_eq!(tokens.check(&longer, a, now), None, "a forged expiry");
        for junk in ["", ".", "abc", "1.zz", &format!("{expiry}.{}", &mac[2..])] {
            assert_eq!(tokens.check(junk, a, now), None, "{junk:?}");
        }
    }
}
