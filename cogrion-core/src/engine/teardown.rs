//! Destroying a workspace: the request, its dry run, and abandoning what a
//! failed destroy cannot remove. [`Engine::destroy`] says what is guaranteed.

use serde::{Deserialize, Serialize};

use super::leftovers::Leftovers;
use super::plan::{self, StepKind};
use super::{Engine, reset_failed_steps, run};
use crate::error::{Error, Resource, Result};
use crate::ids::{StackName, WorkspaceId};
use crate::provisioner::InfraLayer;
use crate::stack::StackEvent;
use crate::state::{WorkspaceEvent, WorkspaceState, step};
use crate::store::{
    Actor, EventKind, LeftBehind, LeftReason, OperationKind, StepStatus, WorkspaceRecord,
};

/// A step of a failed destroy that the host gives up on
/// ([`Engine::abandon`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AbandonTarget {
    /// The teardown of this stack.
    Stack {
        /// The stack.
        name: StackName,
    },
    /// The Cluster Agent's uninstall.
    AgentUninstall,
    /// The teardown of this infrastructure layer.
    Layer {
        /// The layer.
        layer: InfraLayer,
    },
}

impl AbandonTarget {
    /// The destroy step it names.
    pub fn step(&self) -> String {
        match self {
            Self::Stack { name } => plan::stack_step(name),
            Self::AgentUninstall => plan::UNINSTALL_AGENT.to_owned(),
            Self::Layer { layer } => layer.as_str().to_owned(),
        }
    }

    fn kind(&self) -> StepKind {
        match self {
            Self::Stack { name } => StepKind::StackDestroy(name.clone()),
            Self::AgentUninstall => StepKind::UninstallAgent,
            Self::Layer { layer } => StepKind::Layer(*layer),
        }
    }
}

impl From<StackName> for AbandonTarget {
    fn from(name: StackName) -> Self {
        Self::Stack { name }
    }
}

impl From<InfraLayer> for AbandonTarget {
    fn from(layer: InfraLayer) -> Self {
        Self::Layer { layer }
    }
}

/// One step of a [`DestroyPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// The step's name, as the history will show it.
    pub step: String,
    /// What it will remove — and so what abandoning it would leave behind.
    pub removes: Vec<String>,
    /// Whether [`Engine::abandon`] could give it up, were it to fail (every
    /// teardown step but the revocation of the agent's credentials, until it
    /// finished).
    pub abandonable: bool,
    /// For a destroy already under way: whether the step finished.
    pub finished: bool,
    /// For a destroy already under way: the step's last error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What destroying a workspace would do, in order: a dry run — or, while a
/// destroy runs or after it failed, where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyPlan {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The steps, in the order they run.
    pub steps: Vec<PlannedStep>,
    /// What the destroy left behind so far (skipped or abandoned steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_behind: Vec<LeftBehind>,
}

