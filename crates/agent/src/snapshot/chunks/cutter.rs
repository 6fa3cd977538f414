//! Cutting a stream into content-defined chunks (FastCDC 2020) through one large buffer.
//!
//! `fastcdc`'s own `StreamCDC` keeps one chunk's worth of bytes and, for every chunk, copies
//! it out, shifts the rest of its buffer down and zero-fills it again: about six passes over
//! each byte, most of the cutter's time on a memory image. This cutter reads into a buffer
//! of many chunks and copies each chunk out once. Its cut points are `StreamCDC`'s (a cut
//! looks at most [`MAX_CHUNK`] bytes ahead, and every cut is made with that many bytes in
//! hand or at the end of the stream), so images cut before and after share their chunks.

use super::{AVG_CHUNK, MAX_CHUNK, MIN_CHUNK};
use fastcdc::v2020::{logarithm2, Normalization, MASKS};
use std::io::{self, Read};

/// FastCDC's masks for [`AVG_CHUNK`] at normalization level 1 (`StreamCDC::new`'s default):
/// small and large, each also shifted left by one.
fn masks() -> [u64; 4] {
    let bits = logarithm2(AVG_CHUNK);
    let level = Normalization::Level1.bits();
    let (small, large) = (
        MASKS[(bits + level) as usize],
        MASKS[(bits - level) as usize],
    );
    [small, large, small << 1, large << 1]
}

/// Bytes in hand from which the cut points are found by two threads (see [`cut_points`]).
const PARALLEL_FROM: usize = 512 << 10;

/// Cuts `R` into chunks, in stream order.
pub(super) struct Cutter<R> {
    from: R,
    /// Bytes read and not yet cut: `buf[start..filled]`.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    eof: bool,
    masks: [u64; 4],
    /// Ends of the chunks found in `buf[start..filled]`, relative to `start`, in order.
    cuts: std::collections::VecDeque<usize>,
    /// Bytes of `buf[start..]` already handed out as chunks.
    taken: usize,
}

impl<R: Read> Cutter<R> {
    /// A cutter reading `from` into a buffer of `buffer` bytes (at least two chunks' worth).
    pub(super) fn new(from: R, buffer: usize) -> Self {
        Self {
            from,
            buf: vec![0; buffer.max(2 * MAX_CHUNK as usize)],
            start: 0,
            filled: 0,
            eof: false,
            masks: masks(),
            cuts: Default::default(),
            taken: 0,
        }
    }

    /// Whether the next chunk can be had without reading.
    pub(super) fn in_hand(&self) -> bool {
        !self.cuts.is_empty()
    }

