//! Public REST types of nimbus.
//!
//! Everything a client sends to or receives from `/v1/` is defined here, shared by the
//! controller (server), the typed client, the CLI and the end-to-end tests, so the three can
//! never disagree. The crate does no I/O.

pub mod audit;
pub mod controller;
pub mod error;
pub mod flavor;
pub mod floating_ip;
pub mod group;
pub mod ha;
pub mod host;
pub mod image;
pub mod instance;
pub mod keypair;
pub mod migration;
pub mod name;
pub mod network;
pub mod operation;
pub mod page;
pub mod placement;
pub mod project;
pub mod quota;
pub mod secgroup;
pub mod snapshot;
pub mod token;
pub mod usage;

pub use audit::AuditEntry;
pub use controller::ControllerView;
pub use error::{ErrorBody, ErrorCode};
pub use flavor::{CreateFlavor, FlavorView};
pub use floating_ip::{AttachFloatingIp, FloatingIpView};
pub use group::{
    CreateGroup, GroupEvent, GroupMember, GroupView, PolicyKind, ScalingStep, StepBound,
    UpdateGroup,
};
pub use ha::{
    ha_priority_label, parse_ha_priority, SetInstanceHa, HA_PRIORITY_HIGH, HA_PRIORITY_LOW,
    HA_PRIORITY_MAX, HA_PRIORITY_MEDIUM,
};
pub use host::{
    CreateJoinToken, EvacuateLeft, EvacuateResult, HostCachedImage, HostImageCache, HostKsm,
    HostState, HostView, JoinTokenView, OrphanKind, OrphanView,
};
pub use image::{
    CreateImageFromInstance, Firmware, ImageCopies, ImageView, ImportImage, UploadCheck,
    UploadImage,
};
pub use instance::{
    ConsoleLog, CreateInstance, ExecInstance, ExecOutput, HaPolicy, InstanceState, InstanceView,
    MigrateInstance, ReadySource, MAX_USER_DATA_BYTES,
};
pub use keypair::{CreateKeypair, CreatedKeypair, KeypairView};
pub use migration::{MigrationStats, MigrationView};
pub use name::{validate_name, NameError};
pub use network::{CreateNetwork, NetworkView, NicView, DEFAULT_NETWORK};
pub use operation::{
    OperationKind, OperationState, OperationView, OperationWaitParams, StepState, StepView,
    MAX_OPERATION_WAIT_SECS,
};
pub use page::{PageParams, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, NEXT_PAGE_TOKEN_HEADER};
pub use placement::{CreatePlacementGroup, PlacementGroupView, PlacementPolicy};
pub use project::{CreateProject, ProjectView};
pub use quota::{QuotaLimits, QuotaUsage, QuotaView};
pub use secgroup::{
    CreateSecurityGroup, CreateSecurityRule, Direction, Protocol, SecurityGroupView,
    SecurityRuleView, SetSecurityGroups, DEFAULT_SECGROUP,
};
pub use snapshot::{
    CreateSnapshot, ReplicaCopies, SnapshotDeleted, SnapshotFilter, SnapshotRestored,
    SnapshotState, SnapshotView,
};
pub use token::{CreateToken, CreatedToken, Role, TokenView};
pub use usage::{InstanceUsage, UsageAmounts, UsageQuery, UsageReport};

/// The operator's project: the bootstrap admin token's, unlimited unless an admin sets a quota.
pub const DEFAULT_PROJECT: &str = "default";
