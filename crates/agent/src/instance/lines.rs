//! Splitting a byte stream from a guest into bounded lines.

/// Longest line kept; the rest of a longer line is dropped (a guest cannot make the agent
/// buffer without bound).
pub const MAX_LINE: usize = 1 << 20;

/// Accumulates bytes and yields complete lines (without `\n` or a trailing `\r`).
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter keeping lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            partial: Vec::new(),
            max,
        }
    }

    /// Feeds bytes and returns the lines they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let room = self.max.saturating_sub(self.partial.len());
            let complete = chunk.last() == Some(&b'\n');
            let body = if complete {
                &chunk[..chunk.len() - 1]
            } else {
                chunk
            };
            self.partial
                .extend_from_slice(&body[..body.len().min(room)]);
            if complete {
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                lines.push(String::from_utf8_lossy(&line).into_owned());
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunks_and_strips_cr() {
        let mut s = LineSplitter::new(100);
        assert!(s.push(b"hb 1.0").is_empty());
        assert_eq!(s.push(b"0 1\r\nhb 2"), vec!["hb 1.00 1"]);
        assert_eq!(s.push(b"\n\n"), vec!["hb 2", ""]);
    }

    #[test]
    fn long_lines_are_truncated() {
        let mut s = LineSplitter::new(4);
        assert_eq!(s.push(b"abcdefgh"), Vec::<String>::new());
        assert_eq!(s.push(b"ij\nok\n"), vec!["abcd", "ok"]);
    }
}
