//! Where a workspace stands, for a host ([`Engine::status`]), finding
//! workspaces ([`Engine::list`], [`Engine::count`]) and labelling them.

use std::collections::BTreeMap;

use cogrion_agent_proto::CommandId;
use serde::{Deserialize, Serialize};

use super::{AgentConnectivity, CloudKind, Engine, lock};
use crate::clock::Timestamp;
use crate::error::Result;
use crate::ids::{Labels, StackName, TenantId, WorkspaceId};
use crate::spec::{SpecChange, WorkspaceSpec};
use crate::stack::{StackFailure, StackState, StackStateName};
use crate::state::{Failure, StateName, WorkspaceState};
use crate::store::{
    Actor, EventKind, LeftBehind, ListQuery, OperationKind, OperationRecord, ProgressNote,
    Revision, StepStatus, WorkspaceRecord, WorkspaceSummary,
};

/// Where a workspace stands and why: what [`Engine::status`] answers, on any
/// replica (the progress messages of steps this replica runs are the latest;
/// others' are as of their last flush,
/// [`EngineConfig::progress_flush`](crate::EngineConfig::progress_flush)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkspaceStatus {
    /// The workspace.
    pub id: WorkspaceId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its cloud.
    pub cloud: CloudKind,
    /// The host's labels.
    pub labels: Labels,
    /// Its state.
    pub state: StateName,
    /// Its record's revision (one more on every change).
    pub revision: Revision,
    /// The operations in progress, oldest first: a provision, update or
    /// destroy, and stack deploys and removals.
    pub operations: Vec<OperationStatus>,
    /// In `Failed`: the failed operation's step, its stack, the error, when,
    /// whether a retry alone may succeed, and (for a destroy) what the step
    /// still had to remove.
    pub failure: Option<Failure>,
    /// Each stack, in name order.
    pub stacks: Vec<StackSummary>,
    /// Whether its agent is seen, and since when it is silent.
    pub agent: AgentConnectivity,
    /// The desired spec and the last applied one.
    pub spec: SpecStatus,
    /// What a destroy left behind (skipped or abandoned), and why.
    pub left_behind: Vec<LeftBehind>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// An operation in progress ([`WorkspaceStatus::operations`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OperationStatus {
    /// Its number within the workspace.
    pub operation: u64,
    /// What it does.
    pub kind: OperationKind,
    /// The stack, for a stack's deploy or removal.
    pub stack: Option<StackName>,
    /// When it started.
    pub started_at: Timestamp,
    /// How many of its steps are finished (done, skipped or abandoned).
    pub steps_done: usize,
    /// How many steps it has.
    pub steps: usize,
    /// The step it is at: its first unfinished one.
    pub step: Option<StepNow>,
    /// When it runs next, if it waits on time (the cloud, a backoff).
    pub waiting_until: Option<Timestamp>,
    /// A destroy or a removal superseded it: it ends after its running step.
    pub cancelling: bool,
}

/// The step an operation is at ([`OperationStatus::step`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepNow {
    /// The step's name.
    pub name: String,
    /// Whether it has started, failed for good, …
    pub status: StepStatus,
    /// How many attempts it has had.
    pub attempts: u32,
    /// When its current run of attempts started.
    pub started_at: Option<Timestamp>,
    /// Its last attempt's error, if that failed.
    pub last_error: Option<String>,
    /// What its call reported last, while in progress.
    pub progress: Option<ProgressNote>,
    /// The agent command it waits for, if any.
    pub awaiting_command: Option<CommandId>,
}

/// One stack of a workspace ([`WorkspaceStatus::stacks`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StackSummary {
    /// Its name.
    pub name: StackName,
    /// Its state.
    pub state: StackStateName,
    /// Why it failed, in `Failed`.
    pub failure: Option<StackFailure>,
    /// The stacks it depends on.
    pub depends_on: Vec<StackName>,
}

/// The desired spec against the last applied one ([`WorkspaceStatus::spec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SpecStatus {
    /// The latest accepted spec.
    pub desired: WorkspaceSpec,
    /// The last spec the whole workspace was brought to (`None`: never
    /// provisioned).
    pub applied: Option<WorkspaceSpec>,
    /// Every field where the desired spec differs from the applied one (all
    /// of them while never provisioned: empty then).
    pub pending: Vec<SpecChange>,
}

/// A page of [`Engine::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkspacePage {
    /// The workspaces, ordered by id.
    pub workspaces: Vec<WorkspaceSummary>,
    /// The query of the next page; `None` on the last.
    pub next: Option<ListQuery>,
}

