//! The simulated world: a cloud, the clusters in it, and executors that deploy
//! into them — for the quickstart, for tests, and for the lifecycle engine's crash
//! harness.
//!
//! The simulation is meant to be *hard on the engine* in the ways the real world
//! is, so that passing it means something:
//!
//! - [`SimulatedCloud`] is a [`CloudProvisioner`](crate::provider::CloudProvisioner) on top
//!   of a fake cloud API ([`CloudApi`]) that, like AWS `CreateVpc`, creates a new
//!   resource on *every* create call. Creations, updates and deletions take time
//!   (per-layer latency on an injected [`Clock`](crate::Clock)). The provisioner
//!   must find and adopt what exists to stay idempotent, and the cloud audits
//!   whether it did: [`SimulatedCloud::duplicates`] lists every intent that ever
//!   had two live resources at once.
//! - [`SimulatedCluster`] is what runs inside each workspace's cluster: installed
//!   stacks, their revisions and objects. [`SimulatedCluster::handle`] executes
//!   the commands a Cluster Agent would receive.
//! - [`SimulatedExecutor`] is an [`Executor`](crate::provider::Executor) of each kind:
//!   Helm and manifests through agent commands (as in the product), Terraform
//!   directly.
//! - [`FaultPlan`] injects failures into all of them, deterministically from a
//!   seed and the sequence of calls: throttling, outages, **lost responses** (the
//!   work is done, the answer never arrives), permanent refusals of one layer or
//!   stack, and one-shot faults scripted by a test.
//!
//! # What is not simulated
//! - Eventual consistency: the fake cloud's reads see every write at once (real
//!   cloud APIs may not show a resource right after creating it).
//! - Quotas, permissions, regions, prices, and anything a resource does beyond
//!   existing with attributes: no packets flow, no pods run.
//! - The Cluster Agent itself (polling, mTLS, de-duplication of commands by id):
//!   that lives in the agent's own simulation, which calls
//!   [`SimulatedCluster::handle`].
//! - Concurrency races inside the cloud: each API call is atomic, but the
//!   provisioner's look-up and create are two calls, as with a real cloud, so two
//!   engines driving one workspace at once *can* create a duplicate — and the
//!   audit will say so.
//!
//! Everything is in memory and every handle (`SimulatedCloud`, `CloudApi`,
//! `SimulatedCluster`, `FaultPlan`) is cheap to clone, clones sharing state.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cogrion_core::provider::{
//!     CloudProvisioner, IdempotencyKey, InfraLayer, LayerRequest, MemoryCheckpoint, Progress,
//! };
//! use cogrion_core::{ManualClock, Timestamp};
//! use cogrion_core::sim::SimulatedCloud;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let clock = ManualClock::new(Timestamp::EPOCH);
//! let cloud = SimulatedCloud::builder()
//!     .clock(Arc::new(clock.clone()))
//!     .latency(InfraLayer::Network, Duration::from_secs(2))
//!     .build();
//! let ws: cogrion_core::WorkspaceId = "acme-prod".parse().unwrap();
//! let spec = cogrion_core::WorkspaceSpec::from_json(r#"{
//!     "tenant": "acme", "cloud": { "provider": "simulated" }, "region": "local-1",
//!     "kubernetes_version": "1.34", "network": { "cidr": "10.42.0.0/16" },
//!     "node_pools": [{ "name": "general", "instance_type": "sim-small",
//!                      "size": { "min": 1, "desired": 2, "max": 3 } }]
//! }"#).unwrap();
//! let request = || LayerRequest::new(
//!     ws.clone(), spec.clone(), InfraLayer::Network,
//!     IdempotencyKey::derive(&ws, 1, "network"), Arc::new(MemoryCheckpoint::new()),
//! );
//! // The VPC takes 2 s; its subnets are created once it is ready, and take 2 s.
//! assert!(matches!(cloud.provision(request()).await, Ok(Progress::InProgress { .. })));
//! clock.advance(Duration::from_secs(2));
//! assert!(matches!(cloud.provision(request()).await, Ok(Progress::InProgress { .. })));
//! clock.advance(Duration::from_secs(2));
//! let network = cloud.provision(request()).await.unwrap().ready().unwrap();
//! assert_eq!(network.resources.len(), 3);
//! assert_eq!(cloud.api_calls().total_creates(), 3);
//! assert!(cloud.duplicates().is_empty());
//! # }
//! ```

mod cloud;
mod cloud_api;
mod cluster;
mod executor;
mod faults;
mod inproc;
mod provisioner;
mod world;

#[cfg(test)]
mod tests;

pub use cloud::{SimulatedCloud, SimulatedCloudBuilder};
pub use cloud_api::{
    ApiCallCounts, ApiError, ApiResource, Attributes, CloudApi, ResourceId, ResourceStatus,
    ResourceTags,
};
pub use cluster::SimulatedCluster;
pub use executor::SimulatedExecutor;
pub use faults::{
    DEFAULT_RETRY_AFTER, Fault, FaultPlan, FaultTarget, InjectedFault, RESPONSE_LOST,
};
pub use inproc::{CommandHandler, InProcessTransport, RunningAgents, SimulatedAgents};
pub use provisioner::SIM_CA_BUNDLE_PEM;
pub use world::SimulatedWorld;
