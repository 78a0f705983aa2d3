//! Persistence the host owns: the [`WorkspaceStore`] family of traits and the
//! records they hold.
//!
//! # Expected flow
//! A control-plane replica takes a workspace's [lease](LeaseStore), reads the
//! [record](RecordStore::get_workspace), decides what to do (a pure step), and
//! [commits](RecordStore::commit) the new record together with the events that
//! explain it and any agent commands it queues — one atomic, compare-and-swap,
//! fenced write. Providers save sub-step progress through
//! [checkpoints](RecordStore::put_checkpoint). Agents' commands leave through the
//! [queue](CommandQueue); bootstrap [tokens](TokenStore) and agent
//! [credentials](CredentialStore) live beside the records.
//!
//! # Guarantees every implementation gives
//! - **Compare-and-swap.** A [`PutMode::Create`] fails with
//!   [`Error::AlreadyExists`](crate::Error::AlreadyExists) if the record exists; a
//!   [`PutMode::Update`] fails with [`Error::Conflict`](crate::Error::Conflict)
//!   unless the stored revision is exactly the one given. Of N concurrent writers
//!   based on the same revision, exactly one succeeds.
//! - **Atomic commits.** A [`WorkspaceWrite`] applies entirely or not at all:
//!   record, events and commands.
//! - **Fencing.** A write that carries a fencing token is refused with
//!   [`Error::LeaseLost`](crate::Error::LeaseLost) unless that token belongs to the
//!   workspace's current, unreleased lease. A replica that lost its lease cannot
//!   change anything, even if its compare-and-swap revision is still current.
//! - **Append-only history.** Events get gapless sequence numbers from 1 per
//!   workspace, in commit order, and are never changed.
//! - **Refusals change nothing.** Every error leaves the store as it was.
//!
//! # Caveats
//! Times (`now`) come from the caller's [`Clock`](crate::Clock), not the store's, so
//! simulations are deterministic; replicas sharing a store must keep their clocks
//! within a small fraction of a lease's time to live.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use cogrion_agent_proto::{
    Command, CommandId, CommandKind, CommandResult, CommandSeq, checked_string,
};
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::Result;
use crate::ids::{HolderId, InvalidValue, StackName, WorkspaceId};
use crate::provisioner::{CloudResource, InfraLayer};
use crate::spec::{SpecChange, SpecChangeKind, WorkspaceSpec};
use crate::stack::{StackGraph, StackStateName};
use crate::state::{EventName, StateName, WorkspaceState};

pub mod upgrade;

/// The version of a stored record: 1 when created, one more on every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a record write treats what is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Only if nothing is stored under the id.
    Create,
    /// Only if the stored record has exactly this revision.
    Update(Revision),
}

/// A value together with the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its revision; pass it to [`PutMode::Update`] to write a change.
    pub revision: Revision,
}

/// A lease's fencing token: strictly increasing per workspace, one per
/// acquisition (renewals keep it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

/// The position of an event in its workspace's history: gapless from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventSeq(pub u64);

/// The serial number of an agent certificate.
///
/// **Rule:** 1 to 40 lowercase hex digits (at most 20 bytes, RFC 5280).
///
/// ```
/// use cogrion_core::CertSerial;
/// assert!("01a9ff".parse::<CertSerial>().is_ok());
/// assert!("xyz".parse::<CertSerial>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CertSerial(cogrion_agent_proto::InlineAscii<{ CertSerial::MAX_LEN }>);

impl CertSerial {
    /// The longest serial, in hex digits (kept inline: every agent request
    /// clones one).
    pub const MAX_LEN: usize = 40;

    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        cogrion_agent_proto::check_chars(
            "certificate serial",
            &value,
            Self::MAX_LEN,
            "lowercase hex digits",
            |_, c| c.is_ascii_digit() || ('a'..='f').contains(&c),
        )?;
        Ok(Self(cogrion_agent_proto::InlineAscii::new(
            "certificate serial",
            &value,
        )?))
    }
}
checked_string!(CertSerial);

