//! Stacks: their own state machine, and the dependency graph of a workspace's
//! stacks.
//!
//! A stack's lifecycle is `Pending → Deploying → Deployed`, with `Failed` when a
//! deploy or teardown fails and `Destroying → Destroyed` on removal. A failed stack
//! does not fail its workspace: the workspace stays `Active`, lists it in
//! [`StackGraph::failed`], and the stack can be retried or removed alone.
//!
//! The [`StackGraph`] is a value: every edit either applies completely or returns a
//! [`GraphError`] and leaves the graph exactly as it was. It is stored inside the
//! workspace record, so one compare-and-swap write covers the workspace and all its
//! stacks and no two replicas can each add half of a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::StackName;
use crate::spec::{StackKind, StackSpec};
use crate::state::StateName;

/// The stack operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackOperation {
    /// Install or upgrade.
    Deploy,
    /// Tear down.
    Destroy,
}

/// Why a stack failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackFailure {
    /// The operation that failed.
    pub operation: StackOperation,
    /// The step that failed.
    pub step: String,
    /// The error, as text.
    pub error: String,
    /// When.
    pub at: Timestamp,
}

/// The state of one stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StackState {
    /// Added, never deployed.
    Pending,
    /// Being installed or upgraded.
    Deploying,
    /// Installed.
    Deployed,
    /// A deploy or teardown failed.
    Failed(StackFailure),
    /// Being torn down.
    Destroying,
    /// Torn down. Terminal: the record is then dropped from the graph.
    Destroyed,
}

/// The name of a [`StackState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackStateName {
    /// See [`StackState::Pending`].
    Pending,
    /// See [`StackState::Deploying`].
    Deploying,
    /// See [`StackState::Deployed`].
    Deployed,
    /// See [`StackState::Failed`].
    Failed,
    /// See [`StackState::Destroying`].
    Destroying,
    /// See [`StackState::Destroyed`].
    Destroyed,
}

impl StackStateName {
    /// Every stack state name.
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Deploying,
        Self::Deployed,
        Self::Failed,
        Self::Destroying,
        Self::Destroyed,
    ];
}

impl fmt::Display for StackStateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Deploying => "deploying",
            Self::Deployed => "deployed",
            Self::Failed => "failed",
            Self::Destroying => "destroying",
            Self::Destroyed => "destroyed",
        })
    }
}

impl StackState {
    /// The state's name, without its data.
    pub fn name(&self) -> StackStateName {
        match self {
            Self::Pending => StackStateName::Pending,
            Self::Deploying => StackStateName::Deploying,
            Self::Deployed => StackStateName::Deployed,
            Self::Failed(_) => StackStateName::Failed,
            Self::Destroying => StackStateName::Destroying,
            Self::Destroyed => StackStateName::Destroyed,
        }
    }
}

/// Something that happens to a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StackEvent {
    /// Deploy, upgrade, or redeploy after a failure.
    DeployRequested,
    /// The executor reported the stack installed.
    DeploySucceeded,
    /// Remove the stack.
    RemoveRequested,
    /// The executor reported everything of the stack gone.
    DestroySucceeded,
    /// The running stack operation failed permanently or exhausted its retries.
    OperationFailed {
        /// The step that failed.
        step: String,
        /// Why.
        error: String,
    },
    /// Resume the failed operation.
    RetryRequested,
    /// The host abandoned the stack's teardown in a failed destroy: Cogrion no
    /// longer manages it, and the destroy's receipt says what it left.
    Abandoned,
}

/// The name of a [`StackEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackEventName {
    /// See [`StackEvent::DeployRequested`].
    DeployRequested,
    /// See [`StackEvent::DeploySucceeded`].
    DeploySucceeded,
    /// See [`StackEvent::RemoveRequested`].
    RemoveRequested,
    /// See [`StackEvent::DestroySucceeded`].
    DestroySucceeded,
    /// See [`StackEvent::OperationFailed`].
    OperationFailed,
    /// See [`StackEvent::RetryRequested`].
    RetryRequested,
    /// See [`StackEvent::Abandoned`].
    Abandoned,
}

impl StackEventName {
    /// Every stack event name.
    pub const ALL: [Self; 7] = [
        Self::DeployRequested,
        Self::DeploySucceeded,
        Self::RemoveRequested,
        Self::DestroySucceeded,
        Self::OperationFailed,
        Self::RetryRequested,
        Self::Abandoned,
    ];
}

