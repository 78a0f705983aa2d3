//! What the engine tells hosts as it works.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{StackName, WorkspaceId};
use crate::stack::StackStateName;
use crate::state::StateName;
use crate::store::OperationKind;

/// One thing the engine did, broadcast to subscribers
/// ([`Engine::subscribe`](crate::Engine::subscribe)) as it happens. The durable
/// record of the same facts is the workspace's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineEvent {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// When.
    pub at: Timestamp,
    /// What.
    pub kind: EngineEventKind,
}

/// What an [`EngineEvent`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EngineEventKind {
    /// An operation was planned.
    OperationStarted {
        /// Its number.
        operation: u64,
        /// What it does.
        kind: OperationKind,
        /// Its steps, in order.
        steps: Vec<String>,
    },
    /// A step began an attempt (not durable: a crash may repeat it).
    StepStarted {
        /// The operation's number.
        operation: u64,
        /// The step.
        step: String,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// A step is waiting: on the cloud, a backoff, or the agent.
    StepWaiting {
        /// The operation's number.
        operation: u64,
        /// The step.
        step: String,
        /// Until when at most.
        until: Option<Timestamp>,
        /// On what, in words.
        reason: String,
    },
    /// A step finished (or was skipped).
    StepDone {
        /// The operation's number.
        operation: u64,
        /// The step.
        step: String,
        /// Why it was skipped, if it was.
        skipped: Option<String>,
    },
    /// A step's attempt failed.
    StepFailed {
        /// The operation's number.
        operation: u64,
        /// The step.
        step: String,
        /// The attempt, from 1.
        attempt: u32,
        /// The error.
        error: String,
        /// Whether it will be retried.
        will_retry: bool,
    },
    /// The workspace changed state.
    Transition {
        /// Before.
        from: StateName,
        /// After.
        to: StateName,
    },
    /// A stack changed state.
    StackTransition {
        /// The stack.
        stack: StackName,
        /// Before, if it existed.
        from: Option<StackStateName>,
        /// After.
        to: StackStateName,
    },
}
