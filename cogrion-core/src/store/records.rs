//! The records a store holds for a workspace: the record itself, its
//! operations and steps, what a destroy left behind, and its history's events.

use super::*;

/// The kinds of operation the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// Stand up infrastructure and bootstrap the agent.
    Provision,
    /// Apply an infrastructure change.
    Update,
    /// Tear everything down.
    Destroy,
    /// Install or upgrade one stack.
    StackDeploy,
    /// Tear down one stack.
    StackDestroy,
    /// After `Destroyed` and its retention: delete what the workspace no longer
    /// needs ([`RecordStore::purge`]).
    Purge,
}

impl OperationKind {
    /// Its name, as stored (`provision`, `stack_deploy`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provision => "provision",
            Self::Update => "update",
            Self::Destroy => "destroy",
            Self::StackDeploy => "stack_deploy",
            Self::StackDestroy => "stack_destroy",
            Self::Purge => "purge",
        }
    }
}

/// Where one step of an operation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Started; its effect may or may not have happened.
    Running,
    /// Finished. Never run again.
    Done,
    /// Not run, on purpose (e.g. the agent was unreachable past the deadline).
    Skipped {
        /// Why.
        reason: String,
    },
    /// Failed permanently or exhausted its retries.
    Failed,
    /// Given up on by the host ([`Engine::abandon`](crate::Engine::abandon)):
    /// never run again; the workspace's
    /// [`left_behind`](WorkspaceRecord::left_behind) says what it left.
    Abandoned {
        /// The host's reason.
        reason: String,
    },
}

/// One step of a persisted operation plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's name, unique in its operation (`network`, `cluster`, …).
    pub name: String,
    /// Where it stands.
    pub status: StepStatus,
    /// How many times it was attempted, over its whole life (never reset, so an
    /// attempt's number — and the agent command ids derived from it — is unique).
    pub attempts: u32,
    /// The attempt count when the current retry budget began (a retry requested
    /// after a failure starts a new budget).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub budget_from: u32,
    /// The last attempt's error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The agent command the step is waiting for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandId>,
    /// When the step's current wait (an agent command, the agent's first poll)
    /// gives up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// When its current run of attempts started: its first attempt, or the
    /// first after the host asked for a retry (or a correction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// A command of an earlier attempt that an agent had when the step gave up
    /// on it, and that has not answered the cancel request yet: the next
    /// attempt does not start until it answers or a new agent connects, so no
    /// two of the step's commands run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelling: Option<CommandId>,
    /// For a step that concerns one stack of a destroy (its teardown), the
    /// stack. (Stack operations name their stack on the operation.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackName>,
    /// The latest progress message of the running step's call, as last
    /// flushed to the store (the engine that runs the step knows newer ones:
    /// [`Engine::status`](crate::Engine::status) shows those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressNote>,
}

/// A progress message and when it was reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressNote {
    /// The message.
    pub message: crate::provider::ProgressMessage,
    /// When the provider (or the agent) reported it.
    pub at: Timestamp,
}

impl StepRecord {
    /// A step not started yet.
    pub fn pending(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: StepStatus::Pending,
            attempts: 0,
            budget_from: 0,
            last_error: None,
            command: None,
            deadline: None,
            started_at: None,
            cancelling: None,
            stack: None,
            progress: None,
        }
    }

    /// Whether the step needs no more work.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status,
            StepStatus::Done | StepStatus::Skipped { .. } | StepStatus::Abandoned { .. }
        )
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A persisted operation: a list of named, idempotent steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// The operation's number within its workspace (from
    /// [`WorkspaceRecord::next_operation`]); idempotency keys derive from it.
    pub seq: u64,
    /// What it does.
    pub kind: OperationKind,
    /// The stack it concerns, for stack operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackName>,
    /// Its steps, in order.
    pub steps: Vec<StepRecord>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it may run next (after `InProgress`, a backoff, or a deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<Timestamp>,
    /// Set when a destroy superseded it: it finishes its running step, then is
    /// dropped.
    #[serde(default)]
    pub cancel_requested: bool,
    /// The hash of the bootstrap token it issued (its latest): its wait for
    /// the agent accepts only a credential descended from that token. Absent
    /// in operations stored before tokens were recorded, whose wait accepts
    /// any credential issued since the operation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenHash>,
}

