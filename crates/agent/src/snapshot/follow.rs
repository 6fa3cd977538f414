//! Reading a memory image while QEMU still writes it.
//!
//! QEMU writes a background snapshot to a file sequentially (the plain `file:` stream, no
//! `mapped-ram`), so every byte below the file's current length is final. Cutting, hashing
//! and compressing those bytes while QEMU writes the rest makes a snapshot's total time
//! about QEMU's own instead of QEMU's plus ours. The file is followed rather than read from a
//! pipe so that QEMU never waits for us: with a background snapshot a guest write to a page
//! not yet saved waits until QEMU has saved it, and a pipe would make it wait for our
//! chunking too.
//!
//! ```text
//! take.rs ── follow_held ──▶ FollowSignal + Release    Following (chunker, blocking thread)
//!            held until the VM resumed  ──────────────▶ waits (not to take a core from QEMU)
//!            release() after the pause ───────────────▶ starts reading
//!            QEMU writes ─────────────────────────────▶ reads to the current end (1 MiB or more
//!                                                       at a time), else waits 2 ms
//!            signal.complete() once QEMU says done  ──▶ reads to the end, then end of stream
//!            dropped or signal.abort() on failure   ──▶ the read fails: nothing is recorded
//! ```

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WRITING: u8 = 0;
const COMPLETE: u8 = 1;
const ABORTED: u8 = 2;
/// Writing, but the reader must not start yet (see [`Release`]).
const HELD: u8 = 3;

/// How long the reader waits when it has caught up with QEMU.
const CAUGHT_UP_WAIT: Duration = Duration::from_millis(2);

/// While QEMU writes, the reader waits until at least this much is there (or what its
/// buffer holds, if less) before it reads: fewer, larger reads than one per chunk.
const MIN_READ: u64 = 1 << 20;

/// The writer's side: tells the reader that the file is complete, or that it never will be.
/// Dropped without [`FollowSignal::complete`] it aborts the reader, so an abandoned snapshot
/// never leaves a thread waiting for bytes that will not come.
#[derive(Debug)]
pub struct FollowSignal(Arc<AtomicU8>);

impl FollowSignal {
    /// The file is whole: the reader ends at its end.
    pub fn complete(self) {
        self.0.store(COMPLETE, Ordering::Release);
    }
}

impl Drop for FollowSignal {
    fn drop(&mut self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                matches!(s, WRITING | HELD).then_some(ABORTED)
            });
    }
}

/// Lets a held reader start (see [`follow_held`]).
#[derive(Debug, Clone)]
pub struct Release(Arc<AtomicU8>);

impl Release {
    /// The reader may read from now on.
    pub fn release(&self) {
        let _ = self
            .0
            .compare_exchange(HELD, WRITING, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The reader's side: reads `path` as it grows until the signal says it is complete.
#[derive(Debug)]
pub struct Following {
    path: PathBuf,
    file: Option<File>,
    /// Where in the file the next read starts.
    pos: u64,
    state: Arc<AtomicU8>,
}

/// A follower of `path` (which need not exist yet) from byte `start` on, and the signal
/// that ends it (tests; snapshots use [`follow_held`]).
#[cfg(test)]
pub fn follow(path: PathBuf, start: u64) -> (Following, FollowSignal) {
    follow_from_state(path, start, WRITING)
}

/// A follower of `path` from byte `start` on that reads nothing until released (or the file
/// is complete), with the signal that ends it:
/// a snapshot's chunker, whose threads would otherwise start while the VM is still paused
/// and take the cores QEMU needs to resume it.
pub fn follow_held(path: PathBuf, start: u64) -> (Following, FollowSignal, Release) {
    let (reader, signal) = follow_from_state(path, start, HELD);
    let release = Release(signal.0.clone());
    (reader, signal, release)
}

fn follow_from_state(path: PathBuf, start: u64, initial: u8) -> (Following, FollowSignal) {
    let state = Arc::new(AtomicU8::new(initial));
    let reader = Following {
        path,
        file: None,
        pos: start,
        state: state.clone(),
    };
    (reader, FollowSignal(state))
}

impl Following {
    fn aborted(&self) -> io::Error {
        io::Error::other(format!(
            "the memory image {} was abandoned before it was complete",
            self.path.display()
        ))
    }

    /// The file, opened once it exists.
    fn file(&mut self) -> io::Result<Option<&mut File>> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(mut f) => {
                    f.seek(SeekFrom::Start(self.pos))?;
                    self.file = Some(f);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(self.file.as_mut())
    }
}

impl Read for Following {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            // The state is read before the file: a read that finds nothing after QEMU was
            // done is the true end.
            let state = self.state.load(Ordering::Acquire);
            if state == ABORTED {
                return Err(self.aborted());
            }
            let pos = self.pos;
            if state == HELD {
                // Not yet: see `follow_held`.
            } else if let Some(file) = self.file()? {
                let written = file.metadata()?.len().saturating_sub(pos);
                let enough = written >= MIN_READ.min(buf.len() as u64);
                if enough || state == COMPLETE {
                    let n = file.read(buf)?;
                    if n > 0 || state == COMPLETE {
                        self.pos += n as u64;
                        return Ok(n);
                    }
                }
            } else if state == COMPLETE {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the memory image {} was never written", self.path.display()),
                ));
            }
            std::thread::sleep(CAUGHT_UP_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_what_is_written_while_it_grows_until_complete() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("stream");
        let (mut reader, signal) = follow(path.clone(), 0);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let mut f = File::create(&path).expect("create");
            for i in 0..50u8 {
                f.write_all(&[i; 1000]).expect("write");
                std::thread::sleep(Duration::from_millis(1));
            }
            signal.complete();
        });
        let mut all = Vec::new();
        reader.read_to_end(&mut all).expect("read");
        writer.join().expect("writer");
        let want: Vec<u8> = (0..50u8).flat_map(|i| [i; 1000]).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn reads_from_its_start_offset_on() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("stream");
        let mut data = vec![0u8; 4096];
        data.extend_from_slice(b"QEVM and the rest");
        std::fs::write(&path, &data).expect("write");
        let (mut reader, signal) = follow(path, 4096);
        signal.complete();
        let mut all = Vec::new();
        reader.read_to_end(&mut all).expect("read");
        assert_eq!(all, b"QEVM and the rest");
    }

    #[test]
    fn a_held_reader_reads_nothing_until_released() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("stream");
        std::fs::write(&path, vec![1u8; (MIN_READ * 2) as usize]).expect("write");
        let (mut reader, signal, release) = follow_held(path, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let n = reader.read(&mut buf).expect("read");
            let _ = tx.send(n);
            reader
        });
        let held = rx.recv_timeout(Duration::from_millis(100));
        assert!(held.is_err(), "read while held: {held:?}");
        release.release();
        let n = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("read once released");
        assert_eq!(n, 1 << 20);
        let mut reader = thread.join().expect("reader");
        drop(signal);
        assert!(
            reader.read(&mut [0u8; 16]).is_err(),
            "aborted once the signal is gone"
        );
    }

    #[test]
    fn an_abandoned_image_fails_the_reader() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("stream");
        std::fs::write(&path, b"partial").expect("write");
        let (mut reader, signal) = follow(path, 0);
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(signal);
        });
        let err = reader.read_to_end(&mut Vec::new()).expect_err("aborted");
        dropper.join().expect("dropper");
        assert!(err.to_string().contains("abandoned"), "{err}");
    }

    #[test]
    fn a_complete_image_never_written_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut reader, signal) = follow(tmp.path().join("never"), 0);
        signal.complete();
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
    }
}
