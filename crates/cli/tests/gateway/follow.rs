//! Follow-the-VM steps of the gateway test, on the guest that holds the floating IP after its
//! live migration: its DHCP renewal is answered by its new host with the same address; its
//! floating IP and security-group rules keep working after a drain of its host and after a
//! snapshot restore, and a port no rule opens stays closed.

use super::floating::{greeting_becomes, serve_pong};
use nimbus_client::Client;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::Cloud;
use std::net::{Ipv4Addr, SocketAddr};

/// A renewal by the guest's own DHCP client (SIGUSR1: renew now) ends with its address.
pub async fn dhcp_renewal_keeps_the_address(acme: &Client, name: &str, ip: &str) {
    let renew = "rm -f /tmp/udhcpc.eth0; kill -USR1 $(pidof udhcpc); \
                 for i in $(seq 60); do [ -s /tmp/udhcpc.eth0 ] && break; sleep 0.5; done; \
                 cat /tmp/udhcpc.eth0";
    let out = exec(acme, name, renew).await;
    let event = out.split_whitespace().collect::<Vec<_>>();
    assert!(
        matches!(event.as_slice(), ["renew" | "bound", got] if *got == ip),
        "{name}'s DHCP renewal after the move: {out:?} (want {ip})"
    );
}

/// `pong` (the guest's server behind its floating IP, opened by a rule) answers after a drain
/// of the guest's host and after a snapshot restore; a port without a rule does not.
pub async fn floating_ip_survives_drain_and_restore(
    cloud: &Cloud,
    acme_token: &str,
    acme: &Client,
    fip: Ipv4Addr,
) {
    let pong = SocketAddr::from((fip, 8080));
    let host = instance(acme, "a1").await.host.expect("placed");
    cli_ok(cloud, &["host", "drain", &host, "--wait"]);
    let moved = instance(acme, "a1").await.host.expect("placed");
    assert_ne!(moved, host, "the drain moved a1");
    assert!(
        greeting_becomes(pong, Some("pong")).await,
        "{fip} does not answer after the drain of {host}"
    );
    cli_ok(cloud, &["host", "enable", &host]);

    cli_ok_as(
        cloud,
        acme_token,
        &["snapshot", "create", "a1", "--name", "a1-net", "--wait"],
    );
    // Changed after the snapshot, undone by the restore: the server on 7070 is gone again.
    serve_pong(acme, "a1", 7070).await;
    cli_ok_as(
        cloud,
        acme_token,
        &["snapshot", "restore", "a1-net", "--wait"],
    );
    assert!(
        greeting_becomes(pong, Some("pong")).await,
        "{fip} does not answer after the snapshot restore"
    );
    // 7070 has no rule: closed whatever runs behind it.
    serve_pong(acme, "a1", 7070).await;
    assert!(
        greeting_becomes(SocketAddr::from((fip, 7070)), None).await,
        "a port without a rule answers at {fip} after the restore"
    );
    cli_ok_as(
        cloud,
        acme_token,
        &["snapshot", "delete", "a1-net", "--wait"],
    );
}
