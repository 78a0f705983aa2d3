//! Operation plans: the named, idempotent steps of each operation.

use std::collections::BTreeMap;

use crate::executor::ExecutorKind;
use crate::ids::StackName;
use crate::provisioner::InfraLayer;
use crate::spec::WorkspaceSpec;
use crate::stack::{StackGraph, StackState};
use crate::store::{BuiltLayer, OperationKind, StepRecord};

pub(crate) use crate::store::upgrade::PURGE_STEP;

pub(crate) const ISSUE_TOKEN: &str = "issue-bootstrap-token";
pub(crate) const INSTALL_AGENT: &str = "install-agent";
pub(crate) const AWAIT_AGENT: &str = "await-agent";
pub(crate) const REVOKE_AGENT: &str = "revoke-agent-credentials";
pub(crate) const UNINSTALL_AGENT: &str = "uninstall-agent";
pub(crate) const STACK_APPLY: &str = "apply";
pub(crate) const STACK_DESTROY: &str = "destroy";
pub(crate) use crate::store::upgrade::STACK_PREFIX;

/// What a step does, recovered from its operation and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepKind {
    /// Provision, update or destroy a layer (as the operation says).
    Layer(InfraLayer),
    IssueToken,
    InstallAgent,
    AwaitAgent,
    RevokeAgent,
    UninstallAgent,
    /// Apply a stack (in a stack deploy).
    StackApply(StackName),
    /// Tear a stack down (in a stack destroy, or a workspace destroy).
    StackDestroy(StackName),
    /// Purge a destroyed workspace.
    Purge,
}

impl StepKind {
    /// The kind of step `step` of an operation of kind `operation` (about
    /// `stack`, for a stack operation); `None` for a name it cannot have.
    pub(crate) fn of(
        operation: OperationKind,
        stack: Option<&StackName>,
        step: &StepRecord,
    ) -> Option<Self> {
        let name = step.name.as_str();
        let layer = InfraLayer::BUILD_ORDER
            .into_iter()
            .find(|l| l.as_str() == name);
        Some(match (operation, name) {
            (OperationKind::Provision | OperationKind::Update | OperationKind::Destroy, _)
                if layer.is_some() =>
            {
                Self::Layer(layer?)
            }
            // An update may re-bootstrap the agent (`Engine::rebootstrap_agent`).
            (OperationKind::Provision | OperationKind::Update, ISSUE_TOKEN) => Self::IssueToken,
            (OperationKind::Provision | OperationKind::Update, INSTALL_AGENT) => Self::InstallAgent,
            (OperationKind::Provision | OperationKind::Update, AWAIT_AGENT) => Self::AwaitAgent,
            (OperationKind::Destroy, REVOKE_AGENT) => Self::RevokeAgent,
            (OperationKind::Destroy, UNINSTALL_AGENT) => Self::UninstallAgent,
            // A destroy's step for one stack names it (records stored before
            // it did are given it as they are read: `store::upgrade`).
            (OperationKind::Destroy, _) if step.stack.is_some() => {
                Self::StackDestroy(step.stack.clone()?)
            }
            (OperationKind::StackDeploy, STACK_APPLY) => Self::StackApply(stack?.clone()),
            (OperationKind::StackDestroy, STACK_DESTROY) => Self::StackDestroy(stack?.clone()),
            (OperationKind::Purge, PURGE_STEP) => Self::Purge,
            _ => return None,
        })
    }

    /// A short fixed name of the step's kind, for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Layer(layer) => layer.as_str(),
            Self::IssueToken => ISSUE_TOKEN,
            Self::InstallAgent => INSTALL_AGENT,
            Self::AwaitAgent => AWAIT_AGENT,
            Self::RevokeAgent => REVOKE_AGENT,
            Self::UninstallAgent => UNINSTALL_AGENT,
            Self::StackApply(_) => "stack-apply",
            Self::StackDestroy(_) => "stack-destroy",
            Self::Purge => PURGE_STEP,
        }
    }

    /// Whether the step's work runs inside the cluster — the agent's
    /// uninstall, and the teardown of a stack whose executor runs in the
    /// cluster — so that a destroy may skip it when the agent (or the cluster)
    /// cannot be reached: deleting the cluster removes what it left there.
    /// Control-plane work (Terraform stacks, layers) never is.
    pub(crate) fn agent_run(&self, stacks: &StackGraph) -> bool {
        match self {
            Self::UninstallAgent => true,
            Self::StackDestroy(name) => stacks
                .get(name)
                .is_some_and(|e| ExecutorKind::of(&e.spec.executor).runs_in_cluster()),
            _ => false,
        }
    }
}

