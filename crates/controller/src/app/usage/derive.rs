//! The metering arithmetic, pure: samples -> intervals -> amounts clipped to a period.
//!
//! A meter's samples carry counters cumulative since the meter opened, so interval `i` of a
//! meter runs from sample `i-1` (or the meter's opening, with every counter at zero) to
//! sample `i` and used the difference. Samples missing in between (lost, or never taken
//! while the agent was down) only make an interval longer: nothing is lost or counted
//! twice. Usage inside an interval is taken as even, so a period that covers part of an
//! interval gets that part of it.

use nimbus_api::UsageAmounts;
use nimbus_store::UsageRow;
use std::collections::BTreeMap;
use uuid::Uuid;

/// KiB x seconds in a GiB x hour.
const KIB_S_PER_GIB_H: f64 = (1u64 << 20) as f64 * 3600.0;

/// What one meter used between two of its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub instance_id: Uuid,
    pub instance_name: String,
    pub project: String,
    pub kind: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub running_ms: u64,
    pub cpu_ns: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    /// Storage held over the interval, KiB x seconds.
    pub storage_kib_seconds: u64,
}

/// The intervals of samples ordered by meter and sequence (a repeated `(meter, seq)` counts
/// once).
pub fn intervals(samples: &[UsageRow]) -> Vec<Interval> {
    let mut out = Vec::new();
    let mut prev: Option<&UsageRow> = None;
    for s in samples {
        let p = prev.filter(|p| p.meter_id == s.meter_id);
        if p.is_some_and(|p| p.seq >= s.seq) {
            continue;
        }
        let (start_ms, running, cpu, rx, tx, storage) = match p {
            Some(p) => (
                p.sampled_ms,
                p.running_ms,
                p.cpu_ns,
                p.net_rx_bytes,
                p.net_tx_bytes,
                p.storage_kib_seconds,
            ),
            None => (s.started_ms, 0, 0, 0, 0, 0),
        };
        prev = Some(s);
        if s.sampled_ms <= start_ms {
            continue;
        }
        out.push(Interval {
            instance_id: s.instance_id,
            instance_name: s.instance_name.clone(),
            project: s.project.clone(),
            kind: s.kind.clone(),
            start_ms,
            end_ms: s.sampled_ms,
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            running_ms: s.running_ms.saturating_sub(running),
            cpu_ns: s.cpu_ns.saturating_sub(cpu),
            net_rx_bytes: s.net_rx_bytes.saturating_sub(rx),
            net_tx_bytes: s.net_tx_bytes.saturating_sub(tx),
            storage_kib_seconds: s.storage_kib_seconds.saturating_sub(storage),
        });
    }
    out
}

/// Amounts of an interval within `[from_ms, to_ms)` (in exact units, before rounding), and
/// the seconds it ran there.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Clipped {
    pub running_s: f64,
    pub vcpu_s: f64,
    pub cpu_s: f64,
    pub memory_mib_s: f64,
    pub disk_gib_h: f64,
    pub snapshot_gib_h: f64,
    pub net_rx: f64,
    pub net_tx: f64,
}

impl Clipped {
    /// Adds `o` to these amounts.
    pub fn add(&mut self, o: &Clipped) {
        self.running_s += o.running_s;
        self.vcpu_s += o.vcpu_s;
        self.cpu_s += o.cpu_s;
        self.memory_mib_s += o.memory_mib_s;
        self.disk_gib_h += o.disk_gib_h;
        self.snapshot_gib_h += o.snapshot_gib_h;
        self.net_rx += o.net_rx;
        self.net_tx += o.net_tx;
    }

    /// The API's amounts.
    pub fn amounts(&self) -> UsageAmounts {
        UsageAmounts {
            vcpu_seconds_allocated: self.vcpu_s,
            cpu_seconds_used: self.cpu_s,
            memory_mib_seconds: self.memory_mib_s,
            disk_gib_hours: self.disk_gib_h,
            snapshot_gib_hours: self.snapshot_gib_h,
            net_rx_bytes: self.net_rx.round() as u64,
            net_tx_bytes: self.net_tx.round() as u64,
        }
    }
}

