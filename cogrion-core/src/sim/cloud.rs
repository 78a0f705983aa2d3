//! [`SimulatedCloud`]: the fake cloud ([`CloudApi`]) with a [`FaultPlan`], and
//! its builder and audit. The [`CloudProvisioner`](crate::provider::CloudProvisioner)
//! implementation on top of it lives in `provisioner.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::cloud_api::{ApiCallCounts, CloudApi};
use super::faults::FaultPlan;
use crate::clock::{Clock, MonotonicClock};
use crate::ids::WorkspaceId;
use crate::provisioner::{CloudResource, InfraLayer};

/// A simulated cloud: a [`CloudProvisioner`](crate::provider::CloudProvisioner) for every
/// workspace spec, backed by an in-memory fake cloud API ([`CloudApi`]) with
/// latency and injected faults.
///
/// The two layers are kept apart as a real SDK and a real provider would be:
/// [`CloudApi`] is the cloud (its `create` never deduplicates, its changes take
/// time), and the provisioner built on it is Cogrion's code, which has to be
/// idempotent on its own — look up by deterministic name before creating, adopt
/// what exists, save ids to the step's checkpoint.
///
/// # What the provisioner builds
/// | layer | resources (kind: name) |
/// |---|---|
/// | `network` | `vpc`: `cogrion-<ws>-vpc`; `subnet`: `cogrion-<ws>-subnet-a`, `cogrion-<ws>-subnet-b` (the two halves of the VPC range), created once the VPC is ready |
/// | `cluster` | `cluster`: `cogrion-<ws>-cluster`, on the VPC and subnets |
/// | `node-pools` | `node-pool`: `cogrion-<ws>-nodes-<pool>` per pool, on the cluster |
///
/// - **provision** and **update** both converge the layer to `request.spec`:
///   adopt each resource found by checkpointed id or by name, create what is
///   missing (saving its id to the checkpoint right away), update attributes
///   that differ (Kubernetes version, endpoint privacy, pool sizes and machine
///   types, ranges, tags), and delete resources of the layer the spec no longer
///   names (node pools dropped by an update, and any duplicate). A layer whose
///   parent layer does not exist is [`Rejected`](crate::Error::Rejected); one
///   whose parent is still being created answers `InProgress`.
/// - **destroy** deletes every resource of the layer tagged with the workspace,
///   whatever the spec says, dependents first; `InProgress` while deletions (or
///   creations that must finish before they can be deleted) run; `Ready` once
///   nothing is left — at once if nothing was there. Resources of *another* layer
///   that still depend on the layer (a cluster still there while the network is
///   destroyed) make it [`Rejected`](crate::Error::Rejected).
/// - **describe** lists every resource of the workspace that is not deleted
///   (being created or deleted included), and the cluster's access once the
///   cluster is ready.
/// - `InProgress { poll_after }` is the longest remaining latency of what the
///   call waits for (at least 1 ms).
/// - The cluster's access is `https://<cluster name>.sim.cogrion.invalid` with
///   the fixed [`SIM_CA_BUNDLE_PEM`](super::SIM_CA_BUNDLE_PEM).
/// - Specs of every [`CloudTarget`](crate::CloudTarget) are accepted: the
///   simulated cloud stands in for any of them.
///
/// # Faults
/// Every `provision`, `update` and `destroy` call asks the [`FaultPlan`] once,
/// with the target [`FaultTarget::Layer`](super::FaultTarget::Layer);
/// `describe` never fails. See [`Fault`](super::Fault) for what each fault does.
///
/// # Audit
/// [`live_resources`](Self::live_resources), [`all_live`](Self::all_live),
/// [`duplicates`](Self::duplicates) and [`api_calls`](Self::api_calls) read the
/// fake cloud without going through its API (they are not counted and never
/// fail).
///
/// Clones share the same cloud.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use cogrion_core::{ManualClock, Timestamp, provider::{InfraLayer}};
/// use cogrion_core::sim::{FaultPlan, SimulatedCloud};
///
/// let clock = ManualClock::new(Timestamp::EPOCH);
/// let cloud = SimulatedCloud::builder()
///     .clock(Arc::new(clock.clone()))
///     .latency(InfraLayer::Cluster, Duration::from_secs(4))
///     .faults(FaultPlan::transient(7, 0.1))
///     .build();
/// assert_eq!(cloud.all_live(), 0);
/// assert!(cloud.duplicates().is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct SimulatedCloud {
    pub(super) api: CloudApi,
    pub(super) faults: FaultPlan,
}

