//! What provider authors implement: a cloud's [`CloudProvisioner`] (phase 1:
//! network, cluster, node pools) and a stack kind's [`Executor`] (Helm,
//! manifests, Terraform), with the [`Progress`] they answer, the
//! [`Checkpoint`]s they keep sub-step state in, and the values they report.
//!
//! The engine calls them step by step: every call must be idempotent (the same
//! request again adopts what the first one did, found by its
//! [`IdempotencyKey`]) and may answer [`Progress::InProgress`] — with a short
//! message the host sees in the workspace's status — to be called again later.
//! The conformance suites (`conformance` feature) check an implementation
//! against these rules; the [`sim`](crate::sim) module (`sim` feature) holds
//! simulated ones. The agent-side seams (installing the agent, reaching it)
//! are in [`agent`](crate::agent); what a store implements is in
//! [`store`](crate::store).

pub use crate::checkpoint::{
    Checkpoint, MemoryCheckpoint, Progress, ProgressMessage, StoreCheckpoint,
};
pub use crate::executor::{
    ExecutionTarget, Executor, ExecutorKind, StackRequest, StackStatus, check_kind,
};
pub use crate::ids::IdempotencyKey;
pub use crate::provisioner::{
    CloudProvisioner, CloudResource, ClusterAccess, InfraDescription, InfraLayer, LayerRequest,
    LayerState,
};
pub use crate::stack::StackInventory;
pub use crate::store::NewCommand;
