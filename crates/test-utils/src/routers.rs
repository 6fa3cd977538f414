//! Tenant gateway routers are namespaces of their own (`<host namespace>-r<vni>`, see the
//! agent's `network::router`): a test that deletes a host's namespace deletes its routers too.

use std::process::Command;

/// Deletes the router namespaces of the host whose namespace is `host`.
pub fn remove_routers(host: &str) {
    let prefix = format!("{host}-r");
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for name in entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
    {
        let is_router = name
            .strip_prefix(&prefix)
            .is_some_and(|vni| !vni.is_empty() && vni.bytes().all(|b| b.is_ascii_digit()));
        if is_router {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// The router namespaces of the host whose namespace is `host`.
pub fn routers(host: &str) -> Vec<String> {
    let prefix = format!("{host}-r");
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}