    /// Reads (one read at a time: a reader that follows a growing file answers what is
    /// there) until a cut is possible, and finds every cut point in what is in hand.
    fn fill(&mut self) -> io::Result<()> {
        self.start += self.taken;
        self.taken = 0;
        loop {
            let pending = self.filled - self.start;
            if self.eof || pending >= MAX_CHUNK as usize {
                self.cuts =
                    cut_points(&self.buf[self.start..self.filled], self.eof, self.masks).into();
                if !self.cuts.is_empty() || self.eof {
                    return Ok(());
                }
            }
            if self.buf.len() - self.filled < self.buf.len() / 2 {
                // Room for large reads again; the unfinished chunk moves to the front.
                self.buf.copy_within(self.start..self.filled, 0);
                self.filled -= self.start;
                self.start = 0;
            }
            match self.from.read(&mut self.buf[self.filled..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl<R: Read> Iterator for Cutter<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<io::Result<Vec<u8>>> {
        if self.cuts.is_empty() {
            if let Err(e) = self.fill() {
                return Some(Err(e));
            }
        }
        let end = self.cuts.pop_front()?;
        let chunk = self.buf[self.start + self.taken..self.start + end].to_vec();
        self.taken = end;
        Some(Ok(chunk))
    }
}

/// The chunk ends in `data` (which starts at a chunk's start), each found with a whole
/// cut's worth of bytes after the chunk's start, or at the end of the stream (`eof`).
///
/// With much in hand, a second thread finds the cut points from the middle on, as if a
/// chunk started there; the first, from the start, goes on until one of its cut points is
/// one of the second's, after which both would find the same ones (a cut point depends only
/// on where its chunk starts and the bytes after). So the points are those one thread finds.
fn cut_points(data: &[u8], eof: bool, masks: [u64; 4]) -> Vec<usize> {
    if data.len() < PARALLEL_FROM {
        return cuts_from(data, 0, eof, masks, |_| false);
    }
    let middle = data.len() / 2;
    std::thread::scope(|scope| {
        let second = scope.spawn(|| cuts_from(data, middle, eof, masks, |_| false));
        let mut first = cuts_from(data, 0, eof, masks, |end| end >= middle);
        let Ok(second) = second.join() else {
            return cuts_from(data, 0, eof, masks, |_| false);
        };
        let mut at = first.last().copied().unwrap_or(0);
        loop {
            if let Ok(i) = second.binary_search(&at) {
                first.extend_from_slice(&second[i + 1..]);
                return first;
            }
            if second.last().is_none_or(|&last| at > last) {
                // No meeting point: the first thread cuts the rest alone.
                first.extend(cuts_from(data, at, eof, masks, |_| false));
                return first;
            }
            match cuts_from(data, at, eof, masks, |_| true).first() {
                Some(&end) => {
                    first.push(end);
                    at = end;
                }
                None => return first,
            }
        }
    })
}

/// The chunk ends in `data` from `start` on (see [`cut_points`]), until `enough` says so of
/// an end found.
fn cuts_from(
    data: &[u8],
    start: usize,
    eof: bool,
    masks: [u64; 4],
    enough: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let [small, large, small_ls, large_ls] = masks;
    let mut ends = Vec::new();
    let mut at = start;
    while at < data.len() && (eof || data.len() - at >= MAX_CHUNK as usize) {
        let (_, len) = fastcdc::v2020::cut(
            &data[at..],
            MIN_CHUNK as usize,
            AVG_CHUNK as usize,
            MAX_CHUNK as usize,
            small,
            large,
            small_ls,
            large_ls,
        );
        at += len;
        ends.push(at);
        if enough(at) {
            break;
        }
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::pseudo_random;

    /// Answers at most `step` bytes per read, as a file followed while it grows does.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn stream_cdc(data: &[u8]) -> Vec<Vec<u8>> {
        fastcdc::v2020::StreamCDC::new(data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
            .map(|c| c.expect("chunk").data)
            .collect()
    }

    #[test]
    fn cuts_where_fastcdc_stream_cdc_cuts_whatever_the_reads_and_buffer() {
        // Random bytes, then runs of zeros and a short tail, as memory images have.
        let mut data = pseudo_random(3 << 20, 7);
        data.extend(std::iter::repeat_n(0u8, 300_000));
        data.extend(pseudo_random(50_001, 8));
        // Zeros cut at the same offsets from any start: the two threads never meet.
        let zeros = vec![0u8; 2_000_003];
        for data in [&data, &zeros] {
            let want = stream_cdc(data);
            for (step, buffer) in [
                (1 << 20, 4 << 20),
                (4097, 65_536),
                (usize::MAX, 100_000),
                (usize::MAX, 8 << 20),
            ] {
                let got: Vec<Vec<u8>> = Cutter::new(Trickle { data, step }, buffer)
                    .collect::<io::Result<_>>()
                    .expect("cut");
                assert_eq!(got.len(), want.len(), "step {step}, buffer {buffer}");
                assert!(
                    got == want,
                    "step {step}, buffer {buffer}: other cut points"
                );
            }
        }
    }

    #[test]
    fn short_and_empty_streams() {
        assert_eq!(Cutter::new(&[][..], 0).count(), 0);
        let tiny = [5u8; 100];
        let got: Vec<Vec<u8>> = Cutter::new(&tiny[..], 0)
            .map(|c| c.expect("chunk"))
            .collect();
        assert_eq!(got, vec![tiny.to_vec()]);
    }
}
