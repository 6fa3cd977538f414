//! The test harness itself (as root): two clouds in one test process, as tests of one file
//! run on threads, get namespaces, bridges and subnets of their own, both come up, and
//! dropping them removes every namespace and link they made. No guest is booted.

use nimbus_test_utils::{Cloud, CloudOptions};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

/// The namespaces and links whose names start with `prefix`.
fn made_with(prefix: &str) -> Vec<String> {
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut all = names("/run/netns");
    all.extend(names("/sys/class/net"));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clouds_in_one_process_stay_apart_and_leave_nothing_behind() {
    let opts = CloudOptions {
        hosts: 1,
        ..CloudOptions::default()
    };
    let (a, b) = tokio::join!(
        Cloud::start(Path::new(BIN), opts.clone()),
        Cloud::start(Path::new(BIN), opts)
    );
    let (a, b) = (a.expect("first cloud"), b.expect("second cloud"));
    let prefix = |c: &Cloud| -> String {
        let ns = c.host_netns(1).expect("hosts in namespaces (run as root)");
        ns.trim_end_matches("-host1").to_string()
    };
    let (pa, pb) = (prefix(&a), prefix(&b));
    assert_ne!(pa, pb);
    assert_ne!(a.underlay(1), b.underlay(1), "one subnet each");
    for (cloud, p) in [(&a, &pa), (&b, &pb)] {
        let made = made_with(p);
        for name in [format!("{p}-host1"), format!("{p}-br"), format!("{p}-h1")] {
            assert!(made.contains(&name), "{name} missing from {made:?}");
            assert!(
                name.len() <= 15,
                "{name}: longer than an interface name may be"
            );
        }
        let hosts = cloud
            .client()
            .expect("client")
            .list_hosts()
            .await
            .expect("hosts");
        assert_eq!(hosts.len(), 1, "each cloud sees its own host only");
    }
    drop(a);
    drop(b);
    for p in [&pa, &pb] {
        assert_eq!(made_with(p), Vec::<String>::new(), "left behind");
    }
}
