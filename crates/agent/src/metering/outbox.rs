//! Samples waiting to reach the controller: kept in `<state dir>/usage-outbox.json` (so a
//! closing sample survives an agent restart, and a VM's directory may go with its delete),
//! pushed in batches, removed once the controller acknowledged them.
//!
//! Counters are cumulative, so when the outbox is full the oldest sample that a later one of
//! the same meter supersedes is dropped: that only coarsens the intervals, it loses no usage.

use crate::instance::files::{read_json, write_json};
use nimbus_agent_api::{UsageAck, UsageBatch, UsageSample};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// Most samples kept while the controller is unreachable.
pub const OUTBOX_MAX: usize = 20_000;
/// Most samples per request.
const BATCH_MAX: usize = 500;

/// The pending samples of this host.
pub struct Outbox {
    path: PathBuf,
    pending: Mutex<Vec<UsageSample>>,
    /// Woken when a closing sample arrives, so it is sent at once.
    urgent: Notify,
}

impl Outbox {
    /// Loads the outbox file (a missing or unreadable one is empty).
    pub fn load(path: PathBuf) -> Self {
        let pending = read_json::<Vec<UsageSample>>(&path)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e.chain(), "usage outbox unreadable; starting empty");
                None
            })
            .unwrap_or_default();
        Self {
            path,
            pending: Mutex::new(pending),
            urgent: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<UsageSample>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds samples and persists.
    pub fn add(&self, samples: Vec<UsageSample>) {
        if samples.is_empty() {
            return;
        }
        let urgent = samples.iter().any(|s| s.last);
        {
            let mut pending = self.lock();
            pending.extend(samples);
            trim(&mut pending, OUTBOX_MAX);
            self.persist(&pending);
        }
        if urgent {
            self.urgent.notify_one();
        }
    }

    /// Up to `n` of the oldest pending samples.
    pub fn peek(&self, n: usize) -> Vec<UsageSample> {
        self.lock().iter().take(n).cloned().collect()
    }

    /// Removes acknowledged samples.
    pub fn remove(&self, sent: &[UsageSample]) {
        let keys: HashSet<_> = sent.iter().map(UsageSample::key).collect();
        let mut pending = self.lock();
        pending.retain(|s| !keys.contains(&s.key()));
        self.persist(&pending);
    }

    /// Number of pending samples.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No sample is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn persist(&self, pending: &[UsageSample]) {
        if let Err(e) = write_json(&self.path, &pending) {
            tracing::warn!(error = %e.chain(), "cannot persist the usage outbox");
        }
    }
}

/// Drops the oldest samples that a later sample of the same meter supersedes until at most
/// `max` remain (then the oldest of all).
pub fn trim(pending: &mut Vec<UsageSample>, max: usize) {
    if pending.len() <= max {
        return;
    }
    let mut newest = std::collections::HashMap::new();
    for s in pending.iter() {
        let e = newest.entry(s.meter_id).or_insert(s.seq);
        *e = (*e).max(s.seq);
    }
    let mut excess = pending.len() - max;
    pending.retain(|s| {
        let superseded = newest.get(&s.meter_id).is_some_and(|n| *n > s.seq);
        if excess > 0 && superseded {
            excess -= 1;
            false
        } else {
            true
        }
    });
    if pending.len() > max {
        let drop = pending.len() - max;
        pending.drain(..drop);
    }
}

/// Pushes the outbox to the controller every `every` (and at once for closing samples),
/// forever; abort the task to stop.
pub async fn push_loop(
    outbox: std::sync::Arc<Outbox>,
    controllers: std::sync::Arc<crate::controllers::ControllerUrls>,
    tls: Option<nimbus_pki::rustls::ClientConfig>,
    host: String,
    token: Option<String>,
    every: Duration,
) {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15));
    let http = match crate::controller_link::client(builder, tls.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; usage is not pushed");
            return;
        }
    };
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = outbox.urgent.notified() => {}
        }
        while !outbox.is_empty() {
            let samples = outbox.peek(BATCH_MAX);
            let batch = UsageBatch {
                host: host.clone(),
                samples,
            };
            let Some(url) = controllers.url("/v1/internal/usage/samples") else {
                return;
            };
            let request = http.post(&url).json(&batch);
            let sent = crate::controller_link::authorize(request, token.as_deref())
                .send()
                .await
                .and_then(|r| r.error_for_status());
            match sent {
                Ok(resp) => {
                    let ack: UsageAck = resp.json().await.unwrap_or_default();
                    tracing::debug!(
                        stored = ack.stored,
                        duplicates = ack.duplicates,
                        "usage pushed"
                    );
                    outbox.remove(&batch.samples);
                    if failing {
                        tracing::info!("usage samples reach the controller again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(url, error = %e, pending = outbox.len(), "cannot push usage samples; keeping them");
                        failing = true;
                    }
                    controllers.failed();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_agent_api::MeterKind;
    use uuid::Uuid;

    fn s(meter: u128, seq: u64, last: bool) -> UsageSample {
        UsageSample {
            meter_id: Uuid::from_u128(meter),
            seq,
            kind: MeterKind::Instance,
            instance_id: Uuid::nil(),
            started_unix_ms: 0,
            sampled_unix_ms: seq,
            vcpus: 1,
            memory_mib: 1,
            running_ms: seq,
            cpu_ns: 0,
            net_rx_bytes: 0,
            net_tx_bytes: 0,
            rss_bytes: 0,
            storage_bytes: 0,
            storage_kib_seconds: 0,
            last,
        }
    }

    #[test]
    fn trimming_drops_superseded_samples_first() {
        let mut v = vec![
            s(1, 0, false),
            s(2, 0, false),
            s(1, 1, false),
            s(1, 2, true),
        ];
        trim(&mut v, 2);
        let keys: Vec<_> = v.iter().map(|x| (x.meter_id.as_u128(), x.seq)).collect();
        assert_eq!(keys, vec![(2, 0), (1, 2)], "the newest of each meter stays");
    }

    #[test]
    fn persists_and_acknowledges() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("outbox.json");
        let o = Outbox::load(path.clone());
        o.add(vec![s(1, 0, false), s(1, 1, false)]);
        let again = Outbox::load(path.clone());
        assert_eq!(again.len(), 2, "survives a restart");
        again.remove(&again.peek(1));
        assert_eq!(Outbox::load(path).peek(10), vec![s(1, 1, false)]);
    }
}
