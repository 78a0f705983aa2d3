//! Reading records written by earlier versions of Cogrion.
//!
//! A [`WorkspaceRecord`] is stored as one JSON document. Every store reads it
//! through `serde`, and deserialising goes through [`StoredRecord`], which
//! accepts every format this build knows and upgrades it to
//! [`RECORD_FORMAT`]. The durable stores also rewrite their rows in the new
//! format once, when they migrate their schema (so that an older build,
//! refused by the schema version, never meets a record it cannot read); this
//! module is the one place that knows how.
//!
//! # Format 1 → 2
//! Format 1 (Cogrion up to b06a333) kept one spec per workspace and, in an
//! update operation, the spec the infrastructure was built from
//! (`previous_spec`). Format 2 keeps the desired spec, the last applied spec
//! ([`WorkspaceRecord::applied`]) and, per layer, the spec it was built from
//! ([`WorkspaceRecord::layers`]). They are derived from the state and the
//! operation in flight:
//!
//! | state | applied | layers built |
//! |---|---|---|
//! | provisioning, failed provision | none | the provision's finished layer steps, from the spec |
//! | active | the spec | all three, from the spec |
//! | updating, failed update | the update's previous spec (the spec for an agent re-bootstrap) | the update's finished layer steps from the spec, the others from the previous spec |
//! | destroying, failed destroy | the spec | the layers not yet torn down, from the spec |
//! | destroyed | the spec | none; a purge is planned (its step waits out the retention) |
//!
//! The resources of layers built under format 1 are unknown (empty); the
//! provisioner's `describe` has them.
//!
//! # Format 2 → 3
//! Format 3 adds the workspace's [`labels`](WorkspaceRecord::labels) (none
//! before), each step's latest [`progress`](StepRecord::progress) message
//! (none before), and names the stack of a destroy's step for one stack
//! ([`StepRecord::stack`]), which format 2 left to the step's name
//! (`stack/<name>`): it is read from the name here, once, so the engine
//! never parses step names.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    BuiltLayer, LeftBehind, OperationKind, OperationRecord, RECORD_FORMAT, StepRecord, StepStatus,
    WorkspaceRecord,
};
use crate::clock::Timestamp;
use crate::ids::{Labels, StackName, WorkspaceId};
use crate::provisioner::{ClusterAccess, InfraLayer};
use crate::spec::WorkspaceSpec;
use crate::stack::StackGraph;
use crate::state::{WorkspaceOperation, WorkspaceState};

/// The name of a purge operation's one step.
pub(crate) const PURGE_STEP: &str = "purge";

/// How a destroy's step for one stack is named: this, then the stack's name.
pub(crate) const STACK_PREFIX: &str = "stack/";

