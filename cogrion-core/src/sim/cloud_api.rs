//! [`CloudApi`]: the fake cloud itself — what a cloud SDK would talk to. It knows
//! nothing of workspaces' lifecycles or of idempotency: the provisioner on top of
//! it ([`SimulatedCloud`](super::SimulatedCloud)) has to get those right, as a
//! real provider must on a real cloud.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::{Clock, Timestamp};
use crate::ids::WorkspaceId;
use crate::provisioner::{CloudResource, InfraLayer};
use serde::{Deserialize, Serialize};

/// A resource's attributes (`cidr`, `version`, `desired_size`, …).
pub type Attributes = BTreeMap<String, String>;

/// The id the fake cloud gives a resource when it creates it (`vpc-0000002a`).
/// Ids are never reused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResourceId(String);

impl ResourceId {
    /// An id as the cloud gave it out earlier (read back from a checkpoint).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tags the fake cloud keeps on every resource: which workspace and layer it
/// belongs to and the name its creator chose. Together they are the resource's
/// *intent*; the cloud does not stop two resources from sharing one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceTags {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The layer.
    pub layer: InfraLayer,
    /// The name (not unique: the cloud does not deduplicate by name).
    pub name: String,
}

impl ResourceTags {
    /// The tags of resource `name` of `layer` of `workspace`.
    pub fn new(workspace: WorkspaceId, layer: InfraLayer, name: impl Into<String>) -> Self {
        Self {
            workspace,
            layer,
            name: name.into(),
        }
    }

    /// The intent as [`CloudApi::duplicates`] names it: `workspace/layer/name`.
    pub fn intent(&self) -> String {
        format!("{}/{}/{}", self.workspace, self.layer, self.name)
    }
}

/// Where a resource stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceStatus {
    /// Being created; usable from `ready_at`.
    Creating {
        /// When the creation completes.
        ready_at: Timestamp,
    },
    /// Usable.
    Active,
    /// Usable, with a change of attributes being applied until `ready_at`.
    Updating {
        /// When the update completes.
        ready_at: Timestamp,
    },
    /// Being deleted; gone from `gone_at`.
    Deleting {
        /// When the deletion completes.
        gone_at: Timestamp,
    },
    /// Gone. The fake cloud keeps the record for its audit only: reads do not
    /// return it.
    Deleted,
}

impl ResourceStatus {
    /// How long until the status changes on its own (zero for `Active` and
    /// `Deleted`).
    pub fn remaining(&self, now: Timestamp) -> Duration {
        match *self {
            Self::Creating { ready_at } | Self::Updating { ready_at } => ready_at.since(now),
            Self::Deleting { gone_at } => gone_at.since(now),
            Self::Active | Self::Deleted => Duration::ZERO,
        }
    }
}

/// A resource as the fake cloud's reads return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResource {
    /// Its id.
    pub id: ResourceId,
    /// What it is: `vpc`, `subnet`, `cluster`, `node-pool`.
    pub kind: String,
    /// Its tags.
    pub tags: ResourceTags,
    /// Its attributes (after an update: the new ones, even while `Updating`).
    pub attrs: Attributes,
    /// The resources it needs: they cannot be deleted while it exists.
    pub depends_on: Vec<ResourceId>,
    /// Where it stands, at the instant of the read.
    pub status: ResourceStatus,
    /// When it was created.
    pub created_at: Timestamp,
}

impl ApiResource {
    /// As a [`CloudResource`] (layer, kind, id).
    pub fn to_cloud_resource(&self) -> CloudResource {
        CloudResource {
            layer: self.tags.layer,
            kind: self.kind.clone(),
            id: self.id.to_string(),
        }
    }
}

/// Why the fake cloud refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No such resource (never created, or deleted).
    #[error("resource {id} not found")]
    NotFound {
        /// The id asked for.
        id: ResourceId,
    },
    /// The resource is busy (being created, updated or deleted) and cannot take
    /// this call yet.
    #[error("resource {id} is in use ({status:?}); retry in {retry_after:?}")]
    InUse {
        /// The resource.
        id: ResourceId,
        /// Its status.
        status: ResourceStatus,
        /// How long until it may be free.
        retry_after: Duration,
    },
    /// An attribute has a value this cloud does not accept (an instance type
    /// it does not offer): nothing is created or changed.
    #[error("invalid value for {attribute}: {message}")]
    InvalidParameter {
        /// The attribute.
        attribute: String,
        /// Why, in the cloud's words.
        message: String,
    },
    /// Other resources that still exist depend on it.
    #[error("resource {id} has dependent resources {dependents:?}")]
    DependencyViolation {
        /// The resource.
        id: ResourceId,
        /// What still depends on it.
        dependents: Vec<ResourceId>,
    },
}

