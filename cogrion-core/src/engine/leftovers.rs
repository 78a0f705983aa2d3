//! What a teardown step would leave, or left: as the provisioner (`describe`)
//! or a control-plane executor (`status`) reports it now, else as the record
//! last heard it (a layer's resources when built, a stack's inventory after
//! its last apply).

use std::sync::Arc;

use super::plan::{self, StepKind};
use super::{CloudKind, Engine};
use crate::checkpoint::{MemoryCheckpoint, Progress};
use crate::error::{Error, Result};
use crate::executor::{ExecutionTarget, ExecutorKind, StackRequest, StackStatus};
use crate::ids::{IdempotencyKey, StackName};
use crate::provisioner::{InfraDescription, InfraLayer};
use crate::store::WorkspaceRecord;

/// What the teardown steps of one workspace's destroy operation `seq` still
/// have to remove. The cloud is described once, however many layers are asked
/// about.
pub(super) struct Leftovers<'a> {
    engine: &'a Engine,
    rec: &'a WorkspaceRecord,
    seq: u64,
    described: Option<Result<InfraDescription>>,
}

impl<'a> Leftovers<'a> {
    pub(super) fn new(engine: &'a Engine, rec: &'a WorkspaceRecord, seq: u64) -> Self {
        Self {
            engine,
            rec,
            seq,
            described: None,
        }
    }

    /// What step `kind` was to remove and still exists.
    pub(super) async fn of(&mut self, kind: &StepKind) -> Vec<String> {
        match kind {
            StepKind::Layer(layer) => {
                if self.described.is_none() {
                    self.described = Some(self.describe().await);
                }
                let described = self.described.as_ref().expect("described above");
                layer_remains(self.rec, *layer, described)
            }
            StepKind::StackDestroy(name) => self.stack_remains(name).await,
            StepKind::UninstallAgent => agent(self.rec),
            _ => Vec::new(),
        }
    }

    /// What the workspace's provisioner says exists for it.
    async fn describe(&self) -> Result<InfraDescription> {
        let rec = self.rec;
        match self.engine.0.clouds.get(&CloudKind::of(&rec.spec.cloud)) {
            Some(p) => p.describe(&rec.id, &rec.spec).await,
            None => Err(Error::NotConfigured {
                what: format!(
                    "no provisioner registered for {:?}",
                    CloudKind::of(&rec.spec.cloud)
                ),
            }),
        }
    }

    /// What of stack `name` still exists: a control-plane executor is asked
    /// (`status`); an in-cluster one would need the agent, so its last
    /// reported inventory stands.
    async fn stack_remains(&self, name: &StackName) -> Vec<String> {
        let rec = self.rec;
        let Some(entry) = rec.stacks.get(name) else {
            return Vec::new();
        };
        let kind = ExecutorKind::of(&entry.spec.executor);
        if !kind.runs_in_cluster()
            && let Some(executor) = self.engine.0.executors.get(&kind)
        {
            let key = format!("{}/status", plan::stack_step(name));
            let request = StackRequest::new(
                ExecutionTarget::new(rec.id.clone(), rec.cluster.clone()),
                entry.spec.clone(),
                IdempotencyKey::derive(&rec.id, self.seq, &key),
                Arc::new(MemoryCheckpoint::new()),
            );
            match executor.status(request).await {
                Ok(Progress::Ready(StackStatus::Absent)) => return Vec::new(),
                Ok(Progress::Ready(StackStatus::Installed { resources, .. })) => {
                    return if resources.is_empty() {
                        vec![format!("{kind:?} stack {name}")]
                    } else {
                        resources
                    };
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(workspace = %rec.id, stack = %name, error = %e, "the executor could not report the stack's status");
                }
            }
        }
        inventory(rec, name)
    }
}

/// What skipping an in-cluster teardown step leaves in the cluster: the
/// stack's objects as its executor last reported them, or the agent.
pub(super) fn in_cluster(
    rec: &WorkspaceRecord,
    kind: &StepKind,
) -> (Option<StackName>, Vec<String>) {
    match kind {
        StepKind::StackDestroy(name) => (Some(name.clone()), inventory(rec, name)),
        StepKind::UninstallAgent => (None, agent(rec)),
        _ => (None, Vec::new()),
    }
}

/// What stack `name` holds, as its executor last reported: its inventory, or
/// the stack as a whole when nothing was reported.
fn inventory(rec: &WorkspaceRecord, name: &StackName) -> Vec<String> {
    let Some(entry) = rec.stacks.get(name) else {
        return Vec::new();
    };
    match &entry.inventory {
        Some(inventory) if !inventory.resources.is_empty() => inventory.resources.clone(),
        _ => vec![format!(
            "everything of {:?} stack {name} (its executor reported no inventory)",
            ExecutorKind::of(&entry.spec.executor)
        )],
    }
}

/// What the Cluster Agent's install left in the cluster.
fn agent(rec: &WorkspaceRecord) -> Vec<String> {
    rec.cluster
        .iter()
        .map(|c| format!("the Cluster Agent in cluster {}", c.name))
        .collect()
}

/// What of `layer` exists, from the provisioner's description; what the layer
/// last reported, and a word on the rest, when the cloud could not be asked.
fn layer_remains(
    rec: &WorkspaceRecord,
    layer: InfraLayer,
    described: &Result<InfraDescription>,
) -> Vec<String> {
    let named = |r: &crate::provisioner::CloudResource| format!("{} {}", r.kind, r.id);
    match described {
        Ok(d) => d
            .resources
            .iter()
            .filter(|r| r.layer == layer)
            .map(named)
            .collect(),
        Err(e) => {
            let mut known: Vec<String> = rec
                .layers
                .get(&layer)
                .into_iter()
                .flat_map(|b| &b.resources)
                .map(named)
                .collect();
            known.push(format!(
                "whatever else the cloud holds for layer {layer} (it could not be asked: {e})"
            ));
            known
        }
    }
}
