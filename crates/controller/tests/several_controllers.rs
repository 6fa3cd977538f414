//! Background work with three controllers over one PostgreSQL database (issue 12 part 3):
//! three real controllers (`App`s: store, engine, background tasks) in one process, each
//! with its own pool and identity, as three processes would be. Hosts are registered but
//! their agents do not answer (members stay `building`): the subject is what the controllers
//! write, not what agents do.
//!
//! Needs `NIMBUS_TEST_POSTGRES_URL` (`bash scripts/ci-postgres.sh` prints one): without it
//! these tests fail, they do not pass silently.

use nimbus_agent_api::{
    Accelerator, HostInventory, MeterKind, RegisterHost, UsageBatch, UsageSample,
};
use nimbus_api::{CreateGroup, UpdateGroup, UsageQuery};
use nimbus_controller::app::{App, Caller};
use nimbus_controller::background::autoscaler::{self, Autoscaler};
use nimbus_controller::background::task::Runner;
use nimbus_controller::background::{host_liveness, leases};
use nimbus_controller::ControllerConfig;
use nimbus_store::{NewInstance, NewOperation};
use nimbus_test_utils::controllers::TestDatabase;
use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;

const TTL: Duration = Duration::from_millis(600);

struct Controllers {
    apps: Vec<App>,
    keepers: Vec<tokio::task::JoinHandle<()>>,
    _db: TestDatabase,
    _dir: tempfile::TempDir,
}

impl Controllers {
    /// Each controller's lease keeper (heartbeat, renewal, takeover scan), as `nimbus
    /// controller` runs it.
    fn keep_leases(&mut self) {
        for app in &self.apps {
            let keeper = Runner::new(leases::LeaseKeeper).run(app.clone());
            self.keepers.push(tokio::spawn(keeper));
        }
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        for k in &self.keepers {
            k.abort();
        }
    }
}

/// Three registered controllers sharing one database and one data directory, a host with
/// room for 16 tiny instances, and an image.
async fn three_controllers() -> Controllers {
    let db = TestDatabase::create().expect("PostgreSQL for the several-controllers tests");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut apps = Vec::new();
    for i in 0..3u16 {
        apps.push(open_controller(&db, dir.path(), i, chrono::TimeDelta::zero()).await);
    }
    apps[0]
        .register_host(&RegisterHost {
            // Nothing answers there: members stay `building`.
            agent_url: "https://127.0.0.1:9".into(),
            inventory: HostInventory {
                name: "host1".into(),
                cpus: 16,
                memory_mib: 16 * 256 + 100,
                disk_gib: 500,
                accelerator: Accelerator::Tcg,
                qemu_version: "10.0.2".into(),
                agent_version: "test".into(),
                shared_storage: None,
                cpu_allocation_ratio: None,
                ram_allocation_ratio: None,
                ksm: None,
                image_cache: None,
                capabilities: nimbus_agent_api::capability::all(),
            },
        })
        .await
        .expect("host");
    let exe = std::env::current_exe().expect("exe").display().to_string();
    apps[0]
        .import_image(&nimbus_api::ImportImage {
            name: "img".into(),
            kernel: Some(exe),
            initrd: None,
            cmdline: None,
            disk: None,
            ready_marker: None,
        })
        .await
        .expect("image");
    Controllers {
        apps,
        keepers: Vec::new(),
        _db: db,
        _dir: dir,
    }
}

/// Controller `i` over `db`, its own clock shifted by `clock_offset`.
async fn open_controller(
    db: &TestDatabase,
    dir: &std::path::Path,
    i: u16,
    clock_offset: chrono::TimeDelta,
) -> App {
    let mut config = ControllerConfig::new(dir.to_path_buf());
    config.database_url = db.url.clone();
    config.listen = vec![SocketAddr::from(([127, 0, 0, 1], 17700 + i))];
    config.lease_ttl = TTL;
    config.clock_offset = clock_offset;
    let app = App::open(config).await.expect("open");
    app.bootstrap().await.expect("bootstrap");
    leases::register(&app).await.expect("register");
    app
}

