//! End to end: measured service with real guests. Two hosts, instances packed on the first
//! (so the guests share it), a 2-second sampling interval; three identical tiny guests serve
//! every phase:
//! - KSM merges their identical pages (bounded wait for `pages_shared > 0`);
//! - a ping between two guests moves both guests' network counters;
//! - a stopped guest is billed up to its stop (its meter's closing sample), no further, but
//!   its disk still is;
//! - over a 40-second window in which the agent is killed with SIGKILL and the whole
//!   `nimbus up` (controller included) is restarted, a guest that ran all along is billed
//!   40 vCPU-seconds +/- 2%: nothing is lost while the agent or controller is down, and
//!   nothing is counted twice;
//! - a guest live-migrated to the other host is billed its wall-clock time once (the
//!   source's meter ends at the switch-over's STOP, the target's starts at RESUME).

use chrono::{DateTime, SecondsFormat, Utc};
use nimbus_api::{UsageQuery, UsageReport};
use nimbus_client::Client;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
/// The window over which billing is checked.
const WINDOW_SECS: i64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_end_to_end() {
    let opts = CloudOptions {
        hosts: 2,
        extra_args: vec![
            "--metering-interval-secs".into(),
            "2".into(),
            "--strategy".into(),
            "pack".into(),
        ],
    };
    let mut cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    create_instances(&cloud, &["m1", "m2", "m3"], "tiny").await;
    for name in ["m1", "m2", "m3"] {
        assert_eq!(instance(&client, name).await.host.as_deref(), Some("host1"));
    }

    let from = Utc::now();
    let pids_before = cloud.qemu_pids();
    ksm_merges_identical_guests(&client).await;
    ping_moves_network_counters(&cloud, &client, from).await;
    let stop = stopped_guest_is_billed_until_its_stop(&cloud, &client).await;
    restarts_lose_and_double_nothing(&mut cloud, from).await;
    let client = cloud.client().expect("client");
    let to = from + chrono::Duration::seconds(WINDOW_SECS);
    wait_until_past(to).await;
    for name in ["m1", "m2"] {
        assert_eq!(
            instance(&client, name).await.state,
            nimbus_api::InstanceState::Running
        );
    }
    let m1_pid = |pids: &[(std::path::PathBuf, i32)], id: &str| {
        pids.iter().find(|(d, _)| d.ends_with(id)).map(|(_, p)| *p)
    };
    let m1 = instance(&client, "m1").await.id.to_string();
    assert_eq!(
        m1_pid(&pids_before, &m1),
        m1_pid(&cloud.qemu_pids(), &m1),
        "m1's QEMU ran all along: it ran the whole window"
    );
    let report = billed_window(&cloud, &client, from, to).await;
    let m3 = report
        .instances
        .iter()
        .find(|i| i.instance == "m3")
        .expect("m3 billed");
    let (req, done) = stop;
    let lo = (req - from).num_milliseconds() as f64 / 1000.0 - 0.5;
    let hi = (done - from).num_milliseconds() as f64 / 1000.0 + 0.5;
    assert!(
        (lo..=hi).contains(&m3.running_seconds),
        "m3 stopped between {lo} s and {hi} s into the window, billed {} s",
        m3.running_seconds
    );
    metrics_show_usage_and_ksm(&cloud).await;
    migration_is_billed_once(&cloud, &client).await;
}

async fn migration_is_billed_once(cloud: &Cloud, client: &Client) {
    let start = Utc::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let req = nimbus_api::MigrateInstance {
        to: Some("host2".into()),
        ..Default::default()
    };
    let (op, record) = migrate_and_wait(client, "m2", req).await;
    assert_eq!(
        op.state,
        nimbus_api::OperationState::Succeeded,
        "{:?}\n{}",
        op.error,
        cloud.log_tail(30)
    );
    assert_eq!(instance(client, "m2").await.host.as_deref(), Some("host2"));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let end = Utc::now();
    let wall = (end - start).num_milliseconds() as f64 / 1000.0;
    // The guest is paused (not running anywhere) from the source's STOP to the target's
    // RESUME: that downtime is not billed.
    let downtime = record
        .and_then(|m| m.stats.downtime_ms)
        .expect("the migration's downtime") as f64
        / 1000.0;
    let ran = wall - downtime;
    let billed = wait_until(
        "m2's samples from both hosts",
        Duration::from_secs(30),
        Duration::from_secs(1),
        || async {
            let r = usage(client, start, end).await;
            let s = running_of(&r, "m2");
            (s >= ran - wall * 0.02).then_some(s)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: m2 under-billed across its migration"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let billed = running_of(&usage(client, start, end).await, "m2").max(billed);
    eprintln!(
        "m2 migrated: {billed:.3} s billed for {wall:.3} s of wall-clock time, {downtime:.3} s of it paused"
    );
    assert!(
        billed <= ran + wall * 0.02,
        "m2 billed {billed} s for {ran} s running: the migration counted twice"
    );
}

/// Sleeps until `t` has passed.
async fn wait_until_past(t: DateTime<Utc>) {
    let left = (t - Utc::now()).num_milliseconds();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64 + 100)).await;
    }
}

