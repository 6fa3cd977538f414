//! Damage done on purpose, to check that integrity checks catch it.

use std::ops::Range;
use std::path::Path;

/// Flips the bytes of `span` in file `path` (at most 64 of them, from its middle) and answers
/// the file's content before, so that the test can repair it.
pub fn flip_bytes(path: &Path, span: Range<u64>) -> Vec<u8> {
    let good = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let (start, end) = (span.start as usize, span.end as usize);
    let from = start + (end - start) / 2;
    let mut bad = good.clone();
    for b in &mut bad[from..(from + 64).min(end)] {
        *b ^= 0x5a;
    }
    std::fs::write(path, &bad).unwrap_or_else(|e| panic!("damage {}: {e}", path.display()));
    good
}