/// A SHA-256 digest type: 32 bytes, written as 64 lowercase hex digits.
macro_rules! sha256_digest {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub [u8; 32]);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }

        impl From<$name> for String {
            fn from(h: $name) -> Self {
                h.to_string()
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                s.parse()
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            /// Parses 64 lowercase hex digits.
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                cogrion_agent_proto::check_chars($what, s, 64, "lowercase hex digits", |_, c| {
                    c.is_ascii_digit() || ('a'..='f').contains(&c)
                })?;
                if s.len() != 64 {
                    return Err(InvalidValue::Malformed {
                        what: $what,
                        reason: format!("{} hex digits, expected 64", s.len()),
                    });
                }
                let mut out = [0u8; 32];
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte =
                        u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("checked hex digits");
                }
                Ok(Self(out))
            }
        }
    };
}

sha256_digest!(
    /// The SHA-256 hash of a bootstrap token. The token itself is never stored.
    TokenHash,
    "token hash"
);

sha256_digest!(
    /// The SHA-256 digest of an agent's public key (its DER
    /// `SubjectPublicKeyInfo`, as the agent's certificate signing request
    /// carries it): which key a credential was issued for.
    ///
    /// ```
    /// use cogrion_core::KeyDigest;
    /// let d: KeyDigest = "ab".repeat(32).parse().unwrap();
    /// assert_eq!(d.to_string(), "ab".repeat(32));
    /// assert!("AB".repeat(32).parse::<KeyDigest>().is_err());
    /// ```
    KeyDigest,
    "key digest"
);

/// The key of an operation checkpoint: which operation and step it belongs to.
///
/// **Rule:** 1 to 128 bytes of lowercase letters, digits, `.`, `/`, `_` and `-`.
///
/// ```
/// use cogrion_core::CheckpointKey;
/// assert!("op3/cluster".parse::<CheckpointKey>().is_ok());
/// assert!("op3 cluster".parse::<CheckpointKey>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CheckpointKey(String);

impl CheckpointKey {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        cogrion_agent_proto::check_chars(
            "checkpoint key",
            &value,
            128,
            "lowercase letters, digits, '.', '/', '_', '-'",
            |_, c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '/' | '_' | '-')
            },
        )?;
        Ok(Self(value))
    }

    /// The key of step `step` of operation number `operation`.
    pub fn for_step(operation: u64, step: &str) -> Result<Self, InvalidValue> {
        Self::new(format!("op{operation}/{step}"))
    }
}
checked_string!(CheckpointKey);

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
pub const RECORD_FORMAT: u32 = 2;

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

/// A command to queue for a workspace's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCommand {
    /// Its id: derive it from the operation and step so a replay names the same
    /// command.
    pub id: CommandId,
    /// What to do.
    pub kind: CommandKind,
    /// The arguments.
    pub payload: serde_json::Value,
}

/// Where a queued command stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CommandStatus {
    /// Not yet answered; delivered again on every poll until it is.
    Pending,
    /// Answered; the result is stored.
    Answered {
        /// The agent's result.
        result: CommandResult,
        /// When it was stored.
        at: Timestamp,
    },
    /// Delivered, and not answered by the time its step gave up on it
    /// ([`CommandQueue::withdraw`]): every poll asks the agent to cancel it until
    /// the agent answers (the answer is stored; the step's retry ignores it).
    Cancelling {
        /// When its step gave up on it.
        at: Timestamp,
    },
    /// Withdrawn before any agent saw it ([`CommandQueue::withdraw`]): never
    /// delivered, never answered.
    Withdrawn {
        /// When it was withdrawn.
        at: Timestamp,
    },
}

impl CommandStatus {
    /// Whether the command is still outstanding: pending, or being cancelled.
    /// Polls hand out outstanding commands (the cancelling ones as cancel
    /// requests), and only those take an answer.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Pending | Self::Cancelling { .. })
    }
}

