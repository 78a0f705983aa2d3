//! The [`CloudProvisioner`] trait: a cloud's network, cluster and node pools.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, Progress};
use crate::error::Result;
use crate::ids::{IdempotencyKey, WorkspaceId};
use crate::spec::WorkspaceSpec;

/// The layers of a workspace's infrastructure, in the order they are built.
/// Teardown runs the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InfraLayer {
    /// VPC / VNet, subnets, routing.
    Network,
    /// The managed Kubernetes control plane.
    Cluster,
    /// The node pools.
    NodePools,
}

impl InfraLayer {
    /// The layers in build order.
    pub const BUILD_ORDER: [Self; 3] = [Self::Network, Self::Cluster, Self::NodePools];

    /// The layer's name as steps and checkpoints use it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Cluster => "cluster",
            Self::NodePools => "node-pools",
        }
    }
}

impl fmt::Display for InfraLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One cloud resource a provisioner holds for a workspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CloudResource {
    /// The layer it belongs to.
    pub layer: InfraLayer,
    /// What it is, in the cloud's words (`vpc`, `subnet`, `eks-cluster`, `nodegroup`).
    pub kind: String,
    /// Its id or name in the cloud.
    pub id: String,
}

/// How to reach a workspace's cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAccess {
    /// The cluster's name in the cloud.
    pub name: String,
    /// The Kubernetes API endpoint (`https://…`).
    pub endpoint: String,
    /// The PEM bundle that verifies the API server.
    pub ca_bundle_pem: String,
}

/// What a finished provision or update of one layer produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerState {
    /// The layer.
    pub layer: InfraLayer,
    /// The resources that make it up.
    pub resources: Vec<CloudResource>,
    /// How to reach the cluster: `Some` for the [`InfraLayer::Cluster`] layer,
    /// `None` for the others.
    pub cluster: Option<ClusterAccess>,
}

/// What exists in the cloud for a workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfraDescription {
    /// Every resource found, sorted by [`CloudResource`]'s order, without duplicates.
    pub resources: Vec<CloudResource>,
    /// How to reach the cluster, if it exists.
    pub cluster: Option<ClusterAccess>,
}

/// A request to build or change one layer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LayerRequest {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The spec to build (for an update: the new one).
    pub spec: WorkspaceSpec,
    /// For an update, the spec the layer was built from.
    pub previous: Option<WorkspaceSpec>,
    /// The layer.
    pub layer: InfraLayer,
    /// The step's idempotency key, stable across replays of the step.
    pub idempotency_key: IdempotencyKey,
    /// The step's checkpoint.
    pub checkpoint: Arc<dyn Checkpoint>,
}

impl LayerRequest {
    /// A request for `layer` of `workspace`.
    pub fn new(
        workspace: WorkspaceId,
        spec: WorkspaceSpec,
        layer: InfraLayer,
        idempotency_key: IdempotencyKey,
        checkpoint: Arc<dyn Checkpoint>,
    ) -> Self {
        Self {
            workspace,
            spec,
            previous: None,
            layer,
            idempotency_key,
            checkpoint,
        }
    }

    /// Marks the request as an update from `previous`.
    pub fn updating_from(mut self, previous: WorkspaceSpec) -> Self {
        self.previous = Some(previous);
        self
    }
}

/// Builds, changes, tears down and describes a workspace's infrastructure on one
/// cloud.
///
/// # Expected flow
/// The engine calls [`provision`](Self::provision) for [`InfraLayer::Network`],
/// then `Cluster`, then `NodePools`, each as its own persisted step; it calls
/// [`destroy`](Self::destroy) in the reverse order. A call that returns
/// [`Progress::InProgress`] is called again, with the same request, after the
/// delay.
///
/// # Guarantees an implementation must give
/// - **Idempotent and resumable.** Calling `provision`, `update` or `destroy`
///   again with the same idempotency key — after a crash, after a lost response,
///   after `InProgress`, with or without the step's checkpoint — never creates a
///   second resource: derive resource names deterministically from the workspace,
///   pass the key as the cloud's client request token, and adopt what already
///   exists.
/// - **Destroy converges.** Destroying what is already gone is success; destroying
///   a layer of a workspace that was only partly provisioned removes whatever
///   exists — including a resource whose creation is still running (answer
///   `InProgress` until the cloud lets it go). `destroy` and `describe` act on
///   everything the workspace holds in the cloud (found by its deterministic
///   names or tags), not only on what the current spec names: a node pool that a
///   later spec dropped is still torn down.
/// - **Describe tells the truth.** It lists every resource the workspace holds,
///   sorted by [`CloudResource`]'s order (layer, kind, id), without duplicates,
///   and the cluster's access once the cluster exists; after a full destroy it
///   lists nothing.
///
/// # Caveats
/// Clouds apply some changes asynchronously; `InProgress` is the way to say so —
/// never block for minutes inside one call.
///
/// # Errors
/// [`Throttled`](crate::Error::Throttled) and
/// [`Unavailable`](crate::Error::Unavailable) for transient failures (the engine
/// retries with backoff); [`Rejected`](crate::Error::Rejected) for permanent ones
/// (the workspace becomes `Failed`); [`InvalidSpec`](crate::Error::InvalidSpec)
/// when the spec cannot be built on this cloud;
/// [`LeaseLost`](crate::Error::LeaseLost) from a checkpoint save — stop at once.
///
/// The conformance suite (`conformance::provisioner_suite`, feature
/// `conformance`) checks these guarantees against any implementation.
#[async_trait]
pub trait CloudProvisioner: fmt::Debug + Send + Sync + 'static {
    /// Builds one layer, or adopts it if it exists.
    async fn provision(&self, request: LayerRequest) -> Result<Progress<LayerState>>;

    /// Changes one layer from `request.previous` to `request.spec`.
    async fn update(&self, request: LayerRequest) -> Result<Progress<LayerState>>;

    /// Tears one layer down; success if it is already gone.
    async fn destroy(&self, request: LayerRequest) -> Result<Progress<()>>;

    /// Lists what exists for the workspace.
    async fn describe(
        &self,
        workspace: &WorkspaceId,
        spec: &WorkspaceSpec,
    ) -> Result<InfraDescription>;
}
