//! Replacing a small state file whole, safely against readers and against other writers of
//! the same file in this process.
//!
//! - A reader never sees half a file: the new content goes to a temporary file in the same
//!   directory, renamed over the old one.
//! - Each write has a temporary file of its own (named by `tempfile`, created exclusively),
//!   so two tasks writing one file at once never rename each other's temporary away (a
//!   name per process did: `cannot stat …/meter.json.6264.tmp`).
//! - Writes of one file are ordered by their call: each takes a number when it is called and
//!   the writes of a file take turns; a write whose turn comes after a newer one landed is
//!   dropped, so an older state never replaces a newer one.
//!
//! Agents sharing a host-wide file (the accelerator cache) are separate processes: their
//! temporaries never collide either, and the last rename wins.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The writes of one file in flight.
#[derive(Default)]
struct Turns {
    /// The number the next write of the file takes.
    next: u64,
    /// Holders of this entry (it is removed with the last one).
    writers: usize,
    /// The number of the newest write that landed; held while a write renames.
    landed: Arc<Mutex<Option<u64>>>,
}

/// The files being written, by path.
static FILES: Mutex<BTreeMap<PathBuf, Turns>> = Mutex::new(BTreeMap::new());

fn files() -> MutexGuard<'static, BTreeMap<PathBuf, Turns>> {
    FILES.lock().unwrap_or_else(|p| p.into_inner())
}

/// A write's place in its file's order.
struct Ticket {
    path: PathBuf,
    number: u64,
    landed: Arc<Mutex<Option<u64>>>,
}

impl Ticket {
    fn take(path: &Path) -> Self {
        let mut files = files();
        let turns = files.entry(path.to_path_buf()).or_default();
        let number = turns.next;
        turns.next += 1;
        turns.writers += 1;
        Self {
            path: path.to_path_buf(),
            number,
            landed: turns.landed.clone(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut files = files();
        if let Some(turns) = files.get_mut(&self.path) {
            turns.writers -= 1;
            if turns.writers == 0 {
                files.remove(&self.path);
            }
        }
    }
}

/// Replaces `path` with `bytes` (see the module doc). `Ok` also when a newer write of the
/// same file, called later, already landed: this one's content is older.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let ticket = Ticket::take(path);
    let mut landed = ticket.landed.lock().unwrap_or_else(|p| p.into_inner());
    if landed.is_some_and(|n| n > ticket.number) {
        tracing::debug!(path = %path.display(), "a newer state of the file was written first");
        return Ok(());
    }
    write_and_rename(path, bytes)?;
    *landed = Some(ticket.number);
    Ok(())
}

fn write_and_rename(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(Error::io("create a temporary file in", dir))?;
    tmp.write_all(bytes)
        .map_err(Error::io("write", tmp.path()))?;
    // On failure the temporary file is removed when `tmp` drops.
    tmp.persist(path)
        .map(drop)
        .map_err(|e| Error::io("rename", path)(e.error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> u64 {
        let text = std::fs::read_to_string(path).expect("read");
        text.parse().expect("a whole number")
    }

    #[test]
    fn many_concurrent_writers_of_one_file_never_fail_nor_leave_temporaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meter.json");
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        replace(&path, (t * 1000 + i).to_string().as_bytes())
                            .expect("every write succeeds");
                        // A reader in between always finds a whole value.
                        assert!(read(&path) < 8000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        // The one write called after all others is the one that stays.
        replace(&path, b"424242").expect("last write");
        assert_eq!(read(&path), 424242);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("meter.json")]);
        assert!(!files().contains_key(&path));
    }

    #[test]
    fn an_older_write_that_gets_its_turn_late_does_not_replace_a_newer_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        replace(&path, b"1").expect("first");
        // Hold the file's turn, so that the older write waits for it...
        let first = Ticket::take(&path);
        let turn = first.landed.clone();
        let mut landed = turn.lock().expect("turn");
        let older = {
            let path = path.clone();
            std::thread::spawn(move || replace(&path, b"2"))
        };
        let taken = |n: u64| files().get(&path).map(|t| t.next) >= Some(n);
        for _ in 0..5000 {
            if taken(2) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(taken(2), "the older write never took its number");
        // ...while a write called after it lands first (as `replace` does in its turn).
        let newer = Ticket::take(&path);
        write_and_rename(&path, b"3").expect("newer write");
        *landed = Some(newer.number);
        drop(landed);
        older.join().expect("older").expect("older write");
        assert_eq!(read(&path), 3, "the write called last wins");
    }
}
