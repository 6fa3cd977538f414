//! CPU series of instances from metered usage: one point per usage interval, the share of
//! the instance's vCPUs its QEMU process used then.

use super::policy::CpuPoint;
use crate::app::usage::derive::Interval;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The CPU points of every instance in `intervals` (kind `instance`), in time order.
pub fn cpu_points(intervals: &[Interval]) -> BTreeMap<Uuid, Vec<CpuPoint>> {
    let mut out: BTreeMap<Uuid, Vec<CpuPoint>> = BTreeMap::new();
    for i in intervals {
        if i.kind != "instance" || i.running_ms == 0 || i.vcpus == 0 {
            continue;
        }
        let capacity_ns = i.running_ms as f64 * 1e6 * f64::from(i.vcpus);
        out.entry(i.instance_id).or_default().push(CpuPoint {
            at_ms: i.end_ms,
            cpu_pct: 100.0 * i.cpu_ns as f64 / capacity_ns,
        });
    }
    for points in out.values_mut() {
        points.sort_by_key(|p| p.at_ms);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(vcpus: u32, running_ms: u64, cpu_ns: u64, end_ms: i64) -> Interval {
        Interval {
            instance_id: Uuid::nil(),
            instance_name: "w".into(),
            project: "p".into(),
            kind: "instance".into(),
            start_ms: end_ms - running_ms as i64,
            end_ms,
            vcpus,
            memory_mib: 256,
            running_ms,
            cpu_ns,
            net_rx_bytes: 0,
            net_tx_bytes: 0,
            storage_kib_seconds: 0,
        }
    }

    #[test]
    fn cpu_share_of_the_vcpus() {
        // 2 vCPUs for 10 s = 20 CPU-seconds offered; 15 used = 75%.
        let points = cpu_points(&[
            interval(2, 10_000, 15_000_000_000, 20_000),
            interval(2, 10_000, 5_000_000_000, 10_000),
        ]);
        let p = &points[&Uuid::nil()];
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].at_ms, p[0].cpu_pct), (10_000, 25.0));
        assert_eq!(p[1].cpu_pct, 75.0);
        assert!(
            cpu_points(&[interval(2, 0, 1, 5)]).is_empty(),
            "no running time"
        );
    }
}
