//! A server thread of the host network (a network's DHCP responder, its DNS server): opened on
//! a thread of its own (which may enter another network namespace, never one of tokio's
//! pool), serving until its handle is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How often a worker looks at its stop flag: its blocking reads time out that often.
pub const POLL: Duration = Duration::from_millis(500);
/// How long [`spawn`] waits for the worker to open what it serves on.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running worker; dropping it stops the thread (within [`POLL`]).
#[derive(Debug)]
pub struct Worker {
    stop: Arc<AtomicBool>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts thread `name`: `open` makes what it serves on (its failure is answered here), then
/// `serve` runs until the stop flag it is given is set.
pub fn spawn<T: 'static>(
    name: String,
    open: impl FnOnce() -> Result<T, String> + Send + 'static,
    serve: impl FnOnce(T, &AtomicBool) + Send + 'static,
) -> Result<Worker, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || match open() {
            Ok(opened) => {
                let _ = ready_tx.send(Ok(()));
                serve(opened, &flag);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| e.to_string())?;
    ready_rx
        .recv_timeout(OPEN_TIMEOUT)
        .map_err(|e| e.to_string())??;
    Ok(Worker { stop })
}