impl fmt::Display for StackEventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DeployRequested => "deploy",
            Self::DeploySucceeded => "deploy completion",
            Self::RemoveRequested => "remove",
            Self::DestroySucceeded => "teardown completion",
            Self::OperationFailed => "operation failure",
            Self::RetryRequested => "retry",
            Self::Abandoned => "abandon",
        })
    }
}

impl StackEvent {
    /// The event's name, without its data.
    pub fn name(&self) -> StackEventName {
        match self {
            Self::DeployRequested => StackEventName::DeployRequested,
            Self::DeploySucceeded => StackEventName::DeploySucceeded,
            Self::RemoveRequested => StackEventName::RemoveRequested,
            Self::DestroySucceeded => StackEventName::DestroySucceeded,
            Self::OperationFailed { .. } => StackEventName::OperationFailed,
            Self::RetryRequested => StackEventName::RetryRequested,
            Self::Abandoned => StackEventName::Abandoned,
        }
    }
}

/// Applies `event` to a stack in `state` at `now`; pure, like the workspace's
/// [`step`](crate::lifecycle::step).
///
/// | from | event | to |
/// |---|---|---|
/// | Pending, Deployed, Failed | DeployRequested | Deploying |
/// | Deploying | DeploySucceeded | Deployed |
/// | Deploying | OperationFailed | Failed (deploy) |
/// | Pending, Deploying, Deployed, Failed | RemoveRequested | Destroying |
/// | Destroying | DestroySucceeded | Destroyed |
/// | Destroying | OperationFailed | Failed (destroy) |
/// | Failed (op) | RetryRequested | Deploying or Destroying, as `op` |
/// | Destroying, Failed (destroy) | Abandoned | Destroyed |
///
/// Every other pair is refused; `Destroyed` accepts nothing.
pub fn stack_step(
    state: &StackState,
    event: &StackEvent,
    now: Timestamp,
) -> Result<StackState, (StackStateName, StackEventName)> {
    use StackEvent as E;
    use StackState as S;
    Ok(match (state, event) {
        (S::Pending | S::Deployed | S::Failed(_), E::DeployRequested) => S::Deploying,
        (S::Deploying, E::DeploySucceeded) => S::Deployed,
        (S::Pending | S::Deploying | S::Deployed | S::Failed(_), E::RemoveRequested) => {
            S::Destroying
        }
        (S::Destroying, E::DestroySucceeded) => S::Destroyed,
        (S::Deploying | S::Destroying, E::OperationFailed { step, error }) => {
            S::Failed(StackFailure {
                operation: if matches!(state, S::Deploying) {
                    StackOperation::Deploy
                } else {
                    StackOperation::Destroy
                },
                step: step.clone(),
                error: error.clone(),
                at: now,
            })
        }
        (S::Failed(f), E::RetryRequested) => match f.operation {
            StackOperation::Deploy => S::Deploying,
            StackOperation::Destroy => S::Destroying,
        },
        (S::Destroying, E::Abandoned) => S::Destroyed,
        (S::Failed(f), E::Abandoned) if f.operation == StackOperation::Destroy => S::Destroyed,
        _ => return Err((state.name(), event.name())),
    })
}

/// Why an edit of the stack graph was refused. The graph is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// A stack with this name already exists in the workspace.
    #[error("stack {0} already exists")]
    DuplicateStack(StackName),
    /// No stack with this name exists in the workspace.
    #[error("stack {0} does not exist")]
    UnknownStack(StackName),
    /// The stack depends on a stack the workspace does not have.
    #[error("stack {stack} depends on {missing}, which does not exist")]
    UnknownDependency {
        /// The stack being added or changed.
        stack: StackName,
        /// The dependency that is missing.
        missing: StackName,
    },
    /// The change would close a dependency cycle; the cycle is listed, starting and
    /// ending with the same stack.
    #[error("dependency cycle: {}", cycle.iter().map(StackName::as_str).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// The stacks on the cycle, first repeated at the end.
        cycle: Vec<StackName>,
    },
    /// Other stacks depend on this one; remove them first (or together with it).
    #[error("stack {stack} cannot be removed alone: it is a dependency of {}", dependents.iter().map(StackName::as_str).collect::<Vec<_>>().join(", "))]
    HasDependents {
        /// The stack asked to be removed.
        stack: StackName,
        /// The stacks that depend on it.
        dependents: Vec<StackName>,
    },
    /// Stacks deploy only while the workspace is `Active` or `Updating`.
    #[error("stack {stack} cannot deploy while the workspace is {state}")]
    WorkspaceNotReady {
        /// The stack.
        stack: StackName,
        /// The workspace's state.
        state: StateName,
    },
    /// Some of the stack's dependencies are neither deployed nor being
    /// deployed (never requested, failed, or being removed): deploy them first.
    #[error("stack {stack} needs {} deployed first", waiting.iter().map(StackName::as_str).collect::<Vec<_>>().join(", "))]
    DependenciesNotDeployed {
        /// The stack.
        stack: StackName,
        /// Its dependencies that are neither `Deployed` nor `Deploying`.
        waiting: Vec<StackName>,
    },
    /// The request is not allowed in the stack's current state.
    #[error("{event} is not allowed while stack {stack} is {state}")]
    WrongStackState {
        /// The stack.
        stack: StackName,
        /// Its state (unchanged).
        state: StackStateName,
        /// The refused event.
        event: StackEventName,
    },
}