impl Engine {
    /// Where the workspace stands and why: its state, the operations in
    /// progress with their current step and latest progress message, the
    /// last failure (its step, error, and whether a retry alone may
    /// succeed), each stack's state, its agent's connectivity, and the
    /// desired spec against the last applied one. Two reads of the store
    /// (the record, the agent's credentials) and this replica's transport.
    pub async fn status(&self, id: &WorkspaceId) -> Result<WorkspaceStatus> {
        let (record, credentials) = futures::join!(
            self.0.store.get_workspace(id),
            self.0.store.list_credentials(id)
        );
        let record = record?;
        let agent = self.connectivity(id, &credentials?).await;
        let live = lock(&self.0.progress).get(id).cloned();
        let rec = record.value;
        let operations = rec
            .operations
            .iter()
            .map(|op| operation_status(op, live.as_ref()))
            .collect();
        let stacks = rec
            .stacks
            .iter()
            .map(|(name, entry)| StackSummary {
                name: name.clone(),
                state: entry.state.name(),
                failure: match &entry.state {
                    StackState::Failed(f) => Some(f.clone()),
                    _ => None,
                },
                depends_on: entry.spec.depends_on.iter().cloned().collect(),
            })
            .collect();
        let pending = match &rec.applied {
            Some(applied) => applied.diff(&rec.spec),
            None => Vec::new(),
        };
        Ok(WorkspaceStatus {
            cloud: CloudKind::of(&rec.spec.cloud),
            tenant: rec.spec.tenant.clone(),
            state: rec.state.name(),
            failure: match rec.state {
                WorkspaceState::Failed(f) => Some(f),
                _ => None,
            },
            id: rec.id,
            labels: rec.labels,
            revision: record.revision,
            operations,
            stacks,
            agent,
            spec: SpecStatus {
                desired: rec.spec,
                applied: rec.applied,
                pending,
            },
            left_behind: rec.left_behind,
            created_at: rec.created_at,
            updated_at: rec.updated_at,
        })
    }

    /// A page of the workspaces `query` selects (by tenant, state, cloud and
    /// labels), ordered by id, as summaries (no whole record is read where
    /// the store keeps them in columns). Follow [`WorkspacePage::next`] for
    /// the next page: paging by id never skips or repeats a workspace that
    /// exists throughout.
    pub async fn list(&self, query: &ListQuery) -> Result<WorkspacePage> {
        let mut query = query.clone();
        if query.limit == 0 {
            query.limit = 100;
        }
        let workspaces = self.0.store.list_summaries(&query).await?;
        let next = (workspaces.len() >= query.limit)
            .then(|| workspaces.last().map(|w| query.clone().after(w.id.clone())))
            .flatten();
        Ok(WorkspacePage { workspaces, next })
    }

    /// How many workspaces `query` selects, by state (its paging ignored).
    pub async fn count(&self, query: &ListQuery) -> Result<BTreeMap<StateName, u64>> {
        self.0.store.count_workspaces(query).await
    }

    /// Replaces the workspace's labels, in any state; a history event says
    /// what they were. Nothing else changes and nothing runs.
    pub async fn set_labels(
        &self,
        id: &WorkspaceId,
        labels: Labels,
        actor: Actor,
    ) -> Result<WorkspaceRecord> {
        let written = self
            .write_record(id, &actor, false, |rec, j| {
                if rec.labels == labels {
                    return Ok(false);
                }
                let before = std::mem::replace(&mut rec.labels, labels.clone());
                j.event(
                    EventKind::Note,
                    format!("labels {} (were {})", show(&rec.labels), show(&before)),
                );
                Ok(true)
            })
            .await?;
        match written {
            Some(rec) => Ok(rec),
            None => self.workspace(id).await,
        }
    }
}

/// Labels as `{k=v, …}`.
fn show(labels: &Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Where `op` stands; `live`: the latest progress this replica saw.
fn operation_status(op: &OperationRecord, live: Option<&super::LiveProgress>) -> OperationStatus {
    let step = op.steps.iter().find(|s| !s.is_finished()).map(|s| {
        let progress = match live {
            Some(l)
                if l.operation == op.seq
                    && l.step == s.name
                    && s.progress.as_ref().is_none_or(|p| p.at <= l.note.at) =>
            {
                Some(l.note.clone())
            }
            _ => s.progress.clone(),
        };
        StepNow {
            name: s.name.clone(),
            status: s.status.clone(),
            attempts: s.attempts,
            started_at: s.started_at,
            last_error: s.last_error.clone(),
            progress,
            awaiting_command: s.command.clone(),
        }
    });
    OperationStatus {
        operation: op.seq,
        kind: op.kind,
        stack: op.stack.clone(),
        started_at: op.started_at,
        steps_done: op.steps.iter().filter(|s| s.is_finished()).count(),
        steps: op.steps.len(),
        step,
        waiting_until: op.wake_at,
        cancelling: op.cancel_requested,
    }
}