/// A command in a workspace's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedCommand {
    /// The command as the agent sees it.
    pub command: Command,
    /// When it was queued.
    pub enqueued_at: Timestamp,
    /// How many times it was handed to an agent.
    pub deliveries: u32,
    /// Where it stands.
    pub status: CommandStatus,
}

impl QueuedCommand {
    /// What [`CommandQueue::withdraw`] makes of it at `now`: withdrawn if no
    /// agent was handed it yet, cancelling if one was; `None` when it is no
    /// longer pending (answered, or already withdrawn or cancelling). Every
    /// store applies this one rule.
    pub fn withdrawal(&self, now: Timestamp) -> Option<CommandStatus> {
        match self.status {
            CommandStatus::Pending if self.deliveries == 0 => {
                Some(CommandStatus::Withdrawn { at: now })
            }
            CommandStatus::Pending => Some(CommandStatus::Cancelling { at: now }),
            _ => None,
        }
    }
}

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

/// Which workspaces to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListQuery {
    /// Only this tenant's.
    pub tenant: Option<crate::ids::TenantId>,
    /// Only those in this state.
    pub state: Option<StateName>,
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

/// Workspace records, their history and operation checkpoints.
///
/// # Errors
/// [`NotFound`](crate::Error::NotFound) for a workspace that does not exist;
/// [`AlreadyExists`](crate::Error::AlreadyExists) and
/// [`Conflict`](crate::Error::Conflict) from compare-and-swap;
/// [`LeaseLost`](crate::Error::LeaseLost) from a stale fencing token;
/// [`InvalidValue`](crate::Error::InvalidValue) for a write whose record id is not
/// its workspace; [`Unavailable`](crate::Error::Unavailable) when the database is
/// unreachable (nothing was written); [`Corrupt`](crate::Error::Corrupt) when a
/// stored row cannot be read.
///
/// Records are fenced by leases, so every record store is a [`LeaseStore`] too.
#[async_trait]
pub trait RecordStore: LeaseStore + fmt::Debug + Send + Sync + 'static {
    /// Reads a workspace record and its revision.
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Versioned<WorkspaceRecord>>;

    /// Lists workspace records matching `query`, ordered by id.
    async fn list_workspaces(&self, query: &ListQuery) -> Result<Vec<Versioned<WorkspaceRecord>>>;

    /// Applies one atomic write (see [`WorkspaceWrite`]). A write without a record
    /// requires the workspace to exist.
    async fn commit(&self, write: WorkspaceWrite) -> Result<Committed>;

    /// Commits every write as [`commit`](Self::commit) would, in order — each with
    /// its own compare-and-swap and fence, one failing not affecting the others —
    /// returning one result per write. The default goes through
    /// [`write_batch`](Self::write_batch).
    async fn commit_batch(&self, writes: Vec<WorkspaceWrite>) -> Vec<Result<Committed>> {
        self.write_batch(writes.into_iter().map(BatchWrite::Commit).collect())
            .await
            .into_iter()
            .map(|r| r.and_then(BatchOutcome::into_committed))
            .collect()
    }

    /// Applies every write — commits, checkpoints, lease acquisitions and
    /// releases, of any workspaces — as its own method would, in order, one
    /// failing not affecting the others, and returns one result per write.
    /// Durable stores override it to share one transaction (one fsync) among
    /// them all: that is group commit, what [`GroupCommit`](crate::GroupCommit)
    /// feeds. The default applies them one at a time.
    async fn write_batch(&self, writes: Vec<BatchWrite>) -> Vec<Result<BatchOutcome>> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(w.apply_alone(self).await);
        }
        out
    }

    /// Reads a workspace's history: events with a sequence number above `after`,
    /// in order, at most `limit` (0: the store's default page).
    async fn read_events(
        &self,
        id: &WorkspaceId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<EventRecord>>;

    /// Reads a checkpoint; `None` if it was never written.
    async fn get_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
    ) -> Result<Option<serde_json::Value>>;

    /// Writes a checkpoint, refused unless `fence` is the workspace's current lease.
    async fn put_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
        value: serde_json::Value,
        fence: FencingToken,
    ) -> Result<()>;

    /// Deletes, in one transaction, what a destroyed workspace no longer needs:
    /// its commands, checkpoints, bootstrap tokens and agent credentials. With
    /// [`HistoryRetention::Keep`] it then applies `write` as
    /// [`commit`](Self::commit) would (the record marked purged, events
    /// appended); with [`HistoryRetention::Delete`] it deletes the history, the
    /// lease and the record too (the id may then be created again), after
    /// checking `write`'s preconditions (fence and revision).
    ///
    /// Refused, changing nothing: a write that fails
    /// [`check_preconditions`] (as `commit`); a workspace whose stored state is
    /// not `destroyed`, or a kept record that is not — [`Error::Rejected`](crate::Error::Rejected),
    /// so that no caller can purge a live workspace; a write without a record
    /// ([`InvalidValue`](crate::Error::InvalidValue)).
    async fn purge(&self, write: WorkspaceWrite, history: HistoryRetention) -> Result<Purged>;
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
        });
    }
    Ok(())
}

