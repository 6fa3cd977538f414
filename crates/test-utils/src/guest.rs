//! What end-to-end tests ask of a cloud and its guests, the way a user would: the CLI, the
//! API, and commands run inside the guests.

use crate::{wait_until, Cloud};
use nimbus_api::{
    CreateInstance, InstanceView, MigrateInstance, MigrationView, OperationState, OperationView,
    StepState,
};
use nimbus_client::Client;
use std::time::Duration;

/// Runs the CLI and returns its standard output; panics (with the cloud's log) if it fails.
pub fn cli_ok(cloud: &Cloud, args: &[&str]) -> String {
    cli_ok_as(cloud, &cloud.token().expect("admin token"), args)
}

/// [`cli_ok`] with `token`.
pub fn cli_ok_as(cloud: &Cloud, token: &str, args: &[&str]) -> String {
    let out = cloud.cli_as(token, args).expect("run nimbus");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "nimbus {args:?} failed: {}\n{stdout}\n--- nimbus up log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        cloud.log_tail(40)
    );
    stdout
}

/// Runs the CLI expecting a failure; returns its standard error.
pub fn cli_err(cloud: &Cloud, args: &[&str]) -> String {
    cli_err_as(cloud, &cloud.token().expect("admin token"), args)
}

/// [`cli_err`] with `token`.
pub fn cli_err_as(cloud: &Cloud, token: &str, args: &[&str]) -> String {
    let out = cloud.cli_as(token, args).expect("run nimbus");
    assert!(!out.status.success(), "nimbus {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `text` parsed as the JSON of a `T`; panics with the text if it is not.
pub fn json<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not the JSON expected ({e}): {text}"))
}

/// The disk of test image `name`, as the project's script `script` built it in the image
/// cache (`$NIMBUS_IMAGE_CACHE`, default `/var/cache/nimbus`; scripts/test.sh runs them):
/// `images/<name>/image.json` names it. Panics, saying what to run, when it is not built.
pub fn cached_image_disk(name: &str, script: &str) -> std::path::PathBuf {
    let cache = std::env::var("NIMBUS_IMAGE_CACHE").unwrap_or_else(|_| "/var/cache/nimbus".into());
    let dir = std::path::Path::new(&cache).join("images").join(name);
    let manifest = std::fs::read_to_string(dir.join("image.json")).unwrap_or_else(|e| {
        panic!(
            "no {name} image in {} ({e}): build it with {script} (scripts/test.sh does)",
            dir.display()
        )
    });
    let m: serde_json::Value = json(&manifest);
    dir.join(m["disk"].as_str().expect("image.json names its disk"))
}

/// Creates project `project` (as the admin) and answers a member token of it.
pub fn project_member(cloud: &Cloud, project: &str) -> String {
    cli_ok(cloud, &["project", "create", project]);
    let args = [
        "token",
        "create",
        "--project",
        project,
        "--role",
        "member",
        "-o",
        "json",
    ];
    json::<nimbus_api::CreatedToken>(&cli_ok(cloud, &args)).secret
}

/// The instance as the API shows it.
pub async fn instance(client: &Client, name: &str) -> InstanceView {
    client.instance(name).await.expect("get instance")
}

/// Runs a command inside the guest; panics unless it exits 0. Returns its output.
pub async fn exec(client: &Client, name: &str, cmd: &str) -> String {
    let out = client
        .exec(name, cmd)
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?} in {name}: {e}"));
    assert_eq!(out.exit_code, 0, "{cmd}: {}", out.output);
    out.output
}

/// The guest's uptime in seconds.
pub async fn uptime(client: &Client, name: &str) -> f64 {
    exec(client, name, "cut -d' ' -f1 /proc/uptime")
        .await
        .trim()
        .parse()
        .expect("uptime")
}

/// The guest's memory checker status as (pages verified, stale pages found); `None` before
/// its first report (see guest/README.md, `memcheck`).
pub async fn memcheck(client: &Client, name: &str) -> Option<(u64, u64)> {
    let line = client
        .exec(name, "cat /run/memcheck.status")
        .await
        .ok()?
        .output;
    let field = |k: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
    };
    Some((field("verified")?, field("stale")?))
}

