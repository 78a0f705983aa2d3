//! The workspace state machine: a pure function from (state, event, time) to the
//! next state.
//!
//! ```text
//!                 AgentFirstPoll                 UpdateRequested
//!  Provisioning ─────────────────▶ Active ◀─────────────────▶ Updating
//!       │  │                         │          UpdateCompleted   │  │
//!       │  └── OperationFailed ──▶ Failed ◀── OperationFailed ────┘  │
//!       │                         │    ▲                             │
//!       │            RetryRequested    │ OperationFailed             │
//!       │  (back to the failed op)     │                             │
//!       └──── DestroyRequested ───▶ Destroying ◀── DestroyRequested ─┘
//!                  (also from Active and Failed)
//!                                      │ DestroyCompleted
//!                                      ▼
//!                                  Destroyed   (terminal)
//! ```
//!
//! [`step`] does no I/O, reads no clock and draws no random numbers: the caller
//! passes the time, and the function returns either the [`Transition`] to persist
//! or a [`TransitionError`] naming the state and the refused event. A refused event
//! changes nothing.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// The workspace operations that own a workspace state while they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceOperation {
    /// Cloud infrastructure, then agent bootstrap (runs in `Provisioning`).
    Provision,
    /// An infrastructure change (runs in `Updating`).
    Update,
    /// Teardown (runs in `Destroying`).
    Destroy,
}

impl WorkspaceOperation {
    /// The state the workspace is in while this operation runs.
    pub fn running_state(self) -> WorkspaceState {
        match self {
            Self::Provision => WorkspaceState::Provisioning,
            Self::Update => WorkspaceState::Updating,
            Self::Destroy => WorkspaceState::Destroying,
        }
    }
}

impl fmt::Display for WorkspaceOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Provision => "provision",
            Self::Update => "update",
            Self::Destroy => "destroy",
        })
    }
}

/// What failed, where, why and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The operation that failed.
    pub operation: WorkspaceOperation,
    /// The step of that operation that failed.
    pub step: String,
    /// The error, as text (providers scrub secrets before it gets here).
    pub error: String,
    /// When it failed.
    pub at: Timestamp,
    /// For a step of one stack (its teardown in a destroy), the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<crate::ids::StackName>,
    /// For a failed destroy, what the failed step was to remove and still
    /// exists, as the provisioner or executor reported it: what abandoning the
    /// step would leave behind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remaining: Vec<String>,
    /// Whether a [`retry`](crate::Engine::retry) alone may succeed: `true`
    /// for a transient error that outlasted its retry budget (an outage, a
    /// throttle), `false` for a permanent one (a refused permission, an
    /// invalid value) that must be fixed first — correct the spec, or fix
    /// the cause outside Cogrion. `None` for failures stored before it was
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

/// The state of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WorkspaceState {
    /// Cloud infrastructure is being stood up, then the agent bootstrapped.
    Provisioning,
    /// Cluster running and Cluster Agent connected; stacks can be deployed.
    Active,
    /// An operation failed; the workspace may be partially provisioned. It can be
    /// retried (the failed operation resumes at the failed step) or destroyed.
    Failed(Failure),
    /// An infrastructure change is being applied; stacks keep running.
    Updating,
    /// Teardown in progress.
    Destroying,
    /// Everything torn down. Terminal.
    Destroyed,
}

impl WorkspaceState {
    /// The state's name, without its data.
    pub fn name(&self) -> StateName {
        match self {
            Self::Provisioning => StateName::Provisioning,
            Self::Active => StateName::Active,
            Self::Failed(_) => StateName::Failed,
            Self::Updating => StateName::Updating,
            Self::Destroying => StateName::Destroying,
            Self::Destroyed => StateName::Destroyed,
        }
    }

    /// The operation that runs in this state, if any.
    pub fn running_operation(&self) -> Option<WorkspaceOperation> {
        match self {
            Self::Provisioning => Some(WorkspaceOperation::Provision),
            Self::Updating => Some(WorkspaceOperation::Update),
            Self::Destroying => Some(WorkspaceOperation::Destroy),
            Self::Active | Self::Failed(_) | Self::Destroyed => None,
        }
    }
}

/// The name of a [`WorkspaceState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    /// See [`WorkspaceState::Provisioning`].
    Provisioning,
    /// See [`WorkspaceState::Active`].
    Active,
    /// See [`WorkspaceState::Failed`].
    Failed,
    /// See [`WorkspaceState::Updating`].
    Updating,
    /// See [`WorkspaceState::Destroying`].
    Destroying,
    /// See [`WorkspaceState::Destroyed`].
    Destroyed,
}

