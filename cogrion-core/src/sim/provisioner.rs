//! The [`CloudProvisioner`] implementation of [`SimulatedCloud`]: Cogrion's side
//! of the simulated cloud, written against [`CloudApi`] as a real provider is
//! written against its cloud's SDK.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::cloud::SimulatedCloud;
use super::cloud_api::{
    ApiError, ApiResource, Attributes, ResourceId, ResourceStatus, ResourceTags,
};
use super::faults::{CallFaults, FaultTarget};
use crate::checkpoint::Progress;
use crate::clock::Timestamp;
use crate::error::{Error, Resource, Result};
use crate::ids::{NodePoolName, WorkspaceId};
use crate::provisioner::{
    CloudProvisioner, CloudResource, ClusterAccess, InfraDescription, InfraLayer, LayerRequest,
    LayerState,
};
use crate::spec::WorkspaceSpec;

/// The service name in the errors of the simulated cloud.
const SERVICE: &str = "sim-cloud";

/// The shortest `poll_after` the provisioner answers.
const MIN_POLL: Duration = Duration::from_millis(1);

/// The PEM bundle every simulated cluster's access carries. It is not a real
/// certificate: nothing in the simulation opens a TLS connection to a cluster.
pub const SIM_CA_BUNDLE_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
c2ltdWxhdGVkIGNsdXN0ZXIgQ0EgKG5vdCBhIHJlYWwgY2VydGlmaWNhdGUp\n\
-----END CERTIFICATE-----\n";

// Resource kinds, as the fake cloud names them.
const VPC: &str = "vpc";
const SUBNET: &str = "subnet";
const CLUSTER: &str = "cluster";
const NODE_POOL: &str = "node-pool";

impl SimulatedCloud {
    /// The name of `workspace`'s cluster in the simulated cloud (also the name
    /// in its [`ClusterAccess`]).
    pub fn cluster_name(workspace: &WorkspaceId) -> String {
        format!("cogrion-{workspace}-cluster")
    }

    /// The cluster access of the cluster named `name`.
    fn access(name: &str) -> ClusterAccess {
        ClusterAccess {
            name: name.to_owned(),
            endpoint: format!("https://{name}.sim.cogrion.invalid"),
            ca_bundle_pem: SIM_CA_BUNDLE_PEM.to_owned(),
        }
    }

    /// Provision and update: converge the layer to the request's spec.
    async fn converge(
        &self,
        request: &LayerRequest,
        call: &mut CallFaults,
    ) -> Result<Progress<LayerState>> {
        let api = &self.api;
        let ws = &request.workspace;
        let layer = request.layer;
        let now = api.clock().now();
        let mut pending = Pending::default();

        let external = match self.parents_of(ws, layer) {
            Parents::Ready(ids) => ids,
            Parents::Wait(d) => {
                return Ok(Progress::in_progress_with(
                    d,
                    format!("{layer}: waiting for the layers below"),
                ));
            }
            Parents::Missing(e) => return Err(e),
        };
        let mut saved = Saved::load(request).await?;
        let mut adopted: BTreeMap<String, ApiResource> = BTreeMap::new();

        for want in desired(ws, &request.spec, layer) {
            match self.existing(ws, layer, &want.name, saved.id(&want.name)) {
                Existing::Deleting(remaining) => pending.wait(remaining),
                Existing::Live(found) => {
                    if saved.remember(&want.name, &found.id) {
                        saved.save(request).await?;
                    }
                    match found.status {
                        ResourceStatus::Active if found.attrs != want.attrs => {
                            match api.update(&found.id, want.attrs.clone()) {
                                Ok(()) => {
                                    call.changed()?;
                                    let latency = api.latency(layer);
                                    if !latency.is_zero() {
                                        pending.changing("UPDATING", latency);
                                    }
                                }
                                Err(ApiError::InUse { retry_after, .. }) => {
                                    pending.wait(retry_after)
                                }
                                // Deleted under us: the next call creates it again.
                                Err(ApiError::NotFound { .. }) => pending.wait(MIN_POLL),
                                Err(e) => return Err(classify(e)),
                            }
                        }
                        ResourceStatus::Active => {}
                        status => pending.wait_status(status, now),
                    }
                    adopted.insert(want.name.clone(), found);
                }
                Existing::None => {
                    let mut depends_on = external.clone();
                    let mut parents_ready = true;
                    for parent in &want.parents {
                        match adopted.get(parent) {
                            Some(p) if usable(p.status) => depends_on.push(p.id.clone()),
                            // The parent's own wait is already recorded.
                            _ => parents_ready = false,
                        }
                    }
                    if !parents_ready {
                        continue;
                    }
                    let tags = ResourceTags::new(ws.clone(), layer, want.name.clone());
                    match api.create(want.kind, tags, want.attrs.clone(), &depends_on) {
                        Ok(id) => {
                            call.changed()?;
                            saved.remember(&want.name, &id);
                            saved.save(request).await?;
                            match api.get(&id) {
                                Some(created) => {
                                    pending.wait_status(created.status, api.clock().now());
                                    adopted.insert(want.name.clone(), created);
                                }
                                None => pending.wait(MIN_POLL),
                            }
                        }
                        // A parent went away between the look-up and the create:
                        // the next call finds out which.
                        Err(ApiError::NotFound { .. }) => pending.wait(MIN_POLL),
                        Err(e) => return Err(classify(e)),
                    }
                }
            }
        }

        // What the layer holds beyond the spec: dropped node pools, duplicates.
        let keep: BTreeSet<&ResourceId> = adopted.values().map(|r| &r.id).collect();
        let extra: Vec<ApiResource> = api
            .list(ws)
            .into_iter()
            .filter(|r| r.tags.layer == layer && !keep.contains(&r.id))
            .collect();
        self.delete_all(layer, extra, call, &mut pending)?;

        if let Some(progress) = pending.progress(layer) {
            return Ok(progress);
        }
        let mut resources: Vec<CloudResource> = adopted
            .values()
            .map(ApiResource::to_cloud_resource)
            .collect();
        resources.sort();
        let cluster = (layer == InfraLayer::Cluster).then(|| Self::access(&cluster_name(ws)));
        Ok(Progress::Ready(LayerState {
            layer,
            resources,
            cluster,
        }))
    }