/// One stack of a workspace: what was asked for and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackEntry {
    /// The stack's spec (the latest requested).
    pub spec: StackSpec,
    /// Its state.
    pub state: StackState,
    /// What its executor last reported installed (after its last successful
    /// apply); what a destroy's receipt names if its teardown is skipped or
    /// abandoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<StackInventory>,
}

/// What an executor reported installed for a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackInventory {
    /// The executor's revision of it (a Helm release revision, a Terraform
    /// state serial, a digest of applied manifests).
    pub revision: String,
    /// Its resources, in the executor's words.
    pub resources: Vec<String>,
    /// When it was reported.
    pub at: Timestamp,
}

/// The stacks of one workspace and their dependencies: a DAG.
///
/// ```
/// use cogrion_core::{StackSpec, StackKind, ExecutorSpec, GraphError, lifecycle::{StackGraph}};
/// let stack = |name: &str, deps: &[&str]| StackSpec {
///     name: name.parse().unwrap(),
///     kind: StackKind::Application,
///     executor: ExecutorSpec::Manifests { documents: vec![] },
///     depends_on: deps.iter().map(|d| d.parse().unwrap()).collect(),
/// };
/// let mut graph = StackGraph::new();
/// graph.add(stack("db", &[])).unwrap();
/// graph.add(stack("api", &["db"])).unwrap();
/// assert_eq!(graph.deploy_order().iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["db", "api"]);
/// // Making db depend on api would close a cycle: refused, graph unchanged.
/// let err = graph.upgrade(stack("db", &["api"])).unwrap_err();
/// assert!(matches!(err, GraphError::Cycle { .. }));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StackGraph {
    stacks: BTreeMap<StackName, StackEntry>,
}