/// Host liveness on the database's clock: a host that just reported through a controller
/// whose clock is an hour behind is judged by a controller whose clock is an hour ahead
/// (and by the others): up, and a pass of host liveness there marks nothing down. Judged by
/// the controllers' own clocks, the host would look silent for two hours: down (its
/// instances `error` or restarted elsewhere).
#[tokio::test(flavor = "multi_thread")]
async fn a_controller_with_a_skewed_clock_never_marks_a_live_host_down() {
    let c = three_controllers().await;
    let hour = chrono::TimeDelta::hours(1);
    let behind = open_controller(&c._db, c._dir.path(), 3, -hour).await;
    let ahead = open_controller(&c._db, c._dir.path(), 4, hour).await;
    let report = |app: App| async move {
        let mut host = app.store().get_host("host1").await.expect("host");
        host.last_seen = app.clock_now();
        app.store().upsert_host(&host).await.expect("report");
    };
    report(behind.clone()).await;
    for app in [&ahead, &behind, &c.apps[0]] {
        let seen = app.get_host("host1").await.expect("host");
        assert_eq!(seen.state, nimbus_api::HostState::Up, "{seen:?}");
        app.require_host_up("host1", "the test's host")
            .await
            .expect("up for every controller");
    }
    host_liveness::pass(&ahead).await.expect("liveness pass");
    let host = ahead.store().get_host("host1").await.expect("host");
    assert_eq!(host.down_since, None, "a live host marked down: {host:?}");
    assert!(host.silent_ms.is_some_and(|ms| ms < 10_000), "{host:?}");
}

fn admin() -> Caller {
    Caller::system("test", "default")
}

async fn group(app: &App, desired: u32) -> Uuid {
    app.create_group(
        &admin(),
        &CreateGroup {
            name: "web".into(),
            flavor: "tiny".into(),
            image: "img".into(),
            min: 0,
            max: 10,
            desired: Some(desired),
            target_cpu: 60,
            policy: Default::default(),
            steps: Vec::new(),
            window_secs: None,
            cooldown_secs: None,
        },
    )
    .await
    .expect("group");
    app.store()
        .get_group("default", "web")
        .await
        .expect("group row")
        .id
}

async fn members(app: &App, group: Uuid) -> usize {
    app.store()
        .group_members(group)
        .await
        .expect("members")
        .len()
}

/// One tick of the autoscaler on every controller at once.
async fn tick_everywhere(runners: &mut [Runner<Autoscaler>], apps: &[App]) -> usize {
    let ticks = runners.iter_mut().zip(apps).map(|(r, app)| r.tick(app));
    futures::future::join_all(ticks)
        .await
        .into_iter()
        .filter(|ran| *ran)
        .count()
}

#[tokio::test]
async fn three_autoscalers_scale_a_group_out_once() {
    let mut c = three_controllers().await;
    c.keep_leases();
    let g = group(&c.apps[0], 3).await;
    let mut runners: Vec<_> = (0..3).map(|_| Runner::new(Autoscaler)).collect();
    for round in 0..3 {
        let ran = tick_everywhere(&mut runners, &c.apps).await;
        assert_eq!(members(&c.apps[0], g).await, 3, "round {round}");
        assert_eq!(ran, 1, "round {round}: one controller runs the autoscaler");
    }
    // A scale-out by 2 gets 2 members, not 2 per controller.
    c.apps[1]
        .update_group(
            &admin(),
            "web",
            &UpdateGroup {
                desired: Some(5),
                ..Default::default()
            },
        )
        .await
        .expect("scale out");
    for _ in 0..2 {
        tick_everywhere(&mut runners, &c.apps).await;
    }
    assert_eq!(members(&c.apps[0], g).await, 5);
    // `nimbus controller list` names the one that runs it.
    let listed = c.apps[2].list_controllers(&admin()).await.expect("list");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let running: Vec<_> = listed
        .iter()
        .filter(|v| v.tasks.iter().any(|t| t == "autoscaler"))
        .collect();
    assert_eq!(running.len(), 1, "{listed:?}");
}

