//! # Cogrion
//!
//! Run the whole lifecycle of tenant **workspaces** from your control plane: a
//! dedicated Kubernetes cluster on the tenant's own cloud account, the Cluster
//! Agent inside it, and the **stacks** (Helm charts, Kubernetes manifests,
//! Terraform modules) deployed into it.
//!
//! This is the facade crate: it re-exports [`cogrion_core`] (the model, state
//! machines, traits and in-memory store) at its root, and the provider
//! implementations of `cogrion-providers` under [`providers`], by feature.
//! Start with the core's guide: [`cogrion_core::book`].

pub use cogrion_core::*;

#[cfg(all(feature = "sqlite", feature = "https"))]
mod control_plane;
#[cfg(all(feature = "sqlite", feature = "https"))]
pub use control_plane::{
    AgentEndpoint, ConfigError, ControlPlane, ControlPlaneBuilder, NoInstaller, WithInstaller,
};

/// Implementations of the core traits against real systems (by feature).
pub use cogrion_providers as providers;
