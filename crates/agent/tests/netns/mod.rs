//! Hosts on one machine, built like `nimbus up` builds them: a network namespace per host,
//! its `eth0` on a bridge in the root namespace, and helpers to run code inside a namespace.
//!
//! ```text
//!  root ns: bridge <p>-br [10.248.X.1/24] ─┬─ veth <p>-h1 ── netns <p>-h1: eth0 10.248.X.11/24
//!                                          └─ veth <p>-h2 ── netns <p>-h2: eth0 10.248.X.12/24
//! ```
//! Everything is deleted on drop, even when the test fails.

#![allow(dead_code)]

pub mod agent;

use nimbus_agent::network::{bridge, Shell, NIC_MTU};
use nimbus_agent_api::{NicSpec, VmSpec};
use nimbus_qemu::config::MachineSection;
use nimbus_qemu::{Accel, QemuConfig, VmPaths};
use std::net::IpAddr;

/// A VM spec with `nics` and nothing to boot: enough for plugging its network.
pub fn vm_spec(nics: Vec<NicSpec>) -> VmSpec {
    VmSpec {
        memory_mib: 64,
        nics,
        ..nimbus_test_utils::specs::blank_vm_spec(uuid::Uuid::new_v4(), "net-test")
    }
}

/// A QEMU configuration [`nimbus_agent::network::HostNetwork::plug`] can add NICs to.
pub fn qemu_config() -> QemuConfig {
    let machine = MachineSection {
        name: "net-test".into(),
        accel: Accel::Tcg,
        vcpus: 1,
        memory_mib: 64,
    };
    QemuConfig::standard(machine, &VmPaths::new("/nonexistent"))
}

pub async fn run(shell: &Shell, args: &[&str]) {
    shell.ip(args).run().await.expect("ip command");
}

/// The namespaces and links of one test.
pub struct Topology {
    pub prefix: String,
    pub subnet: u8,
    hosts: u8,
    /// Guest namespaces made, deleted on drop.
    guests: Vec<String>,
}

impl Topology {
    pub fn host_ns(&self, i: u8) -> String {
        format!("{}-h{i}", self.prefix)
    }

    pub fn guest_ns(&self, i: u8) -> String {
        format!("{}-g{i}", self.prefix)
    }

    /// Host `i`'s underlay address.
    pub fn host_ip(&self, i: u8) -> IpAddr {
        IpAddr::from([10, 248, self.subnet, 10 + i])
    }

    /// The root namespace's address on the bridge (when created with one).
    pub fn root_ip(&self) -> IpAddr {
        IpAddr::from([10, 248, self.subnet, 1])
    }

    /// The root bridge and `hosts` host namespaces; `tag` (one letter) keeps the names of
    /// tests in one process apart. With `root_address` the root namespace gets
    /// [`Self::root_ip`] on the bridge (to reach agents and be reached by them).
    pub async fn create(tag: char, hosts: u8, root_address: bool) -> Self {
        let pid = std::process::id();
        let mut t = Self {
            prefix: format!("nb{tag}{}", pid % 100_000),
            subnet: (pid % 250) as u8,
            hosts: 0,
            guests: Vec::new(),
        };
        let root = Shell::here();
        let br = format!("{}-br", t.prefix);
        run(&root, &["link", "add", &br, "type", "bridge"]).await;
        if root_address {
            let cidr = format!("{}/24", t.root_ip());
            run(&root, &["addr", "add", &cidr, "dev", &br]).await;
        }
        run(&root, &["link", "set", &br, "up"]).await;
        for i in 1..=hosts {
            let ns = t.host_ns(i);
            run(&root, &["netns", "add", &ns]).await;
            t.hosts = i;
            let veth = format!("{}-h{i}", t.prefix);
            run(
                &root,
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )
            .await;
            run(&root, &["link", "set", &veth, "master", &br, "up"]).await;
            let host = Shell::in_netns(&ns);
            let cidr = format!("{}/24", t.host_ip(i));
            run(&host, &["addr", "add", &cidr, "dev", "eth0"]).await;
            run(&host, &["link", "set", "eth0", "up"]).await;
            run(&host, &["link", "set", "lo", "up"]).await;
        }
        t
    }

    /// A "guest" namespace whose eth0 (`addr`, MTU 1450) is a port of host `i`'s bridge
    /// (which must exist).
    pub async fn add_guest(&mut self, i: u8, addr: &str) {
        self.add_guest_to(i, &format!("g{i}"), bridge::BRIDGE, addr)
            .await;
    }

    /// A "guest" namespace `<prefix>-<name>` (`name` short) whose eth0 (`addr`, MTU 1450) is a
    /// port (`gv<name>`) of bridge `bridge` of host `i`; answers the namespace.
    pub async fn add_guest_to(&mut self, i: u8, name: &str, bridge: &str, addr: &str) -> String {
        self.add_guest_port(i, name, &format!("gv{name}"), bridge, addr, None)
            .await
    }

    /// [`Self::add_guest_to`] with the host side of the veth named `port` (e.g. a VM's tap
    /// name, so that the VM's port rules apply to it) and the guest's MAC set to `mac`.
    pub async fn add_guest_port(
        &mut self,
        i: u8,
        name: &str,
        port: &str,
        bridge: &str,
        addr: &str,
        mac: Option<&str>,
    ) -> String {
        let ns = format!("{}-{name}", self.prefix);
        run(&Shell::here(), &["netns", "add", &ns]).await;
        self.guests.push(ns.clone());
        let host = Shell::in_netns(self.host_ns(i));
        let port = port.to_string();
        run(
            &host,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )
        .await;
        let mtu = NIC_MTU.to_string();
        run(
            &host,
            &["link", "set", &port, "mtu", &mtu, "master", bridge, "up"],
        )
        .await;
        let guest = Shell::in_netns(&ns);
        if let Some(mac) = mac {
            run(&guest, &["link", "set", "eth0", "address", mac]).await;
        }
        run(&guest, &["addr", "add", addr, "dev", "eth0"]).await;
        run(&guest, &["link", "set", "eth0", "mtu", &mtu, "up"]).await;
        ns
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let ip = |args: &[&str]| {
            let _ = std::process::Command::new("ip").args(args).status();
        };
        // Deleting a veth deletes both ends at once (a namespace is freed asynchronously).
        for i in 1..=self.hosts {
            ip(&["link", "del", &format!("{}-h{i}", self.prefix)]);
        }
        let guests = self.guests.iter().cloned();
        let hosts = (1..=self.hosts).map(|i| self.host_ns(i));
        for ns in guests.chain(hosts).collect::<Vec<_>>() {
            // A host's tenant gateways are namespaces named after it (`<host>-r<vni>`).
            let routers = std::fs::read_dir("/run/netns")
                .into_iter()
                .flatten()
                .flatten();
            for name in routers.map(|e| e.file_name().to_string_lossy().into_owned()) {
                if name.starts_with(&format!("{ns}-r")) {
                    ip(&["netns", "del", &name]);
                }
            }
            ip(&["netns", "del", &ns]);
        }
        ip(&["link", "del", &format!("{}-br", self.prefix)]);
    }
}

/// Runs `f` on a new thread inside the network namespace `ns` (threads and processes it
/// starts inherit the namespace).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Whether the test can build namespaces; says why not otherwise.
pub fn can_run(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: host networking needs root (namespaces, VXLAN, taps)");
    false
}
