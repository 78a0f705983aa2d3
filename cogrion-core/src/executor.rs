//! The [`Executor`] trait: deploys one kind of stack.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use cogrion_agent_proto::CommandResult;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, Progress};
use crate::error::Result;
use crate::ids::{IdempotencyKey, WorkspaceId};
use crate::provisioner::ClusterAccess;
use crate::spec::{ExecutorSpec, StackSpec};

/// The kinds of executor, one per [`ExecutorSpec`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// Helm charts (run by the agent).
    Helm,
    /// Kubernetes manifests (run by the agent).
    Manifests,
    /// Terraform modules (run on the control-plane side).
    Terraform,
}

impl ExecutorKind {
    /// Whether this kind's work runs inside the cluster, through the Cluster
    /// Agent (Helm, manifests): what it deploys lives in the cluster and goes
    /// with it. Terraform runs on the control plane and what it deploys lives
    /// outside the cluster (databases, buckets, IAM), so its teardown is never
    /// skipped.
    pub fn runs_in_cluster(self) -> bool {
        match self {
            Self::Helm | Self::Manifests => true,
            Self::Terraform => false,
        }
    }

    /// The kind that deploys `spec`.
    pub fn of(spec: &ExecutorSpec) -> Self {
        match spec {
            ExecutorSpec::Helm { .. } => Self::Helm,
            ExecutorSpec::Manifests { .. } => Self::Manifests,
            ExecutorSpec::Terraform { .. } => Self::Terraform,
        }
    }
}

/// Where a stack runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecutionTarget {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// How to reach its cluster, when known.
    pub cluster: Option<ClusterAccess>,
}

impl ExecutionTarget {
    /// The target for `workspace`.
    pub fn new(workspace: WorkspaceId, cluster: Option<ClusterAccess>) -> Self {
        Self { workspace, cluster }
    }
}

/// A request to apply or destroy one stack.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StackRequest {
    /// Where.
    pub target: ExecutionTarget,
    /// The stack.
    pub stack: StackSpec,
    /// The step's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// The step's checkpoint.
    pub checkpoint: Arc<dyn Checkpoint>,
    /// The result of the command the previous call asked for
    /// ([`Progress::AwaitCommand`]), once the agent answered it.
    pub command_result: Option<CommandResult>,
}

impl StackRequest {
    /// A request for `stack` on `target`.
    pub fn new(
        target: ExecutionTarget,
        stack: StackSpec,
        idempotency_key: IdempotencyKey,
        checkpoint: Arc<dyn Checkpoint>,
    ) -> Self {
        Self {
            target,
            stack,
            idempotency_key,
            checkpoint,
            command_result: None,
        }
    }

    /// The same request carrying the agent's answer.
    pub fn with_command_result(mut self, result: CommandResult) -> Self {
        self.command_result = Some(result);
        self
    }
}

/// What a stack has on its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StackStatus {
    /// Nothing of the stack exists.
    Absent,
    /// The stack is installed.
    Installed {
        /// The executor's revision of what is installed (Helm release revision,
        /// Terraform state serial, a digest of applied manifests).
        revision: String,
        /// What the stack holds, in the executor's words.
        resources: Vec<String>,
    },
}

/// Applies, destroys and inspects one kind of stack.
///
/// # Expected flow
/// The engine calls [`apply`](Self::apply) for a deploy or upgrade step and
/// [`destroy`](Self::destroy) for a teardown step. Executors whose work runs in
/// the cluster (Helm, manifests) return [`Progress::AwaitCommand`]: the engine
/// queues the command durably together with the step's state, waits for the
/// agent's answer, and calls again with
/// [`StackRequest::command_result`] set. Control-plane executors (Terraform)
/// do the work themselves and may return [`Progress::InProgress`].
///
/// ## Commands
/// One call asks for at most one command. The engine queues it durably, waits for
/// the agent's answer and calls again with the same request plus
/// [`StackRequest::command_result`]; it keeps passing that result — through
/// `InProgress` answers too — until the executor asks for another command or
/// finishes. When the result says the command failed, the executor decides what
/// that means: [`Unavailable`](crate::Error::Unavailable) if it was marked
/// retryable (the engine retries the step), [`Rejected`](crate::Error::Rejected)
/// otherwise (the stack fails). Command ids must derive from the idempotency key,
/// so a replayed step names the same command.
///
/// # Guarantees an implementation must give
/// - **Idempotent.** Applying the same spec twice leaves one installation (its
///   `revision` may change — a Helm upgrade always bumps it — but its resources are
///   not duplicated); destroying what is gone is success. This holds for replays of
///   `apply` and `destroy` with the same key, with or without the step's
///   checkpoint.
/// - **Truthful status.** After a successful apply, [`status`](Self::status) is
///   `Installed`; after a successful destroy, `Absent`.
/// - **Own kind only.** A stack of another executor kind is refused with
///   [`InvalidValue`](crate::Error::InvalidValue) and nothing is done.
///
/// # Errors
/// As for [`CloudProvisioner`](crate::provider::CloudProvisioner): transient errors are
/// retried by the engine; [`Rejected`](crate::Error::Rejected) fails the stack
/// (not the workspace).
///
/// The conformance suite (`conformance::executor_suite`, feature `conformance`)
/// checks these guarantees against any implementation.
#[async_trait]
pub trait Executor: fmt::Debug + Send + Sync + 'static {
    /// The kind of stack this executor deploys.
    fn kind(&self) -> ExecutorKind;

    /// Installs or upgrades the stack.
    async fn apply(&self, request: StackRequest) -> Result<Progress<StackStatus>>;

    /// Tears the stack down.
    async fn destroy(&self, request: StackRequest) -> Result<Progress<()>>;

    /// Reports what the stack has on its target. Executors whose stacks live in the
    /// cluster ask the agent, with [`Progress::AwaitCommand`], exactly as `apply` does.
    async fn status(&self, request: StackRequest) -> Result<Progress<StackStatus>>;
}

/// Refuses a stack of another kind than `executor`'s: the check every executor's
/// methods start with.
pub fn check_kind(
    executor: ExecutorKind,
    stack: &StackSpec,
) -> Result<(), crate::ids::InvalidValue> {
    let kind = ExecutorKind::of(&stack.executor);
    if kind != executor {
        return Err(crate::ids::InvalidValue::Malformed {
            what: "stack executor",
            reason: format!(
                "stack {} is a {kind:?} stack; this executor runs {executor:?} stacks",
                stack.name
            ),
        });
    }
    Ok(())
}
