//! The guest's heartbeat: lines on its second serial port (`heartbeat.sock`).
//!
//! A task per running QEMU connects (retrying while QEMU sets up), records the host-side
//! arrival time of every line, and appends `<unix_ms_host> <line>` to `heartbeat.log`, which
//! is rotated to `heartbeat.log.1` at [`LOG_LIMIT`] bytes.

use super::lines::LineSplitter;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Size at which `heartbeat.log` is rotated.
pub const LOG_LIMIT: u64 = 4 << 20;

/// Arrival times of heartbeat lines, shared with status readers: the last one (monotonic,
/// and host Unix ms) and the first since the current QEMU started (host Unix ms).
#[derive(Debug, Default)]
pub struct LastBeat(Mutex<Beats>);

#[derive(Debug, Default, Clone, Copy)]
struct Beats {
    last: Option<Instant>,
    last_unix_ms: Option<u64>,
    first_unix_ms: Option<u64>,
}

impl LastBeat {
    fn lock(&self) -> std::sync::MutexGuard<'_, Beats> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a line that arrived now.
    pub fn beat(&self) {
        let ms = u64::try_from(chrono::Utc::now().timestamp_millis()).ok();
        let mut b = self.lock();
        b.last = Some(Instant::now());
        b.last_unix_ms = ms;
        b.first_unix_ms = b.first_unix_ms.or(ms);
    }

    /// Milliseconds since the last line, if any arrived.
    pub fn age_ms(&self) -> Option<u64> {
        let last = self.lock().last;
        last.map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Host Unix time (ms) of the last line.
    pub fn last_unix_ms(&self) -> Option<u64> {
        self.lock().last_unix_ms
    }

    /// Host Unix time (ms) of the first line since [`LastBeat::clear`].
    pub fn first_unix_ms(&self) -> Option<u64> {
        self.lock().first_unix_ms
    }

    /// Forgets every line (a new QEMU process starts).
    pub fn clear(&self) {
        *self.lock() = Beats::default();
    }
}

/// Starts reading heartbeats; abort the handle when QEMU exits.
pub fn spawn(id: Uuid, sock: PathBuf, log: PathBuf, last: Arc<LastBeat>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut log = HeartbeatLog::new(log);
        loop {
            let mut stream = match tokio::net::UnixStream::connect(&sock).await {
                Ok(s) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            tracing::debug!(instance_id = %id, "heartbeat channel connected");
            let mut lines = LineSplitter::new(4096);
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        for line in lines.push(&buf[..n]) {
                            last.beat();
                            log.append(&line);
                        }
                    }
                }
            }
            log.flush();
            tracing::debug!(instance_id = %id, "heartbeat channel closed");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// `heartbeat.log`, bounded by rotation.
struct HeartbeatLog {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    size: u64,
    last_flush: Instant,
}

impl HeartbeatLog {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            size: 0,
            last_flush: Instant::now(),
        }
    }

    fn append(&mut self, line: &str) {
        if self.size >= LOG_LIMIT {
            self.rotate();
        }
        if self.file.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => {
                    self.size = f.metadata().map_or(0, |m| m.len());
                    self.file = Some(BufWriter::new(f));
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot open heartbeat log");
                    return;
                }
            }
        }
        let ms = chrono::Utc::now().timestamp_millis();
        let entry = format!("{ms} {line}\n");
        if let Some(f) = &mut self.file {
            if f.write_all(entry.as_bytes()).is_ok() {
                self.size += entry.len() as u64;
            }
        }
        if self.last_flush.elapsed() >= Duration::from_secs(1) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
        self.last_flush = Instant::now();
    }

    fn rotate(&mut self) {
        self.flush();
        self.file = None;
        let old = self.path.with_extension("log.1");
        if let Err(e) = std::fs::rename(&self.path, &old) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate heartbeat log");
        }
        self.size = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_at_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("heartbeat.log");
        let mut log = HeartbeatLog::new(path.clone());
        let line = "x".repeat(1000);
        for _ in 0..(LOG_LIMIT / 1000 + 10) {
            log.append(&line);
        }
        log.flush();
        let cur = std::fs::metadata(&path).expect("current").len();
        let old = std::fs::metadata(path.with_extension("log.1"))
            .expect("rotated")
            .len();
        assert!((LOG_LIMIT..LOG_LIMIT + 2000).contains(&old), "{old}");
        assert!(cur > 0 && cur < 100_000, "{cur}");
        let text = std::fs::read_to_string(&path).expect("read");
        let first = text.lines().next().expect("line");
        let (ms, rest) = first.split_once(' ').expect("two fields");
        assert!(ms.parse::<i64>().is_ok() && rest == line);
    }

    #[tokio::test]
    async fn reader_records_arrival_of_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("heartbeat.sock");
        let log = dir.path().join("heartbeat.log");
        let last = Arc::new(LastBeat::default());
        let task = spawn(Uuid::nil(), sock.clone(), log.clone(), last.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        let (mut conn, _) = listener.accept().await.expect("accept");
        assert_eq!(last.age_ms(), None);
        tokio::io::AsyncWriteExt::write_all(&mut conn, b"hb 1.00 1\nhb 1.05 2\n")
            .await
            .expect("write");
        drop(conn);
        for _ in 0..50 {
            if last.age_ms().is_some() && std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        assert!(last.age_ms().is_some_and(|a| a < 5000));
        let (first, latest) = (last.first_unix_ms(), last.last_unix_ms());
        assert!(first.is_some() && first <= latest, "{first:?} {latest:?}");
        last.clear();
        assert_eq!((last.age_ms(), last.first_unix_ms()), (None, None));
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.ends_with(" hb 1.05 2\n"), "{text}");
    }
}
