//! [`SimulatedCluster`]: what runs inside every workspace's cluster — the world
//! the Cluster Agent acts on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use cogrion_agent_proto::{Command, CommandId, CommandOutcome, CommandResult};
use serde::{Deserialize, Serialize};

use crate::executor::{ExecutorKind, StackStatus};
use crate::ids::{StackName, WorkspaceId};
use crate::spec::{ExecutorSpec, StackSpec};

/// The longest failure message put in a [`CommandResult`] (the protocol allows
/// 4096 bytes).
const MAX_MESSAGE: usize = 1024;

/// The in-cluster side of every simulated workspace: which stacks are installed,
/// at which revision, holding which objects.
///
/// Stacks are modelled by what they hold, not by running anything:
/// - a Helm stack holds `release/<stack name>`; every apply is an upgrade that
///   bumps the revision (as `helm upgrade --install` does);
/// - a manifests stack holds `<kind>/<metadata.name>` for each document (the same
///   object twice counts once, as server-side apply would leave one object); the
///   revision bumps only when the documents change;
/// - a Terraform stack holds `terraform/<stack name>`; the revision (the state
///   serial) bumps only when the source or variables change.
///
/// Every operation is idempotent: applying an installed stack upgrades it in
/// place (never a second installation), destroying an absent stack succeeds.
///
/// The Cluster Agent's side is [`handle`](Self::handle); the Terraform
/// [`SimulatedExecutor`](super::SimulatedExecutor) acts on the cluster directly,
/// as the real one acts on the cloud from the control plane.
///
/// # Audit
/// [`duplicates`](Self::duplicates) lists every in-cluster object that was ever
/// claimed by two installed stacks of one workspace at once (two manifests stacks
/// both holding `ConfigMap/settings`, say) — in a real cluster the second apply
/// would silently take the object over.
///
/// Not simulated: namespaces, object contents, readiness of workloads, apply
/// latency, and the agent itself (its de-duplication of commands by id, its
/// polling): `handle` executes every command it is given.
///
/// Clones share the same state.
///
/// ```
/// use cogrion_core::proto::{Command, CommandId, CommandKind, CommandOutcome, CommandSeq};
/// use cogrion_core::sim::SimulatedCluster;
///
/// let cluster = SimulatedCluster::new();
/// let ws = "acme-prod".parse().unwrap();
/// let command = Command::new(
///     CommandId::new("c1").unwrap(),
///     CommandSeq(1),
///     CommandKind::new("sim.stack.status").unwrap(),
///     serde_json::json!({ "name": "web" }),
/// )
/// .unwrap();
/// let result = cluster.handle(&ws, &command);
/// assert_eq!(result.outcome, CommandOutcome::Succeeded);
/// assert_eq!(result.output, serde_json::json!({ "status": "absent" }));
/// ```
#[derive(Debug, Clone, Default)]
pub struct SimulatedCluster {
    inner: Arc<Mutex<ClusterState>>,
}

#[derive(Debug, Default)]
struct ClusterState {
    workspaces: BTreeMap<WorkspaceId, BTreeMap<StackName, Installation>>,
    duplicates: BTreeSet<String>,
    handled: BTreeMap<String, u64>,
}

#[derive(Debug, Clone)]
struct Installation {
    revision: u64,
    resources: Vec<String>,
    executor: ExecutorSpec,
}

impl Installation {
    fn status(&self) -> StackStatus {
        StackStatus::Installed {
            revision: self.revision.to_string(),
            resources: self.resources.clone(),
        }
    }
}

/// The payload of [`SimulatedCluster::APPLY`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApplyPayload {
    pub(super) stack: StackSpec,
}

/// The payload of [`SimulatedCluster::DESTROY`] and [`SimulatedCluster::STATUS`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StackRef {
    pub(super) name: StackName,
}

impl SimulatedCluster {
    /// Installs or upgrades a stack. Payload `{"stack": <StackSpec>}`; output the
    /// stack's [`StackStatus`] after the apply.
    pub const APPLY: &'static str = "sim.stack.apply";
    /// Removes a stack; success if it is absent. Payload `{"name": "<stack>"}`;
    /// output `{"status": "absent"}`.
    pub const DESTROY: &'static str = "sim.stack.destroy";
    /// Reports a stack. Payload `{"name": "<stack>"}`; output its [`StackStatus`].
    pub const STATUS: &'static str = "sim.stack.status";

    /// A cluster world with nothing installed anywhere.
    pub fn new() -> Self {
        Self::default()
    }

