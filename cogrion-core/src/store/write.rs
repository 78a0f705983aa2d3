//! What a store is asked to write or read, and the checks every store makes
//! on it before touching anything.

use super::*;

/// One atomic, optionally fenced write to a workspace: a compare-and-swap of its
/// record, events appended to its history and commands queued for its agent.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkspaceWrite {
    /// The workspace written.
    pub workspace: WorkspaceId,
    /// The new record and how to treat the stored one (`None`: leave it).
    pub record: Option<(WorkspaceRecord, PutMode)>,
    /// Events to append, in order.
    pub events: Vec<NewEvent>,
    /// Commands to queue, in order.
    pub commands: Vec<NewCommand>,
    /// The writer's fencing token, if it writes under a lease.
    pub fence: Option<FencingToken>,
    /// When the write happens (stamps queued commands).
    pub now: Timestamp,
}

impl WorkspaceWrite {
    /// An empty write to `workspace` at `now`.
    pub fn new(workspace: WorkspaceId, now: Timestamp) -> Self {
        Self {
            workspace,
            record: None,
            events: Vec::new(),
            commands: Vec::new(),
            fence: None,
            now,
        }
    }

    /// Creates the record (it must not exist yet).
    pub fn create(record: WorkspaceRecord, now: Timestamp) -> Self {
        let mut w = Self::new(record.id.clone(), now);
        w.record = Some((record, PutMode::Create));
        w
    }

    /// Replaces the record if it is still at `revision`.
    pub fn update(record: WorkspaceRecord, revision: Revision, now: Timestamp) -> Self {
        let mut w = Self::new(record.id.clone(), now);
        w.record = Some((record, PutMode::Update(revision)));
        w
    }

    /// Appends an event.
    pub fn event(mut self, event: NewEvent) -> Self {
        self.events.push(event);
        self
    }

    /// Queues a command.
    pub fn command(mut self, command: NewCommand) -> Self {
        self.commands.push(command);
        self
    }

    /// Makes the write conditional on the lease with this fencing token.
    pub fn fenced(mut self, fence: FencingToken) -> Self {
        self.fence = Some(fence);
        self
    }
}

/// What a successful [`WorkspaceWrite`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The record's new revision, if the write included a record.
    pub revision: Option<Revision>,
    /// The sequence numbers given to the appended events.
    pub events: Vec<EventSeq>,
    /// The queue positions given to the queued commands.
    pub commands: Vec<CommandSeq>,
}

/// Which workspaces to list: every filter set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListQuery {
    /// Only this tenant's.
    pub tenant: Option<crate::ids::TenantId>,
    /// Only those in this state.
    pub state: Option<StateName>,
    /// Only those on this cloud.
    pub cloud: Option<crate::CloudKind>,
    /// Only those with every one of these labels (same key, same value).
    pub labels: Labels,
    /// Only those whose `wake_at` is at or before this instant.
    pub due_at: Option<Timestamp>,
    /// Only ids after this one (for paging).
    pub after: Option<WorkspaceId>,
    /// At most this many (a store may cap it; 0 means the store's default).
    pub limit: usize,
}

impl ListQuery {
    /// Every workspace, the store's default page.
    pub fn new() -> Self {
        Self::default()
    }
    /// Only `tenant`'s workspaces.
    pub fn tenant(mut self, tenant: crate::ids::TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }
    /// Only workspaces in `state`.
    pub fn state(mut self, state: StateName) -> Self {
        self.state = Some(state);
        self
    }
    /// Only workspaces on `cloud`.
    pub fn cloud(mut self, cloud: crate::CloudKind) -> Self {
        self.cloud = Some(cloud);
        self
    }
    /// Only workspaces with every one of `labels`.
    pub fn labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }
    /// Whether `record` passes every filter but `after` and `limit`.
    pub fn selects(&self, record: &WorkspaceRecord) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|t| &record.spec.tenant == t)
            && self.state.is_none_or(|s| record.state.name() == s)
            && self
                .cloud
                .is_none_or(|c| crate::CloudKind::of(&record.spec.cloud) == c)
            && record.labels.contains_all(&self.labels)
            && self
                .due_at
                .is_none_or(|d| record.wake_at.is_some_and(|at| at <= d))
    }
    /// Only workspaces due at `at` (their `wake_at` at or before it).
    pub fn due_at(mut self, at: Timestamp) -> Self {
        self.due_at = Some(at);
        self
    }
    /// Only ids after `id`.
    pub fn after(mut self, id: WorkspaceId) -> Self {
        self.after = Some(id);
        self
    }
    /// At most `limit` records.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// What a listing shows of a workspace, without its whole record
