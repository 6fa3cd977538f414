//! The command line, as clap definitions.

mod floating_ip;
mod group;
mod image;
mod keypair;
mod network;
mod secgroup;

pub use floating_ip::IpCmd;
pub use group::GroupCmd;
pub use image::ImageCmd;
pub use keypair::KeypairCmd;
pub use network::NetworkCmd;
pub use secgroup::{Proto, RuleAdd, RuleCmd, SecgroupCmd};

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// nimbus: an IaaS cloud in one binary.
#[derive(Debug, Parser)]
#[command(name = "nimbus", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub conn: Connection,
    /// Output format of listings and shows.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    pub output: OutputArg,
    #[command(subcommand)]
    pub command: Command,
}

/// Which cloud to talk to (defaults to the one `nimbus up` started on this machine).
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Controller URL, or several separated by commas (`https://ctl1:7700,https://ctl2:7700`):
    /// a call that cannot connect to one goes to the next (never after an HTTP answer).
    #[arg(long, env = "NIMBUS_API", global = true)]
    pub api: Option<String>,
    /// Bearer token.
    #[arg(long, env = "NIMBUS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) the controller's HTTPS certificate is checked against
    /// [default: the one `nimbus up` recorded in <data dir>/cli.json].
    #[arg(long, env = "NIMBUS_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Data directory of the local cloud (to find its API address and admin token).
    #[arg(long, env = "NIMBUS_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Project to act in [default: the token's]; another project needs an admin token.
    #[arg(long, env = "NIMBUS_PROJECT", global = true)]
    pub project: Option<String>,
}

/// How commands print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// `-o`: table, json, or csv (`nimbus usage` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
    Table,
    Json,
    Csv,
}