/// The part of `i` inside `[from_ms, to_ms)`; `None` when they do not overlap.
pub fn clip(i: &Interval, from_ms: i64, to_ms: i64) -> Option<Clipped> {
    let start = i.start_ms.max(from_ms);
    let end = i.end_ms.min(to_ms);
    if end <= start || i.end_ms <= i.start_ms {
        return None;
    }
    let inside_ms = (end - start) as f64;
    let share = inside_ms / (i.end_ms - i.start_ms) as f64;
    let storage_gib_h = i.storage_kib_seconds as f64 / KIB_S_PER_GIB_H * share;
    match i.kind.as_str() {
        "disk" => {
            return Some(Clipped {
                disk_gib_h: storage_gib_h,
                ..Clipped::default()
            })
        }
        "snapshot" => {
            return Some(Clipped {
                snapshot_gib_h: storage_gib_h,
                ..Clipped::default()
            })
        }
        _ => {}
    }
    let running_s = i.running_ms as f64 / 1000.0 * share;
    Some(Clipped {
        running_s,
        vcpu_s: f64::from(i.vcpus) * running_s,
        cpu_s: i.cpu_ns as f64 / 1e9 * share,
        memory_mib_s: i.memory_mib as f64 * running_s,
        disk_gib_h: 0.0,
        snapshot_gib_h: 0.0,
        net_rx: i.net_rx_bytes as f64 * share,
        net_tx: i.net_tx_bytes as f64 * share,
    })
}

/// Usage of one instance in a period.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceTotal {
    pub instance_id: Uuid,
    pub instance_name: String,
    pub project: String,
    pub used: Clipped,
}

/// Sums the intervals of `samples` inside `[from_ms, to_ms)` per instance (of `project`
/// only, if given), ordered by project and instance name.
pub fn per_instance(
    samples: &[UsageRow],
    project: Option<&str>,
    from_ms: i64,
    to_ms: i64,
) -> Vec<InstanceTotal> {
    let mut by_id: BTreeMap<Uuid, InstanceTotal> = BTreeMap::new();
    for i in intervals(samples) {
        if project.is_some_and(|p| p != i.project) {
            continue;
        }
        let Some(c) = clip(&i, from_ms, to_ms) else {
            continue;
        };
        let entry = by_id.entry(i.instance_id).or_insert_with(|| InstanceTotal {
            instance_id: i.instance_id,
            instance_name: i.instance_name.clone(),
            project: i.project.clone(),
            used: Clipped::default(),
        });
        entry.used.add(&c);
    }
    let mut out: Vec<_> = by_id.into_values().collect();
    out.sort_by(|a, b| (&a.project, &a.instance_name).cmp(&(&b.project, &b.instance_name)));
    out
}

/// The amounts of a kind of meter's totals (see `Store::usage_totals`).
pub fn totals_of(t: &nimbus_store::UsageTotals) -> Clipped {
    let storage_gib_h = t.storage_kib_seconds / KIB_S_PER_GIB_H;
    match t.kind.as_str() {
        "disk" => Clipped {
            disk_gib_h: storage_gib_h,
            ..Clipped::default()
        },
        "snapshot" => Clipped {
            snapshot_gib_h: storage_gib_h,
            ..Clipped::default()
        },
        _ => Clipped {
            running_s: 0.0,
            vcpu_s: t.vcpu_ms / 1000.0,
            cpu_s: t.cpu_ns / 1e9,
            memory_mib_s: t.memory_mib_ms / 1000.0,
            disk_gib_h: 0.0,
            snapshot_gib_h: 0.0,
            net_rx: t.net_rx_bytes,
            net_tx: t.net_tx_bytes,
        },
    }
}

