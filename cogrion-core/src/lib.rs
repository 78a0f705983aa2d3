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

pub mod agent;
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
pub mod lifecycle;
mod memory;
pub mod metrics;
pub mod provider;
mod provisioner;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod spec;
mod stack;
mod state;
pub mod store;
mod transport;

pub use clock::{Clock, ManualClock, MonotonicClock, SystemClock, Timestamp};
pub use engine::{
    AbandonTarget, Action, AgentCheck, AgentConnectivity, CloudKind, DestroyPlan, Driver,
    DriverConfig, DriverHandle, DriverStats, Engine, EngineBuilder, EngineConfig, EngineEvent,
    EngineEventKind, OperationStatus, PlannedStep, PurgePolicy, RetryPolicy, SpecStatus,
    StackSummary, StepNow, WorkspacePage, WorkspaceStatus,
};
pub use error::{Error, Resource, Result, Retry, Source, TokenRefusal};
pub use ids::{
    HolderId, InstanceType, InvalidValue, KubernetesVersion, Labels, NetworkCidr, NodePoolName,
    NodePoolSize, Region, StackName, TenantId, WorkspaceId,
};
pub use spec::{
    AwsAccountId, AwsRoleArn, AzureResourceGroup, AzureSubscriptionId, CloudTarget, ExecutorSpec,
    GcpProjectId, NetworkSpec, NodePoolSpec, SpecChange, SpecChangeKind, SpecErrors, SpecProblem,
    StackKind, StackSpec, TemplateOverrides, WorkspaceSpec,
};
pub use stack::{GraphError, StackFailure, StackState, StackStateName};
pub use state::{Failure, StateName, TransitionError, WorkspaceOperation, WorkspaceState};
pub use store::{
    Actor, EventKind, EventRecord, EventSeq, FeedCursor, FeedEvent, HistoryRetention, LeftBehind,
    LeftReason, ListQuery, WorkspaceSummary,
};

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
