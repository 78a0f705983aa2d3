//! Changing a workspace's infrastructure: updates of an `Active` workspace,
//! and corrections of a failed provision or update.
//!
//! # Expected flow
//! The record keeps the **desired** spec ([`WorkspaceRecord::spec`]), the
//! **last applied** one ([`WorkspaceRecord::applied`]) and, for each layer that
//! exists, the spec it was built from ([`WorkspaceRecord::layers`]).
//! [`Engine::update`] plans the layers whose built spec differs from the new
//! one. When a provision or an update fails, the host may
//! - [`retry`](Engine::retry) it as it is (the cause was outside the spec),
//! - [`correct`](Engine::correct) it with a fixed spec: the failed operation
//!   resumes at its failed step, in its own running state (`Provisioning` for
//!   a provision — no stack deploys before the agent exists — `Updating` for an
//!   update); layers already built from another spec are updated from it, not
//!   built again; layers whose change is no longer wanted are not touched;
//! - [`revert`](Engine::revert) a failed update to the last applied spec;
//! - or [`destroy`](Engine::destroy) the workspace.
//!
//! Each change of the desired spec is in the history with its diff
//! (`SpecChanged`). A failed destroy cannot be corrected: it has
//! [`retry`](Engine::retry) and [`abandon`](Engine::abandon).

use super::plan;
use super::{Engine, reset_failed_steps};
use crate::error::{Error, Resource, Result};
use crate::ids::WorkspaceId;
use crate::provisioner::InfraLayer;
use crate::spec::{SpecChangeKind, SpecErrors, SpecProblem, WorkspaceSpec};
use crate::state::{WorkspaceEvent, WorkspaceOperation, WorkspaceState, step};
use crate::store::{Actor, EventKind, OperationKind, StepRecord, StepStatus, WorkspaceRecord};

use super::journal::Journal;

impl Engine {
    /// Changes the workspace's infrastructure to `spec` (only from `Active`):
    /// plans the layers whose built spec differs. Tenant, cloud and region
    /// cannot change.
    pub async fn update(
        &self,
        id: &WorkspaceId,
        spec: WorkspaceSpec,
        actor: Actor,
    ) -> Result<WorkspaceRecord> {
        spec.validate()?;
        self.check_cloud(&spec)?;
        self.mutate(id, &actor, |rec, j| {
            let t = step(&rec.state, &WorkspaceEvent::UpdateRequested, j.now)?;
            check_fixed_fields(&rec.spec, &spec)?;
            change_spec(rec, j, spec.clone(), SpecChangeKind::Update);
            let steps = plan::update(&rec.layers, &rec.spec);
            j.transition(rec, t, "update requested");
            j.plan(rec, OperationKind::Update, None, steps);
            Ok(())
        })
        .await
    }

    /// Corrects a failed provision or update with `spec`: the failed operation
    /// resumes at its failed step, in `Provisioning` (no stack deploys before
    /// the agent exists) or `Updating`; layers already built from another spec
    /// are updated from it, not built again, and layer changes no longer
    /// wanted are dropped. The history records the spec's diff. Tenant, cloud
    /// and region cannot change. See the
    /// [lifecycle chapter](crate::book::lifecycle#when-something-fails).
    ///
    /// # Errors
    /// [`WrongState`](Error::WrongState) unless the workspace is `Failed` after
    /// a provision or an update; [`InvalidSpec`](Error::InvalidSpec) for a spec
    /// that breaks its rules or changes a fixed field. Nothing is changed.
    pub async fn correct(
        &self,
        id: &WorkspaceId,
        spec: WorkspaceSpec,
        actor: Actor,
    ) -> Result<WorkspaceRecord> {
        spec.validate()?;
        self.correct_to(id, actor, Some(spec)).await
    }

    /// Reverts a failed update (or provision) to the last applied spec: the
    /// failed operation resumes with it, changing back what it had changed
    /// already.
    ///
    /// # Errors
    /// [`WrongState`](Error::WrongState) as for [`correct`](Self::correct);
    /// [`NothingApplied`](Error::NothingApplied) for a workspace never
    /// provisioned (correct its spec instead).
    pub async fn revert(&self, id: &WorkspaceId, actor: Actor) -> Result<WorkspaceRecord> {
        self.correct_to(id, actor, None).await
    }

