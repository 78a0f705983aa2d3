//! # Cogrion core
//!
//! The domain model, state machines, traits and in-memory implementations of
//! Cogrion. This crate names no cloud, database or network library: those live in
//! `cogrion-providers`, behind the traits defined here.
//!
//! Read it as a short book:
//! 1. [Overview](book::overview) — workspaces, stacks, and who owns what.
//! 2. [Lifecycle](book::lifecycle) — the workspace and stack state machines.
//! 3. [Traits](book::traits) — `WorkspaceStore`, `CloudProvisioner`, `Executor`,
//!    `AgentTransport`, and the one error type.
//! 4. [The lifecycle engine](book::engine) — persisted plans, `advance`, the
//!    built-in driver, simulation.
//! 5. [Implementing a provider](book::implementing_a_provider).
//! 6. [Testing with the conformance suites](book::testing).

mod agent;
pub mod book;
#[cfg(feature = "ca")]
pub mod ca;
mod checkpoint;
mod clock;
#[cfg(feature = "conformance")]
pub mod conformance;
mod delegate;
mod engine;
mod error;
mod executor;
mod group;
mod ids;
mod inproc;
mod memory;
mod provisioner;
pub mod sim;
pub mod spec;
mod stack;
mod state;
mod store;
mod transport;

pub use agent::{
    AgentGateway, AgentInstall, AgentInstaller, BootstrapToken, Delivery, GatewayConfig,
    issue_bootstrap_token,
};
pub use checkpoint::{Checkpoint, MemoryCheckpoint, Progress, StoreCheckpoint};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use engine::{
    AbandonTarget, Action, AgentCheck, AgentConnectivity, CloudKind, DestroyPlan, Driver,
    DriverConfig, DriverHandle, DriverStats, Engine, EngineBuilder, EngineConfig, EngineEvent,
    EngineEventKind, PlannedStep, PurgePolicy, RetryPolicy,
};
pub use error::{Error, Resource, Result, Retry, TokenRefusal};
pub use executor::{
    ExecutionTarget, Executor, ExecutorKind, StackRequest, StackStatus, check_kind,
};
pub use group::{GroupCommit, WriteCounter, WriteCounts, WriteKind};
pub use ids::{
    HolderId, IdempotencyKey, InstanceType, InvalidValue, KubernetesVersion, NetworkCidr,
    NodePoolName, NodePoolSize, Region, StackName, TenantId, WorkspaceId,
};
pub use inproc::{CommandHandler, InProcessTransport, SimulatedAgents};
pub use memory::InMemoryStore;
pub use provisioner::{
    CloudProvisioner, CloudResource, ClusterAccess, InfraDescription, InfraLayer, LayerRequest,
    LayerState,
};
pub use spec::{
    AwsAccountId, AwsRoleArn, AzureResourceGroup, AzureSubscriptionId, CloudTarget, ExecutorSpec,
    GcpProjectId, NetworkSpec, NodePoolSpec, SpecChange, SpecChangeKind, SpecErrors, SpecProblem,
    StackKind, StackSpec, TemplateOverrides, WorkspaceSpec,
};
pub use stack::{
    GraphError, StackEntry, StackEvent, StackEventName, StackFailure, StackGraph, StackInventory,
    StackOperation, StackState, StackStateName, stack_step,
};
pub use state::{
    EventName, Failure, StateName, Transition, TransitionError, WorkspaceEvent, WorkspaceOperation,
    WorkspaceState, step,
};
pub use store::{
    Actor, AgentCredential, BatchOutcome, BatchWrite, BootstrapTokenRecord, BuiltLayer, CertSerial,
    CheckpointKey, CommandQueue, CommandStatus, Committed, CredentialStore, EventKind, EventRecord,
    EventSeq, FencingToken, HistoryRetention, KeyDigest, Lease, LeaseStore, LeftBehind, LeftReason,
    ListQuery, MAX_LEASE_TTL, NewCommand, NewEvent, OperationKind, OperationRecord, Purged,
    PutMode, QueuedCommand, RECORD_FORMAT, RecordStore, Revision, Revocation,
    SUPERSEDED_BY_RENEWAL, StepRecord, StepStatus, TokenHash, TokenStore, Versioned,
    WorkspaceRecord, WorkspaceStore, WorkspaceWrite, check_lease_ttl, check_preconditions,
    check_purge, check_renewal, check_write, upgrade,
};
pub use transport::{AgentEvent, AgentEventSink, AgentPresence, AgentTransport, LateSink};

/// The wire types shared with the Cluster Agent.
pub use cogrion_agent_proto as proto;

/// Locks a mutex, carrying on through poisoning: every critical section in this
/// crate checks before it mutates, so a panic inside one leaves nothing
/// half-changed.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`delegate_store!`] expands to needs; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use async_trait::async_trait;
    pub use serde_json::Value;
}
