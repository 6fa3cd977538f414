//! Metering through the API, without agents: samples pushed on the internal route are stored
//! once, attributed to the instance's project, and reported by `/v1/usage` and `/metrics`;
//! hosts report their own allocation ratios and KSM.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nimbus_agent_api::{
    Accelerator, HostInventory, KsmStats, MeterKind, RegisterHost, UsageAck, UsageBatch,
    UsageSample,
};
use nimbus_api::{HostView, OperationKind, UsageReport};
use nimbus_controller::http::peer::ClientCert;
use nimbus_controller::{http::router, App, ControllerConfig};
use nimbus_store::{NewInstance, NewOperation};
use tower::ServiceExt;
use uuid::Uuid;

async fn call(
    app: &App,
    method: &str,
    uri: &str,
    token: &str,
    body: Option<String>,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("request");
    let resp = router(app.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).to_string())
}

/// POSTs `body` as host `host`'s agent: with the identity its client certificate would give
/// after the TLS handshake (no handshake in-process).
async fn call_as_host(app: &App, host: &str, uri: &str, body: String) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    req.extensions_mut()
        .insert(ClientCert::host(host, &["127.0.0.1"]));
    let resp = router(app.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).to_string())
}

async fn fixture() -> (App, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ControllerConfig::new(dir.path().to_path_buf());
    let app = App::open(config).await.expect("open");
    app.bootstrap().await.expect("bootstrap");
    // The image instances are made from (any existing file stands in for a kernel).
    let exe = std::env::current_exe().expect("exe").display().to_string();
    app.import_image(&nimbus_api::ImportImage {
        name: "default".into(),
        kernel: Some(exe),
        initrd: None,
        cmdline: None,
        disk: None,
        ready_marker: None,
    })
    .await
    .expect("image");
    let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("token");
    (app, token.trim().to_string(), dir)
}

/// Sample `seq` of a meter opened at `t0` ms that ran until `t0 + at_s` seconds.
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
        net_rx_bytes: at_s * 10,
        net_tx_bytes: at_s * 20,
        rss_bytes: 300 << 20,
        storage_bytes: 1 << 30,
        storage_kib_seconds: 0,
        last: false,
    }
}

async fn push(app: &App, samples: Vec<UsageSample>) -> UsageAck {
    push_from(app, "host1", samples).await
}