    async fn correct_to(
        &self,
        id: &WorkspaceId,
        actor: Actor,
        target: Option<WorkspaceSpec>,
    ) -> Result<WorkspaceRecord> {
        self.mutate(id, &actor, |rec, j| {
            let t = step(&rec.state, &WorkspaceEvent::CorrectionRequested, j.now)?;
            let (change, spec) = match &target {
                Some(spec) => (SpecChangeKind::Correction, spec.clone()),
                None => match &rec.applied {
                    Some(applied) => (SpecChangeKind::Revert, applied.clone()),
                    None => return Err(Error::NothingApplied(rec.id.clone())),
                },
            };
            check_fixed_fields(&rec.spec, &spec)?;
            let kind = match &rec.state {
                WorkspaceState::Failed(f) if f.operation == WorkspaceOperation::Update => {
                    OperationKind::Update
                }
                _ => OperationKind::Provision,
            };
            change_spec(rec, j, spec, change);
            let i = rec
                .operations
                .iter()
                .position(|o| o.kind == kind)
                .ok_or_else(|| Error::Corrupt {
                    source: None,
                    what: Resource::Workspace(rec.id.clone()),
                    detail: format!("failed {kind:?} operation has no stored plan"),
                })?;
            let wanted = plan::layers_to_change(&rec.layers, &rec.spec);
            let op = &mut rec.operations[i];
            let is_layer =
                |s: &StepRecord| InfraLayer::BUILD_ORDER.iter().any(|l| l.as_str() == s.name);
            let restart = |s: &mut StepRecord| {
                if s.status != StepStatus::Pending {
                    s.status = StepStatus::Pending;
                    s.budget_from = s.attempts;
                    s.command = None;
                    s.deadline = None;
                    s.started_at = None;
                }
            };
            match kind {
                // A provision keeps all its steps: a layer built from another
                // spec is run again (an update from what it was built from).
                OperationKind::Provision => {
                    for s in op.steps.iter_mut().filter(|s| is_layer(s)) {
                        if wanted.iter().any(|l| l.as_str() == s.name) {
                            restart(s);
                        }
                    }
                }
                // An update's layer steps become those the corrected spec
                // needs: finished ones stay, a change no longer wanted goes.
                _ => {
                    let mut steps: Vec<StepRecord> = Vec::new();
                    for layer in InfraLayer::BUILD_ORDER {
                        let existing = op.steps.iter().find(|s| s.name == layer.as_str()).cloned();
                        let needed = wanted.contains(&layer);
                        match existing {
                            Some(mut s) if needed => {
                                restart(&mut s);
                                steps.push(s);
                            }
                            Some(s) if s.status == StepStatus::Done => steps.push(s),
                            Some(_) => {}
                            None if needed => steps.push(StepRecord::pending(layer.as_str())),
                            None => {}
                        }
                    }
                    steps.extend(op.steps.iter().filter(|s| !is_layer(s)).cloned());
                    op.steps = steps;
                }
            }
            reset_failed_steps(op, j.now);
            let why = match change {
                SpecChangeKind::Revert => "reverted to the last applied spec",
                _ => "corrected spec submitted",
            };
            j.transition(rec, t, why);
            Ok(())
        })
        .await
    }
}

/// Refuses a spec that changes what cannot change after creation.
fn check_fixed_fields(current: &WorkspaceSpec, spec: &WorkspaceSpec) -> Result<()> {
    let mut problems = Vec::new();
    for (path, same) in [
        ("tenant", current.tenant == spec.tenant),
        ("cloud", current.cloud == spec.cloud),
        ("region", current.region == spec.region),
    ] {
        if !same {
            problems.push(SpecProblem {
                path: path.into(),
                message: "cannot change after creation".into(),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors { problems }.into())
    }
}

/// Makes `spec` the desired spec, recording the diff in the history.
fn change_spec(
    rec: &mut WorkspaceRecord,
    j: &mut Journal,
    spec: WorkspaceSpec,
    change: SpecChangeKind,
) {
    let diff = rec.spec.diff(&spec);
    let listed = if diff.is_empty() {
        "no field changed".to_owned()
    } else {
        diff.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    j.event(
        EventKind::SpecChanged { change, diff },
        format!("spec {change}: {listed}"),
    );
    rec.spec = spec;
}
