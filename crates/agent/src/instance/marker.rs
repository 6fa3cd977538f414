//! Following `console.log` for the image's ready marker.
//!
//! QEMU appends to `console.log` across launches (`logappend=on`), so the follower starts
//! at the log's end as of the launch (or the last reset) and only a marker printed after
//! that counts.

use super::lines::LineSplitter;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// Most bytes read per poll.
const READ_CHUNK: usize = 1 << 20;

/// Looks for a marker line in a growing log file.
#[derive(Debug)]
pub struct MarkerFollower {
    path: PathBuf,
    marker: Option<String>,
    offset: u64,
    lines: LineSplitter,
    found: bool,
}

impl MarkerFollower {
    /// Follows `path` from `offset` for a line containing `marker` (`None`: never ready).
    pub fn new(path: PathBuf, marker: Option<String>, offset: u64) -> Self {
        Self {
            path,
            marker,
            offset,
            lines: LineSplitter::new(64 * 1024),
            found: false,
        }
    }

    /// Starts over from `offset` (the guest was reset).
    pub fn restart(&mut self, offset: u64) {
        self.offset = offset;
        self.lines = LineSplitter::new(64 * 1024);
        self.found = false;
    }

    /// Where the search (re)started or has read up to.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads what was appended since the last poll; true once the marker has appeared.
    pub fn poll(&mut self) -> bool {
        let Some(marker) = &self.marker else {
            return false;
        };
        if self.found {
            return true;
        }
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return false;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        let Ok(n) = file.take(READ_CHUNK as u64).read_to_end(&mut buf) else {
            return false;
        };
        self.offset += n as u64;
        self.found = self
            .lines
            .push(&buf)
            .iter()
            .any(|line| line.contains(marker.as_str()));
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn only_markers_after_the_offset_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        std::fs::write(&path, "old boot\nnimbus-guest ready\n").expect("write");
        let start = std::fs::metadata(&path).expect("meta").len();
        let mut f = MarkerFollower::new(path.clone(), Some("nimbus-guest ready".into()), start);
        assert!(!f.poll());
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        file.write_all(b"booting\nnimbus-guest re").expect("write");
        assert!(!f.poll(), "a partial line is not the marker");
        file.write_all(b"ady\r\n").expect("write");
        assert!(f.poll());
        assert!(f.poll(), "stays found");
        let end = std::fs::metadata(&path).expect("meta").len();
        f.restart(end);
        assert!(!f.poll());
    }

    #[test]
    fn without_marker_or_file_never_ready() {
        let mut f = MarkerFollower::new("/nonexistent/console.log".into(), Some("x".into()), 0);
        assert!(!f.poll());
        let mut f = MarkerFollower::new("/nonexistent/console.log".into(), None, 0);
        assert!(!f.poll());
    }
}