impl OutputArg {
    /// The format of commands that print tables or JSON.
    pub fn plain(self) -> anyhow::Result<Output> {
        match self {
            OutputArg::Table => Ok(Output::Table),
            OutputArg::Json => Ok(Output::Json),
            OutputArg::Csv => anyhow::bail!("-o csv is only for `nimbus usage`; use -o json"),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an all-in-one cloud on this machine: controller plus N host agents.
    Up(UpArgs),
    /// Run the controller alone (multi-machine setups; several may share one PostgreSQL),
    /// or `nimbus controller list`.
    Controller(ControllerCmd),
    /// Run a host agent alone (multi-machine setups).
    Agent(AgentArgs),
    /// Hosts of the pool.
    #[command(subcommand)]
    Host(HostCmd),
    /// Flavors: the machine sizes tenants can ask for.
    #[command(subcommand)]
    Flavor(FlavorCmd),
    /// Images instances boot from.
    #[command(subcommand)]
    Image(ImageCmd),
    /// SSH keys that cloud-init puts into instances.
    #[command(subcommand)]
    Keypair(KeypairCmd),
    /// Virtual machines.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Scaling groups: instances that grow and shrink with load and replace what fails.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Private networks of the project.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Floating IPs: external addresses translated 1:1 to an instance.
    #[command(subcommand)]
    Ip(IpCmd),
    /// Placement groups: members kept on distinct hosts (spread) or together (pack).
    #[command(subcommand)]
    PlacementGroup(PlacementGroupCmd),
    /// Security groups: stateful allow rules on the project's instances.
    #[command(subcommand)]
    Secgroup(SecgroupCmd),
    /// Long-running actions and their progress.
    #[command(subcommand)]
    Operation(OperationCmd),
    /// Checkpoints of instances (CPU, memory, disk), kept as a tree per instance.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Projects: the tenants (admin).
    #[command(subcommand)]
    Project(ProjectCmd),
    /// API tokens of a project (admin).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Per-project limits and their current use.
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// The log of mutating API calls (admin).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Usage per instance and in total over a period (vCPU-seconds, CPU, memory, disk,
    /// snapshots, network): `-o table|json|csv`. Of the --project given, else of every
    /// project for an admin (of the token's project for others).
    Usage(UsageArgs),
}

#[derive(Debug, Subcommand)]
pub enum PlacementGroupCmd {
    /// Create a placement group; instances join it with `instance create --placement-group`.
    Create {
        name: String,
        /// `spread`: members on distinct hosts (a member that cannot have a host of its own
        /// is refused); `pack`: members on the same host while it has room.
        #[arg(long, value_parser = ["spread", "pack"])]
        policy: String,
    },
    /// The placement groups and where their members run.
    List,
    /// Delete a placement group without members.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project (it gets the default quota of new projects).
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    List,
    Show {
        name: String,
    },
    /// Delete a project that owns no instances (its tokens are revoked).
    Delete {
        name: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Everything, in every project.
    Admin,
    /// Read and write in its own project.
    Member,
    /// Read only, in its own project.
    Reader,
    /// `/metrics` only (for a Prometheus server).
    Metrics,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token in the project given by --project (default: yours); prints the
    /// secret once.
    Create {
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Lifetime, e.g. 30d, 12h, 90m, 3600s [default: does not expire].
        #[arg(long, value_parser = crate::duration::parse)]
        expires_in: Option<std::time::Duration>,
        /// A label for people (e.g. who holds the token).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (of --project, or of every project); never their secrets.
    List,
    /// Revoke a token: refused from the next request on.
    Revoke { id: String },
}

/// A quota limit: a number, or `unlimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

impl std::str::FromStr for Limit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "unlimited" {
            return Ok(Limit(None));
        }
        s.parse()
            .map(|n| Limit(Some(n)))
            .map_err(|_| format!("{s:?} is neither a number nor `unlimited`"))
    }
}

#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// Change a project's limits (admin); limits not given stay as they are.
    Set {
        /// The project (named apart from the global --project option).
        #[arg(id = "target_project", value_name = "PROJECT")]
        project: String,
        #[arg(long)]
        instances: Option<Limit>,
        #[arg(long)]
        vcpus: Option<Limit>,
        #[arg(long)]
        memory_mib: Option<Limit>,
        #[arg(long)]
        disk_gib: Option<Limit>,
        #[arg(long)]
        snapshots: Option<Limit>,
        /// MiB of images the project may own.
        #[arg(long)]
        image_mib: Option<Limit>,
        /// Floating IPs the project may hold.
        #[arg(long)]
        floating_ips: Option<Limit>,
    },
    /// Limits and current use of a project.
    Show {
        #[arg(id = "target_project", value_name = "PROJECT")]
        project: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Mutating API calls, newest first (of --project, or of every project).
    List {
        /// Only calls since: an RFC 3339 time or a duration ago (e.g. 1h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// `nimbus usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Start of the period: RFC 3339 (`2026-11-25T00:00:00Z`) or a time ago (`-1h`, `-30m`,
    /// `-7d`) [default: 24 hours before --to].
    #[arg(long, allow_hyphen_values = true)]
    pub from: Option<String>,
    /// End of the period (exclusive), same forms [default: now].
    #[arg(long, allow_hyphen_values = true)]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the database, tokens and host state live [default: /var/lib/nimbus as root,
    /// ~/.local/share/nimbus otherwise].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Number of host agents to run.
    #[arg(long, default_value_t = 2)]
    pub hosts: u32,
    /// API address for the CLI.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Database URL [default: SQLite in the data directory]; PostgreSQL
    /// (`postgres://USER:PASSWORD@HOST/DATABASE`) for `--controllers` above 1.
    #[arg(long, env = "NIMBUS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Controllers to run over the database (several need PostgreSQL): the first in this
    /// process on `--listen`, the others on the next ports; agents and the CLI use all.
    #[arg(long, default_value_t = 1)]
    pub controllers: u32,
    /// How long the work of a controller that stopped renewing stays its own before another
    /// controller takes it over (see docs/control-plane.md).
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub lease_ttl: std::time::Duration,
    /// How long a guest may take from launch to ready before its create, start or reboot
    /// fails (every controller).
    #[arg(long, env = "NIMBUS_BOOT_TIMEOUT_SECS", default_value_t = 300)]
    pub boot_timeout_secs: u64,
    /// Run agents as plain processes on loopback instead of one network namespace each.
    #[arg(long)]
    pub no_netns: bool,
    /// Prefix of the bridge and namespace names (at most 8 characters).
    #[arg(long, default_value = "nimbus")]
    pub net_name: String,
    /// Third octet of the hosts' 10.249.X.0/24 network.
    #[arg(long, default_value_t = 0)]
    pub net_index: u8,
    /// Force an accelerator instead of probing (kvm or tcg).
    #[arg(long)]
    pub accel: Option<String>,
    /// vCPU allocation ratio (overcommit).
    #[arg(long, default_value_t = 4.0)]
    pub cpu_ratio: f64,
    /// RAM allocation ratio.
    #[arg(long, default_value_t = 1.0)]
    pub ram_ratio: f64,
    /// Disk allocation ratio (instance disks are copy-on-write overlays: a ratio above 1
    /// offers more GiB than the hosts' free space).
    #[arg(long, default_value_t = 1.0)]
    pub disk_ratio: f64,
    /// Placement strategy.
    #[arg(long, value_enum, default_value = "spread")]
    pub strategy: StrategyArg,
    /// Keep every host's instance disks in `<data dir>/shared`, one directory all hosts see
    /// (as an NFS mount at the same path would be): live migration then copies no disk.
    /// Without it each host's disks are local and migration mirrors them.
    #[arg(long)]
    pub shared_storage: bool,
    /// Seconds between two usage samples of a running VM (passed to every agent).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub metering_interval_secs: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    Spread,
    Pack,
}

/// `nimbus controller [ARGS]` runs a controller; `nimbus controller list` lists them.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControllerCmd {
    #[command(subcommand)]
    pub action: Option<ControllerAction>,
    #[command(flatten)]
    pub run: ControllerArgs,
}

#[derive(Debug, Subcommand)]
pub enum ControllerAction {
    /// The live controllers sharing the database: version, heartbeat age, operations owned
    /// (admin).
    List,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Addresses to listen on (repeatable).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: Vec<SocketAddr>,
    /// Database URL [default: SQLite in the data directory]; several controllers share
    /// one PostgreSQL database (`postgres://USER:PASSWORD@HOST/DATABASE`).
    #[arg(long, env = "NIMBUS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(long, default_value_t = 4.0)]
    pub cpu_ratio: f64,
    #[arg(long, default_value_t = 1.0)]
    pub ram_ratio: f64,
    #[arg(long, default_value_t = 1.0)]
    pub disk_ratio: f64,
    #[arg(long, value_enum, default_value = "spread")]
    pub strategy: StrategyArg,
    /// The cloud network instances get a NIC on (agents must run as root); `none` to run
    /// instances without network.
    #[arg(long, default_value = "10.200.0.0/16")]
    pub network: String,
    /// External addresses projects allocate floating IPs from (e.g. 203.0.113.0/26), routed
    /// or on-link to the hosts' uplink network (hosts answer ARP for the ones they hold).
    /// Without it, `nimbus ip allocate` is refused.
    #[arg(long, value_name = "CIDR")]
    pub floating_ip_pool: Option<ipnet::Ipv4Net>,
    /// A reverse proxy in front of the API (repeatable): only from these addresses is
    /// `X-Forwarded-For` believed, to count failed authentications per real client.
    #[arg(long, value_name = "ADDR")]
    pub trusted_proxy: Vec<std::net::IpAddr>,
    /// Hours raw usage samples are kept before being rolled up to two per instance and hour
    /// (usage over whole hours is unchanged).
    #[arg(long, default_value_t = 48)]
    pub usage_retention_hours: u64,
    /// Days finished operations are kept.
    #[arg(long, default_value_t = 30)]
    pub operation_retention_days: u64,
    /// Days audit entries are kept.
    #[arg(long, default_value_t = 90)]
    pub audit_retention_days: u64,
    /// How long a guest may take from launch to ready (its report to the metadata service,
    /// or its ready line) before its create, start or reboot fails.
    #[arg(long, env = "NIMBUS_BOOT_TIMEOUT_SECS", default_value_t = 300)]
    pub boot_timeout_secs: u64,
    /// A name (DNS or IP) agents and clients on other machines reach the controller by,
    /// written into its certificate besides its listen addresses, loopback, `localhost` and
    /// the machine's host name (repeatable).
    #[arg(long = "tls-name", value_name = "NAME")]
    pub tls_names: Vec<String>,
    /// How long the operations of a controller that stopped renewing stay its own before
    /// another controller takes them over (see docs/control-plane.md).
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub lease_ttl: std::time::Duration,
    /// Where this controller keeps its own copies of uploaded images' bytes [default: the
    /// data directory]; every controller copies each image from the others, so each needs
    /// its own (controllers sharing a data directory on one machine: one each).
    #[arg(long, value_name = "DIR")]
    pub blob_dir: Option<PathBuf>,
    /// URL the other controllers reach this one at (they copy image bytes from one
    /// another), e.g. https://10.0.0.11:7700 [default: https://<first --listen>]; needed
    /// with several controllers when the first --listen address is 0.0.0.0 or ::.
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Host name (unique in the cloud).
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "0.0.0.0:7701")]
    pub listen: SocketAddr,
    /// URL the controller reaches this agent at, e.g. https://10.0.0.3:7701 [default:
    /// https://<listen>]; its address goes into the host's certificate at enrolment.
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Controller URL, e.g. https://ctl:7700; several controllers over one PostgreSQL:
    /// `URL1,URL2,...` (the agent reports to whichever answers; it enrols with the first).
    #[arg(long)]
    pub controller: String,
    /// One-time join token (`nimbus host join-token`) to enrol this host on its first
    /// start; later starts reuse the certificate saved in the state dir.
    #[arg(long, env = "NIMBUS_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// Where VM state (disks, sockets, logs) lives.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Keep instance disks in this directory of shared storage (e.g. an NFS mount at the same
    /// path on every host; it must exist and be writable). Hosts with the same one migrate
    /// VMs without copying disks.
    #[arg(long, env = "NIMBUS_SHARED_STORAGE", value_name = "DIR")]
    pub shared_storage: Option<PathBuf>,
    /// Force an accelerator instead of probing (kvm or tcg).
    #[arg(long, env = "NIMBUS_ACCEL")]
    pub accel: Option<String>,
    /// vCPUs this host offers per physical CPU (overcommit) [default: the controller's].
    #[arg(long)]
    pub cpu_allocation_ratio: Option<f64>,
    /// Memory this host offers per MiB of RAM [default: the controller's].
    #[arg(long)]
    pub ram_allocation_ratio: Option<f64>,
    /// Turn kernel same-page merging on and tune it (`off`: leave the kernel's KSM settings
    /// alone).
    #[arg(long, value_enum, default_value = "on")]
    pub ksm: OnOff,
    /// Pages KSM scans per wake-up.
    #[arg(long, default_value_t = 1000)]
    pub ksm_pages_to_scan: u32,
    /// Milliseconds KSM sleeps between scans.
    #[arg(long, default_value_t = 20)]
    pub ksm_sleep_ms: u32,
    /// Seconds between two usage samples of a running VM.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub metering_interval_secs: u64,
    /// Bound of the cache of uploaded images, in GiB (least recently used images no VM uses
    /// are evicted beyond it).
    #[arg(long, default_value_t = 20)]
    pub image_cache_gib: u64,
    /// Serve incoming live migrations and disk mirrors in plain TCP instead of TLS with the
    /// host's certificate. Only for benchmarks and trusted underlays: anyone on the network
    /// between the hosts can then read and alter the guests' memory and disks.
    #[arg(long, env = "NIMBUS_INSECURE_MIGRATION")]
    pub insecure_migration: bool,
    /// Benchmark only: VMs are records, no QEMU runs (see bench/control_plane.py); refused
    /// unless NIMBUS_BENCHMARK=1. Hidden: no cloud serves tenants with it.
    #[arg(long, hide = true, env = "NIMBUS_FAKE_VMS")]
    pub fake_vms: bool,
}