/// A stored workspace record of any known format.
#[derive(Debug, Deserialize)]
pub struct StoredRecord {
    /// Absent in format 1.
    #[serde(default = "format_1")]
    format: u32,
    id: WorkspaceId,
    spec: WorkspaceSpec,
    #[serde(default)]
    applied: Option<WorkspaceSpec>,
    #[serde(default)]
    layers: BTreeMap<InfraLayer, BuiltLayer>,
    state: WorkspaceState,
    /// Absent before format 3.
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    stacks: StackGraph,
    #[serde(default)]
    operations: Vec<StoredOperation>,
    #[serde(default)]
    next_operation: u64,
    #[serde(default)]
    cluster: Option<ClusterAccess>,
    #[serde(default)]
    left_behind: Vec<LeftBehind>,
    #[serde(default)]
    purged_at: Option<Timestamp>,
    #[serde(default)]
    agent_silent_since: Option<Timestamp>,
    #[serde(default)]
    wake_at: Option<Timestamp>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

fn format_1() -> u32 {
    1
}

/// A stored operation of any known format.
#[derive(Debug, Deserialize)]
struct StoredOperation {
    seq: u64,
    kind: OperationKind,
    #[serde(default)]
    stack: Option<StackName>,
    steps: Vec<StepRecord>,
    started_at: Timestamp,
    #[serde(default)]
    wake_at: Option<Timestamp>,
    #[serde(default)]
    cancel_requested: bool,
    #[serde(default)]
    token: Option<crate::store::TokenHash>,
    /// Format 1: an update's spec before the update.
    #[serde(default)]
    previous_spec: Option<WorkspaceSpec>,
}

impl From<StoredRecord> for WorkspaceRecord {
    fn from(s: StoredRecord) -> Self {
        let mut previous = None;
        let operations = s
            .operations
            .into_iter()
            .map(|o| {
                if o.kind == OperationKind::Update && !o.cancel_requested {
                    previous = previous.take().or(o.previous_spec);
                }
                OperationRecord {
                    token: o.token,
                    seq: o.seq,
                    kind: o.kind,
                    stack: o.stack,
                    steps: o.steps,
                    started_at: o.started_at,
                    wake_at: o.wake_at,
                    cancel_requested: o.cancel_requested,
                }
            })
            .collect();
        let mut record = WorkspaceRecord {
            format: s.format,
            id: s.id,
            spec: s.spec,
            applied: s.applied,
            layers: s.layers,
            state: s.state,
            labels: s.labels,
            stacks: s.stacks,
            operations,
            next_operation: s.next_operation,
            cluster: s.cluster,
            left_behind: s.left_behind,
            purged_at: s.purged_at,
            agent_silent_since: s.agent_silent_since,
            wake_at: s.wake_at,
            created_at: s.created_at,
            updated_at: s.updated_at,
        };
        if record.format < 2 {
            from_format_1(&mut record, previous);
        }
        if record.format < 3 {
            from_format_2(&mut record);
        }
        record.format = RECORD_FORMAT;
        record
    }
}

/// Whether `op` has the step of `layer` finished.
fn layer_done(op: Option<&OperationRecord>, layer: InfraLayer) -> bool {
    op.is_some_and(|op| {
        op.steps
            .iter()
            .any(|s| s.name == layer.as_str() && s.status == StepStatus::Done)
    })
}

/// Format 1 → 2 (see the module docs). `previous` is the update's
/// `previous_spec`, if an update is in flight.
fn from_format_1(rec: &mut WorkspaceRecord, previous: Option<WorkspaceSpec>) {
    let at = rec.updated_at;
    let built = |spec: &WorkspaceSpec| BuiltLayer {
        spec: spec.clone(),
        resources: Vec::new(),
        at,
    };
    let op_of = |kind| rec.operations.iter().find(|o| o.kind == kind);
    // The operation the state belongs to, if any (a failed one included).
    let running = match &rec.state {
        WorkspaceState::Failed(f) => Some(f.operation),
        other => other.running_operation(),
    };
    let mut layers = BTreeMap::new();
    let mut applied = None;
    match running {
        Some(WorkspaceOperation::Provision) => {
            let op = op_of(OperationKind::Provision);
            for layer in InfraLayer::BUILD_ORDER {
                if layer_done(op, layer) {
                    layers.insert(layer, built(&rec.spec));
                }
            }
        }
        Some(WorkspaceOperation::Update) => {
            let before = previous.unwrap_or_else(|| rec.spec.clone());
            let op = op_of(OperationKind::Update);
            for layer in InfraLayer::BUILD_ORDER {
                let from = if layer_done(op, layer) {
                    &rec.spec
                } else {
                    &before
                };
                layers.insert(layer, built(from));
            }
            applied = Some(before);
        }
        Some(WorkspaceOperation::Destroy) => {
            let op = op_of(OperationKind::Destroy);
            for layer in InfraLayer::BUILD_ORDER {
                if !layer_done(op, layer) {
                    layers.insert(layer, built(&rec.spec));
                }
            }
            applied = Some(rec.spec.clone());
        }
        None if rec.state == WorkspaceState::Active => {
            applied = Some(rec.spec.clone());
            for layer in InfraLayer::BUILD_ORDER {
                layers.insert(layer, built(&rec.spec));
            }
        }
        None => {
            // Destroyed.
            applied = Some(rec.spec.clone());
            // Format 1 knew no purge: plan it, as a destroy now does; its step
            // waits out the retention from the time of the destroy.
            let seq = rec.next_operation.max(1);
            rec.next_operation = seq + 1;
            rec.operations.push(OperationRecord {
                token: None,
                seq,
                kind: OperationKind::Purge,
                stack: None,
                steps: vec![StepRecord::pending(PURGE_STEP)],
                started_at: at,
                wake_at: None,
                cancel_requested: false,
            });
            rec.wake_at = Some(at);
        }
    }
    rec.layers = layers;
    rec.applied = applied;
}

/// Format 2 → 3 (see the module docs): a destroy's steps for one stack name
/// their stack.
fn from_format_2(rec: &mut WorkspaceRecord) {
    for op in &mut rec.operations {
        if op.kind != OperationKind::Destroy {
            continue;
        }
        for step in &mut op.steps {
            if step.stack.is_none() {
                step.stack = step
                    .name
                    .strip_prefix(STACK_PREFIX)
                    .and_then(|name| name.parse().ok());
            }
        }
    }
}