/// Creates instances of one flavor from the default image, concurrently, and waits until
/// every one runs.
pub async fn create_instances(cloud: &Cloud, names: &[&str], flavor: &str) {
    let client = cloud.client().expect("client");
    let mut ops = Vec::new();
    for n in names {
        let req = CreateInstance {
            name: n.to_string(),
            flavor: Some(flavor.into()),
            image: Some("default".into()),
            from_snapshot: None,
            ..Default::default()
        };
        ops.push(client.create_instance(&req).await.expect("create"));
    }
    for op in ops {
        let done = client
            .wait_operation(&op.id.to_string(), Duration::from_secs(240), |_| {})
            .await
            .expect("wait");
        assert_eq!(
            done.state,
            OperationState::Succeeded,
            "{:?}\n{}",
            done.error,
            cloud.log_tail(30)
        );
    }
}

/// Migrates an instance and waits for the end; returns the operation and its record.
pub async fn migrate_and_wait(
    client: &Client,
    name: &str,
    req: MigrateInstance,
) -> (OperationView, Option<MigrationView>) {
    let op = client.migrate_instance(name, &req).await.expect("migrate");
    let id = op.id.to_string();
    let done = client
        .wait_operation(&id, Duration::from_secs(300), |_| {})
        .await
        .expect("wait");
    (done, client.migration(&id).await.ok())
}

/// Starts the guest's memory checker (`memcheck MIB RATE` in the background) and waits until
/// it verified pages; returns its first (verified, stale) report.
pub async fn start_memcheck(client: &Client, name: &str, mib: u32, rate: u32) -> (u64, u64) {
    let cmd = format!("memcheck {mib} {rate} </dev/null >/dev/null 2>&1 &");
    exec(client, name, &cmd).await;
    wait_until(
        "memcheck to verify pages",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            memcheck(client, name)
                .await
                .filter(|(verified, _)| *verified > 0)
        },
    )
    .await
    .expect("memcheck runs")
}

/// Waits until step `step` of operation `op` is in a state `reached` accepts.
pub async fn wait_for_step(
    client: &Client,
    op: &str,
    step: &str,
    reached: impl Fn(StepState) -> bool,
) {
    wait_until(
        &format!("step {step} of operation {op}"),
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            let view = client.operation(op).await.ok()?;
            view.steps
                .iter()
                .any(|s| s.name == step && reached(s.state))
                .then_some(())
        },
    )
    .await
    .expect("operation step");
}

/// Waits (bounded) until the instance runs and its guest answers exec.
pub async fn wait_running(client: &Client, name: &str) {
    wait_until(
        "the guest to run and answer",
        std::time::Duration::from_secs(240),
        std::time::Duration::from_secs(1),
        || async {
            let i = client.instance(name).await.ok()?;
            if i.state != nimbus_api::InstanceState::Running {
                return None;
            }
            client
                .exec(name, "true")
                .await
                .ok()
                .filter(|o| o.exit_code == 0)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// Waits (bounded by `limit`) until instance `name` runs on a host other than `away_from`
/// (the host that died or was cut off), and returns it.
pub async fn wait_running_elsewhere(
    client: &Client,
    name: &str,
    away_from: &str,
    limit: Duration,
) -> InstanceView {
    wait_until(
        &format!("{name} running on a host other than {away_from}"),
        limit,
        Duration::from_millis(500),
        || async {
            let i = instance(client, name).await;
            (i.state == nimbus_api::InstanceState::Running && i.host.as_deref() != Some(away_from))
                .then_some(i)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Waits (30 s at most) until `host` reports `up` again.
pub async fn wait_host_up(client: &Client, host: &str) {
    wait_until(
        &format!("host {host} up again"),
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let h = client.host(host).await.ok()?;
            (h.state == nimbus_api::HostState::Up).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}