impl StackGraph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stack called `name`.
    pub fn get(&self, name: &StackName) -> Option<&StackEntry> {
        self.stacks.get(name)
    }

    /// Every stack, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&StackName, &StackEntry)> {
        self.stacks.iter()
    }

    /// How many stacks the graph holds.
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    /// Whether the graph holds no stack.
    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    /// The stacks that are `Failed`, by name.
    pub fn failed(&self) -> Vec<&StackName> {
        self.stacks
            .iter()
            .filter(|(_, e)| matches!(e.state, StackState::Failed(_)))
            .map(|(n, _)| n)
            .collect()
    }

    /// Adds a stack in `Pending`. Refused if the name exists, a dependency is
    /// unknown, or the stack depends on itself.
    pub fn add(&mut self, spec: StackSpec) -> Result<(), GraphError> {
        self.add_all(vec![spec])
    }

    /// Adds several stacks at once (they may depend on each other). All or
    /// nothing: any duplicate, unknown dependency or cycle refuses the whole batch.
    pub fn add_all(&mut self, specs: Vec<StackSpec>) -> Result<(), GraphError> {
        let mut next = self.stacks.clone();
        for spec in specs {
            if next.contains_key(&spec.name) {
                return Err(GraphError::DuplicateStack(spec.name));
            }
            next.insert(
                spec.name.clone(),
                StackEntry {
                    spec,
                    state: StackState::Pending,
                    inventory: None,
                },
            );
        }
        Self::check(&next)?;
        self.stacks = next;
        Ok(())
    }

    /// Replaces an existing stack's spec (an upgrade: new version, values or
    /// dependencies). Its state is unchanged; request a deploy to roll it out.
    /// Refused if the stack is unknown, a new dependency is unknown, or the new
    /// dependencies close a cycle.
    pub fn upgrade(&mut self, spec: StackSpec) -> Result<(), GraphError> {
        let Some(current) = self.stacks.get(&spec.name) else {
            return Err(GraphError::UnknownStack(spec.name));
        };
        let mut next = self.stacks.clone();
        let entry = StackEntry {
            spec,
            state: current.state.clone(),
            inventory: current.inventory.clone(),
        };
        next.insert(entry.spec.name.clone(), entry);
        Self::check(&next)?;
        self.stacks = next;
        Ok(())
    }

    /// Checks that every dependency exists and that there is no cycle.
    fn check(stacks: &BTreeMap<StackName, StackEntry>) -> Result<(), GraphError> {
        for (name, entry) in stacks {
            for dep in &entry.spec.depends_on {
                if dep == name {
                    return Err(GraphError::Cycle {
                        cycle: vec![name.clone(), name.clone()],
                    });
                }
                if !stacks.contains_key(dep) {
                    return Err(GraphError::UnknownDependency {
                        stack: name.clone(),
                        missing: dep.clone(),
                    });
                }
            }
        }
        if let Some(cycle) = find_cycle(stacks) {
            return Err(GraphError::Cycle { cycle });
        }
        Ok(())
    }

    /// The stacks that depend directly on `name` and are not destroyed.
    pub fn dependents(&self, name: &StackName) -> Vec<StackName> {
        self.stacks
            .iter()
            .filter(|(_, e)| e.spec.depends_on.contains(name) && e.state != StackState::Destroyed)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every stack in deploy order: each after all its dependencies; where no
    /// dependency decides, infra add-ons, then observability, then applications,
    /// then by name.
    pub fn deploy_order(&self) -> Vec<StackName> {
        let mut indegree: BTreeMap<&StackName, usize> = self
            .stacks
            .iter()
            .map(|(n, e)| (n, e.spec.depends_on.len()))
            .collect();
        let mut ready: BTreeSet<(StackKind, &StackName)> = self
            .stacks
            .iter()
            .filter(|(_, e)| e.spec.depends_on.is_empty())
            .map(|(n, e)| (e.spec.kind, n))
            .collect();
        let mut order = Vec::with_capacity(self.stacks.len());
        while let Some((_, name)) = ready.pop_first() {
            order.push(name.clone());
            for (dependent, entry) in &self.stacks {
                if entry.spec.depends_on.contains(name) {
                    let d = indegree
                        .get_mut(dependent)
                        .expect("every stack has an indegree");
                    *d -= 1;
                    if *d == 0 {
                        ready.insert((entry.spec.kind, dependent));
                    }
                }
            }
        }
        debug_assert_eq!(order.len(), self.stacks.len(), "the graph is acyclic");
        order
    }

    /// Every stack in teardown order: the reverse of [`deploy_order`](Self::deploy_order).
    pub fn teardown_order(&self) -> Vec<StackName> {
        let mut order = self.deploy_order();
        order.reverse();
        order
    }

    /// `name` and everything that depends on it, directly or not, in teardown
    /// order: what removing `name` together with its dependents tears down.
    pub fn removal_set(&self, name: &StackName) -> Result<Vec<StackName>, GraphError> {
        if !self.stacks.contains_key(name) {
            return Err(GraphError::UnknownStack(name.clone()));
        }
        let mut set = BTreeSet::from([name.clone()]);
        loop {
            let more: Vec<StackName> = self
                .stacks
                .iter()
                .filter(|(n, e)| {
                    !set.contains(*n) && e.spec.depends_on.iter().any(|d| set.contains(d))
                })
                .map(|(n, _)| n.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            set.extend(more);
        }
        Ok(self
            .teardown_order()
            .into_iter()
            .filter(|n| set.contains(n))
            .collect())
    }

    /// Checks that `name` may be asked to deploy now: the workspace is `Active`
    /// or `Updating` and every dependency is `Deployed` or `Deploying` (the
    /// engine's deploy then waits for those still deploying).
    pub fn check_deploy(&self, name: &StackName, workspace: StateName) -> Result<(), GraphError> {
        let entry = self
            .stacks
            .get(name)
            .ok_or_else(|| GraphError::UnknownStack(name.clone()))?;
        if !matches!(workspace, StateName::Active | StateName::Updating) {
            return Err(GraphError::WorkspaceNotReady {
                stack: name.clone(),
                state: workspace,
            });
        }
        let waiting: Vec<StackName> = entry
            .spec
            .depends_on
            .iter()
            .filter(|d| {
                self.stacks.get(*d).is_none_or(|e| {
                    !matches!(e.state, StackState::Deployed | StackState::Deploying)
                })
            })
            .cloned()
            .collect();
        if !waiting.is_empty() {
            return Err(GraphError::DependenciesNotDeployed {
                stack: name.clone(),
                waiting,
            });
        }
        Ok(())
    }

    /// Moves `name` to `Deploying` if [`check_deploy`](Self::check_deploy) allows it
    /// and its state accepts a deploy.
    pub fn request_deploy(
        &mut self,
        name: &StackName,
        workspace: StateName,
        now: Timestamp,
    ) -> Result<StackState, GraphError> {
        self.check_deploy(name, workspace)?;
        self.apply(name, &StackEvent::DeployRequested, now)
    }

    /// Moves `name` to `Destroying`, refused while other live stacks depend on it.
    pub fn request_removal(
        &mut self,
        name: &StackName,
        now: Timestamp,
    ) -> Result<StackState, GraphError> {
        if !self.stacks.contains_key(name) {
            return Err(GraphError::UnknownStack(name.clone()));
        }
        let dependents = self.dependents(name);
        if !dependents.is_empty() {
            return Err(GraphError::HasDependents {
                stack: name.clone(),
                dependents,
            });
        }
        self.apply(name, &StackEvent::RemoveRequested, now)
    }

    /// Applies any other stack event (completion, failure, retry) through
    /// [`stack_step`]. A deploy request should go through
    /// [`request_deploy`](Self::request_deploy) and a removal through
    /// [`request_removal`](Self::request_removal), which check the graph first.
    pub fn apply(
        &mut self,
        name: &StackName,
        event: &StackEvent,
        now: Timestamp,
    ) -> Result<StackState, GraphError> {
        let entry = self
            .stacks
            .get_mut(name)
            .ok_or_else(|| GraphError::UnknownStack(name.clone()))?;
        let next = stack_step(&entry.state, event, now).map_err(|(state, event)| {
            GraphError::WrongStackState {
                stack: name.clone(),
                state,
                event,
            }
        })?;
        entry.state = next.clone();
        Ok(next)
    }

    /// Records what the executor reported installed for `name`.
    pub fn set_inventory(&mut self, name: &StackName, inventory: StackInventory) {
        if let Some(entry) = self.stacks.get_mut(name) {
            entry.inventory = Some(inventory);
        }
    }

    /// Drops a `Destroyed` stack's record from the graph.
    pub fn forget(&mut self, name: &StackName) -> Result<StackEntry, GraphError> {
        let entry = self
            .stacks
            .get(name)
            .ok_or_else(|| GraphError::UnknownStack(name.clone()))?;
        if entry.state != StackState::Destroyed {
            return Err(GraphError::WrongStackState {
                stack: name.clone(),
                state: entry.state.name(),
                event: StackEventName::RemoveRequested,
            });
        }
        Ok(self.stacks.remove(name).expect("checked above"))
    }
}

/// Finds a dependency cycle, returned as the path `a -> b -> … -> a`.
fn find_cycle(stacks: &BTreeMap<StackName, StackEntry>) -> Option<Vec<StackName>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let mut marks: BTreeMap<&StackName, Mark> =
        stacks.keys().map(|k| (k, Mark::Unvisited)).collect();
    for start in stacks.keys() {
        if marks[start] != Mark::Unvisited {
            continue;
        }
        // Iterative depth-first search; `path` is the current chain of stacks.
        let mut path: Vec<(&StackName, std::collections::btree_set::Iter<'_, StackName>)> =
            vec![(start, stacks[start].spec.depends_on.iter())];
        marks.insert(start, Mark::OnPath);
        while let Some((node, deps)) = path.last_mut() {
            let node = *node;
            match deps.next() {
                Some(dep) => match marks.get(dep).copied() {
                    Some(Mark::OnPath) => {
                        let from = path.iter().position(|(n, _)| *n == dep).expect("on path");
                        let mut cycle: Vec<StackName> =
                            path[from..].iter().map(|(n, _)| (*n).clone()).collect();
                        cycle.push(dep.clone());
                        return Some(cycle);
                    }
                    Some(Mark::Unvisited) => {
                        marks.insert(dep, Mark::OnPath);
                        path.push((dep, stacks[dep].spec.depends_on.iter()));
                    }
                    Some(Mark::Done) | None => {}
                },
                None => {
                    marks.insert(node, Mark::Done);
                    path.pop();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