/// A switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// What happens to an instance when its host dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HaArg {
    /// Restart it on another host.
    Restart,
    /// No HA: it stays `error` until its host is back or an operator evacuates it.
    None,
}

impl HaArg {
    /// The API's policy for this choice.
    pub fn policy(self) -> Option<nimbus_api::HaPolicy> {
        match self {
            HaArg::Restart => Some(nimbus_api::HaPolicy::Restart),
            HaArg::None => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// List hosts with capacity and allocation.
    List,
    /// Show one host.
    Show { host: String },
    /// Return a host to the pool.
    Enable { host: String },
    /// Take a host out of placement (its VMs keep running).
    Disable { host: String },
    /// Take a host out of placement and live-migrate every running instance off it.
    Drain {
        host: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Restart every instance of a dead (down) host on other hosts, HA or not, where its
    /// disk is on shared storage.
    Evacuate {
        host: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// A one-time token a new host enrols with (`nimbus agent --join TOKEN`); admin.
    JoinToken {
        /// How long it may be used: 90m, 1h, 2d (at most 7d).
        #[arg(long, default_value = "1h", value_parser = crate::duration::parse)]
        expires_in: std::time::Duration,
    },
    /// Remove a host without instances and revoke its certificate: its agent is refused
    /// from then on (enrol it again with a new token to bring it back).
    Remove { host: String },
    /// VMs hosts run that the store does not know (or places elsewhere): listed, left
    /// running, never deleted on their own.
    #[command(args_conflicts_with_subcommands = true)]
    Orphans {
        /// Only this host's.
        host: Option<String>,
        #[command(subcommand)]
        action: Option<OrphanCmd>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrphanCmd {
    /// Delete an orphan VM (its QEMU and files; a disk its instance may use elsewhere stays).
    Delete { host: String, vm_id: String },
}

#[derive(Debug, Subcommand)]
pub enum FlavorCmd {
    List,
    Create {
        name: String,
        #[arg(long)]
        vcpus: u32,
        #[arg(long)]
        memory_mib: u64,
        #[arg(long)]
        disk_gib: u64,
    },
    Delete {
        name: String,
    },
}

/// `--wait` and its bound.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait for the operation to finish, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum InstanceCmd {
    /// Create (and boot) an instance, or clone one from a snapshot.
    Create {
        name: String,
        /// Machine size (`nimbus flavor list`); not with --from-snapshot.
        #[arg(long, required_unless_present = "from_snapshot")]
        flavor: Option<String>,
        /// Image to boot (`nimbus image list`); not with --from-snapshot.
        #[arg(long, required_unless_present = "from_snapshot")]
        image: Option<String>,
        /// Start a clone resuming from this snapshot: the source's flavor and image, a new
        /// identity (MAC, IP), on the host the snapshot lives on.
        #[arg(long, conflicts_with_all = ["flavor", "image"])]
        from_snapshot: Option<String>,
        /// A network of the project to attach (repeat for several NICs, in order)
        /// [default: the project's `default` network].
        #[arg(long = "network", conflicts_with = "from_snapshot")]
        networks: Vec<String>,
        /// Address of the first NIC (inside its network and free) [default: the lowest free].
        #[arg(long, conflicts_with = "from_snapshot")]
        ip: Option<String>,
        /// Join this placement group (`nimbus placement-group list`): `spread` keeps its
        /// members on distinct hosts, `pack` together.
        #[arg(long)]
        placement_group: Option<String>,
        /// `restart`: when its host dies, restart it on another host once the host has
        /// fenced itself: from its disk on shared storage (`nimbus up --shared-storage`), or
        /// with a local disk from its latest snapshot (replicated to the controller: what
        /// changed after it is lost).
        #[arg(long, value_enum)]
        ha: Option<HaArg>,
        /// Restart priority: high, medium, low or a number from 0 to 1000 [default: medium].
        /// When a host dies its HA instances restart higher first; when the other hosts lack
        /// room the lower ones stay `error` ("no capacity").
        #[arg(long, value_parser = nimbus_api::parse_ha_priority)]
        ha_priority: Option<u16>,
        /// Keypair whose public key cloud-init installs (`nimbus keypair list`).
        #[arg(long = "key")]
        key_name: Option<String>,
        /// User-data for cloud-init (e.g. a `#cloud-config` file), at most 16 KiB.
        #[arg(long)]
        user_data_file: Option<std::path::PathBuf>,
        /// A security group of the project (repeat for several) [default: the project's
        /// `default` group; a clone keeps its source's groups].
        #[arg(long = "secgroup", conflicts_with = "from_snapshot")]
        secgroups: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    List,
    Show {
        instance: String,
    },
    Start {
        instance: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    Stop {
        instance: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    Reboot {
        instance: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    Delete {
        instance: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Live-migrate a running instance to another host.
    Migrate {
        instance: String,
        /// Target host (default: the scheduler chooses).
        #[arg(long)]
        to: Option<String>,
        /// Longest acceptable pause at switch-over.
        #[arg(long)]
        max_downtime_ms: Option<u64>,
        /// Allow post-copy when pre-copy cannot converge (otherwise abort with the reason).
        #[arg(long)]
        allow_postcopy: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change an instance's security groups or HA (while it runs, too).
    #[command(group = clap::ArgGroup::new("changes").required(true).multiple(true))]
    Set {
        instance: String,
        /// The instance's groups from now on (repeat for several).
        #[arg(long = "secgroup", group = "changes")]
        secgroups: Vec<String>,
        /// `restart`: restart it elsewhere when its host dies; `none`: leave it `error`.
        #[arg(long, value_enum, group = "changes")]
        ha: Option<HaArg>,
        /// Restart priority: high, medium, low or a number from 0 to 1000.
        #[arg(long, value_parser = nimbus_api::parse_ha_priority, group = "changes")]
        ha_priority: Option<u16>,
    },
    /// Print the serial console log.
    Log {
        instance: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
    },
    /// Attach to the serial console (detach with Ctrl-]).
    Console {
        instance: String,
    },
    /// Run a command inside the guest and print its output.
    Exec {
        instance: String,
        /// The command line (run with sh -c).
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperationCmd {
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    Show {
        id: String,
    },
    /// Wait for an operation to finish.
    Wait {
        id: String,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Cancel an operation (it undoes what it did).
    Cancel {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot an instance: memory, CPU and disk while it runs (a pause of milliseconds).
    Create {
        instance: String,
        /// Name of the snapshot [default: <instance>-<yyyymmdd-hhmmss>].
        #[arg(long)]
        name: Option<String>,
        /// Capture the disk only (no memory); works on a stopped instance too.
        #[arg(long)]
        disk_only: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List snapshots as trees (parent of each; `*` marks an instance's current one).
    List {
        /// Only the snapshots of this instance.
        #[arg(long)]
        instance: Option<String>,
    },
    /// Show one snapshot.
    Show { snapshot: String },
    /// Return the snapshot's instance to exactly that instant (memory, processes, disk).
    Restore {
        snapshot: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a snapshot and free its space (the others stay restorable).
    Delete {
        snapshot: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}