/// The shape of [`WorkspaceRecord`] this build writes. Records of an older
/// format are upgraded as they are read (see the [`upgrade`] module): every
/// store reads them through `serde`, so none keeps its own copy of the rules.
pub const RECORD_FORMAT: u32 = 3;

/// Everything stored about one workspace except its history, queue, tokens and
/// credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "upgrade::StoredRecord")]
pub struct WorkspaceRecord {
    /// The record's format ([`RECORD_FORMAT`] once read).
    pub format: u32,
    /// The workspace's id.
    pub id: WorkspaceId,
    /// The **desired** spec: the latest one accepted (by `create`, `update`,
    /// `correct` or `revert`). What the cloud holds may still differ while an
    /// operation runs or after one failed; see [`applied`](Self::applied) and
    /// [`layers`](Self::layers).
    pub spec: WorkspaceSpec,
    /// The last spec the whole workspace was brought to: set when a provision
    /// or an update completes. `None` until the first provision completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<WorkspaceSpec>,
    /// The infrastructure layers that exist, each with the spec it was last
    /// built (or updated) from and what the provisioner reported: a layer
    /// built earlier is updated from that spec, never built again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<InfraLayer, BuiltLayer>,
    /// Its state.
    pub state: WorkspaceState,
    /// The host's labels, to find it by.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Its stacks.
    #[serde(default)]
    pub stacks: StackGraph,
    /// The operations in progress.
    #[serde(default)]
    pub operations: Vec<OperationRecord>,
    /// The number the next operation gets.
    #[serde(default)]
    pub next_operation: u64,
    /// How to reach the cluster, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::provisioner::ClusterAccess>,
    /// The receipt of the workspace's destroy: what teardown skipped (an agent
    /// that could not be reached) or the host abandoned, and exactly what each
    /// left. Empty means nothing Cogrion created was left behind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_behind: Vec<LeftBehind>,
    /// When the workspace's commands, checkpoints, tokens and credentials were
    /// purged, after `Destroyed` and the retention
    /// ([`EngineConfig::purge`](crate::EngineConfig::purge)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged_at: Option<Timestamp>,
    /// Since when its agent has been silent, once the engine reported it
    /// ([`EventKind::AgentSilent`]); cleared when the agent is seen again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_silent_since: Option<Timestamp>,
    /// When the workspace next needs driving, if it waits on time rather than on
    /// an event. Stores can list workspaces due by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<Timestamp>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last written.
    pub updated_at: Timestamp,
}