    /// Executes one command for `workspace`'s cluster, as the Cluster Agent would,
    /// and answers it.
    ///
    /// Kinds [`APPLY`](Self::APPLY), [`DESTROY`](Self::DESTROY) and
    /// [`STATUS`](Self::STATUS) succeed with the stack's [`StackStatus`] (as JSON)
    /// in `output`. A payload that does not parse, or a manifests document without
    /// `kind` and `metadata.name`, fails with `retryable: false`; so does any other
    /// kind (`unsupported command kind`). Every command is executed, even one whose
    /// id was seen before: de-duplication is the agent's job.
    pub fn handle(&self, workspace: &WorkspaceId, command: &Command) -> CommandResult {
        *self
            .state()
            .handled
            .entry(command.kind.to_string())
            .or_default() += 1;
        let outcome = match command.kind.as_str() {
            Self::APPLY => serde_json::from_value::<ApplyPayload>(command.payload.clone())
                .map_err(|e| format!("invalid {} payload: {e}", Self::APPLY))
                .and_then(|p| self.apply_stack(workspace, &p.stack)),
            Self::DESTROY => serde_json::from_value::<StackRef>(command.payload.clone())
                .map_err(|e| format!("invalid {} payload: {e}", Self::DESTROY))
                .map(|p| self.remove_stack(workspace, &p.name)),
            Self::STATUS => serde_json::from_value::<StackRef>(command.payload.clone())
                .map_err(|e| format!("invalid {} payload: {e}", Self::STATUS))
                .map(|p| self.status(workspace, &p.name)),
            other => Err(format!("unsupported command kind {other:?}")),
        };
        match outcome {
            Ok(status) => {
                let output = serde_json::to_value(&status).unwrap_or_default();
                CommandResult::new(command.id.clone(), CommandOutcome::Succeeded, output)
                    .unwrap_or_else(|e| {
                        failed(
                            &command.id,
                            format!("the status does not fit in a result: {e}"),
                        )
                    })
            }
            Err(message) => failed(&command.id, message),
        }
    }

    /// The stacks installed in `workspace`'s cluster: name, revision and the
    /// objects each holds (sorted), by name.
    pub fn installed(&self, workspace: &WorkspaceId) -> Vec<(StackName, u64, Vec<String>)> {
        self.state()
            .workspaces
            .get(workspace)
            .map(|stacks| {
                stacks
                    .iter()
                    .map(|(name, i)| (name.clone(), i.revision, i.resources.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What `stack` has in `workspace`'s cluster.
    pub fn status(&self, workspace: &WorkspaceId, stack: &StackName) -> StackStatus {
        self.state()
            .workspaces
            .get(workspace)
            .and_then(|stacks| stacks.get(stack))
            .map_or(StackStatus::Absent, Installation::status)
    }

    /// Every object, as `workspace/<kind>/<name>`, that was ever held by two
    /// installed stacks of its workspace at once, sorted.
    pub fn duplicates(&self) -> Vec<String> {
        self.state().duplicates.iter().cloned().collect()
    }

    /// How many commands [`handle`](Self::handle) was given, by kind.
    pub fn commands_handled(&self) -> BTreeMap<String, u64> {
        self.state().handled.clone()
    }

    /// Installs or upgrades `stack` in `workspace`'s cluster.
    pub(super) fn apply_stack(
        &self,
        workspace: &WorkspaceId,
        stack: &StackSpec,
    ) -> Result<StackStatus, String> {
        let resources = resources_of(stack)?;
        let mut state = self.state();
        let stacks = state.workspaces.entry(workspace.clone()).or_default();
        let installation = match stacks.get(&stack.name) {
            Some(current) => {
                let changed = current.executor != stack.executor;
                let bump = changed || ExecutorKind::of(&stack.executor) == ExecutorKind::Helm;
                Installation {
                    revision: current.revision + u64::from(bump),
                    resources,
                    executor: stack.executor.clone(),
                }
            }
            None => Installation {
                revision: 1,
                resources,
                executor: stack.executor.clone(),
            },
        };
        let status = installation.status();
        stacks.insert(stack.name.clone(), installation);
        let mut claims: BTreeMap<&str, usize> = BTreeMap::new();
        for object in stacks.values().flat_map(|i| &i.resources) {
            *claims.entry(object).or_default() += 1;
        }
        let doubled: Vec<String> = claims
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(object, _)| format!("{workspace}/{object}"))
            .collect();
        state.duplicates.extend(doubled);
        Ok(status)
    }

    /// Removes `stack` from `workspace`'s cluster; nothing to do if absent.
    pub(super) fn remove_stack(&self, workspace: &WorkspaceId, stack: &StackName) -> StackStatus {
        let mut state = self.state();
        if let Some(stacks) = state.workspaces.get_mut(workspace) {
            stacks.remove(stack);
            if stacks.is_empty() {
                state.workspaces.remove(workspace);
            }
        }
        StackStatus::Absent
    }

    fn state(&self) -> MutexGuard<'_, ClusterState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The objects `stack` holds once installed, sorted and without duplicates.
fn resources_of(stack: &StackSpec) -> Result<Vec<String>, String> {
    let mut resources = match &stack.executor {
        ExecutorSpec::Helm { .. } => vec![format!("release/{}", stack.name)],
        ExecutorSpec::Terraform { .. } => vec![format!("terraform/{}", stack.name)],
        ExecutorSpec::Manifests { documents } => documents
            .iter()
            .enumerate()
            .map(|(i, document)| {
                let kind = document.get("kind").and_then(|k| k.as_str());
                let name = document.pointer("/metadata/name").and_then(|n| n.as_str());
                match (kind, name) {
                    (Some(kind), Some(name)) if !kind.is_empty() && !name.is_empty() => {
                        Ok(format!("{kind}/{name}"))
                    }
                    _ => Err(format!(
                        "document {i} of stack {} has no kind or metadata.name",
                        stack.name
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    resources.sort();
    resources.dedup();
    Ok(resources)
}

/// A non-retryable failure answering command `id`.
fn failed(id: &CommandId, message: String) -> CommandResult {
    let mut message = message;
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    CommandResult {
        id: id.clone(),
        outcome: CommandOutcome::Failed {
            message,
            retryable: false,
        },
        output: serde_json::Value::Null,
    }
}