impl StateName {
    /// Every state name.
    pub const ALL: [Self; 6] = [
        Self::Provisioning,
        Self::Active,
        Self::Failed,
        Self::Updating,
        Self::Destroying,
        Self::Destroyed,
    ];

    /// The name as text (`"provisioning"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Failed => "failed",
            Self::Updating => "updating",
            Self::Destroying => "destroying",
            Self::Destroyed => "destroyed",
        }
    }
}

impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StateName {
    type Err = crate::InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| crate::InvalidValue::Malformed {
                what: "state name",
                reason: format!("{s:?} is not a state"),
            })
    }
}

/// Something that happens to a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkspaceEvent {
    /// The control plane received the agent's first successful authenticated poll.
    /// The only way into `Active` from `Provisioning`.
    AgentFirstPoll,
    /// The tenant asked for an infrastructure change.
    UpdateRequested,
    /// The running update applied its last step.
    UpdateCompleted,
    /// The running operation failed permanently or exhausted its retries.
    OperationFailed {
        /// The step that failed.
        step: String,
        /// Why.
        error: String,
    },
    /// The tenant asked to resume the failed operation.
    RetryRequested,
    /// The tenant submitted a corrected spec (or reverted to the last applied
    /// one) for a failed provision or update: it resumes at its failed step.
    CorrectionRequested,
    /// The tenant abandoned steps of a failed destroy, which goes on.
    AbandonRequested,
    /// The tenant asked to tear the workspace down.
    DestroyRequested,
    /// The last teardown step finished.
    DestroyCompleted,
}

impl WorkspaceEvent {
    /// The event's name, without its data.
    pub fn name(&self) -> EventName {
        match self {
            Self::AgentFirstPoll => EventName::AgentFirstPoll,
            Self::UpdateRequested => EventName::UpdateRequested,
            Self::UpdateCompleted => EventName::UpdateCompleted,
            Self::OperationFailed { .. } => EventName::OperationFailed,
            Self::RetryRequested => EventName::RetryRequested,
            Self::CorrectionRequested => EventName::CorrectionRequested,
            Self::AbandonRequested => EventName::AbandonRequested,
            Self::DestroyRequested => EventName::DestroyRequested,
            Self::DestroyCompleted => EventName::DestroyCompleted,
        }
    }
}

/// The name of a [`WorkspaceEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventName {
    /// See [`WorkspaceEvent::AgentFirstPoll`].
    AgentFirstPoll,
    /// See [`WorkspaceEvent::UpdateRequested`].
    UpdateRequested,
    /// See [`WorkspaceEvent::UpdateCompleted`].
    UpdateCompleted,
    /// See [`WorkspaceEvent::OperationFailed`].
    OperationFailed,
    /// See [`WorkspaceEvent::RetryRequested`].
    RetryRequested,
    /// See [`WorkspaceEvent::CorrectionRequested`].
    CorrectionRequested,
    /// See [`WorkspaceEvent::AbandonRequested`].
    AbandonRequested,
    /// See [`WorkspaceEvent::DestroyRequested`].
    DestroyRequested,
    /// See [`WorkspaceEvent::DestroyCompleted`].
    DestroyCompleted,
}

impl EventName {
    /// Every event name.
    pub const ALL: [Self; 9] = [
        Self::AgentFirstPoll,
        Self::UpdateRequested,
        Self::UpdateCompleted,
        Self::OperationFailed,
        Self::RetryRequested,
        Self::CorrectionRequested,
        Self::AbandonRequested,
        Self::DestroyRequested,
        Self::DestroyCompleted,
    ];

    /// The request or happening, in words (`"update"`, `"agent's first poll"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentFirstPoll => "agent's first poll",
            Self::UpdateRequested => "update",
            Self::UpdateCompleted => "update completion",
            Self::OperationFailed => "operation failure",
            Self::RetryRequested => "retry",
            Self::CorrectionRequested => "correction",
            Self::AbandonRequested => "abandon",
            Self::DestroyRequested => "destroy",
            Self::DestroyCompleted => "destroy completion",
        }
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An accepted event: the state to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: StateName,
    /// The state after.
    pub to: WorkspaceState,
    /// The event that caused it.
    pub event: EventName,
    /// When.
    pub at: Timestamp,
}

/// A refused event: the request is not allowed in the workspace's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event} is not allowed while the workspace is {state}")]
pub struct TransitionError {
    /// The state the workspace is in (and stays in).
    pub state: StateName,
    /// The refused event.
    pub event: EventName,
}