impl SimulatedCloud {
    /// A builder with the defaults: the system clock, zero latency, no faults.
    pub fn builder() -> SimulatedCloudBuilder {
        SimulatedCloudBuilder::default()
    }

    /// A cloud with the defaults (see [`builder`](Self::builder)).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// The fake cloud API underneath, to inspect it or to act on the cloud
    /// behind the provisioner's back (as an operator with a console would).
    pub fn api(&self) -> &CloudApi {
        &self.api
    }

    /// The fault plan (a handle: changes apply to the running cloud).
    pub fn faults(&self) -> &FaultPlan {
        &self.faults
    }

    /// The resources of `workspace` that are not deleted, sorted.
    pub fn live_resources(&self, workspace: &WorkspaceId) -> Vec<CloudResource> {
        self.api.live_resources(workspace)
    }

    /// How many resources, of all workspaces, are not deleted.
    pub fn all_live(&self) -> usize {
        self.api.all_live()
    }

    /// Every intent, as `workspace/layer/name`, that ever had more than one
    /// resource alive at the same time: empty unless something created a
    /// duplicate.
    pub fn duplicates(&self) -> Vec<String> {
        self.api.duplicates()
    }

    /// How often each call of the fake cloud API was made.
    pub fn api_calls(&self) -> ApiCallCounts {
        self.api.calls()
    }
}

impl Default for SimulatedCloud {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds a [`SimulatedCloud`].
#[derive(Debug, Default)]
pub struct SimulatedCloudBuilder {
    clock: Option<Arc<dyn Clock>>,
    latency: BTreeMap<InfraLayer, Duration>,
    faults: FaultPlan,
    instance_types: Option<std::collections::BTreeSet<String>>,
}

impl SimulatedCloudBuilder {
    /// The clock changes are timed on (default: a
    /// [`MonotonicClock`](crate::MonotonicClock), so that a step of the wall
    /// clock cannot make a deleted resource look alive again or a finished
    /// change unfinished). Simulations and tests pass a
    /// [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// How long creating, updating or deleting a resource of `layer` takes
    /// (default zero: done at once).
    pub fn latency(mut self, layer: InfraLayer, latency: Duration) -> Self {
        self.latency.insert(layer, latency);
        self
    }

    /// The same latency for every layer.
    pub fn latency_all(mut self, latency: Duration) -> Self {
        for layer in InfraLayer::BUILD_ORDER {
            self.latency.insert(layer, latency);
        }
        self
    }

    /// Offers only these node instance types (default: any); a node pool of
    /// another type is refused for good ([`Error::Rejected`](crate::Error::Rejected)),
    /// as a real cloud refuses an instance type a region does not have — a
    /// failure only a corrected spec fixes.
    pub fn instance_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.instance_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// The fault plan (default [`FaultPlan::none`]).
    pub fn faults(mut self, faults: FaultPlan) -> Self {
        self.faults = faults;
        self
    }

    /// The cloud.
    pub fn build(self) -> SimulatedCloud {
        let clock = self
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(MonotonicClock::new()));
        self.finish(CloudApi::new(clock))
    }

    /// The cloud, with its resources kept in the file at `path` so that they
    /// outlive the process (see [`CloudApi::persistent`]): what the quickstart
    /// uses so that a run stopped mid-provision resumes on the resources it had
    /// created.
    ///
    /// # Errors
    /// The file cannot be read, or holds something else.
    pub fn build_persistent(
        self,
        path: impl Into<std::path::PathBuf>,
    ) -> std::io::Result<SimulatedCloud> {
        let clock = self
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(MonotonicClock::new()));
        Ok(self.finish(CloudApi::persistent(clock, path)?))
    }

    fn finish(self, api: CloudApi) -> SimulatedCloud {
        for (layer, latency) in self.latency {
            api.set_latency(layer, latency);
        }
        api.set_instance_types(self.instance_types);
        SimulatedCloud {
            api,
            faults: self.faults,
        }
    }
}