    /// Destroy: delete everything of the layer tagged with the workspace.
    fn teardown(&self, request: &LayerRequest, call: &mut CallFaults) -> Result<Progress<()>> {
        let layer = request.layer;
        let mine: Vec<ApiResource> = self
            .api
            .list(&request.workspace)
            .into_iter()
            .filter(|r| r.tags.layer == layer)
            .collect();
        let mut pending = Pending::default();
        self.delete_all(layer, mine, call, &mut pending)?;
        Ok(pending.progress(layer).unwrap_or(Progress::Ready(())))
    }

    /// Deletes `resources` (all of `layer`), dependents first, recording what is
    /// still to wait for.
    fn delete_all(
        &self,
        layer: InfraLayer,
        mut resources: Vec<ApiResource>,
        call: &mut CallFaults,
        pending: &mut Pending,
    ) -> Result<()> {
        let api = &self.api;
        let needed: BTreeSet<ResourceId> = resources
            .iter()
            .flat_map(|r| r.depends_on.iter().cloned())
            .collect();
        resources.sort_by_key(|r| needed.contains(&r.id));
        for resource in resources {
            let now = api.clock().now();
            if resource.status != ResourceStatus::Active {
                // Being created or updated (the cloud lets go once done), or
                // already being deleted.
                pending.wait_status(resource.status, now);
                continue;
            }
            match api.delete(&resource.id) {
                Ok(()) => {
                    call.changed()?;
                    if let Some(deleting) = api.get(&resource.id) {
                        pending.wait_status(deleting.status, api.clock().now());
                    }
                }
                Err(ApiError::NotFound { .. }) => {}
                Err(ApiError::InUse { retry_after, .. }) => pending.wait(retry_after),
                Err(ApiError::DependencyViolation { dependents, .. }) => {
                    let mut blocking = Vec::new();
                    for dependent in dependents.iter().filter_map(|id| api.get(id)) {
                        match dependent.status {
                            ResourceStatus::Deleting { .. } => {
                                pending.wait_status(dependent.status, now);
                            }
                            // Same layer: deleted in this pass or the next.
                            _ if dependent.tags.layer == layer => pending.wait(MIN_POLL),
                            _ => blocking.push(dependent),
                        }
                    }
                    if !blocking.is_empty() {
                        let names: Vec<String> = blocking
                            .iter()
                            .map(|d| format!("{} {} of layer {}", d.kind, d.id, d.tags.layer))
                            .collect();
                        return Err(Error::Rejected {
                            source: None,
                            service: SERVICE.into(),
                            detail: format!(
                                "cannot delete {} {} of layer {layer}: {} still depend on it; \
                                 destroy those layers first",
                                resource.kind,
                                resource.id,
                                names.join(", ")
                            ),
                        });
                    }
                    // Nothing was found alive: try again soon.
                    pending.wait(MIN_POLL);
                }
                Err(e @ ApiError::InvalidParameter { .. }) => return Err(classify(e)),
            }
        }
        Ok(())
    }