/// A held lease on one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// Who holds it.
    pub holder: HolderId,
    /// The token that fences the holder's writes.
    pub fence: FencingToken,
    /// When it expires unless renewed, by the store's clock.
    pub expires_at: Timestamp,
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

/// Leases: at most one replica drives a workspace at a time.
///
/// # Contract
/// - **Time is the store's.** Whether a lease has expired, and when a lease
///   granted or renewed now expires, is judged by the store's own clock — the
///   database's (PostgreSQL's `now()`, SQLite's time inside the writing
///   transaction) or the one the in-memory store was given — never by the
///   caller's, so replicas whose clocks disagree still agree on who holds a
///   lease. [`Lease::expires_at`] is in the store's time: a holder judges how
///   long its lease holds by its own clock, from when it asked (at most the
///   TTL), not by comparing `expires_at` with its own clock.
/// - [`acquire`](Self::acquire) succeeds when nobody holds an unexpired lease, or
///   when the caller already does (then it renews it, keeping the fencing token).
///   A fresh acquisition gets a fencing token greater than every earlier one.
/// - While the lease is held and unexpired, others get
///   [`LeaseHeld`](crate::Error::LeaseHeld).
/// - [`renew`](Self::renew) extends a lease whose token is still current — even
///   past its expiry, if nobody took it over — and fails with
///   [`LeaseLost`](crate::Error::LeaseLost) otherwise.
/// - [`release`](Self::release) ends a current lease; releasing a stale one does
///   nothing.
/// - [`claim_due`](Self::claim_due) acquires, in one transaction, the leases of
///   up to `limit` workspaces that are due (their
///   [`wake_at`](WorkspaceRecord::wake_at) is at or before `until`) and that
///   nobody — the caller included — holds a live lease on, earliest due first.
///   (A holder already has what it holds; see `release_all` for a restart.) Workspaces another
///   replica is claiming at the same moment are skipped, not waited for
///   (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so replicas spread the work
///   instead of contending for it. Each returned lease follows the rules of
///   `acquire`.
/// - [`release_all`](Self::release_all) releases every lease `holder` holds: a
///   replica restarting under the same name calls it first, so that what its
///   previous run held can be claimed at once, under new fencing tokens that
///   fence out anything the previous run still had in flight.
/// - A TTL of zero or above [`MAX_LEASE_TTL`] is refused with
///   [`InvalidValue`](crate::Error::InvalidValue).
#[async_trait]
pub trait LeaseStore: fmt::Debug + Send + Sync + 'static {
    /// Takes (or renews) the lease on `workspace` for `ttl` from the store's
    /// now.
    async fn acquire(
        &self,
        workspace: &WorkspaceId,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Lease>;

    /// Extends `lease` to the store's now plus `ttl`.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease>;

    /// Gives `lease` up.
    async fn release(&self, lease: &Lease) -> Result<()>;

    /// Takes the leases of up to `limit` due workspaces nobody holds (see the
    /// contract above); an empty answer means there is nothing to claim now.
    /// (`until` is the caller's time, compared with the workspaces' wake
    /// times, which their writers set; leases are judged by the store's time.)
    async fn claim_due(
        &self,
        holder: &HolderId,
        ttl: Duration,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<Lease>>;

    /// Releases every lease `holder` holds; returns how many.
    async fn release_all(&self, holder: &HolderId) -> Result<u64>;
}

/// The durable queue of commands for each workspace's agent.
///
/// # Contract
/// Commands are queued by [`RecordStore::commit`] (atomically with the state change
/// that needs them), get gapless sequence numbers per workspace, and stay
/// [`Pending`](CommandStatus::Pending) — delivered again on every
/// [`deliver`](Self::deliver) — until [`answer`](Self::answer) stores the agent's
/// result. Delivery is therefore at-least-once; agents de-duplicate by id.
/// A step that gives up waiting calls [`withdraw`](Self::withdraw) before it
/// queues its retry, so that no command runs twice at once: one never delivered
/// is [`Withdrawn`](CommandStatus::Withdrawn) (no agent will see it), one
/// delivered becomes [`Cancelling`](CommandStatus::Cancelling) (every poll asks
/// the agent to cancel it, until it answers). `withdraw` and `deliver` are
/// atomic with each other: a command is never both handed out and withdrawn. A
/// command id is unique within its workspace: queueing it again fails the whole
/// commit with [`AlreadyExists`](crate::Error::AlreadyExists). A workspace's agent
/// can only see and answer that workspace's commands: another workspace's id is
/// [`NotFound`](crate::Error::NotFound).
#[async_trait]
pub trait CommandQueue: fmt::Debug + Send + Sync + 'static {
    /// Hands out the workspace's open commands in sequence order (at most
    /// `limit`, 0 meaning all): the pending ones, counting one delivery for
    /// each, and the cancelling ones (for the agent to cancel; not counted).
    /// With nothing open it writes nothing.
    async fn deliver(
        &self,
        workspace: &WorkspaceId,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<QueuedCommand>>;

    /// Stores the agent's result for one of the workspace's open commands.
    /// Answering an already answered command keeps the first result and returns
    /// `false`, as does answering a withdrawn one (nothing is stored); otherwise
    /// returns `true`.
    async fn answer(
        &self,
        workspace: &WorkspaceId,
        result: CommandResult,
        now: Timestamp,
    ) -> Result<bool>;

    /// Reads one command and where it stands.
    async fn get_command(&self, workspace: &WorkspaceId, id: &CommandId) -> Result<QueuedCommand>;

    /// Takes back a command its step gave up waiting for, by the rule of
    /// [`QueuedCommand::withdrawal`], and returns its status after: `Withdrawn`
    /// (no agent will see it), `Cancelling` (an agent has it), or — when it is
    /// no longer pending — its status unchanged (an answer that came in time
    /// is kept and returned).
    async fn withdraw(
        &self,
        workspace: &WorkspaceId,
        id: &CommandId,
        now: Timestamp,
    ) -> Result<CommandStatus>;
}

/// A stored bootstrap token (its hash, never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BootstrapTokenRecord {
    /// The workspace it is bound to.
    pub workspace: WorkspaceId,
    /// The token's hash.
    pub hash: TokenHash,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it stops being accepted.
    pub expires_at: Timestamp,
    /// When it was exchanged, if it was.
    pub consumed_at: Option<Timestamp>,
    /// The credential the exchange issued (so that the same agent, replaying
    /// the exchange after losing its answer, gets that one again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<CertSerial>,
}

