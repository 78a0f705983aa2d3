//! # Cogrion
//!
//! Run the whole lifecycle of tenant **workspaces** from your control plane: a
//! dedicated Kubernetes cluster on the tenant's own cloud account, the Cluster
//! Agent inside it, and the **stacks** (Helm charts, Kubernetes manifests,
//! Terraform modules) deployed into it.
//!
//! Start with [`ControlPlane`] (features `sqlite` and `https`, the defaults):
//! one builder wires a SQLite store, the agents' certificate authority and
//! HTTPS endpoint, the lifecycle [`Engine`] and its [`Driver`]; the host gives
//! the cloud provisioners, the stack executors and the agent installer. Then
//! the engine's requests (`create`, `update`, `deploy_stacks`, `destroy`, …)
//! and reads ([`Engine::status`], [`Engine::list`], [`Engine::watch`]).
//!
//! The crate root is the host API. What provider authors implement is in
//! [`provider`], what store implementers need in [`store`], the agent seams in
//! [`agent`], the state machines in [`lifecycle`], the wire types in
//! [`proto`], the metric names in [`metrics`], and the simulated world in
//! `sim` (feature `sim`). Implementations against real systems are under
//! [`providers`], by feature. The core's guide: [`cogrion_core::book`].

pub use cogrion_core::*;

#[cfg(all(feature = "sqlite", feature = "https"))]
mod control_plane;
#[cfg(all(feature = "sqlite", feature = "https"))]
pub use control_plane::{
    AgentEndpoint, ConfigError, ControlPlane, ControlPlaneBuilder, NoInstaller, WithInstaller,
};

/// Implementations of the core traits against real systems (by feature).
pub use cogrion_providers as providers;

/// The README's code, compiled with the test suite.
#[cfg(all(doctest, feature = "sqlite", feature = "https", feature = "postgres"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
