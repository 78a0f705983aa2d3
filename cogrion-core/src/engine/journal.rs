//! What one change to a workspace has to say.

use super::{EngineEvent, EngineEventKind};
use crate::clock::Timestamp;
use crate::ids::StackName;
use crate::stack::{StackState, StackStateName};
use crate::state::Transition;
use crate::store::{
    Actor, EventKind, NewEvent, OperationKind, OperationRecord, StepRecord, WorkspaceRecord,
};

/// The durable history events and the live notices of one change, made by one
/// actor at one time. Events go into the change's write; notices are published
/// once the write succeeded.
#[derive(Debug)]
pub(crate) struct Journal {
    pub(crate) actor: Actor,
    pub(crate) now: Timestamp,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) notices: Vec<EngineEvent>,
}

impl Journal {
    pub(crate) fn new(actor: Actor, now: Timestamp) -> Self {
        Self {
            actor,
            now,
            events: Vec::new(),
            notices: Vec::new(),
        }
    }

    /// A history event.
    pub(crate) fn event(&mut self, kind: EventKind, message: String) {
        self.events.push(NewEvent {
            at: self.now,
            actor: self.actor.clone(),
            kind,
            message,
        });
    }

    /// A live notice about `rec`'s workspace.
    pub(crate) fn notice(&mut self, rec: &WorkspaceRecord, kind: EngineEventKind) {
        self.notices.push(EngineEvent {
            workspace: rec.id.clone(),
            at: self.now,
            kind,
        });
    }

    /// Adds an operation with these steps to `rec`, numbered from its counter.
    pub(crate) fn plan(
        &mut self,
        rec: &mut WorkspaceRecord,
        kind: OperationKind,
        stack: Option<StackName>,
        steps: Vec<StepRecord>,
    ) {
        let seq = rec.next_operation.max(1);
        rec.next_operation = seq + 1;
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        let listed = if names.is_empty() {
            "nothing to change".to_owned()
        } else {
            names.join(", ")
        };
        self.event(
            EventKind::Note,
            format!("planned {kind:?} operation {seq}: {listed}"),
        );
        self.notice(
            rec,
            EngineEventKind::OperationStarted {
                operation: seq,
                kind,
                steps: names,
            },
        );
        rec.operations.push(OperationRecord {
            token: None,
            seq,
            kind,
            stack,
            steps,
            started_at: self.now,
            wake_at: None,
            cancel_requested: false,
        });
    }

    /// Applies a workspace transition to `rec`, saying why.
    pub(crate) fn transition(&mut self, rec: &mut WorkspaceRecord, t: Transition, why: &str) {
        let to = t.to.name();
        rec.state = t.to;
        self.event(
            EventKind::Transition {
                from: t.from,
                to,
                event: t.event,
            },
            why.to_owned(),
        );
        self.notice(rec, EngineEventKind::Transition { from: t.from, to });
    }

    /// Records that stack `name` of `rec` moved from `from` to `to`.
    pub(crate) fn stack_transition(
        &mut self,
        rec: &WorkspaceRecord,
        name: &StackName,
        from: Option<StackStateName>,
        to: &StackState,
    ) {
        let why = match to {
            StackState::Failed(f) => format!("stack {name} failed at {}: {}", f.step, f.error),
            other => format!("stack {name} is {}", other.name()),
        };
        let to = to.name();
        self.event(
            EventKind::StackTransition {
                stack: name.clone(),
                from,
                to,
            },
            why,
        );
        self.notice(
            rec,
            EngineEventKind::StackTransition {
                stack: name.clone(),
                from,
                to,
            },
        );
    }
}