/// ([`RecordStore::list_summaries`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkspaceSummary {
    /// The workspace.
    pub id: WorkspaceId,
    /// Its tenant.
    pub tenant: crate::ids::TenantId,
    /// Its cloud.
    pub cloud: crate::CloudKind,
    /// Its state.
    pub state: StateName,
    /// Its labels.
    pub labels: Labels,
    /// Its record's revision.
    pub revision: Revision,
}

impl WorkspaceSummary {
    /// The summary of a stored record.
    pub fn of(record: &Versioned<WorkspaceRecord>) -> Self {
        let r = &record.value;
        Self {
            id: r.id.clone(),
            tenant: r.spec.tenant.clone(),
            cloud: crate::CloudKind::of(&r.spec.cloud),
            state: r.state.name(),
            labels: r.labels.clone(),
            revision: record.revision,
        }
    }

    /// A summary from its parts, as a store reads them from its columns.
    pub fn new(
        id: WorkspaceId,
        tenant: crate::ids::TenantId,
        cloud: crate::CloudKind,
        state: StateName,
        labels: Labels,
        revision: Revision,
    ) -> Self {
        Self {
            id,
            tenant,
            cloud,
            state,
            labels,
            revision,
        }
    }
}

/// Whether a purge keeps a destroyed workspace's record and history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryRetention {
    /// Keep the record (as a tombstone, with its destroy receipt) and the whole
    /// history. The default.
    #[default]
    Keep,
    /// Delete them too: nothing of the workspace is left in the store, and
    /// its id may be created again. (A new workspace's leases start a new
    /// series of fencing tokens; any process still holding a lease on the old
    /// one lost it long before a retention ended.)
    Delete,
}

/// What a [`purge`](RecordStore::purge) deleted, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    /// Queued commands (answered or not).
    pub commands: u64,
    /// Operation checkpoints.
    pub checkpoints: u64,
    /// Bootstrap-token hashes.
    pub tokens: u64,
    /// Agent credentials.
    pub credentials: u64,
    /// History events (only with [`HistoryRetention::Delete`]).
    pub events: u64,
}

/// The checks every store makes on a [`purge`](RecordStore::purge) before
/// deleting anything, given the stored state's name (`None` when the workspace
/// does not exist), its revision and the live lease's fencing token.
pub fn check_purge(
    write: &WorkspaceWrite,
    history: HistoryRetention,
    stored_state: Option<&str>,
    revision: Option<Revision>,
    live_fence: Option<FencingToken>,
) -> Result<()> {
    let Some((record, PutMode::Update(_))) = &write.record else {
        return Err(InvalidValue::Malformed {
            what: "purge",
            reason: "a purge carries the record update it is based on".into(),
        }
        .into());
    };
    if !write.commands.is_empty() {
        return Err(InvalidValue::Malformed {
            what: "purge",
            reason: "a purge queues no command".into(),
        }
        .into());
    }
    check_write(write, 0)?;
    check_preconditions(write, revision, live_fence)?;
    let destroyed = StateName::Destroyed.as_str();
    if stored_state != Some(destroyed)
        || (history == HistoryRetention::Keep && record.state != WorkspaceState::Destroyed)
    {
        return Err(crate::Error::Rejected {
            service: "store".into(),
            detail: format!(
                "workspace {} is not destroyed: only a destroyed workspace is purged",
                write.workspace
            ),
            source: None,
        });
    }
    Ok(())
}

/// One write of a [`write_batch`](RecordStore::write_batch): the store methods
/// that change something on the engine's hot path.
#[derive(Debug, Clone)]
#[non_exhaustive]
// Commits are most of every batch: boxing them would only add an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum BatchWrite {
    /// [`RecordStore::commit`].
    Commit(WorkspaceWrite),
    /// [`RecordStore::put_checkpoint`].
    PutCheckpoint {
        /// The workspace.
        workspace: WorkspaceId,
        /// The checkpoint's key.
        key: CheckpointKey,
        /// Its new value.
        value: serde_json::Value,
        /// The writer's fencing token.
        fence: FencingToken,
    },
    /// [`LeaseStore::acquire`].
    Acquire {
        /// The workspace.
        workspace: WorkspaceId,
        /// Who takes the lease.
        holder: HolderId,
        /// For how long (from the store's now).
        ttl: Duration,
    },
    /// [`LeaseStore::release`].
    Release(Lease),
}

/// What a [`BatchWrite`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchOutcome {
    /// A commit's outcome.
    Committed(Committed),
    /// An acquired lease.
    Lease(Lease),
    /// A checkpoint written or a lease released.
    Done,
}

impl BatchWrite {
    /// The workspace written to.
    pub fn workspace(&self) -> &WorkspaceId {
        match self {
            Self::Commit(w) => &w.workspace,
            Self::PutCheckpoint { workspace, .. } | Self::Acquire { workspace, .. } => workspace,
            Self::Release(lease) => &lease.workspace,
        }
    }