impl WorkspaceRecord {
    /// A new record in `Provisioning` with no stacks and no operations.
    pub fn new(id: WorkspaceId, spec: WorkspaceSpec, now: Timestamp) -> Self {
        Self {
            format: RECORD_FORMAT,
            id,
            spec,
            applied: None,
            layers: BTreeMap::new(),
            state: WorkspaceState::Provisioning,
            labels: Labels::new(),
            stacks: StackGraph::new(),
            operations: Vec::new(),
            next_operation: 1,
            cluster: None,
            left_behind: Vec::new(),
            purged_at: None,
            agent_silent_since: None,
            wake_at: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// An infrastructure layer that exists: what it was built from and what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuiltLayer {
    /// The spec the layer was last built or updated from.
    pub spec: WorkspaceSpec,
    /// The resources the provisioner reported for it then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<CloudResource>,
    /// When.
    pub at: Timestamp,
}

/// One entry of a destroy's receipt: a teardown step that did not remove what
/// it was meant to, and exactly what it left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftBehind {
    /// The destroy operation's number.
    pub operation: u64,
    /// The step (`stack/web`, `uninstall-agent`, `network`, …).
    pub step: String,
    /// The stack it concerns, for a stack's teardown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackName>,
    /// What was left, as the executor or provisioner reported it (resource
    /// kinds and names).
    pub resources: Vec<String>,
    /// Why.
    pub why: LeftReason,
    /// When.
    pub at: Timestamp,
}

/// Why a teardown step left something behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LeftReason {
    /// In-cluster (agent-run) teardown was skipped past its deadline: the agent
    /// — or, for the agent's own uninstall, the cluster's API — could not be
    /// reached. What was left lives in the cluster, which the destroy deletes
    /// next; cloud resources such objects own (load balancers, volumes) are the
    /// business of the cloud's orphan scan.
    Unreachable {
        /// Since when nothing was heard from the agent (its last poll, as the
        /// transport saw it, or the start of the step's wait).
        since: Timestamp,
        /// The last error.
        error: String,
    },
    /// The host abandoned the step explicitly.
    Abandoned {
        /// Who.
        actor: Actor,
        /// Why, in the host's words.
        reason: String,
        /// The error that blocked the step, if it had failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Actor {
    /// A host's API call, with the principal the host authenticated.
    Api {
        /// Who called.
        principal: String,
    },
    /// The lifecycle engine, running on this replica.
    Engine {
        /// The lease holder.
        holder: HolderId,
    },
    /// The workspace's Cluster Agent.
    Agent,
}

/// What happened, in structured form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The workspace was created.
    Created,
    /// The workspace changed state.
    Transition {
        /// The state before.
        from: StateName,
        /// The state after.
        to: StateName,
        /// The event that caused it.
        event: EventName,
    },
    /// A stack changed state.
    StackTransition {
        /// The stack.
        stack: StackName,
        /// Its state before (`None` when it was just added).
        from: Option<StackStateName>,
        /// Its state after.
        to: StackStateName,
    },
    /// A step began an attempt.
    StepStarted {
        /// The operation's number.
        operation: u64,
        /// The step.
        step: String,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// What a step's call in progress reported, flushed at intervals
    /// ([`EngineConfig::progress_flush`](crate::EngineConfig::progress_flush)):
    /// the event's message is the provider's.
    StepProgress {
        /// The operation's number.
        operation: u64,
        /// The step.
        step: String,
    },
    /// A step finished.
    StepDone {
        /// The operation's number.
        operation: u64,
        /// The step.
        step: String,
    },
    /// A step's attempt failed.
    StepFailed {
        /// The operation's number.
        operation: u64,
        /// The step.
        step: String,
        /// The attempt, from 1.
        attempt: u32,
        /// Whether it will be retried.
        will_retry: bool,
    },
    /// A step was skipped on purpose.
    StepSkipped {
        /// The operation's number.
        operation: u64,
        /// The step.
        step: String,
        /// What the skip left behind (empty when there was nothing to do).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left: Vec<String>,
        /// For in-cluster teardown skipped past its deadline: since when the
        /// agent (or the cluster) could not be reached.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unreachable_since: Option<Timestamp>,
    },
    /// The host abandoned a step of a failed destroy
    /// ([`Engine::abandon`](crate::Engine::abandon)); the event's message is the
    /// host's reason, its actor the host.
    StepAbandoned {
        /// The operation's number.
        operation: u64,
        /// The step.
        step: String,
        /// The stack, for a stack's teardown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stack: Option<StackName>,
        /// What was left behind, as the executor or provisioner reported it.
        left: Vec<String>,
    },
    /// The desired spec changed: an update, a correction or a revert.
    SpecChanged {
        /// Which request changed it.
        change: SpecChangeKind,
        /// Every field that changed.
        diff: Vec<SpecChange>,
    },
    /// What a destroyed workspace no longer needs was deleted, after its
    /// retention (the history is kept: [`HistoryRetention::Keep`]).
    Purged,
    /// A command was queued for the agent.
    CommandQueued {
        /// The command.
        id: CommandId,
    },
    /// The agent answered a command.
    CommandAnswered {
        /// The command.
        id: CommandId,
        /// Whether it succeeded.
        succeeded: bool,
    },
    /// A command its step gave up waiting for was taken back before the retry
    /// ([`CommandQueue::withdraw`]): withdrawn if no agent had it, otherwise
    /// the agent is asked to cancel it and the retry waits for its answer.
    CommandWithdrawn {
        /// The command.
        id: CommandId,
        /// Whether an agent had it (and is now asked to cancel it).
        delivered: bool,
    },
    /// A command being cancelled is out of the way: the agent answered it (the
    /// answer is recorded here and ignored) or a new agent connected since.
    CommandSuperseded {
        /// The command.
        id: CommandId,
        /// How its late answer went (`None`: no answer; a new agent connected).
        succeeded: Option<bool>,
    },
    /// The workspace's agent has not been seen for
    /// [`EngineConfig::agent_silence`](crate::EngineConfig::agent_silence).
    AgentSilent {
        /// When it was last seen (or, never seen, when its certificate was
        /// issued).
        since: Timestamp,
    },
    /// A silent agent was seen again.
    AgentBack {
        /// When it was seen.
        at: Timestamp,
    },
    /// Anything else worth recording.
    Note,
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created => f.write_str("created"),
            Self::Transition { from, to, .. } => write!(f, "{from} -> {to}"),
            Self::StackTransition {
                stack,
                from: Some(from),
                to,
            } => write!(f, "stack {stack}: {from} -> {to}"),
            Self::StackTransition {
                stack,
                from: None,
                to,
            } => write!(f, "stack {stack}: {to}"),
            Self::StepProgress { operation, step } => {
                write!(f, "op {operation} step {step} in progress")
            }
            Self::StepStarted {
                operation,
                step,
                attempt,
            } => {
                write!(f, "op {operation} step {step} attempt {attempt} started")
            }
            Self::StepDone { operation, step } => write!(f, "op {operation} step {step} done"),
            Self::StepFailed {
                operation,
                step,
                attempt,
                will_retry,
            } => write!(
                f,
                "op {operation} step {step} attempt {attempt} failed{}",
                if *will_retry { ", will retry" } else { "" }
            ),
            Self::StepSkipped {
                operation, step, ..
            } => {
                write!(f, "op {operation} step {step} skipped")
            }
            Self::StepAbandoned {
                operation, step, ..
            } => write!(f, "op {operation} step {step} abandoned"),
            Self::SpecChanged { change, diff } => {
                write!(f, "spec {change}: {} field(s)", diff.len())
            }
            Self::Purged => f.write_str("purged"),
            Self::CommandQueued { id } => write!(f, "command {id} queued"),
            Self::CommandAnswered { id, succeeded } => {
                write!(
                    f,
                    "command {id} {}",
                    if *succeeded { "succeeded" } else { "failed" }
                )
            }
            Self::CommandWithdrawn { id, delivered } => write!(
                f,
                "command {id} {}",
                if *delivered {
                    "given up on; the agent is asked to cancel it"
                } else {
                    "withdrawn before delivery"
                }
            ),
            Self::CommandSuperseded { id, succeeded } => match succeeded {
                Some(ok) => write!(
                    f,
                    "command {id} answered late ({}); ignored",
                    if *ok { "succeeded" } else { "failed" }
                ),
                None => write!(f, "command {id} let go: a new agent connected"),
            },
            Self::AgentSilent { since } => write!(f, "agent silent since {since}"),
            Self::AgentBack { at } => write!(f, "agent seen again at {at}"),
            Self::Note => f.write_str("note"),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// When it happened.
    pub at: Timestamp,
    /// Who caused it.
    pub actor: Actor,
    /// What happened.
    pub kind: EventKind,
    /// Why, in words.
    pub message: String,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Its position in the workspace's history.
    pub seq: EventSeq,
    /// The event.
    #[serde(flatten)]
    pub event: NewEvent,
}

/// An event of the feed of every workspace's history
/// ([`RecordStore::read_feed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// Its place in the feed: resume after it.
    pub cursor: FeedCursor,
    /// Whose history it is in.
    pub workspace: WorkspaceId,
    /// The event, with its sequence number in that history.
    pub event: EventRecord,
}