/// Applies `event` to a workspace in `state` at time `now`.
///
/// The whole table, every pair not listed being a [`TransitionError`]:
///
/// | from | event | to |
/// |---|---|---|
/// | Provisioning | AgentFirstPoll | Active |
/// | Provisioning | OperationFailed | Failed (provision) |
/// | Provisioning | DestroyRequested | Destroying (cancels provisioning) |
/// | Active | UpdateRequested | Updating |
/// | Active | DestroyRequested | Destroying |
/// | Updating | UpdateCompleted | Active |
/// | Updating | OperationFailed | Failed (update) |
/// | Updating | DestroyRequested | Destroying (the engine applies it after the running step) |
/// | Failed (op) | RetryRequested | the state `op` runs in |
/// | Failed (provision or update) | CorrectionRequested | the state the operation runs in |
/// | Failed (destroy) | AbandonRequested | Destroying |
/// | Failed | DestroyRequested | Destroying (removes what a half-finished operation left) |
/// | Destroying | OperationFailed | Failed (destroy) |
/// | Destroying | DestroyCompleted | Destroyed |
///
/// `Destroyed` accepts nothing.
///
/// ```
/// use cogrion_core::{Timestamp, WorkspaceState, StateName, lifecycle::{step, WorkspaceEvent}};
/// let now = Timestamp::from_millis(0);
/// let t = step(&WorkspaceState::Provisioning, &WorkspaceEvent::AgentFirstPoll, now).unwrap();
/// assert_eq!(t.to, WorkspaceState::Active);
/// let err = step(&WorkspaceState::Provisioning, &WorkspaceEvent::UpdateRequested, now).unwrap_err();
/// assert_eq!(err.state, StateName::Provisioning);
/// ```
pub fn step(
    state: &WorkspaceState,
    event: &WorkspaceEvent,
    now: Timestamp,
) -> Result<Transition, TransitionError> {
    use WorkspaceEvent as E;
    use WorkspaceState as S;
    let to = match (state, event) {
        (S::Provisioning, E::AgentFirstPoll) => S::Active,
        (S::Active, E::UpdateRequested) => S::Updating,
        (S::Updating, E::UpdateCompleted) => S::Active,
        (S::Provisioning | S::Updating | S::Destroying, E::OperationFailed { step, error }) => {
            S::Failed(Failure {
                operation: state
                    .running_operation()
                    .expect("these states run an operation"),
                step: step.clone(),
                error: error.clone(),
                at: now,
                stack: None,
                remaining: Vec::new(),
                retryable: None,
            })
        }
        (S::Failed(failure), E::RetryRequested) => failure.operation.running_state(),
        (S::Failed(failure), E::CorrectionRequested)
            if failure.operation != WorkspaceOperation::Destroy =>
        {
            failure.operation.running_state()
        }
        (S::Failed(failure), E::AbandonRequested)
            if failure.operation == WorkspaceOperation::Destroy =>
        {
            S::Destroying
        }
        (S::Provisioning | S::Active | S::Updating | S::Failed(_), E::DestroyRequested) => {
            S::Destroying
        }
        (S::Destroying, E::DestroyCompleted) => S::Destroyed,
        _ => {
            return Err(TransitionError {
                state: state.name(),
                event: event.name(),
            });
        }
    };
    Ok(Transition {
        from: state.name(),
        to,
        event: event.name(),
        at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const T0: Timestamp = Timestamp::from_millis(1_000);

    fn failed(op: WorkspaceOperation) -> WorkspaceState {
        WorkspaceState::Failed(Failure {
            operation: op,
            step: "cluster".into(),
            error: "boom".into(),
            at: T0,
            stack: None,
            remaining: Vec::new(),
            retryable: None,
        })
    }

    fn event(name: EventName) -> WorkspaceEvent {
        match name {
            EventName::AgentFirstPoll => WorkspaceEvent::AgentFirstPoll,
            EventName::UpdateRequested => WorkspaceEvent::UpdateRequested,
            EventName::UpdateCompleted => WorkspaceEvent::UpdateCompleted,
            EventName::OperationFailed => WorkspaceEvent::OperationFailed {
                step: "node-pools".into(),
                error: "quota".into(),
            },
            EventName::RetryRequested => WorkspaceEvent::RetryRequested,
            EventName::CorrectionRequested => WorkspaceEvent::CorrectionRequested,
            EventName::AbandonRequested => WorkspaceEvent::AbandonRequested,
            EventName::DestroyRequested => WorkspaceEvent::DestroyRequested,
            EventName::DestroyCompleted => WorkspaceEvent::DestroyCompleted,
        }
    }

    /// Every (state, event) pair, written out: `None` means refused. `Failed` is
    /// listed once per operation that can fail, since retry depends on it.
    #[test]
    fn transition_table_covers_every_pair() {
        use EventName as E;
        use WorkspaceOperation as Op;
        use WorkspaceState as S;
        let fail = |op| {
            Some(S::Failed(Failure {
                operation: op,
                step: "node-pools".into(),
                error: "quota".into(),
                at: T0,
                stack: None,
                remaining: Vec::new(),
                retryable: None,
            }))
        };
        #[rustfmt::skip]
        let table: Vec<(WorkspaceState, EventName, Option<WorkspaceState>)> = vec![
            (S::Provisioning, E::AgentFirstPoll, Some(S::Active)),
            (S::Provisioning, E::UpdateRequested, None),
            (S::Provisioning, E::UpdateCompleted, None),
            (S::Provisioning, E::OperationFailed, fail(Op::Provision)),
            (S::Provisioning, E::RetryRequested, None),
            (S::Provisioning, E::CorrectionRequested, None),
            (S::Provisioning, E::AbandonRequested, None),
            (S::Provisioning, E::DestroyRequested, Some(S::Destroying)),
            (S::Provisioning, E::DestroyCompleted, None),

            (S::Active, E::AgentFirstPoll, None),
            (S::Active, E::UpdateRequested, Some(S::Updating)),
            (S::Active, E::UpdateCompleted, None),
            (S::Active, E::OperationFailed, None),
            (S::Active, E::RetryRequested, None),
            (S::Active, E::CorrectionRequested, None),
            (S::Active, E::AbandonRequested, None),
            (S::Active, E::DestroyRequested, Some(S::Destroying)),
            (S::Active, E::DestroyCompleted, None),

            (S::Updating, E::AgentFirstPoll, None),
            (S::Updating, E::UpdateRequested, None),
            (S::Updating, E::UpdateCompleted, Some(S::Active)),
            (S::Updating, E::OperationFailed, fail(Op::Update)),
            (S::Updating, E::RetryRequested, None),
            (S::Updating, E::CorrectionRequested, None),
            (S::Updating, E::AbandonRequested, None),
            (S::Updating, E::DestroyRequested, Some(S::Destroying)),
            (S::Updating, E::DestroyCompleted, None),

            (S::Destroying, E::AgentFirstPoll, None),
            (S::Destroying, E::UpdateRequested, None),
            (S::Destroying, E::UpdateCompleted, None),
            (S::Destroying, E::OperationFailed, fail(Op::Destroy)),
            (S::Destroying, E::RetryRequested, None),
            (S::Destroying, E::CorrectionRequested, None),
            (S::Destroying, E::AbandonRequested, None),
            (S::Destroying, E::DestroyRequested, None),
            (S::Destroying, E::DestroyCompleted, Some(S::Destroyed)),

            (S::Destroyed, E::AgentFirstPoll, None),
            (S::Destroyed, E::UpdateRequested, None),
            (S::Destroyed, E::UpdateCompleted, None),
            (S::Destroyed, E::OperationFailed, None),
            (S::Destroyed, E::RetryRequested, None),
            (S::Destroyed, E::CorrectionRequested, None),
            (S::Destroyed, E::AbandonRequested, None),
            (S::Destroyed, E::DestroyRequested, None),
            (S::Destroyed, E::DestroyCompleted, None),
        ];
        let mut rows = table;
        for (op, retry_to) in [
            (Op::Provision, S::Provisioning),
            (Op::Update, S::Updating),
            (Op::Destroy, S::Destroying),
        ] {
            let destroy = op == Op::Destroy;
            #[rustfmt::skip]
            rows.extend([
                (failed(op), E::AgentFirstPoll, None),
                (failed(op), E::UpdateRequested, None),
                (failed(op), E::UpdateCompleted, None),
                (failed(op), E::OperationFailed, None),
                (failed(op), E::RetryRequested, Some(retry_to.clone())),
                (failed(op), E::CorrectionRequested, (!destroy).then(|| retry_to.clone())),
                (failed(op), E::AbandonRequested, destroy.then_some(S::Destroying)),
                (failed(op), E::DestroyRequested, Some(S::Destroying)),
                (failed(op), E::DestroyCompleted, None),
            ]);
        }

        // Every state name × every event name appears (Failed three times).
        let mut seen: BTreeMap<(StateName, EventName), usize> = BTreeMap::new();
        for (s, e, _) in &rows {
            *seen.entry((s.name(), *e)).or_default() += 1;
        }
        for s in StateName::ALL {
            for e in EventName::ALL {
                let expected = if s == StateName::Failed { 3 } else { 1 };
                assert_eq!(
                    seen.get(&(s, e)),
                    Some(&expected),
                    "table row for ({s}, {e})"
                );
            }
        }

        for (state, name, expected) in rows {
            let got = step(&state, &event(name), T0);
            match expected {
                Some(to) => {
                    let t = got.unwrap_or_else(|e| panic!("({state:?}, {name}) refused: {e}"));
                    assert_eq!(
                        t,
                        Transition {
                            from: state.name(),
                            to,
                            event: name,
                            at: T0
                        }
                    );
                }
                None => assert_eq!(
                    got,
                    Err(TransitionError {
                        state: state.name(),
                        event: name
                    }),
                    "({state:?}, {name}) should be refused"
                ),
            }
        }
    }

    #[test]
    fn refusal_names_state_and_request() {
        let err = step(
            &WorkspaceState::Destroyed,
            &WorkspaceEvent::UpdateRequested,
            T0,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "update is not allowed while the workspace is destroyed"
        );
    }

    fn any_event() -> impl Strategy<Value = WorkspaceEvent> {
        prop_oneof![
            Just(WorkspaceEvent::AgentFirstPoll),
            Just(WorkspaceEvent::UpdateRequested),
            Just(WorkspaceEvent::UpdateCompleted),
            ("[a-z-]{1,12}", ".{0,20}")
                .prop_map(|(step, error)| WorkspaceEvent::OperationFailed { step, error }),
            Just(WorkspaceEvent::RetryRequested),
            Just(WorkspaceEvent::CorrectionRequested),
            Just(WorkspaceEvent::AbandonRequested),
            Just(WorkspaceEvent::DestroyRequested),
            Just(WorkspaceEvent::DestroyCompleted),
        ]
    }

    proptest! {
        /// Over random event sequences from a new workspace:
        /// - `Active` is entered only from `Provisioning` by the agent's first poll,
        ///   or from `Updating` by update completion — and never before a first poll;
        /// - `Destroyed` is entered only from `Destroying`, and accepts nothing after;
        /// - `Failed` records the operation of the state it left and the event's step;
        ///   retry goes back to the state that operation runs in;
        /// - a refusal names the current state and the event;
        /// - `step` is deterministic and stamps the given time.
        #[test]
        fn invariants_hold_over_random_sequences(
            events in proptest::collection::vec(any_event(), 0..60)
        ) {
            let mut state = WorkspaceState::Provisioning;
            let mut agent_polled = false;
            for (i, ev) in events.iter().enumerate() {
                let now = Timestamp::from_millis(i as u64);
                let result = step(&state, ev, now);
                prop_assert_eq!(&result, &step(&state, ev, now));
                match result {
                    Err(e) => {
                        prop_assert_eq!(e.state, state.name());
                        prop_assert_eq!(e.event, ev.name());
                    }
                    Ok(t) => {
                        prop_assert_ne!(state.name(), StateName::Destroyed);
                        prop_assert_eq!(t.from, state.name());
                        prop_assert_eq!(t.at, now);
                        if ev.name() == EventName::AgentFirstPoll {
                            agent_polled = true;
                        }
                        match &t.to {
                            WorkspaceState::Active => {
                                prop_assert!(matches!(
                                    (t.from, t.event),
                                    (StateName::Provisioning, EventName::AgentFirstPoll)
                                        | (StateName::Updating, EventName::UpdateCompleted)
                                ));
                                prop_assert!(agent_polled);
                            }
                            WorkspaceState::Destroyed => {
                                prop_assert_eq!(t.from, StateName::Destroying);
                            }
                            WorkspaceState::Failed(f) => {
                                prop_assert_eq!(Some(f.operation), state.running_operation());
                                if let WorkspaceEvent::OperationFailed { step, .. } = ev {
                                    prop_assert_eq!(&f.step, step);
                                }
                            }
                            other => {
                                if let WorkspaceState::Failed(f) = &state
                                    && matches!(
                                        ev.name(),
                                        EventName::RetryRequested | EventName::CorrectionRequested
                                    )
                                {
                                    prop_assert_eq!(other, &f.operation.running_state());
                                }
                            }
                        }
                        if matches!(t.to, WorkspaceState::Updating) {
                            prop_assert!(agent_polled, "Updating is reachable only via Active");
                        }
                        state = t.to;
                    }
                }
            }
        }
    }
}
