//! Join tokens: `nmbj_<secret>_<CA fingerprint>`. The secret (256 random bits, stored hashed
//! by the controller) authorises one enrolment; the fingerprint lets the new host check it
//! talks to this cloud's controller before it trusts anything the controller says (as
//! kubeadm's discovery hash does).

use crate::PkiError;

const PREFIX: &str = "nmbj_";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The secret part (hex); the controller stores its SHA-256.
    pub secret: String,
    /// SHA-256 of the CA certificate, lowercase hex.
    pub ca_fingerprint: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A new token for the CA of `ca_fingerprint`.
    pub fn generate(ca_fingerprint: &str) -> Self {
        let bytes: [u8; 32] = rand::random();
        Self {
            secret: hex::encode(bytes),
            ca_fingerprint: ca_fingerprint.to_string(),
        }
    }

    /// The token as the user passes it (`--join`).
    pub fn encode(&self) -> String {
        format!("{PREFIX}{}_{}", self.secret, self.ca_fingerprint)
    }

    /// Parses what the user passed.
    pub fn parse(s: &str) -> Result<Self, PkiError> {
        let bad = || {
            PkiError::Identity(
                "a join token looks like nmbj_<64 hex>_<64 hex>: copy it whole from `nimbus host join-token`"
                    .into(),
            )
        };
        let rest = s.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let (secret, fp) = rest.split_once('_').ok_or_else(bad)?;
        let hex64 = |x: &str| x.len() == 64 && x.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex64(secret) || !hex64(fp) {
            return Err(bad());
        }
        Ok(Self {
            secret: secret.to_ascii_lowercase(),
            ca_fingerprint: fp.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let t = JoinToken::generate(&"ab".repeat(32));
        assert_eq!(JoinToken::parse(&t.encode()).expect("parse"), t);
        assert_ne!(JoinToken::generate("x").secret, t.secret);
        for bad in [
            "",
            "nmbj_",
            "nmb_abc",
            &t.encode()[..60],
            &format!("{}_x", t.encode()),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }
}