/// The sum of several instances' usage.
pub fn total<'a>(rows: impl IntoIterator<Item = &'a InstanceTotal>) -> Clipped {
    let mut t = Clipped::default();
    for r in rows {
        t.add(&r.used);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample of meter `m` (instance 7, 2 vCPUs, 256 MiB) opened at 0 s, taken at `at_s`,
    /// having run all along and used a quarter of a CPU, 1 kB/s in and out, 1 GiB of disk.
    fn sample(m: u128, seq: u64, at_s: i64) -> UsageRow {
        let ms = at_s * 1000;
        UsageRow {
            meter_id: Uuid::from_u128(m),
            seq,
            kind: "instance".into(),
            instance_id: Uuid::from_u128(7),
            instance_name: "web1".into(),
            project: "acme".into(),
            host: "host1".into(),
            started_ms: 0,
            sampled_ms: ms,
            vcpus: 2,
            memory_mib: 256,
            running_ms: ms as u64,
            cpu_ns: ms as u64 * 250_000,
            net_rx_bytes: ms as u64,
            net_tx_bytes: ms as u64,
            rss_bytes: 0,
            storage_bytes: 1 << 30,
            storage_kib_seconds: 0,
            last: false,
        }
    }

    fn used(samples: &[UsageRow], from_s: i64, to_s: i64) -> Clipped {
        total(&per_instance(samples, None, from_s * 1000, to_s * 1000))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn the_first_interval_starts_when_the_meter_opened() {
        let u = used(&[sample(1, 0, 10), sample(1, 1, 20)], 0, 100);
        assert!(close(u.running_s, 20.0));
        assert!(close(u.vcpu_s, 40.0));
        assert!(close(u.cpu_s, 5.0));
        assert!(close(u.memory_mib_s, 256.0 * 20.0));
        assert!(close(u.net_rx, 20_000.0));
        assert!(close(u.disk_gib_h, 0.0), "the disk has a meter of its own");
    }

    #[test]
    fn a_disk_meter_counts_storage_only_running_or_not() {
        let gib_h = KIB_S_PER_GIB_H as u64;
        let mut a = sample(5, 0, 1800);
        let mut b = sample(5, 1, 3600);
        for s in [&mut a, &mut b] {
            s.kind = "disk".into();
            s.cpu_ns = 0;
        }
        // 1 GiB for half an hour, then 3 GiB for half an hour (as the agent integrated).
        a.storage_kib_seconds = gib_h / 2;
        b.storage_kib_seconds = gib_h / 2 + 3 * gib_h / 2;
        let u = used(&[a, b], 0, 3600);
        assert!(close(u.disk_gib_h, 2.0), "{u:?}");
        assert!(close(u.running_s, 0.0) && close(u.vcpu_s, 0.0));
        assert!(close(used(&[sample(5, 0, 1800)], 0, 900).disk_gib_h, 0.0));
    }

    #[test]
    fn intervals_are_clipped_to_the_period() {
        let s = [sample(1, 0, 10), sample(1, 1, 20), sample(1, 2, 30)];
        let u = used(&s, 15, 25);
        assert!(close(u.running_s, 10.0), "half of two intervals: {u:?}");
        assert!(close(u.vcpu_s, 20.0));
        assert!(
            close(used(&s, 30, 40).running_s, 0.0),
            "the end is exclusive"
        );
        assert!(close(used(&s, 0, 5).running_s, 5.0));
    }

    #[test]
    fn a_resent_sample_counts_once() {
        let s = [sample(1, 0, 10), sample(1, 0, 10), sample(1, 1, 20)];
        assert!(close(used(&s, 0, 100).vcpu_s, 40.0));
    }

    #[test]
    fn missing_samples_make_a_longer_interval_not_a_gap() {
        // seq 1 and 2 never arrived (agent killed, controller down): seq 3 carries them.
        let s = [sample(1, 0, 10), sample(1, 3, 40)];
        let u = used(&s, 0, 100);
        assert!(close(u.running_s, 40.0));
        assert!(close(used(&s, 20, 30).running_s, 10.0), "spread evenly");
    }

    #[test]
    fn a_new_incarnation_starts_from_zero_and_adds_up() {
        // Meter 1 runs 0-20 s; the VM migrates and meter 2 (counters from zero) runs 21-41 s.
        let mut m2a = sample(2, 0, 10);
        let mut m2b = sample(2, 1, 20);
        for (s, at) in [(&mut m2a, 31_000), (&mut m2b, 41_000)] {
            s.started_ms = 21_000;
            s.sampled_ms = at;
            s.running_ms = (at - 21_000) as u64;
        }
        let s = [sample(1, 0, 10), sample(1, 1, 20), m2a, m2b];
        let u = used(&s, 0, 100);
        assert!(close(u.running_s, 40.0), "{u:?}");
        let rows = per_instance(&s, None, 0, 100_000);
        assert_eq!(rows.len(), 1, "one instance across both hosts");
    }

    #[test]
    fn counters_that_go_back_count_nothing() {
        let mut bad = sample(1, 1, 20);
        bad.cpu_ns = 0;
        bad.net_rx_bytes = 0;
        let u = used(&[sample(1, 0, 10), bad], 0, 100);
        assert!(close(u.cpu_s, 2.5) && close(u.net_rx, 10_000.0), "{u:?}");
    }

    #[test]
    fn projects_are_kept_apart_and_snapshots_count_as_storage() {
        let mut other = sample(3, 0, 10);
        other.project = "other".into();
        other.instance_id = Uuid::from_u128(8);
        let mut snap = sample(4, 0, 36);
        snap.kind = "snapshot".into();
        snap.storage_kib_seconds = 2 * (1 << 20) * 36;
        let s = [sample(1, 0, 10), other, snap];
        let acme = per_instance(&s, Some("acme"), 0, 100_000);
        assert_eq!(acme.len(), 1);
        let u = &acme[0].used;
        assert!(close(u.vcpu_s, 20.0), "the snapshot adds no compute: {u:?}");
        assert!(close(u.snapshot_gib_h, 2.0 * 36.0 / 3600.0));
        assert_eq!(per_instance(&s, None, 0, 100_000).len(), 2);
    }
}