impl BootstrapTokenRecord {
    /// An unconsumed token's record.
    pub fn new(
        workspace: WorkspaceId,
        hash: TokenHash,
        issued_at: Timestamp,
        expires_at: Timestamp,
    ) -> Self {
        Self {
            workspace,
            hash,
            issued_at,
            expires_at,
            consumed_at: None,
            issued: None,
        }
    }
}

impl BootstrapTokenRecord {
    /// Marks the token consumed by `workspace` at `now`, if the rules allow:
    /// bound to that workspace, not consumed yet, not expired. Each refusal is
    /// its own [`TokenRefusal`](crate::TokenRefusal) and changes nothing. Every
    /// store's [`consume`](TokenStore::consume) applies exactly this rule.
    pub fn consume(&mut self, workspace: &WorkspaceId, now: Timestamp) -> Result<()> {
        use crate::{Error, TokenRefusal};
        if &self.workspace != workspace {
            return Err(Error::TokenRefused(TokenRefusal::WrongWorkspace));
        }
        if let Some(consumed_at) = self.consumed_at {
            return Err(Error::TokenRefused(TokenRefusal::Reused { consumed_at }));
        }
        if now >= self.expires_at {
            return Err(Error::TokenRefused(TokenRefusal::Expired {
                expired_at: self.expires_at,
            }));
        }
        self.consumed_at = Some(now);
        Ok(())
    }