    /// The resources of other layers that `layer` is built on.
    fn parents_of(&self, ws: &WorkspaceId, layer: InfraLayer) -> Parents {
        let (names, parent_layer) = match layer {
            InfraLayer::Network => return Parents::Ready(Vec::new()),
            InfraLayer::Cluster => (
                vec![vpc_name(ws), subnet_name(ws, 'a'), subnet_name(ws, 'b')],
                InfraLayer::Network,
            ),
            InfraLayer::NodePools => (vec![cluster_name(ws)], InfraLayer::Cluster),
        };
        let now = self.api.clock().now();
        let mut ids = Vec::new();
        let mut wait = Pending::default();
        for name in names {
            let found = self.api.find_by_name(ws, &name);
            match found.iter().find(|r| !is_deleting(r.status)) {
                Some(parent) if usable(parent.status) => ids.push(parent.id.clone()),
                Some(parent) => wait.wait(parent.status.remaining(now)),
                None => {
                    let why = if found.is_empty() {
                        "does not exist"
                    } else {
                        "is being deleted"
                    };
                    return Parents::Missing(Error::Rejected {
                        service: SERVICE.into(),
                        detail: format!(
                            "layer {layer} of workspace {ws} is built on {name}, which {why}; \
                             provision layer {parent_layer} first"
                        ),
                        source: None,
                    });
                }
            }
        }
        match wait.after {
            Some(d) => Parents::Wait(d),
            None => Parents::Ready(ids),
        }
    }

    /// The resource to adopt for the intent `name`: the checkpointed one if it is
    /// still there, else the oldest found by name.
    fn existing(
        &self,
        ws: &WorkspaceId,
        layer: InfraLayer,
        name: &str,
        saved: Option<ResourceId>,
    ) -> Existing {
        let intent = |r: &ApiResource| {
            &r.tags.workspace == ws && r.tags.layer == layer && r.tags.name == name
        };
        if let Some(found) = saved
            .and_then(|id| self.api.get(&id))
            .filter(|r| intent(r) && !is_deleting(r.status))
        {
            return Existing::Live(found);
        }
        let now = self.api.clock().now();
        let found: Vec<ApiResource> = self
            .api
            .find_by_name(ws, name)
            .into_iter()
            .filter(intent)
            .collect();
        if let Some(live) = found.iter().find(|r| !is_deleting(r.status)) {
            return Existing::Live(live.clone());
        }
        match found.iter().map(|r| r.status.remaining(now)).max() {
            Some(remaining) => Existing::Deleting(remaining),
            None => Existing::None,
        }
    }
}

#[async_trait]
impl CloudProvisioner for SimulatedCloud {
    async fn provision(&self, request: LayerRequest) -> Result<Progress<LayerState>> {
        let target = FaultTarget::Layer(request.layer);
        let mut call = CallFaults::begin(&self.faults, SERVICE, "provision", &target)?;
        let result = self.converge(&request, &mut call).await;
        call.finish(result)
    }

    async fn update(&self, request: LayerRequest) -> Result<Progress<LayerState>> {
        let target = FaultTarget::Layer(request.layer);
        let mut call = CallFaults::begin(&self.faults, SERVICE, "update", &target)?;
        let result = self.converge(&request, &mut call).await;
        call.finish(result)
    }

    async fn destroy(&self, request: LayerRequest) -> Result<Progress<()>> {
        let target = FaultTarget::Layer(request.layer);
        let mut call = CallFaults::begin(&self.faults, SERVICE, "destroy", &target)?;
        let result = self.teardown(&request, &mut call);
        call.finish(result)
    }