fn steps(names: impl IntoIterator<Item = String>) -> Vec<StepRecord> {
    names.into_iter().map(StepRecord::pending).collect()
}

pub(crate) fn provision() -> Vec<StepRecord> {
    let mut names: Vec<String> = InfraLayer::BUILD_ORDER
        .iter()
        .map(|l| l.as_str().to_owned())
        .collect();
    names.extend([ISSUE_TOKEN, INSTALL_AGENT, AWAIT_AGENT].map(String::from));
    steps(names)
}

/// A new identity for the agent: a fresh one-time token, the agent
/// re-installed with it, and its first poll under the new certificate.
pub(crate) fn rebootstrap() -> Vec<StepRecord> {
    steps([ISSUE_TOKEN, INSTALL_AGENT, AWAIT_AGENT].map(String::from))
}

/// Whether `layer` built from `from` must change to match `to`.
pub(crate) fn layer_differs(layer: InfraLayer, from: &WorkspaceSpec, to: &WorkspaceSpec) -> bool {
    from.overrides != to.overrides
        || match layer {
            InfraLayer::Network => from.network != to.network,
            InfraLayer::Cluster => from.kubernetes_version != to.kubernetes_version,
            InfraLayer::NodePools => from.node_pools != to.node_pools,
        }
}

/// The layers that must be built or changed to reach `to`, in build order: those
/// not built, and those built from a spec that differs where they are
/// concerned.
pub(crate) fn layers_to_change(
    built: &BTreeMap<InfraLayer, BuiltLayer>,
    to: &WorkspaceSpec,
) -> Vec<InfraLayer> {
    InfraLayer::BUILD_ORDER
        .into_iter()
        .filter(|l| built.get(l).is_none_or(|b| layer_differs(*l, &b.spec, to)))
        .collect()
}

/// The layers an update must touch to reach `to` from what is built.
pub(crate) fn update(
    built: &BTreeMap<InfraLayer, BuiltLayer>,
    to: &WorkspaceSpec,
) -> Vec<StepRecord> {
    steps(
        layers_to_change(built, to)
            .into_iter()
            .map(|l| l.as_str().to_owned()),
    )
}

/// Stacks in reverse dependency order, then the agent, then the infrastructure
/// in reverse build order.
pub(crate) fn destroy(stacks: &StackGraph) -> Vec<StepRecord> {
    let mut planned: Vec<StepRecord> = stacks
        .teardown_order()
        .into_iter()
        .filter(|n| {
            stacks
                .get(n)
                .is_some_and(|e| e.state != StackState::Destroyed)
        })
        .map(|n| StepRecord {
            stack: Some(n.clone()),
            ..StepRecord::pending(stack_step(&n))
        })
        .collect();
    planned.extend(steps([REVOKE_AGENT, UNINSTALL_AGENT].map(String::from)));
    planned.extend(steps(
        InfraLayer::BUILD_ORDER
            .iter()
            .rev()
            .map(|l| l.as_str().to_owned()),
    ));
    planned
}

/// The name of a destroy's step for the stack `name`.
pub(crate) fn stack_step(name: &StackName) -> String {
    format!("{STACK_PREFIX}{name}")
}

pub(crate) fn stack_deploy() -> Vec<StepRecord> {
    steps([STACK_APPLY.to_owned()])
}

pub(crate) fn stack_destroy() -> Vec<StepRecord> {
    steps([STACK_DESTROY.to_owned()])
}

pub(crate) fn purge() -> Vec<StepRecord> {
    steps([PURGE_STEP.to_owned()])
}