impl Engine {
    /// Tears the workspace down: from `Active`, `Failed` (removing whatever a
    /// half-finished operation left), `Provisioning` (cancelling it) or `Updating`
    /// (after the running step). Stacks go first, in reverse dependency order, then
    /// the agent, node pools, cluster and network.
    ///
    /// # Guarantees
    /// - **It converges, or says exactly why.** Every teardown step is
    ///   idempotent. In-cluster (agent-run) work — a Helm or manifests stack's
    ///   teardown, the agent's uninstall — that cannot reach the agent (or the
    ///   cluster) keeps trying until
    ///   [`teardown_deadline`](crate::EngineConfig::teardown_deadline), then is
    ///   skipped: deleting the cluster removes what it left there, and the
    ///   receipt ([`WorkspaceRecord::left_behind`], and the history) names those
    ///   objects and since when the agent was silent. Control-plane work — a
    ///   Terraform stack's teardown, the layers — is never skipped.
    /// - **No dead end.** A step that fails for good (a permanent error, or
    ///   transient ones past the retry budget) fails the destroy, and the
    ///   workspace's [`Failure`](crate::Failure) names the blocker: the step,
    ///   its stack, the error, and what it was to remove that still exists.
    ///   Fix the cause and [`retry`](Self::retry), or
    ///   [`abandon`](Self::abandon) the step.
    /// - **Nothing is abandoned implicitly.** `Destroyed` means nothing Cogrion
    ///   created is left, or the receipt says what is.
    ///
    /// # Caveats
    /// What an in-cluster stack left is its executor's last report (its
    /// inventory after its last apply): asking would need the agent that could
    /// not be reached. Cloud resources such objects own (a `LoadBalancer`
    /// Service's load balancer, a volume) are not in a stack's inventory; the
    /// cloud's orphan scan finds them by the tags the cloud puts on them.
    pub async fn destroy(&self, id: &WorkspaceId, actor: Actor) -> Result<WorkspaceRecord> {
        self.mutate(id, &actor, |rec, j| {
            let was_failed_destroy = matches!(&rec.state, WorkspaceState::Failed(f) if f.operation == crate::state::WorkspaceOperation::Destroy);
            let t = step(&rec.state, &WorkspaceEvent::DestroyRequested, j.now)?;
            j.transition(rec, t, "destroy requested");
            if was_failed_destroy
                && let Some(op) = rec
                    .operations
                    .iter_mut()
                    .find(|o| o.kind == OperationKind::Destroy)
            {
                reset_failed_steps(op, j.now);
                return Ok(());
            }
            // Other operations stop: those mid-step finish that step first.
            rec.operations.retain_mut(|op| {
                if run::mid_step(op) {
                    op.cancel_requested = true;
                    true
                } else {
                    false
                }
            });
            let names: Vec<StackName> = rec.stacks.iter().map(|(n, _)| n.clone()).collect();
            for name in names {
                let from = rec.stacks.get(&name).map(|e| e.state.name());
                if let Ok(to) = rec.stacks.apply(&name, &StackEvent::RemoveRequested, j.now) {
                    j.stack_transition(rec, &name, from, &to);
                }
            }
            rec.left_behind.clear();
            let steps = plan::destroy(&rec.stacks);
            j.plan(rec, OperationKind::Destroy, None, steps);
            Ok(())
        })
        .await
    }