    async fn describe(
        &self,
        workspace: &WorkspaceId,
        _spec: &WorkspaceSpec,
    ) -> Result<InfraDescription> {
        let live = self.api.list(workspace);
        let cluster = live
            .iter()
            .find(|r| r.tags.layer == InfraLayer::Cluster && r.kind == CLUSTER && usable(r.status))
            .map(|r| Self::access(&r.tags.name));
        let mut resources: Vec<CloudResource> =
            live.iter().map(ApiResource::to_cloud_resource).collect();
        resources.sort();
        resources.dedup();
        Ok(InfraDescription { resources, cluster })
    }
}

/// One resource a layer is made of.
struct Desired {
    kind: &'static str,
    name: String,
    attrs: Attributes,
    /// The names of resources of the same layer it is built on (listed before it).
    parents: Vec<String>,
}

/// The resources `layer` of `ws` is made of under `spec`, parents first.
fn desired(ws: &WorkspaceId, spec: &WorkspaceSpec, layer: InfraLayer) -> Vec<Desired> {
    let common = |attrs: &mut Attributes| {
        attrs.insert("tenant".into(), spec.tenant.to_string());
        attrs.insert("region".into(), spec.region.to_string());
        for (key, value) in &spec.overrides.tags {
            attrs.insert(format!("tag:{key}"), value.clone());
        }
    };
    match layer {
        InfraLayer::Network => {
            let cidr = spec.network.cidr;
            let mut vpc = Attributes::new();
            vpc.insert("cidr".into(), cidr.to_string());
            common(&mut vpc);
            let mut out = vec![Desired {
                kind: VPC,
                name: vpc_name(ws),
                attrs: vpc,
                parents: Vec::new(),
            }];
            for (i, half) in halves(cidr.addr(), cidr.prefix_len())
                .into_iter()
                .enumerate()
            {
                let zone = if i == 0 { 'a' } else { 'b' };
                let mut subnet = Attributes::new();
                subnet.insert("cidr".into(), half);
                subnet.insert("zone".into(), format!("{}{zone}", spec.region));
                common(&mut subnet);
                out.push(Desired {
                    kind: SUBNET,
                    name: subnet_name(ws, zone),
                    attrs: subnet,
                    parents: vec![vpc_name(ws)],
                });
            }
            out
        }
        InfraLayer::Cluster => {
            let mut attrs = Attributes::new();
            attrs.insert("version".into(), spec.kubernetes_version.to_string());
            attrs.insert(
                "private_endpoint".into(),
                spec.network.private_endpoint.to_string(),
            );
            if let Some(pod) = spec.network.pod_cidr {
                attrs.insert("pod_cidr".into(), pod.to_string());
            }
            if let Some(service) = spec.network.service_cidr {
                attrs.insert("service_cidr".into(), service.to_string());
            }
            common(&mut attrs);
            vec![Desired {
                kind: CLUSTER,
                name: cluster_name(ws),
                attrs,
                parents: Vec::new(),
            }]
        }
        InfraLayer::NodePools => spec
            .node_pools
            .iter()
            .map(|pool| {
                let mut attrs = Attributes::new();
                attrs.insert("instance_type".into(), pool.instance_type.to_string());
                attrs.insert("min_size".into(), pool.size.min().to_string());
                attrs.insert("desired_size".into(), pool.size.desired().to_string());
                attrs.insert("max_size".into(), pool.size.max().to_string());
                for (key, value) in &pool.labels {
                    attrs.insert(format!("label:{key}"), value.clone());
                }
                common(&mut attrs);
                Desired {
                    kind: NODE_POOL,
                    name: pool_name(ws, &pool.name),
                    attrs,
                    parents: Vec::new(),
                }
            })
            .collect(),
    }
}

fn vpc_name(ws: &WorkspaceId) -> String {
    format!("cogrion-{ws}-vpc")
}

fn subnet_name(ws: &WorkspaceId, zone: char) -> String {
    format!("cogrion-{ws}-subnet-{zone}")
}

fn cluster_name(ws: &WorkspaceId) -> String {
    SimulatedCloud::cluster_name(ws)
}

fn pool_name(ws: &WorkspaceId, pool: &NodePoolName) -> String {
    format!("cogrion-{ws}-nodes-{pool}")
}