async fn push_from(app: &App, host: &str, samples: Vec<UsageSample>) -> UsageAck {
    let batch = UsageBatch {
        host: host.into(),
        samples,
    };
    let (s, body) = call_as_host(
        app,
        host,
        "/v1/internal/usage/samples",
        serde_json::to_string(&batch).expect("json"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    serde_json::from_str(&body).expect("ack")
}

#[tokio::test]
async fn samples_are_stored_once_and_reported_per_instance() {
    let (app, token, _dir) = fixture().await;
    let id = Uuid::new_v4();
    let new = NewInstance {
        id,
        project: "default".into(),
        name: "web1".into(),
        flavor: "small".into(),
        image: "default".into(),
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
        kind: OperationKind::InstanceCreate,
        project: "default".into(),
        target_id: id,
        target_name: "web1".into(),
        params: serde_json::json!({}),
    };
    app.store()
        .insert_instance(&new, &op, |_, _| {
            Some(("10.200.0.9/16".into(), "52:54:00:00:00:09".into()))
        })
        .await
        .expect("insert");
    let meter = Uuid::new_v4();
    let t0 = 1_700_000_000_000u64;
    // Only the host that runs an instance may report its usage.
    let early = push(&app, vec![sample(meter, id, 0, t0, 10)]).await;
    assert_eq!((early.stored, early.duplicates), (0, 0), "not placed yet");
    app.store().reserve_host(id, "host1").await.expect("place");
    let forged = push_from(&app, "host2", vec![sample(meter, id, 0, t0, 10)]).await;
    assert_eq!(
        (forged.stored, forged.duplicates),
        (0, 0),
        "another host's VM"
    );
    let first = push(
        &app,
        vec![sample(meter, id, 0, t0, 10), sample(meter, id, 1, t0, 20)],
    )
    .await;
    assert_eq!((first.stored, first.duplicates), (2, 0));
    // The answer was lost: the agent sends both again, and the next one.
    let again = push(
        &app,
        vec![
            sample(meter, id, 0, t0, 10),
            sample(meter, id, 1, t0, 20),
            sample(meter, id, 2, t0, 40),
        ],
    )
    .await;
    assert_eq!((again.stored, again.duplicates), (1, 2));

    let from = chrono::DateTime::from_timestamp_millis(t0 as i64).expect("time");
    let to = from + chrono::Duration::seconds(30);
    let uri = format!(
        "/v1/usage?from={}&to={}",
        from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let (s, body) = call(&app, "GET", &uri, &token, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let report: UsageReport = serde_json::from_str(&body).expect("report");
    assert_eq!(report.instances.len(), 1);
    let row = &report.instances[0];
    assert_eq!(
        (row.instance.as_str(), row.project.as_str()),
        ("web1", "default")
    );
    assert!((row.running_seconds - 30.0).abs() < 1e-6, "{row:?}");
    assert!((report.total.vcpu_seconds_allocated - 60.0).abs() < 1e-6);
    assert!((report.total.cpu_seconds_used - 3.0).abs() < 1e-6);
    assert!((report.total.memory_mib_seconds - 512.0 * 30.0).abs() < 1e-6);
    assert_eq!(
        (report.total.net_rx_bytes, report.total.net_tx_bytes),
        (300, 600)
    );

    // The instance is deleted; its meter's closing sample still counts for its project.
    app.store().delete_instance_row(id).await.expect("delete");
    let mut end = sample(meter, id, 3, t0, 50);
    end.last = true;
    assert_eq!(push(&app, vec![end]).await.stored, 1);
    let (_, body) = call(
        &app,
        "GET",
        "/v1/usage?project=default&from=2023-01-01T00:00:00Z",
        &token,
        None,
    )
    .await;
    let report: UsageReport = serde_json::from_str(&body).expect("report");
    assert!(
        (report.total.vcpu_seconds_allocated - 100.0).abs() < 1e-6,
        "{body}"
    );

    let (_, metrics) = call(&app, "GET", "/metrics", &token, None).await;
    assert!(
        metrics.contains("nimbus_usage_vcpu_seconds_allocated_total{project=\"default\"} 100"),
        "{metrics}"
    );

    let (s, _) = call(
        &app,
        "GET",
        "/v1/usage?from=2030-01-01T00:00:00Z&to=2029-01-01T00:00:00Z",
        &token,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "an empty period");
}

#[tokio::test]
async fn hosts_report_their_ratios_and_ksm() {
    let (app, token, _dir) = fixture().await;
    let reg = RegisterHost {
        agent_url: "https://127.0.0.1:9".into(),
        inventory: HostInventory {
            name: "host1".into(),
            cpus: 8,
            memory_mib: 16_384,
            disk_gib: 100,
            accelerator: Accelerator::Tcg,
            qemu_version: "10.0.2".into(),
            agent_version: "test".into(),
            shared_storage: None,
            cpu_allocation_ratio: Some(2.0),
            ram_allocation_ratio: None,
            ksm: Some(KsmStats {
                run: 1,
                pages_shared: 10,
                pages_sharing: 30,
                pages_unshared: 5,
                page_size: 4096,
            }),
            image_cache: None,
            capabilities: nimbus_agent_api::capability::all(),
        },
    };
    let (s, body) = call_as_host(
        &app,
        "host1",
        "/v1/internal/hosts/register",
        serde_json::to_string(&reg).expect("json"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, body) = call(&app, "GET", "/v1/hosts/host1", &token, None).await;
    let host: HostView = serde_json::from_str(&body).expect("host");
    assert_eq!(host.cpu_allocation_ratio, 2.0, "the host's own ratio");
    assert_eq!(host.ram_allocation_ratio, 1.0, "the controller's default");
    assert_eq!(host.vcpus_capacity(), 16);
    let ksm = host.ksm.expect("ksm");
    assert!(ksm.running);
    assert_eq!((ksm.pages_shared, ksm.saved_bytes), (10, 30 * 4096));
    let caps = app.host_capacities().await.expect("capacities");
    assert_eq!(
        caps[0].offered().vcpus,
        16,
        "the scheduler uses the host's ratio"
    );
    let (_, metrics) = call(&app, "GET", "/metrics", &token, None).await;
    assert!(
        metrics.contains("nimbus_host_ksm_pages_shared{host=\"host1\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nimbus_host_vcpus_capacity{host=\"host1\"} 16"),
        "{metrics}"
    );
}
