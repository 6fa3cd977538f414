//! Host liveness on the real controller and store, with a fake agent (the subject is the
//! controller's judgement of silence, not the agent): a host whose reports stop is
//! `unreachable`, then `down` with its instances `error` and the reason; when it reports
//! again its instances are relearnt from the agent. HA instances of a down host restart on
//! another host from their shared disk; a local disk is refused with the reason.

mod support;

use nimbus_agent_api::liveness::{DOWN_AFTER, UNREACHABLE_AFTER};
use nimbus_agent_api::{Accelerator, HostInventory, RegisterHost};
use nimbus_api::{HostState, InstanceState};
use nimbus_controller::background::{host_liveness, reconciler};
use nimbus_store::Scope;
use support::Cloud;

/// Makes the controller's last report from `host` `secs` seconds old (the time of day shown
/// and the database-clock time liveness is judged by; this test's database is SQLite on
/// this machine's clock).
async fn silence(cloud: &Cloud, host: &str, secs: u64) {
    let then = chrono::Utc::now() - chrono::Duration::seconds(secs as i64);
    sqlx::query("UPDATE hosts SET last_seen = $1, last_seen_ms = $2 WHERE name = $3")
        .bind(then.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .bind(then.timestamp_millis())
        .bind(host)
        .execute(cloud.app.store().pool())
        .await
        .expect("age the report");
}

async fn report(cloud: &Cloud, host: &str, url: &str) {
    report_with(cloud, host, url, None).await
}

async fn report_with(cloud: &Cloud, host: &str, url: &str, shared: Option<&str>) {
    cloud
        .app
        .register_host(&RegisterHost {
            agent_url: url.into(),
            inventory: HostInventory {
                name: host.into(),
                cpus: 4,
                memory_mib: 4096,
                disk_gib: 50,
                accelerator: Accelerator::Tcg,
                qemu_version: "10.0.2".into(),
                agent_version: "test".into(),
                shared_storage: shared.map(str::to_string),
                cpu_allocation_ratio: None,
                ram_allocation_ratio: None,
                ksm: None,
                image_cache: None,
                capabilities: nimbus_agent_api::capability::all(),
            },
        })
        .await
        .expect("register");
}

#[tokio::test]
async fn silent_host_goes_unreachable_then_down_and_comes_back() {
    let cloud = Cloud::start(&["host1"], 4096).await;
    let id = cloud.running_instance("web1", 256).await;
    let url = cloud.app.get_host("host1").await.expect("ok").agent_url;

    silence(&cloud, "host1", UNREACHABLE_AFTER.as_secs() + 1).await;
    host_liveness::pass(&cloud.app).await.expect("ok");
    let h = cloud.app.get_host("host1").await.expect("ok");
    assert_eq!(h.state, HostState::Unreachable);
    assert!(!h.fenced && h.down_since.is_none());
    let inst = cloud
        .app
        .store()
        .get_instance_by_id(&Scope::All, id)
        .await
        .expect("ok");
    assert_eq!(
        inst.state,
        InstanceState::Running,
        "unreachable changes nothing"
    );

    silence(&cloud, "host1", DOWN_AFTER.as_secs() + 1).await;
    host_liveness::pass(&cloud.app).await.expect("ok");
    host_liveness::pass(&cloud.app).await.expect("ok");
    let h = cloud.app.get_host("host1").await.expect("ok");
    assert_eq!(h.state, HostState::Down);
    assert!(h.fenced);
    let since = h.down_since.expect("down_since recorded");
    let inst = cloud
        .app
        .store()
        .get_instance_by_id(&Scope::All, id)
        .await
        .expect("ok");
    assert_eq!(inst.state, InstanceState::Error);
    let reason = inst.reason.unwrap_or_default();
    assert!(reason.contains("its host host1 is down since"), "{reason}");
    assert!(reason.contains("nimbus host evacuate host1"), "{reason}");
    let err = cloud
        .app
        .require_host_up("host1", "where web1 runs")
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("is down"), "{err}");

    // A second pass keeps the first down time.
    host_liveness::pass(&cloud.app).await.expect("ok");
    assert_eq!(
        cloud.app.get_host("host1").await.expect("ok").down_since,
        Some(since)
    );

    // The host reports again; its agent still runs the VM (it was only cut off and the VM
    // has no HA): the instance is relearnt as running, though the report is not newer.
    report(&cloud, "host1", &url).await;
    host_liveness::pass(&cloud.app).await.expect("ok");
    let h = cloud.app.get_host("host1").await.expect("ok");
    assert_eq!(h.state, HostState::Up);
    assert_eq!(h.down_since, None);
    reconciler::pass(&cloud.app).await.expect("ok");
    let inst = cloud
        .app
        .store()
        .get_instance_by_id(&Scope::All, id)
        .await
        .expect("ok");
    assert_eq!(inst.state, InstanceState::Running);
    assert_eq!(inst.reason, None);
}