    /// The bootstrap rule of [`TokenStore::exchange`]: consumes the token for
    /// `credential`'s workspace and records `credential` as the one issued.
    pub fn exchange_for(&mut self, credential: &AgentCredential, now: Timestamp) -> Result<()> {
        self.consume(&credential.workspace, now)?;
        self.issued = Some(credential.serial.clone());
        Ok(())
    }

    /// Whether presenting this token again, with `presented`'s workspace and
    /// key at `now`, replays the exchange that issued `issued` (the credential
    /// stored under [`issued`](Self::issued)): the token was consumed by that
    /// exchange, its lifetime has not ended, the credential is unrevoked, and
    /// both name the same key. Every store's [`exchange`](TokenStore::exchange)
    /// applies exactly this rule.
    pub fn replays(
        &self,
        issued: &AgentCredential,
        presented: &AgentCredential,
        now: Timestamp,
    ) -> bool {
        self.consumed_at.is_some()
            && self.issued.as_ref() == Some(&issued.serial)
            && self.workspace == presented.workspace
            && issued.workspace == presented.workspace
            && now < self.expires_at
            && issued.revoked.is_none()
            && presented.key.is_some()
            && issued.key == presented.key
    }
}

/// The rule of [`CredentialStore::renew_credential`]: `old` must be current
/// at `now`; returns `renewed` as it is stored, with the identity's token and
/// the credential it renews taken from `old`. Every store applies exactly
/// this rule.
pub fn check_renewal(
    old: &AgentCredential,
    mut renewed: AgentCredential,
    now: Timestamp,
) -> Result<AgentCredential> {
    old.check_current(now)?;
    if renewed.workspace != old.workspace {
        return Err(crate::Error::InvalidValue(InvalidValue::Malformed {
            what: "renewal",
            reason: format!(
                "renews a credential of {} for {}",
                old.workspace, renewed.workspace
            ),
        }));
    }
    renewed.token = old.token;
    renewed.renewed_from = Some(old.serial.clone());
    renewed.revoked = None;
    Ok(renewed)
}

/// Why a renewal revokes the workspace's other live credentials.
pub const SUPERSEDED_BY_RENEWAL: &str = "superseded by a renewal";