/// How often each call of the fake cloud was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiCallCounts {
    /// `create` calls, by resource kind.
    pub creates: BTreeMap<String, u64>,
    /// `delete` calls, by resource kind (of the resource named; `?` when unknown).
    pub deletes: BTreeMap<String, u64>,
    /// `update` calls, by resource kind (`?` when unknown).
    pub updates: BTreeMap<String, u64>,
    /// Reads: `get`, `find_by_name` and `list`.
    pub reads: u64,
}

impl ApiCallCounts {
    /// `create` calls for resources of `kind`.
    pub fn creates_of(&self, kind: &str) -> u64 {
        self.creates.get(kind).copied().unwrap_or(0)
    }

    /// `delete` calls for resources of `kind`.
    pub fn deletes_of(&self, kind: &str) -> u64 {
        self.deletes.get(kind).copied().unwrap_or(0)
    }

    /// `update` calls for resources of `kind`.
    pub fn updates_of(&self, kind: &str) -> u64 {
        self.updates.get(kind).copied().unwrap_or(0)
    }

    /// All `create` calls.
    pub fn total_creates(&self) -> u64 {
        self.creates.values().sum()
    }

    /// All `delete` calls.
    pub fn total_deletes(&self) -> u64 {
        self.deletes.values().sum()
    }

    /// All `update` calls.
    pub fn total_updates(&self) -> u64 {
        self.updates.values().sum()
    }
}

/// The fake cloud's API, like a cloud SDK's client: strongly consistent reads,
/// no idempotency of its own, and time-consuming changes.
///
/// - [`create`](Self::create) **always** makes a new resource with a fresh id,
///   like AWS `CreateVpc`: calling it twice with the same name makes two. It is
///   the caller's job to look for an existing resource first.
/// - Creating, updating and deleting take the latency configured for the
///   resource's layer (default zero), measured on the injected [`Clock`]: a change
///   started at `t` completes at `t + latency`; meanwhile the resource is
///   [`Creating`](ResourceStatus::Creating),
///   [`Updating`](ResourceStatus::Updating) or
///   [`Deleting`](ResourceStatus::Deleting).
/// - A resource being created or updated cannot be updated or deleted yet
///   ([`ApiError::InUse`]); one that others depend on cannot be deleted
///   ([`ApiError::DependencyViolation`]), and one cannot be created on a parent
///   that does not exist ([`ApiError::NotFound`]).
///
/// Every resource carries [`ResourceTags`]; the cloud records, for its audit,
/// every intent (workspace, layer, name) that ever had two resources alive at the
/// same time ([`duplicates`](Self::duplicates)).
///
/// Clones share the same cloud.
///
/// ```
/// use std::sync::Arc;
/// use cogrion_core::{ManualClock, Timestamp, provider::{InfraLayer}};
/// use cogrion_core::sim::{CloudApi, ResourceTags};
///
/// let api = CloudApi::new(Arc::new(ManualClock::new(Timestamp::EPOCH)));
/// let tags = ResourceTags::new("acme-prod".parse().unwrap(), InfraLayer::Network, "vpc");
/// let first = api.create("vpc", tags.clone(), Default::default(), &[]).unwrap();
/// let second = api.create("vpc", tags, Default::default(), &[]).unwrap();
/// assert_ne!(first, second); // no deduplication by name
/// assert_eq!(api.duplicates(), ["acme-prod/network/vpc"]);
/// ```
#[derive(Clone)]
pub struct CloudApi {
    clock: Arc<dyn Clock>,
    inner: Arc<Mutex<ApiState>>,
    /// Where the resources are saved after every change, for a cloud that
    /// outlives its process ([`persistent`](Self::persistent)).
    file: Option<Arc<std::path::PathBuf>>,
}