    /// Applies this write alone, through `store`'s own method.
    pub async fn apply_alone<S: RecordStore + ?Sized>(self, store: &S) -> Result<BatchOutcome> {
        match self {
            Self::Commit(write) => store.commit(write).await.map(BatchOutcome::Committed),
            Self::PutCheckpoint {
                workspace,
                key,
                value,
                fence,
            } => store
                .put_checkpoint(&workspace, &key, value, fence)
                .await
                .map(|()| BatchOutcome::Done),
            Self::Acquire {
                workspace,
                holder,
                ttl,
            } => store
                .acquire(&workspace, &holder, ttl)
                .await
                .map(BatchOutcome::Lease),
            Self::Release(lease) => store.release(&lease).await.map(|()| BatchOutcome::Done),
        }
    }
}

impl BatchOutcome {
    fn mismatch(&self, wanted: &str) -> crate::Error {
        crate::Error::Rejected {
            service: "store".into(),
            detail: format!("a batched write returned {self:?} where {wanted} was expected"),
            source: None,
        }
    }

    /// The commit's outcome.
    pub fn into_committed(self) -> Result<Committed> {
        match self {
            Self::Committed(c) => Ok(c),
            other => Err(other.mismatch("a commit's outcome")),
        }
    }

    /// The acquired lease.
    pub fn into_lease(self) -> Result<Lease> {
        match self {
            Self::Lease(l) => Ok(l),
            other => Err(other.mismatch("a lease")),
        }
    }

    /// Nothing (a checkpoint written, a lease released).
    pub fn into_done(self) -> Result<()> {
        match self {
            Self::Done => Ok(()),
            other => Err(other.mismatch("nothing")),
        }
    }
}

/// The longest lease a store grants.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);

/// The checks every store makes on a write before touching anything: the record
/// belongs to the workspace written, command payloads are within the protocol's
/// limits, and no command id appears twice in the write. Returns the commands as
/// they will be queued, numbered from `first_seq`.
pub fn check_write(write: &WorkspaceWrite, first_seq: u64) -> Result<Vec<Command>> {
    if let Some((record, _)) = &write.record
        && record.id != write.workspace
    {
        return Err(InvalidValue::Malformed {
            what: "workspace write",
            reason: format!(
                "record {} written as workspace {}",
                record.id, write.workspace
            ),
        }
        .into());
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(write.commands.len());
    for (i, c) in write.commands.iter().enumerate() {
        if !seen.insert(&c.id) {
            return Err(crate::Error::AlreadyExists(
                crate::error::Resource::Command(write.workspace.clone(), c.id.clone()),
            ));
        }
        out.push(Command::new(
            c.id.clone(),
            CommandSeq(first_seq + i as u64),
            c.kind.clone(),
            c.payload.clone(),
        )?);
    }
    Ok(out)
}

/// The preconditions of a [`WorkspaceWrite`], decided the same way by every store:
/// a create must find nothing; anything else must find the workspace; a fenced
/// write must carry the fencing token of the workspace's current, unreleased lease
/// (`live_fence`, which a store need only look up when the write is fenced); an
/// update must find exactly the revision it was based on.
///
/// `revision` is the stored record's revision, `None` if there is none.
pub fn check_preconditions(
    write: &WorkspaceWrite,
    revision: Option<Revision>,
    live_fence: Option<FencingToken>,
) -> Result<()> {
    use crate::error::{Error, Resource};
    let id = &write.workspace;
    match (&write.record, revision) {
        (Some((_, PutMode::Create)), Some(_)) => {
            Err(Error::AlreadyExists(Resource::Workspace(id.clone())))
        }
        (Some((_, PutMode::Create)), None) => match write.fence {
            Some(fence) => Err(Error::LeaseLost {
                workspace: id.clone(),
                fence: fence.0,
            }),
            None => Ok(()),
        },
        (_, None) => Err(Error::NotFound(Resource::Workspace(id.clone()))),
        (record, Some(found)) => {
            if let Some(fence) = write.fence
                && live_fence != Some(fence)
            {
                return Err(Error::LeaseLost {
                    workspace: id.clone(),
                    fence: fence.0,
                });
            }
            match record {
                Some((_, PutMode::Update(expected))) if *expected != found => {
                    Err(Error::Conflict {
                        what: Resource::Workspace(id.clone()),
                        expected: *expected,
                        found,
                    })
                }
                _ => Ok(()),
            }
        }
    }
}

/// Checks a lease's time to live against [`MAX_LEASE_TTL`].
pub fn check_lease_ttl(ttl: Duration) -> Result<(), InvalidValue> {
    if ttl.is_zero() || ttl > MAX_LEASE_TTL {
        return Err(InvalidValue::OutOfRange {
            what: "lease time to live",
            value: format!("{ttl:?}"),
            allowed: format!("more than 0 and at most {MAX_LEASE_TTL:?}"),
        });
    }
    Ok(())
}