    /// Gives up steps of a failed destroy, which then goes on (from `Failed`
    /// after a destroy, to `Destroying`; any other state is
    /// [`WrongState`](Error::WrongState)). For each target, what it leaves is
    /// asked now — the provisioner's `describe` for a layer, the executor's
    /// `status` for a control-plane stack, the last reported inventory for an
    /// in-cluster one — and recorded in the workspace's receipt
    /// ([`WorkspaceRecord::left_behind`]) and its history (a `StepAbandoned`
    /// event by `actor`, whose message is `reason`). An abandoned stack leaves
    /// the workspace's graph. Steps not named that failed are retried.
    ///
    /// The revocation of the agent's credentials has no target: it is never
    /// given up (a destroyed workspace's agent must not keep an identity).
    ///
    /// # Errors
    /// [`NotAbandonable`](Error::NotAbandonable), changing nothing, for a
    /// target the destroy does not have, one already finished, or an empty
    /// list.
    pub async fn abandon(
        &self,
        id: &WorkspaceId,
        targets: &[AbandonTarget],
        reason: &str,
        actor: Actor,
    ) -> Result<WorkspaceRecord> {
        if targets.is_empty() {
            return Err(Error::NotAbandonable {
                step: "(none)".into(),
                reason: "name at least one stack, layer or the agent's uninstall".into(),
            });
        }
        let rec = self.workspace(id).await?;
        let seq = rec
            .operations
            .iter()
            .find(|o| o.kind == OperationKind::Destroy)
            .map_or(0, |o| o.seq);
        let mut leftovers = Leftovers::new(self, &rec, seq);
        let mut left = Vec::with_capacity(targets.len());
        for target in targets {
            left.push(leftovers.of(&target.kind()).await);
        }
        self.mutate(id, &actor, |rec, j| {
            let t = step(&rec.state, &WorkspaceEvent::AbandonRequested, j.now)?;
            let now = j.now;
            let i = rec
                .operations
                .iter()
                .position(|o| o.kind == OperationKind::Destroy)
                .ok_or_else(|| Error::Corrupt {
                    source: None,
                    what: Resource::Workspace(rec.id.clone()),
                    detail: "failed destroy has no stored plan".into(),
                })?;
            let seq = rec.operations[i].seq;
            let mut names = Vec::new();
            for (target, remains) in targets.iter().zip(&left) {
                let name = target.step();
                let refuse = |reason: &str| Error::NotAbandonable {
                    step: name.clone(),
                    reason: reason.into(),
                };
                let step = rec.operations[i]
                    .steps
                    .iter_mut()
                    .find(|s| s.name == name)
                    .ok_or_else(|| refuse("the destroy has no such step"))?;
                if step.is_finished() {
                    return Err(refuse("it already finished"));
                }
                let error = step.last_error.clone();
                step.status = StepStatus::Abandoned {
                    reason: reason.to_owned(),
                };
                step.command = None;
                step.deadline = None;
                let stack = match target {
                    AbandonTarget::Stack { name } => Some(name.clone()),
                    _ => None,
                };
                rec.left_behind.push(LeftBehind {
                    operation: seq,
                    step: name.clone(),
                    stack: stack.clone(),
                    resources: remains.clone(),
                    why: LeftReason::Abandoned {
                        actor: actor.clone(),
                        reason: reason.to_owned(),
                        error,
                    },
                    at: now,
                });
                j.event(
                    EventKind::StepAbandoned {
                        operation: seq,
                        step: name.clone(),
                        stack: stack.clone(),
                        left: remains.clone(),
                    },
                    reason.to_owned(),
                );
                match target {
                    AbandonTarget::Stack { name } => {
                        let from = rec.stacks.get(name).map(|e| e.state.name());
                        let to = rec.stacks.apply(name, &StackEvent::Abandoned, now)?;
                        j.stack_transition(rec, name, from, &to);
                        let _ = rec.stacks.forget(name);
                    }
                    AbandonTarget::Layer { layer } => {
                        rec.layers.remove(layer);
                    }
                    AbandonTarget::AgentUninstall => {}
                }
                names.push(name);
            }
            reset_failed_steps(&mut rec.operations[i], now);
            j.transition(rec, t, &format!("abandoned {}: {reason}", names.join(", ")));
            Ok(())
        })
        .await
    }

    /// A dry run of [`destroy`](Self::destroy): the ordered teardown steps and
    /// what each would remove (from the stack graph, the stacks' inventories,
    /// the executors of control-plane stacks and the provisioner's `describe`),
    /// and which could be abandoned. For a workspace being destroyed, or whose
    /// destroy failed, the stored destroy: which steps finished, which failed,
    /// and what was left behind so far.
    pub async fn destroy_plan(&self, id: &WorkspaceId) -> Result<DestroyPlan> {
        let rec = self.0.store.get_workspace(id).await?.value;
        let stored = rec
            .operations
            .iter()
            .find(|o| o.kind == OperationKind::Destroy)
            .cloned();
        let (seq, steps) = match stored {
            Some(op) => (op.seq, op.steps),
            None => (rec.next_operation, plan::destroy(&rec.stacks)),
        };
        let credentials = self.0.store.list_credentials(id).await?;
        let mut leftovers = Leftovers::new(self, &rec, seq);
        let mut planned = Vec::with_capacity(steps.len());
        for s in steps {
            let finished = s.is_finished();
            let removes = if finished {
                Vec::new()
            } else if s.name == plan::REVOKE_AGENT {
                credentials
                    .iter()
                    .filter(|c| c.revoked.is_none())
                    .map(|c| format!("agent certificate {}", c.serial))
                    .collect()
            } else {
                match StepKind::of(OperationKind::Destroy, None, &s) {
                    Some(kind) => leftovers.of(&kind).await,
                    None => Vec::new(),
                }
            };
            planned.push(PlannedStep {
                abandonable: !finished && s.name != plan::REVOKE_AGENT,
                finished,
                last_error: (s.status == StepStatus::Failed)
                    .then(|| s.last_error.clone())
                    .flatten(),
                step: s.name,
                removes,
            });
        }
        Ok(DestroyPlan {
            workspace: id.clone(),
            steps: planned,
            left_behind: rec.left_behind,
        })
    }
}
