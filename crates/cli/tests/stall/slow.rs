//! The setup the stall tests share: a guest running memcheck on a two-host cloud (shared
//! storage), migrating over a link slowed to 20 MB/s, its memory transfer under way for 3 s.

use nimbus_api::{MigrateInstance, StepState};
use nimbus_client::Client;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{Cloud, CloudOptions, LinkFault};
use std::path::Path;
use std::time::Duration;

/// The migration under way and what the tests check it against.
pub struct SlowMigration {
    pub cloud: Cloud,
    pub client: Client,
    pub id: String,
    pub src: String,
    pub dst: &'static str,
    pub verified_before: u64,
    pub slow: LinkFault,
    pub op_id: String,
}

/// Starts it for a new instance `name`; `bin` is the nimbus binary.
pub async fn slow_migration(bin: &str, name: &str) -> SlowMigration {
    let opts = CloudOptions {
        hosts: 2,
        extra_args: vec!["--shared-storage".into()],
    };
    let cloud = Cloud::start(Path::new(bin), opts)
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    create_instances(&cloud, &[name], "small").await;
    let before = instance(&client, name).await;
    let src = before.host.clone().expect("placed");
    let dst = if src == "host1" { "host2" } else { "host1" };
    let (verified_before, _) = start_memcheck(&client, name, 96, 20).await;
    // Memory moves in well under a second on this link: slowed to 20 MB/s, the ~460 MB of
    // the guest take long enough to cut the link in the middle.
    let slow = cloud
        .throttle_link(&src, dst, 20)
        .expect("throttle the link");
    let op = client
        .migrate_instance(name, &MigrateInstance::default())
        .await
        .expect("migrate");
    let op_id = op.id.to_string();
    wait_for_step(&client, &op_id, "transfer", |s| s == StepState::Running).await;
    // Let memory flow.
    tokio::time::sleep(Duration::from_secs(3)).await;
    SlowMigration {
        cloud,
        client,
        id: before.id.to_string(),
        src,
        dst,
        verified_before,
        slow,
        op_id,
    }
}
