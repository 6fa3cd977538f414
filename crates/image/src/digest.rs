//! Content digests (`sha256:<hex>`): the identity of an image's bytes, by which the
//! controller stores it and agents cache and verify it.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

/// A SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// A digest string that is not 64 hex digits (optionally after `sha256:`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sha256 digest (64 hex digits, optionally prefixed by `sha256:`)")]
pub struct DigestError(pub String);

impl Digest {
    /// Lower-case hex, without the algorithm prefix (also the blob's file name).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Digest of a file, read in 1 MiB blocks.
    pub fn of_file(path: &Path) -> std::io::Result<Digest> {
        Self::of_file_with_progress(path, |_| {})
    }

    /// Digest of a file; `progress` gets the bytes read so far after each block.
    pub fn of_file_with_progress(
        path: &Path,
        mut progress: impl FnMut(u64),
    ) -> std::io::Result<Digest> {
        let mut f = std::fs::File::open(path)?;
        let mut w = Sha256Writer::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(w.finish());
            }
            w.update(&buf[..n]);
            progress(w.bytes());
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let h = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DigestError(s.chars().take(80).collect()));
        }
        hex::decode_to_slice(h.to_ascii_lowercase(), &mut out)
            .map_err(|_| DigestError(s.chars().take(80).collect()))?;
        Ok(Digest(out))
    }
}

/// A running SHA-256 over bytes as they stream past, with their count.
#[derive(Default, Clone)]
pub struct Sha256Writer {
    hasher: Sha256,
    bytes: u64,
}

impl Sha256Writer {
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(self) -> Digest {
        Digest(self.hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_refuses() {
        let mut w = Sha256Writer::default();
        w.update(b"abc");
        let d = w.finish();
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.hex().parse::<Digest>(), Ok(d));
        assert_eq!(
            d.to_string().to_uppercase().replace("SHA256:", "").parse(),
            Ok(d)
        );
        for bad in ["", "sha256:", "xyz", &"g".repeat(64), &"a".repeat(63)] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_of_a_file_matches_the_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).expect("write");
        let mut w = Sha256Writer::default();
        w.update(&data);
        assert_eq!(w.bytes(), data.len() as u64);
        assert_eq!(Digest::of_file(&p).expect("digest"), w.finish());
    }
}
