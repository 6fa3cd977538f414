//! Host liveness on the real controller and store, with a fake agent (the subject is the
//! controller's judgement of silence, not the agent): a host whose reports stop is
//! `unreachable`, then `down` with its instances `error` and the reason; when it reports
//! again its instances are relearnt from the agent.

mod support;

use nimbus_agent_api::liveness::{DOWN_AFTER, UNREACHABLE_AFTER};
use nimbus_agent_api::{Accelerator, HostInventory, RegisterHost};
use nimbus_api::{HostState, InstanceState};
use nimbus_controller::background::{host_liveness, reconciler};
use nimbus_store::Scope;
use support::Cloud;

/// Makes the controller's last report from `host` `secs` seconds old.
async fn silence(cloud: &Cloud, host: &str, secs: u64) {
    let then = chrono::Utc::now() - chrono::Duration::seconds(secs as i64);
    sqlx::query("UPDATE hosts SET last_seen = $1 WHERE name = $2")
        .bind(then.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .bind(host)
        .execute(cloud.app.store().pool())
        .await
        .expect("age the report");
}

async fn report(cloud: &Cloud, host: &str, url: &str) {
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
                shared_storage: None,
                cpu_allocation_ratio: None,
                ram_allocation_ratio: None,
                ksm: None,
                image_cache: None,
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