/// What a persistent cloud keeps in its file: the resources (deleted ones too,
/// for the audit), the id counter and the duplicates found so far.
#[derive(Serialize, Deserialize)]
struct Saved {
    next_serial: u64,
    resources: Vec<Record>,
    duplicates: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct ApiState {
    next_serial: u64,
    resources: BTreeMap<ResourceId, Record>,
    /// Every resource ever created for a workspace, in creation order: every
    /// query and dependency check is per workspace, so none scans the cloud.
    by_workspace: std::collections::HashMap<WorkspaceId, Vec<ResourceId>>,
    latency: BTreeMap<InfraLayer, Duration>,
    /// The instance types the cloud offers; `None`: any.
    instance_types: Option<BTreeSet<String>>,
    calls: ApiCallCounts,
    duplicates: BTreeSet<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: ResourceId,
    kind: String,
    tags: ResourceTags,
    attrs: Attributes,
    depends_on: Vec<ResourceId>,
    created_at: Timestamp,
    ready_at: Timestamp,
    updated_until: Option<Timestamp>,
    gone_at: Option<Timestamp>,
}

impl ApiState {
    /// The records of `workspace`, oldest first.
    fn of<'a>(&'a self, workspace: &WorkspaceId) -> impl Iterator<Item = &'a Record> + 'a {
        self.by_workspace
            .get(workspace)
            .into_iter()
            .flatten()
            .filter_map(|id| self.resources.get(id))
    }
}

impl Record {
    fn status(&self, now: Timestamp) -> ResourceStatus {
        if let Some(gone_at) = self.gone_at {
            return if now >= gone_at {
                ResourceStatus::Deleted
            } else {
                ResourceStatus::Deleting { gone_at }
            };
        }
        if now < self.ready_at {
            return ResourceStatus::Creating {
                ready_at: self.ready_at,
            };
        }
        match self.updated_until {
            Some(ready_at) if now < ready_at => ResourceStatus::Updating { ready_at },
            _ => ResourceStatus::Active,
        }
    }

    fn is_live(&self, now: Timestamp) -> bool {
        self.status(now) != ResourceStatus::Deleted
    }

    fn view(&self, now: Timestamp) -> ApiResource {
        ApiResource {
            id: self.id.clone(),
            kind: self.kind.clone(),
            tags: self.tags.clone(),
            attrs: self.attrs.clone(),
            depends_on: self.depends_on.clone(),
            status: self.status(now),
            created_at: self.created_at,
        }
    }
}

