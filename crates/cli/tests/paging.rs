//! End to end: the `nimbus` binary lists every row of a listing longer than the API's
//! largest page (it follows `next-page-token`), in order, each once. One host (no VM runs:
//! the rows are security groups, created through the API).

use nimbus_api::SecurityGroupView;
use nimbus_test_utils::{Cloud, CloudOptions};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_past_the_largest_page() {
    let opts = CloudOptions {
        hosts: 1,
        ..CloudOptions::default()
    };
    let cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    let count = nimbus_api::MAX_PAGE_LIMIT as usize + 5;
    for i in 0..count {
        client
            .create_secgroup(&format!("sg{i:04}"))
            .await
            .expect("create");
    }
    let out = cloud
        .cli(&["secgroup", "list", "-o", "json"])
        .expect("run the CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<SecurityGroupView> = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = listed.iter().map(|g| g.name.as_str()).collect();
    let mut expected: Vec<String> = (0..count).map(|i| format!("sg{i:04}")).collect();
    expected.insert(0, "default".into());
    assert_eq!(
        names, expected,
        "every group once, by name, across two pages"
    );
}