/// Bootstrap-token hashes.
///
/// # Contract
/// A workspace has at most one unconsumed token: storing a new one replaces it.
/// [`consume`](Self::consume) is atomic: of two concurrent exchanges of one token
/// exactly one succeeds; each refusal is a distinct
/// [`TokenRefused`](crate::Error::TokenRefused) reason and changes nothing.
#[async_trait]
pub trait TokenStore: fmt::Debug + Send + Sync + 'static {
    /// Stores a newly issued token's hash, replacing the workspace's unconsumed
    /// token if any. The workspace must exist; a hash already stored is
    /// [`AlreadyExists`](crate::Error::AlreadyExists).
    async fn put_token(&self, token: BootstrapTokenRecord) -> Result<()>;

    /// Exchanges the token with this hash for `workspace` at `now`, marking it
    /// consumed.
    async fn consume(
        &self,
        hash: &TokenHash,
        workspace: &WorkspaceId,
        now: Timestamp,
    ) -> Result<BootstrapTokenRecord>;

    /// A bootstrap, in one transaction: exchanges the token as
    /// [`consume`](Self::consume) does for `credential`'s workspace (recording
    /// `credential`'s serial as the one it [`issued`](BootstrapTokenRecord::issued)),
    /// revokes that workspace's earlier credentials (`re-bootstrapped`), and
    /// stores `credential`, which it returns. A workspace being destroyed (or
    /// destroyed) takes no new agent:
    /// [`WorkspaceRetired`](crate::TokenRefusal::WorkspaceRetired), whatever the
    /// token. All or nothing: a refusal, or a credential that cannot be stored,
    /// changes nothing.
    ///
    /// **Replay.** An agent that lost the answer sends the same token again,
    /// with the same key. If the token was consumed by an exchange whose
    /// credential has that same [`key`](AgentCredential::key), the credential
    /// is not revoked, and the token's lifetime has not ended, nothing changes
    /// and that earlier credential is returned (same serial). Any other key is
    /// refused as [`Reused`](crate::TokenRefusal::Reused).
    async fn exchange(
        &self,
        hash: &TokenHash,
        credential: AgentCredential,
        now: Timestamp,
    ) -> Result<AgentCredential>;
}

/// A revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// When.
    pub at: Timestamp,
    /// Why (`workspace destroyed`, `re-bootstrapped`).
    pub reason: String,
}

/// An agent certificate the control plane issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentCredential {
    /// The workspace whose agent holds it.
    pub workspace: WorkspaceId,
    /// Its serial.
    pub serial: CertSerial,
    /// Start of validity.
    pub issued_at: Timestamp,
    /// End of validity.
    pub expires_at: Timestamp,
    /// Set once revoked.
    pub revoked: Option<Revocation>,
    /// When the agent first made an authenticated poll with this certificate.
    #[serde(default)]
    pub first_poll_at: Option<Timestamp>,
    /// The digest of the public key it certifies (absent in records written
    /// before keys were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyDigest>,
    /// The bootstrap token this identity descends from: the one exchanged for
    /// it, or for the credential it renews.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenHash>,
    /// The credential it renews, if it is a renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_from: Option<CertSerial>,
    /// When an authenticated poll last came with it, coarsely: written at
    /// most once per [`GatewayConfig::seen_interval`](crate::GatewayConfig::seen_interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<Timestamp>,
}

impl AgentCredential {
    /// A fresh, unrevoked, never used credential of `workspace`.
    pub fn new(
        workspace: WorkspaceId,
        serial: CertSerial,
        issued_at: Timestamp,
        expires_at: Timestamp,
    ) -> Self {
        Self {
            workspace,
            serial,
            issued_at,
            expires_at,
            revoked: None,
            first_poll_at: None,
            key: None,
            token: None,
            renewed_from: None,
            last_seen_at: None,
        }
    }

    /// Neither revoked nor expired at `now`; else
    /// [`CredentialRevoked`](crate::Error::CredentialRevoked) or
    /// [`CredentialExpired`](crate::Error::CredentialExpired).
    pub fn check_current(&self, now: Timestamp) -> Result<()> {
        if let Some(r) = &self.revoked {
            return Err(crate::Error::CredentialRevoked {
                serial: self.serial.clone(),
                at: r.at,
            });
        }
        if now >= self.expires_at {
            return Err(crate::Error::CredentialExpired {
                serial: self.serial.clone(),
                at: self.expires_at,
            });
        }
        Ok(())
    }

