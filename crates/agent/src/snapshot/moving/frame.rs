//! The byte stream of a snapshot set: a sequence of frames, each
//! `u32 BE header length | header JSON | u64 BE data length | data`, ending with `End`.
//! Every frame's data is checked on arrival: a chunk against its name, a layer against the
//! digest in its header, a manifest by parsing.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest header accepted.
const MAX_HEADER: u32 = 64 << 10;
/// Longest manifest accepted (a chunk list of a 64 GiB guest is about 8 million entries of
/// 80 bytes: far below; a bound against a hostile stream, not a product limit).
pub const MAX_MANIFEST: u64 = 256 << 20;

/// What a frame carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Header {
    /// A memory chunk named by its BLAKE3 digest, as its pack stores it (zstd-compressed or
    /// raw): copied as is, checked on arrival after decompression.
    Chunk {
        hash: String,
        #[serde(default)]
        zstd: bool,
    },
    /// A frozen disk layer: `disk.qcow2` (the first) or `<uuid>.qcow2`; `backing` names the
    /// layer under it, `None` for the first (on the image's base, or on nothing).
    Layer {
        name: String,
        backing: Option<String>,
        digest: String,
    },
    /// A snapshot manifest (JSON) whose disk path is its layer's name.
    Manifest,
    /// The layer the guest writes: `name` itself (cold, or shared storage), or a fresh one on
    /// `name` (live with local disks).
    Top { name: String, fresh: bool },
    /// The stream is complete.
    End,
}

/// Encodes one frame header and the length of the data that follows it.
pub fn encode_header(header: &Header, data_len: u64) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + 12);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&data_len.to_be_bytes());
    out
}

/// Reads the next frame header and the length of its data (the caller reads the data).
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<(Header, u64)> {
    let len = r.read_u32().await.map_err(broken)?;
    if len > MAX_HEADER {
        return Err(Error::BadRequest(format!(
            "snapshot stream: a frame header of {len} bytes (at most {MAX_HEADER})"
        )));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json).await.map_err(broken)?;
    let header = serde_json::from_slice(&json)
        .map_err(|e| Error::BadRequest(format!("snapshot stream: bad frame header: {e}")))?;
    let data_len = r.read_u64().await.map_err(broken)?;
    Ok((header, data_len))
}

/// Reads `len` bytes of data bounded by `max`.
pub async fn read_data<R: AsyncRead + Unpin>(r: &mut R, len: u64, max: u64) -> Result<Vec<u8>> {
    if len > max {
        return Err(Error::BadRequest(format!(
            "snapshot stream: a frame of {len} bytes (at most {max})"
        )));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data).await.map_err(broken)?;
    Ok(data)
}

fn broken(e: std::io::Error) -> Error {
    Error::BadRequest(format!("the snapshot stream broke off: {e}"))
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