async fn usage(client: &Client, from: DateTime<Utc>, to: DateTime<Utc>) -> UsageReport {
    let q = UsageQuery {
        project: Some("default".into()),
        from: Some(from),
        to: Some(to),
    };
    client.usage(&q).await.expect("usage")
}

fn running_of(r: &UsageReport, name: &str) -> f64 {
    r.instances
        .iter()
        .find(|i| i.instance == name)
        .map_or(0.0, |i| i.running_seconds)
}

async fn ksm_merges_identical_guests(client: &Client) {
    let shared = wait_until(
        "KSM to share pages of the identical guests",
        Duration::from_secs(90),
        Duration::from_secs(1),
        || async {
            let ksm = client.host("host1").await.ok()?.ksm?;
            (ksm.running && ksm.pages_shared > 0).then_some(ksm)
        },
    )
    .await
    .expect("KSM shares pages");
    assert!(shared.saved_bytes > 0, "{shared:?}");
    eprintln!(
        "KSM: {} pages shared by {}, {} MiB saved",
        shared.pages_shared,
        shared.pages_sharing,
        shared.saved_bytes >> 20
    );
}

/// (rx, tx) bytes of each guest since `from`.
async fn net_of(client: &Client, from: DateTime<Utc>) -> Vec<(String, u64, u64)> {
    usage(client, from, Utc::now())
        .await
        .instances
        .into_iter()
        .map(|i| (i.instance, i.usage.net_rx_bytes, i.usage.net_tx_bytes))
        .collect()
}

async fn ping_moves_network_counters(cloud: &Cloud, client: &Client, from: DateTime<Utc>) {
    let ip = instance(client, "m2").await.ip.expect("m2 has an address");
    let ip = ip.split('/').next().expect("address").to_string();
    let before = net_of(client, from).await;
    let out = exec(client, "m1", &format!("ping -c 20 -i 0.2 -s 1000 {ip}")).await;
    assert!(out.contains("20 packets received"), "{out}");
    // 20 x ~1 kB each way (requests m1 -> m2, replies m2 -> m1), seen with the next samples.
    let grew = |now: &[(String, u64, u64)], name: &str| -> Option<(u64, u64)> {
        let at = |v: &[(String, u64, u64)]| {
            v.iter()
                .find(|(n, _, _)| n == name)
                .map_or((0, 0), |(_, rx, tx)| (*rx, *tx))
        };
        let (b, n) = (at(&before), at(now));
        let d = (n.0.saturating_sub(b.0), n.1.saturating_sub(b.1));
        (d.0 >= 15_000 && d.1 >= 15_000).then_some(d)
    };
    let last = std::sync::Mutex::new(Vec::new());
    let moved = wait_until(
        "the ping in both guests' network counters",
        Duration::from_secs(30),
        Duration::from_secs(1),
        || async {
            let now = net_of(client, from).await;
            *last.lock().unwrap_or_else(|p| p.into_inner()) = now.clone();
            Some((grew(&now, "m1")?, grew(&now, "m2")?))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: before {before:?}, last {:?}\n{}",
            last.lock().unwrap_or_else(|p| p.into_inner()),
            cloud.log_tail(20)
        )
    });
    eprintln!(
        "network during the ping: m1 rx/tx {:?}, m2 rx/tx {:?}",
        moved.0, moved.1
    );
}