/// Two hosts on one shared storage.
async fn shared_cloud() -> Cloud {
    let cloud = Cloud::start(&["host1", "host2"], 4096).await;
    let url = cloud.app.get_host("host1").await.expect("host").agent_url;
    for h in ["host1", "host2"] {
        report_with(&cloud, h, &url, Some("/srv/nimbus-shared")).await;
    }
    cloud
}

/// Marks an instance `--ha restart` (as its create would have).
async fn make_ha(cloud: &Cloud, id: uuid::Uuid) {
    sqlx::query("UPDATE instances SET ha = 'restart' WHERE id = $1")
        .bind(id.to_string())
        .execute(cloud.app.store().pool())
        .await
        .expect("ha");
}

/// Waits (bounded) until no operation owns the instance.
async fn settled(cloud: &Cloud, id: uuid::Uuid) -> nimbus_store::InstanceRecord {
    for _ in 0..200 {
        let inst = cloud
            .app
            .store()
            .get_instance_by_id(&Scope::All, id)
            .await
            .expect("instance");
        if inst.operation_id.is_none() {
            return inst;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the operation on {id} did not end within 10 s");
}

#[tokio::test]
async fn ha_instances_of_a_down_host_restart_elsewhere_from_shared_storage() {
    let cloud = shared_cloud().await;
    let db = cloud.running_instance("db1", 512).await;
    make_ha(&cloud, db).await;
    let web = cloud.running_instance("web1", 256).await;

    silence(&cloud, "host1", DOWN_AFTER.as_secs() + 1).await;
    host_liveness::pass(&cloud.app).await.expect("pass");
    let inst = settled(&cloud, db).await;
    assert_eq!(inst.state, InstanceState::Running, "{:?}", inst.reason);
    assert_eq!(inst.host.as_deref(), Some("host2"));
    let calls = cloud.agent.state().calls.clone();
    let disk = format!("cold {db} /srv/nimbus-shared/{db}/disk.qcow2");
    assert!(calls.contains(&disk), "{calls:?}");
    assert!(calls.contains(&format!("start {db}")), "{calls:?}");

    let other = settled(&cloud, web).await;
    assert_eq!(other.state, InstanceState::Error);
    assert_eq!(other.host.as_deref(), Some("host1"), "without HA it stays");
    assert!(
        !calls.iter().any(|c| c.contains(&web.to_string())),
        "{calls:?}"
    );

    let h = cloud.app.get_host("host1").await.expect("host");
    assert_eq!(
        (h.state, h.fenced, h.ha_restarted),
        (HostState::Down, true, 1)
    );

    // Later passes restart nothing again.
    host_liveness::pass(&cloud.app).await.expect("pass");
    let n = cloud.agent.state().calls.len();
    assert_eq!(n, calls.len());
}

#[tokio::test]
async fn ha_instance_with_a_local_disk_says_why_it_cannot_restart() {
    let cloud = Cloud::start(&["host1", "host2"], 4096).await;
    let db = cloud.running_instance("db1", 512).await;
    make_ha(&cloud, db).await;
    silence(&cloud, "host1", DOWN_AFTER.as_secs() + 1).await;
    host_liveness::pass(&cloud.app).await.expect("pass");
    let inst = settled(&cloud, db).await;
    assert_eq!(inst.state, InstanceState::Error);
    assert_eq!(inst.host.as_deref(), Some("host1"));
    let reason = inst.reason.unwrap_or_default();
    assert!(
        reason.starts_with("ha_restart failed: choose_restart_host: its disk is local to host host1, which is down"),
        "{reason}"
    );
    assert!(
        cloud.agent.state().calls.is_empty(),
        "nothing defined or started"
    );
    // Not retried by later passes.
    host_liveness::pass(&cloud.app).await.expect("pass");
    let again = settled(&cloud, db).await;
    assert_eq!(again.state, InstanceState::Error);
}

#[tokio::test]
async fn evacuate_restarts_every_instance_of_a_down_host_and_waits_for_down() {
    use nimbus_controller::app::Caller;
    let cloud = shared_cloud().await;
    let web = cloud.running_instance("web1", 256).await;
    let admin = Caller::system("test", "default");

    let up = cloud
        .app
        .evacuate_host(&admin, "host1")
        .await
        .expect_err("up");
    assert!(
        up.message.contains("nimbus host drain host1"),
        "{}",
        up.message
    );
    silence(&cloud, "host1", UNREACHABLE_AFTER.as_secs() + 1).await;
    let early = cloud
        .app
        .evacuate_host(&admin, "host1")
        .await
        .expect_err("early");
    assert!(early.message.contains("not yet down"), "{}", early.message);
    assert!(cloud.agent.state().calls.is_empty());

    silence(&cloud, "host1", DOWN_AFTER.as_secs() + 1).await;
    host_liveness::pass(&cloud.app).await.expect("pass");
    assert_eq!(settled(&cloud, web).await.state, InstanceState::Error);
    let result = cloud
        .app
        .evacuate_host(&admin, "host1")
        .await
        .expect("evacuate");
    assert_eq!(result.operations.len(), 1);
    assert!(result.left.is_empty(), "{:?}", result.left);
    let inst = settled(&cloud, web).await;
    assert_eq!(inst.state, InstanceState::Running, "{:?}", inst.reason);
    assert_eq!(inst.host.as_deref(), Some("host2"));
}

#[tokio::test]
async fn ha_restarts_go_in_priority_order_and_the_lowest_waits_when_room_is_short() {
    use nimbus_api::{HA_PRIORITY_HIGH, HA_PRIORITY_LOW, HA_PRIORITY_MEDIUM};
    let cloud = shared_cloud().await;
    // host2 has room for two of them. By size alone `low` (the largest) would go first and
    // take the room of `medium`; by priority `high` and `medium` run and `low` waits.
    let low = cloud.running_instance("low", 2048).await;
    let high = cloud.running_instance("high", 1536).await;
    let medium = cloud.running_instance("medium", 1536).await;
    for (id, priority) in [
        (low, HA_PRIORITY_LOW),
        (high, HA_PRIORITY_HIGH),
        (medium, HA_PRIORITY_MEDIUM),
    ] {
        cloud
            .app
            .store()
            .set_instance_ha(id, true, priority)
            .await
            .expect("ha");
    }

    silence(&cloud, "host1", DOWN_AFTER.as_secs() + 1).await;
    host_liveness::pass(&cloud.app).await.expect("pass");
    for id in [high, medium] {
        let inst = settled(&cloud, id).await;
        assert_eq!(inst.state, InstanceState::Running, "{:?}", inst.reason);
        assert_eq!(inst.host.as_deref(), Some("host2"));
    }
    let left = settled(&cloud, low).await;
    assert_eq!(left.state, InstanceState::Error);
    assert_eq!(
        left.host.as_deref(),
        Some("host1"),
        "its place is unchanged"
    );
    let reason = left.reason.unwrap_or_default();
    assert!(reason.contains("no capacity"), "{reason}");
    assert!(
        !cloud
            .agent
            .state()
            .calls
            .iter()
            .any(|c| c.contains(&low.to_string())),
        "nothing of `low` defined on host2"
    );
    let h = cloud.app.get_host("host1").await.expect("host");
    assert_eq!(h.ha_restarted, 2);
}