#[tokio::test]
async fn a_stalled_autoscaler_writes_nothing_once_its_task_moved() {
    let c = three_controllers().await;
    let g = group(&c.apps[0], 1).await;
    let (a, b) = (&c.apps[0], &c.apps[1]);
    // A holds the autoscaler, then stalls: no heartbeat, no tick, past its lease.
    let stale = a
        .store()
        .acquire_task("autoscaler", a.controller_id(), TTL)
        .await
        .expect("acquire")
        .expect("free");
    tokio::time::sleep(TTL * 2).await;
    // B (alive) takes the task over at its next tick and converges the group.
    b.store()
        .heartbeat(b.controller_id(), TTL)
        .await
        .expect("b alive");
    let mut runner_b = Runner::new(Autoscaler);
    assert!(runner_b.tick(b).await, "B takes the task over");
    assert_eq!(members(b, g).await, 1);
    // The group grows; A wakes up and runs the pass it had begun, with its old epoch:
    // the member it would add is refused by the fence, and so is the refusal event.
    b.update_group(
        &admin(),
        "web",
        &UpdateGroup {
            desired: Some(2),
            ..Default::default()
        },
    )
    .await
    .expect("scale out");
    let events_before = b.store().group_events(g, 100).await.expect("events").len();
    autoscaler::pass(&a.fenced(stale))
        .await
        .expect("a stale pass fails quietly");
    assert_eq!(members(b, g).await, 1, "the stale holder added a member");
    let events_after = b.store().group_events(g, 100).await.expect("events").len();
    assert_eq!(
        events_before, events_after,
        "the stale holder wrote an event"
    );
    // The holder adds it.
    assert!(runner_b.tick(b).await);
    assert_eq!(members(b, g).await, 2);
}

/// Sample `seq` of a meter opened at `t0` ms, `at_s` seconds in.
fn sample(meter: Uuid, instance: Uuid, seq: u64, t0: u64, at_s: u64) -> UsageSample {
    UsageSample {
        meter_id: meter,
        seq,
        kind: MeterKind::Instance,
        instance_id: instance,
        started_unix_ms: t0,
        sampled_unix_ms: t0 + at_s * 1000,
        vcpus: 2,
        memory_mib: 512,
        running_ms: at_s * 1000,
        cpu_ns: at_s * 100_000_000,
        net_rx_bytes: 0,
        net_tx_bytes: 0,
        rss_bytes: 300 << 20,
        storage_bytes: 1 << 30,
        storage_kib_seconds: 0,
        last: false,
    }
}

#[tokio::test]
async fn usage_pushed_to_every_controller_is_counted_once() {
    let c = three_controllers().await;
    let id = Uuid::new_v4();
    let new = NewInstance {
        id,
        project: "default".into(),
        name: "web1".into(),
        flavor: "small".into(),
        image: "img".into(),
        image_project: nimbus_store::PATH_IMAGE_PROJECT.into(),
        vcpus: 2,
        memory_mib: 512,
        disk_gib: 1,
        group_id: None,
        nics: Vec::new(),
        placement_group: None,
        ha_restart: false,
        ha_priority: nimbus_api::HA_PRIORITY_MEDIUM,
        seed: Default::default(),
        secgroups: Vec::new(),
    };
    let op = NewOperation {
        id: Uuid::new_v4(),
        kind: nimbus_api::OperationKind::InstanceCreate,
        project: "default".into(),
        target_id: id,
        target_name: "web1".into(),
        params: serde_json::json!({}),
    };
    let store = c.apps[0].store();
    store
        .insert_instance(&new, &op, |_, _| {
            Some(("10.200.0.9/16".into(), "52:54:00:00:00:09".into()))
        })
        .await
        .expect("insert");
    store.reserve_host(id, "host1").await.expect("place");
    // An agent whose answers were lost sends the same 60 samples (10 minutes) to each
    // controller in turn, and the three ingest them at the same time.
    let (meter, t0) = (Uuid::new_v4(), 1_700_000_000_000u64);
    let batch = UsageBatch {
        host: "host1".into(),
        samples: (0..60).map(|i| sample(meter, id, i, t0, i * 10)).collect(),
    };
    let pushes = c.apps.iter().map(|app| app.ingest_usage(&batch));
    let acks = futures::future::join_all(pushes).await;
    let stored: u64 = acks.iter().map(|a| a.as_ref().expect("ack").stored).sum();
    assert_eq!(stored, 60, "each sample stored by exactly one controller");
    let from = chrono::DateTime::from_timestamp_millis(t0 as i64).expect("time");
    let report = c.apps[2]
        .usage_report(
            &admin(),
            &UsageQuery {
                project: None,
                from: Some(from),
                to: Some(from + chrono::Duration::hours(1)),
            },
        )
        .await
        .expect("report");
    // 590 s between the first and the last sample, 2 vCPUs: billed once.
    assert!(
        (report.total.vcpu_seconds_allocated - 1180.0).abs() < 1e-6,
        "{report:?}"
    );
}