impl CloudApi {
    /// An empty cloud on `clock`, with zero latency everywhere.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            inner: Arc::new(Mutex::new(ApiState::default())),
            file: None,
        }
    }

    /// The cloud's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// How long creating, updating or deleting a resource of `layer` takes.
    pub fn latency(&self, layer: InfraLayer) -> Duration {
        self.state()
            .latency
            .get(&layer)
            .copied()
            .unwrap_or_default()
    }

    /// Sets how long creating, updating or deleting a resource of `layer` takes,
    /// for changes started from now on.
    pub fn set_latency(&self, layer: InfraLayer, latency: Duration) {
        self.state().latency.insert(layer, latency);
    }

    /// Offers only these instance types (`None`: any, the default): a create
    /// or update whose `instance_type` attribute names another is refused with
    /// [`ApiError::InvalidParameter`], as a real cloud refuses a node group of
    /// an instance type the region does not have.
    pub fn set_instance_types(&self, types: Option<BTreeSet<String>>) {
        self.state().instance_types = types;
    }

    /// Refuses attributes the cloud does not accept.
    fn check_attrs(state: &ApiState, attrs: &Attributes) -> Result<(), ApiError> {
        if let (Some(offered), Some(wanted)) = (&state.instance_types, attrs.get("instance_type"))
            && !offered.contains(wanted)
        {
            return Err(ApiError::InvalidParameter {
                attribute: "instance_type".into(),
                message: format!(
                    "instance type {wanted} is not offered here (offered: {})",
                    offered.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Creates a new resource — always a new one, with a fresh id, whatever
    /// exists already.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when a resource of `depends_on` does not exist (or
    /// is being deleted); nothing is created then.
    pub fn create(
        &self,
        kind: &str,
        tags: ResourceTags,
        attrs: Attributes,
        depends_on: &[ResourceId],
    ) -> Result<ResourceId, ApiError> {
        let now = self.clock.now();
        let mut state = self.state();
        *state.calls.creates.entry(kind.to_owned()).or_default() += 1;
        Self::check_attrs(&state, &attrs)?;
        for parent in depends_on {
            let usable = state.resources.get(parent).is_some_and(|r| {
                !matches!(
                    r.status(now),
                    ResourceStatus::Deleting { .. } | ResourceStatus::Deleted
                )
            });
            if !usable {
                return Err(ApiError::NotFound { id: parent.clone() });
            }
        }
        state.next_serial += 1;
        let serial = state.next_serial;
        let id = ResourceId(format!("{kind}-{serial:08x}"));
        let latency = state.latency.get(&tags.layer).copied().unwrap_or_default();
        let live_same_intent = state
            .of(&tags.workspace)
            .filter(|r| r.tags == tags && r.is_live(now))
            .count();
        state
            .by_workspace
            .entry(tags.workspace.clone())
            .or_default()
            .push(id.clone());
        if live_same_intent > 0 {
            state.duplicates.insert(tags.intent());
        }
        state.resources.insert(
            id.clone(),
            Record {
                id: id.clone(),
                kind: kind.to_owned(),
                tags,
                attrs,
                depends_on: depends_on.to_vec(),
                created_at: now,
                ready_at: now + latency,
                updated_until: None,
                gone_at: None,
            },
        );
        self.save(&state);
        Ok(id)
    }

    /// The resource with this id, unless it is deleted.
    pub fn get(&self, id: &ResourceId) -> Option<ApiResource> {
        let now = self.clock.now();
        let mut state = self.state();
        state.calls.reads += 1;
        state
            .resources
            .get(id)
            .filter(|r| r.is_live(now))
            .map(|r| r.view(now))
    }

    /// The resources of `workspace` named `name` that are not deleted, oldest
    /// first. More than one means someone created a duplicate.
    pub fn find_by_name(&self, workspace: &WorkspaceId, name: &str) -> Vec<ApiResource> {
        self.read(workspace, |r| r.tags.name == name)
    }

    /// Every resource tagged with `workspace` that is not deleted, oldest first
    /// (like a tagging API's search).
    pub fn list(&self, workspace: &WorkspaceId) -> Vec<ApiResource> {
        self.read(workspace, |_| true)
    }

    /// Changes a resource's attributes; the change takes the layer's latency
    /// (the resource is `Updating` meanwhile). Updating to the same attributes is a
    /// change like any other.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] for a resource that is deleted or being deleted;
    /// [`ApiError::InUse`] while it is being created or updated.
    pub fn update(&self, id: &ResourceId, attrs: Attributes) -> Result<(), ApiError> {
        let now = self.clock.now();
        let mut state = self.state();
        let kind = state
            .resources
            .get(id)
            .map_or_else(|| "?".to_owned(), |r| r.kind.clone());
        *state.calls.updates.entry(kind).or_default() += 1;
        Self::check_attrs(&state, &attrs)?;
        let latency = state
            .resources
            .get(id)
            .and_then(|r| state.latency.get(&r.tags.layer).copied())
            .unwrap_or_default();
        let Some(record) = state.resources.get_mut(id) else {
            return Err(ApiError::NotFound { id: id.clone() });
        };
        match record.status(now) {
            ResourceStatus::Active => {
                record.attrs = attrs;
                record.updated_until = Some(now + latency);
                self.save(&state);
                Ok(())
            }
            status @ (ResourceStatus::Creating { .. } | ResourceStatus::Updating { .. }) => {
                Err(ApiError::InUse {
                    id: id.clone(),
                    status,
                    retry_after: status.remaining(now),
                })
            }
            ResourceStatus::Deleting { .. } | ResourceStatus::Deleted => {
                Err(ApiError::NotFound { id: id.clone() })
            }
        }
    }

    /// Starts deleting a resource; it is gone after the layer's latency. Deleting
    /// a resource that is already being deleted changes nothing.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] for a resource that is gone or never existed;
    /// [`ApiError::InUse`] while it is being created or updated;
    /// [`ApiError::DependencyViolation`] while resources that depend on it exist.
    pub fn delete(&self, id: &ResourceId) -> Result<(), ApiError> {
        let now = self.clock.now();
        let mut state = self.state();
        let kind = state
            .resources
            .get(id)
            .map_or_else(|| "?".to_owned(), |r| r.kind.clone());
        *state.calls.deletes.entry(kind).or_default() += 1;
        let workspace = state.resources.get(id).map(|r| r.tags.workspace.clone());
        let dependents: Vec<ResourceId> = workspace
            .iter()
            .flat_map(|w| state.of(w))
            .filter(|r| r.depends_on.contains(id) && r.is_live(now))
            .map(|r| r.id.clone())
            .collect();
        let latency = state
            .resources
            .get(id)
            .and_then(|r| state.latency.get(&r.tags.layer).copied())
            .unwrap_or_default();
        let Some(record) = state.resources.get_mut(id) else {
            return Err(ApiError::NotFound { id: id.clone() });
        };
        match record.status(now) {
            ResourceStatus::Deleted => Err(ApiError::NotFound { id: id.clone() }),
            ResourceStatus::Deleting { .. } => Ok(()),
            status @ (ResourceStatus::Creating { .. } | ResourceStatus::Updating { .. }) => {
                Err(ApiError::InUse {
                    id: id.clone(),
                    status,
                    retry_after: status.remaining(now),
                })
            }
            ResourceStatus::Active if !dependents.is_empty() => {
                Err(ApiError::DependencyViolation {
                    id: id.clone(),
                    dependents,
                })
            }
            ResourceStatus::Active => {
                record.gone_at = Some(now + latency);
                self.save(&state);
                Ok(())
            }
        }
    }

    // ---- audit: not API calls, not counted ----

    /// The resources of `workspace` that are not deleted, as [`CloudResource`]s,
    /// sorted.
    pub fn live_resources(&self, workspace: &WorkspaceId) -> Vec<CloudResource> {
        let now = self.clock.now();
        let state = self.state();
        let mut live: Vec<CloudResource> = state
            .of(workspace)
            .filter(|r| r.is_live(now))
            .map(|r| r.view(now).to_cloud_resource())
            .collect();
        live.sort();
        live
    }

    /// How many resources, of all workspaces, are not deleted.
    pub fn all_live(&self) -> usize {
        let now = self.clock.now();
        self.state()
            .resources
            .values()
            .filter(|r| r.is_live(now))
            .count()
    }

    /// Every intent, as `workspace/layer/name`, that ever had more than one
    /// resource alive (not deleted) at the same time, sorted.
    pub fn duplicates(&self) -> Vec<String> {
        self.state().duplicates.iter().cloned().collect()
    }

    /// How often each API call was made so far.
    pub fn calls(&self) -> ApiCallCounts {
        self.state().calls.clone()
    }

    fn read(&self, workspace: &WorkspaceId, filter: impl Fn(&Record) -> bool) -> Vec<ApiResource> {
        let now = self.clock.now();
        let mut state = self.state();
        state.calls.reads += 1;
        // Creation order is serial order.
        state
            .of(workspace)
            .filter(|r| filter(r) && r.is_live(now))
            .map(|r| r.view(now))
            .collect()
    }

    fn state(&self) -> MutexGuard<'_, ApiState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A cloud whose resources live in `path` (a JSON file, created if missing)
    /// and so outlive the process: a program stopped in the middle of
    /// provisioning finds, when it starts again, the resources it had created —
    /// as it would on a real cloud. Every change is written (to a temporary file,
    /// then renamed over `path`) before the call returns. Latencies are not
    /// saved; set them again. Meant for small simulations such as the quickstart:
    /// each change rewrites the whole file.
    ///
    /// # Errors
    /// The file cannot be read, or is not a cloud this version wrote.
    pub fn persistent(
        clock: Arc<dyn Clock>,
        path: impl Into<std::path::PathBuf>,
    ) -> std::io::Result<Self> {
        let path = path.into();
        let mut state = ApiState::default();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} is not a simulated cloud: {e}", path.display()),
                    )
                })?;
                state.next_serial = saved.next_serial;
                state.duplicates = saved.duplicates;
                for r in saved.resources {
                    state
                        .by_workspace
                        .entry(r.tags.workspace.clone())
                        .or_default()
                        .push(r.id.clone());
                    state.resources.insert(r.id.clone(), r);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            clock,
            inner: Arc::new(Mutex::new(state)),
            file: Some(Arc::new(path)),
        })
    }

    /// Writes the resources to the cloud's file, if it has one. A failure is
    /// logged: the simulated cloud keeps working in memory.
    fn save(&self, state: &ApiState) {
        let Some(path) = &self.file else { return };
        let saved = Saved {
            next_serial: state.next_serial,
            resources: state.resources.values().cloned().collect(),
            duplicates: state.duplicates.clone(),
        };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path.as_ref()));
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "could not save the simulated cloud");
        }
    }
}

impl fmt::Debug for CloudApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("CloudApi")
            .field("clock", &self.clock)
            .field("resources", &state.resources.len())
            .field("latency", &state.latency)
            .field("calls", &state.calls)
            .field("duplicates", &state.duplicates)
            .finish()
    }
}