/// The two halves of `addr/prefix`, as CIDR text.
fn halves(addr: Ipv4Addr, prefix: u8) -> [String; 2] {
    let half = prefix + 1;
    let second = u32::from(addr) | (1u32 << (32 - u32::from(half)));
    [
        format!("{addr}/{half}"),
        format!("{}/{half}", Ipv4Addr::from(second)),
    ]
}

fn usable(status: ResourceStatus) -> bool {
    matches!(
        status,
        ResourceStatus::Active | ResourceStatus::Updating { .. }
    )
}

fn is_deleting(status: ResourceStatus) -> bool {
    matches!(
        status,
        ResourceStatus::Deleting { .. } | ResourceStatus::Deleted
    )
}

/// The provider's one classification of the fake cloud's errors that a call
/// site did not handle itself.
fn classify(e: ApiError) -> Error {
    match e {
        ApiError::InUse { retry_after, .. } => Error::Throttled {
            service: SERVICE.into(),
            retry_after: Some(retry_after.max(MIN_POLL)),
        },
        ApiError::NotFound { .. } => Error::Unavailable {
            service: SERVICE.into(),
            detail: e.to_string(),
            source: None,
        },
        e => Error::Rejected {
            service: SERVICE.into(),
            detail: e.to_string(),
            source: None,
        },
    }
}

enum Parents {
    Ready(Vec<ResourceId>),
    Wait(Duration),
    Missing(Error),
}

enum Existing {
    Live(ApiResource),
    Deleting(Duration),
    None,
}

/// The longest wait a call found, if any.
#[derive(Default)]
struct Pending {
    /// How long until something is worth asking about again.
    after: Option<Duration>,
    /// What is still changing, as the cloud says (`CREATING, 12 s left`).
    note: Option<String>,
}

impl Pending {
    fn wait(&mut self, d: Duration) {
        let d = d.max(MIN_POLL);
        self.after = Some(self.after.map_or(d, |current| current.max(d)));
    }

    /// Waits for a resource in `status` to change, unless it is settled.
    fn wait_status(&mut self, status: ResourceStatus, now: Timestamp) {
        let word = match status {
            ResourceStatus::Creating { .. } => "CREATING",
            ResourceStatus::Updating { .. } => "UPDATING",
            ResourceStatus::Deleting { .. } => "DELETING",
            ResourceStatus::Active | ResourceStatus::Deleted => return,
        };
        self.changing(word, status.remaining(now));
    }

    /// Waits `left` for a resource the cloud reports as `word` (`CREATING`).
    fn changing(&mut self, word: &str, left: Duration) {
        self.note = Some(format!("{word}, {} s left", left.as_secs_f64().ceil()));
        self.wait(left);
    }

    /// `None` when nothing is pending; else when to ask again, and what
    /// `layer` is waiting for.
    fn progress<T>(&self, layer: InfraLayer) -> Option<Progress<T>> {
        let after = self.after?;
        Some(match &self.note {
            Some(note) => Progress::in_progress_with(after, format!("{layer} {note}")),
            None => Progress::in_progress_with(after, format!("{layer}: waiting for the cloud")),
        })
    }
}

/// What the provisioner keeps in a step's checkpoint: the ids it created or
/// adopted, by resource name.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    #[serde(default)]
    ids: BTreeMap<String, String>,
}

impl Saved {
    async fn load(request: &LayerRequest) -> Result<Self> {
        match request.checkpoint.load().await? {
            None => Ok(Self::default()),
            Some(value) => serde_json::from_value(value).map_err(|e| Error::Corrupt {
                source: None,
                what: Resource::Checkpoint(
                    request.workspace.clone(),
                    format!("sim-cloud {}", request.layer),
                ),
                detail: e.to_string(),
            }),
        }
    }

    fn id(&self, name: &str) -> Option<ResourceId> {
        self.ids.get(name).map(ResourceId::new)
    }

    /// Remembers `id` for `name`; returns whether that changed anything.
    fn remember(&mut self, name: &str, id: &ResourceId) -> bool {
        self.ids.insert(name.to_owned(), id.to_string()).as_deref() != Some(id.as_str())
    }

    async fn save(&self, request: &LayerRequest) -> Result<()> {
        let value = serde_json::to_value(self).map_err(|e| Error::Corrupt {
            source: None,
            what: Resource::Checkpoint(request.workspace.clone(), "sim-cloud".into()),
            detail: e.to_string(),
        })?;
        request.checkpoint.save(value).await
    }
}