/// Stops m3; returns when the stop was asked for and when it was done.
async fn stopped_guest_is_billed_until_its_stop(
    cloud: &Cloud,
    client: &Client,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let req = Utc::now();
    cli_ok(cloud, &["instance", "stop", "m3", "--wait"]);
    let done = Utc::now();
    // Billing of m3 ends: nothing accrues after its stop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = usage(client, done, Utc::now()).await;
    assert!(
        running_of(&later, "m3") < 0.5,
        "m3 is not billed after its stop: {later:?}"
    );
    let disk = later
        .instances
        .iter()
        .find(|i| i.instance == "m3")
        .map_or(0.0, |i| i.usage.disk_gib_hours);
    assert!(
        disk > 0.0,
        "a stopped instance's disk is still billed: {later:?}"
    );
    (req, done)
}

async fn restarts_lose_and_double_nothing(cloud: &mut Cloud, from: DateTime<Utc>) {
    let mid = from + chrono::Duration::seconds(WINDOW_SECS / 3);
    wait_until_past(mid).await;
    let old_agent = cloud.agent_pid("host1").expect("agent pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the agent");
    wait_until(
        "the agent to restart",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let pid = cloud.agent_pid("host1").ok()?;
            (pid != old_agent).then_some(())
        },
    )
    .await
    .expect("agent restarted");
    wait_until_past(from + chrono::Duration::seconds(2 * WINDOW_SECS / 3)).await;
    cloud.restart_up().await.expect("restart nimbus up");
}

/// The usage of `[from, to)`, once every guest's samples past `to` arrived; m1 ran all
/// along, so it is billed the window, within 2%, in the API and in the CLI's CSV.
async fn billed_window(
    cloud: &Cloud,
    client: &Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> UsageReport {
    let expected = WINDOW_SECS as f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = usage(client, from, to).await;
        if running_of(&r, "m1") >= expected * 0.98 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the window is under-billed (a gap) 30 s after it ended:\n{r:#?}\n{}",
            cloud.log_tail(30)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Whatever arrives later completes the window and must not add to it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = usage(client, from, to).await;
    let m1 = report
        .instances
        .iter()
        .find(|i| i.instance == "m1")
        .expect("m1");
    let vcpus = instance(client, "m1").await.vcpus as f64;
    let allocated = m1.usage.vcpu_seconds_allocated;
    eprintln!(
        "m1 over {WINDOW_SECS} s: {allocated:.2} vCPU-s allocated, {:.2} CPU-s used, {:.0} MiB-s, {:.6} disk GiB-h",
        m1.usage.cpu_seconds_used, m1.usage.memory_mib_seconds, m1.usage.disk_gib_hours
    );
    assert!(
        (allocated - vcpus * expected).abs() <= vcpus * expected * 0.02,
        "m1 billed {allocated} vCPU-seconds for {expected} s x {vcpus} vCPUs"
    );
    assert!(m1.usage.cpu_seconds_used > 0.0 && m1.usage.disk_gib_hours > 0.0);
    assert!((m1.usage.memory_mib_seconds - 256.0 * m1.running_seconds).abs() < 1.0);

    let arg = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let csv = cli_ok(
        cloud,
        &["usage", "--from", &arg(from), "--to", &arg(to), "-o", "csv"],
    );
    let total = csv
        .lines()
        .find(|l| l.starts_with("TOTAL,"))
        .unwrap_or_else(|| panic!("no total line: {csv}"));
    let vcpu_s: f64 = total
        .split(',')
        .nth(3)
        .and_then(|v| v.parse().ok())
        .expect("vcpu_s");
    assert!(
        (vcpu_s - report.total.vcpu_seconds_allocated).abs() < 0.1,
        "the CLI shows the API's total: {total}"
    );
    let table = cli_ok(cloud, &["host", "list"]);
    assert!(
        table.contains("x 4.0)"),
        "effective vCPU allocation: {table}"
    );
    report
}

async fn metrics_show_usage_and_ksm(cloud: &Cloud) {
    let text = cloud
        .http()
        .expect("http client")
        .get(format!("{}/metrics", cloud.api()))
        .bearer_auth(cloud.token().expect("token"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"))
    };
    assert!(value("nimbus_usage_vcpu_seconds_allocated_total{project=\"default\"}") > 100.0);
    assert!(value("nimbus_usage_net_rx_bytes_total{project=\"default\"}") > 20_000.0);
    assert!(value("nimbus_host_ksm_pages_shared{host=\"host1\"}") > 0.0);
    assert!(value("nimbus_host_memory_mib_used{host=\"host1\"}") > 0.0);
    assert!(value("nimbus_host_vcpus_capacity{host=\"host1\"}") > 0.0);
}
