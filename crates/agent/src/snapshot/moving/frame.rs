//! The byte stream of a snapshot set (its format is the agent API's
//! [`nimbus_agent_api::snapshot_move::frame`]), read with this agent's errors.

use crate::error::{Error, Result};
use nimbus_agent_api::snapshot_move::frame::{self, FrameError};
use tokio::io::AsyncRead;

pub use frame::{encode_header, Header, MAX_HEADER};

/// Longest manifest accepted (a chunk list of a 64 GiB guest is about 8 million entries of
/// 80 bytes: far below; a bound against a hostile stream, not a product limit).
pub const MAX_MANIFEST: u64 = 256 << 20;

/// Reads the next frame header and the length of its data (the caller reads the data).
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<(Header, u64)> {
    frame::read_header(r).await.map_err(bad)
}

/// Reads `len` bytes of data bounded by `max`.
pub async fn read_data<R: AsyncRead + Unpin>(r: &mut R, len: u64, max: u64) -> Result<Vec<u8>> {
    frame::read_data(r, len, max).await.map_err(bad)
}

fn bad(e: FrameError) -> Error {
    Error::BadRequest(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_hostile_lengths_are_refused() {
        let h = Header::Layer {
            name: "disk.qcow2".into(),
            backing: None,
            digest: "ab".into(),
        };
        let mut bytes = encode_header(&h, 3);
        bytes.extend_from_slice(b"xyz");
        let mut r = &bytes[..];
        let (got, len) = read_header(&mut r).await.expect("header");
        assert_eq!((got, len), (h, 3));
        assert_eq!(read_data(&mut r, len, 10).await.expect("data"), b"xyz");
        assert!(read_data(&mut &b"xyz"[..], 3, 2).await.is_err(), "over max");
        let huge = (MAX_HEADER + 1).to_be_bytes();
        assert!(read_header(&mut &huge[..]).await.is_err());
        let cut = encode_header(&Header::End, 0);
        assert!(read_header(&mut &cut[..5]).await.is_err(), "cut short");
    }
}