    /// Neither revoked nor expired at `now`.
    pub fn is_current(&self, now: Timestamp) -> bool {
        self.check_current(now).is_ok()
    }

    /// Whether an agent has used it: polled with it at least once.
    pub fn was_used(&self) -> bool {
        self.first_poll_at.is_some()
    }
}

/// Issued agent certificates and their revocations.
///
/// # Contract
/// Serials are unique across workspaces. Revocation is permanent.
#[async_trait]
pub trait CredentialStore: fmt::Debug + Send + Sync + 'static {
    /// Records an issued certificate (the workspace must exist).
    async fn put_credential(&self, credential: AgentCredential) -> Result<()>;

    /// Reads a certificate's record.
    async fn get_credential(&self, serial: &CertSerial) -> Result<AgentCredential>;

    /// Reads a certificate's record for its agent's poll, with whether the
    /// workspace may have commands not yet answered: `false` only when it has
    /// none, so that an idle poll reads nothing more. The default reads the
    /// record and answers `true` (the poll then asks
    /// [`CommandQueue::deliver`]); a store that can tell both in one read
    /// overrides it.
    async fn get_credential_for_poll(
        &self,
        serial: &CertSerial,
    ) -> Result<(AgentCredential, bool)> {
        Ok((self.get_credential(serial).await?, true))
    }

    /// Lists a workspace's certificates, by serial.
    async fn list_credentials(&self, workspace: &WorkspaceId) -> Result<Vec<AgentCredential>>;

    /// Records an authenticated poll with the certificate: its
    /// [`last_seen_at`](AgentCredential::last_seen_at) becomes `now`, and its
    /// [`first_poll_at`](AgentCredential::first_poll_at) too if unset. The
    /// gateway calls it for the first poll and then at most once per
    /// [`seen_interval`](crate::GatewayConfig::seen_interval), never once per
    /// poll. Returns `true` if this was the first poll, `false` if one was
    /// recorded before (the first time is kept).
    async fn mark_polled(&self, serial: &CertSerial, now: Timestamp) -> Result<bool>;

    /// A renewal, in one transaction: `old` must be current (not revoked:
    /// [`CredentialRevoked`](crate::Error::CredentialRevoked); not expired at
    /// `now`: [`CredentialExpired`](crate::Error::CredentialExpired)); every
    /// other live credential of its workspace is revoked (`superseded by a
    /// renewal`), so that the workspace keeps at most two — `old` and its
    /// renewal; and `renewed` is stored with its [`token`](AgentCredential::token)
    /// and [`renewed_from`](AgentCredential::renewed_from) taken from `old`.
    /// Returns the stored renewal. A refusal changes nothing. Since the check
    /// and the write are one, a revocation (a destroy, a re-bootstrap) either
    /// comes first and refuses the renewal, or comes after and revokes it too.
    async fn renew_credential(
        &self,
        old: &CertSerial,
        renewed: AgentCredential,
        now: Timestamp,
    ) -> Result<AgentCredential>;

    /// Revokes every unrevoked certificate of the workspace; returns their serials.
    async fn revoke_all(
        &self,
        workspace: &WorkspaceId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Vec<CertSerial>>;
}

/// Everything a control plane stores: the traits above, implemented together.
///
/// Implemented automatically for every type that implements all of them; use it
/// as `Arc<dyn WorkspaceStore>`.
pub trait WorkspaceStore:
    RecordStore + LeaseStore + CommandQueue + TokenStore + CredentialStore
{
}

impl<T> WorkspaceStore for T where
    T: RecordStore + LeaseStore + CommandQueue + TokenStore + CredentialStore
{
}

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
