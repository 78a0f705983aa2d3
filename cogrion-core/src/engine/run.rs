//! [`Engine::advance`]: one step of one operation, persisted.

use std::sync::Arc;
use std::time::Duration;

use cogrion_agent_proto::{CommandId, CommandOutcome};
use tracing::Instrument;

use super::journal::Journal;
use super::leftovers::{self, Leftovers};
use super::plan::{self, StepKind};
use super::{Action, Engine, EngineEventKind, lock};
use crate::agent::{AgentInstall, issue_bootstrap_token};
use crate::checkpoint::{Progress, ProgressMessage, StoreCheckpoint};
use crate::clock::Timestamp;
use crate::error::{Error, Resource, Result};
use crate::executor::{ExecutionTarget, ExecutorKind, StackRequest, StackStatus};
use crate::ids::{IdempotencyKey, WorkspaceId};
use crate::provisioner::{InfraLayer, LayerRequest};
use crate::stack::{StackEvent, StackInventory, StackState};
use crate::state::{WorkspaceEvent, WorkspaceState, step};
use crate::store::{
    Actor, BuiltLayer, CheckpointKey, CommandStatus, EventKind, HistoryRetention, Lease,
    LeftBehind, LeftReason, NewCommand, OperationKind, OperationRecord, ProgressNote, StepStatus,
    WorkspaceRecord, WorkspaceWrite,
};

/// Whether an operation is in the middle of a step (waiting on the cloud or an
/// agent command), so that cancelling it must wait for that step to end.
pub(crate) fn mid_step(op: &OperationRecord) -> bool {
    // Waiting for the agent's first poll has nothing in flight to wait for.
    op.steps
        .iter()
        .any(|s| s.status == StepStatus::Running && s.name != plan::AWAIT_AGENT)
}

/// A lease this replica holds, and until when it surely holds by this
/// replica's own clock: the time it was asked for plus its time to live (the
/// store granted it later than that, by the store's clock — whatever that
/// clock reads).
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) lease: Lease,
    good_until: Timestamp,
}

impl Held {
    fn new(lease: Lease, asked: Timestamp, ttl: Duration) -> Self {
        Self {
            lease,
            good_until: asked + ttl,
        }
    }
}

/// How one attempt of a step ended.
impl Outcome {
    /// A short fixed name, for metrics.
    fn label(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Skipped(_) => "skipped",
            Self::InProgress(..) => "in_progress",
            Self::AwaitCommand(_) => "await_command",
            Self::AwaitAgent(_) => "await_agent",
            Self::ReissueToken => "reissue_token",
            Self::Unreachable { .. } => "unreachable",
            Self::Failed(_) => "failed",
        }
    }
}

enum Outcome {
    Done,
    Skipped(String),
    /// Still running: ask again after the delay; what the call reported.
    InProgress(Duration, Option<ProgressMessage>),
    AwaitCommand(NewCommand),
    AwaitAgent(Timestamp),
    /// The bootstrap token was lost with a previous process: issue a new one.
    ReissueToken,
    /// The agent (or, for its uninstall, the cluster) could not be reached:
    /// a failure, except for in-cluster teardown past its deadline, which is
    /// skipped with a receipt.
    Unreachable {
        error: Error,
        /// When the transport last heard from the agent, if it knows.
        last_seen: Option<Timestamp>,
    },
    Failed(Error),
}

/// The changes one `advance` makes, committed together.
struct Tx {
    rec: WorkspaceRecord,
    commands: Vec<NewCommand>,
    j: Journal,
    /// The awaited agent command's status, as `run_next` read it to decide that
    /// the step may run; the step uses it instead of reading it again.
    awaited: Option<CommandStatus>,
    /// Set by a purge step: the write goes through [`RecordStore::purge`].
    purge: Option<HistoryRetention>,
    /// The history event of an agent's answer the step read; written once the
    /// step moves on with it (a step still in progress reads it again).
    answer: Option<crate::store::NewEvent>,
}

impl Tx {
    fn event(&mut self, kind: EventKind, message: String) {
        self.j.event(kind, message);
    }

    fn notice(&mut self, kind: EngineEventKind) {
        self.j.notice(&self.rec, kind);
    }
}

/// A workspace's turn to advance in this engine; the map entry goes with the
/// last holder (or waiter), even if its `advance` is dropped midway.
struct Turn<'a> {
    engine: &'a Engine,
    id: WorkspaceId,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Turn<'a> {
    fn take(engine: &'a Engine, id: &WorkspaceId) -> Self {
        let gate = lock(&engine.0.turns).entry(id.clone()).or_default().clone();
        Turn {
            engine,
            id: id.clone(),
            gate,
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut turns = lock(&self.engine.0.turns);
        // Ours and the map's: nobody else holds or waits for it.
        if Arc::strong_count(&self.gate) == 2 {
            turns.remove(&self.id);
        }
    }
}

impl Engine {
    /// Runs the next step of the workspace's next runnable operation and persists
    /// its outcome; returns what to do next.
    ///
    /// Takes (or reuses) the workspace's lease. When another replica holds it, or
    /// when the persisting write finds a newer revision, nothing is changed and the
    /// answer says when to look again. [`Error::LeaseLost`] means this replica was
    /// fenced out in the middle of the step: stop driving the workspace.
    ///
    /// Calls for one workspace are serialised inside the engine: tasks of one
    /// host may call it concurrently, and each runs after the other's step is
    /// persisted (the second then sees the first's outcome).
    pub async fn advance(&self, id: &WorkspaceId) -> Result<Action> {
        let span = tracing::info_span!("advance", workspace = %id);
        let turn = Turn::take(self, id);
        let _held = turn.gate.lock().await;
        self.advance_inner(id).instrument(span).await
    }

    async fn advance_inner(&self, id: &WorkspaceId) -> Result<Action> {
        let now = self.0.clock.now();
        let lease = match self.lease(id, now).await {
            Ok(lease) => lease,
            // When it expires is the store's time; how long until then is
            // what this replica can use.
            Err(Error::LeaseHeld { retry_after, .. }) => {
                return Ok(Action::WakeAt(now + retry_after));
            }
            Err(e) => return Err(e),
        };
        let current = self.0.store.get_workspace(id).await?;
        let original = current.value.clone();
        let mut tx = Tx {
            rec: current.value,
            commands: Vec::new(),
            awaited: None,
            purge: None,
            answer: None,
            j: Journal::new(
                Actor::Engine {
                    holder: self.0.config.holder.clone(),
                },
                now,
            ),
        };
        let action = match self.run_next(&mut tx, &lease).await {
            Ok(action) => action,
            Err(e @ Error::LeaseLost { .. }) => {
                lock(&self.0.leases).remove(id);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        // The transaction is complete: take it apart and move its record into
        // the write.
        let Tx {
            rec: mut record,
            commands,
            j: journal,
            purge,
            ..
        } = tx;
        // A token is kept only until the agent install that hands it over.
        if !record.operations.iter().any(|o| {
            o.steps
                .iter()
                .any(|s| s.name == plan::INSTALL_AGENT && !s.is_finished())
        }) {
            lock(&self.0.tokens).remove(id);
        }
        record.wake_at = next_wake(&record, now);
        if record != original || !journal.events.is_empty() || !commands.is_empty() {
            record.updated_at = now;
            let queued = commands.len();
            let mut write =
                WorkspaceWrite::update(record, current.revision, now).fenced(lease.fence);
            write.events = journal.events;
            write.commands = commands;
            let written = match purge {
                None => self.0.store.commit(write).await.map(|_| ()),
                Some(history) => match self.0.store.purge(write, history).await {
                    Ok(purged) => {
                        tracing::info!(workspace = %id, ?purged, ?history, "purged");
                        if history == HistoryRetention::Delete {
                            // The record, its lease and its history are gone.
                            lock(&self.0.leases).remove(id);
                            self.publish(journal.notices);
                            return Ok(Action::Done);
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            };
            match written {
                Ok(()) => {}
                // A request (or another replica) wrote first: decide again.
                Err(Error::Conflict { .. }) => return Ok(Action::RunAgain),
                Err(e @ Error::LeaseLost { .. }) => {
                    lock(&self.0.leases).remove(id);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            metrics::counter!(crate::metrics::COMMANDS_QUEUED).increment(queued as u64);
            if queued > 0
                && let Some(t) = &self.0.transport
                && let Err(e) = t.notify(id).await
            {
                tracing::warn!(workspace = %id, error = %e, "could not notify the agent's transport");
            }
        }
        self.publish(journal.notices);
        let release = match action {
            Action::Done | Action::AwaitAgent { .. } => true,
            Action::WakeAt(t) => t.since(now) > self.0.config.lease_ttl / 2,
            Action::RunAgain => false,
        };
        if release {
            lock(&self.0.leases).remove(id);
            if let Err(e) = self.0.store.release(&lease).await {
                tracing::warn!(workspace = %id, error = %e, "could not release the lease; it expires by itself");
            }
        }
        Ok(action)
    }

    /// Claims, in one store transaction, the leases of up to `limit` workspaces
    /// due by `until` that no other replica holds (see
    /// [`LeaseStore::claim_due`](crate::store::LeaseStore::claim_due)), keeps them for the
    /// following [`advance`](Self::advance) calls, and returns their ids —
    /// earliest due first. Hosts with their own scheduler call this to find work;
    /// the [`Driver`](crate::Driver) does.
    pub async fn claim_due(&self, until: Timestamp, limit: usize) -> Result<Vec<WorkspaceId>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ttl = self.0.config.lease_ttl;
        let asked = self.0.clock.now();
        let leases = self
            .0
            .store
            .claim_due(&self.0.config.holder, ttl, until, limit)
            .await?;
        let mut cache = lock(&self.0.leases);
        Ok(leases
            .into_iter()
            .map(|lease| {
                let id = lease.workspace.clone();
                cache.insert(id.clone(), Held::new(lease, asked, ttl));
                id
            })
            .collect())
    }

    /// Releases every lease held in the store under this engine's holder name —
    /// what the same replica left behind before a restart — so that they can be
    /// claimed at once (under new fencing tokens, which fence out anything the
    /// previous run still had in flight) instead of after they expire. Call it
    /// once, before driving; the [`Driver`](crate::Driver) does when it starts.
    /// Two live processes must never share a holder name.
    pub async fn recover_leases(&self) -> Result<u64> {
        lock(&self.0.leases).clear();
        self.0.store.release_all(&self.0.config.holder).await
    }

    /// Gives up every lease this engine keeps between steps, so that another
    /// process can take its workspaces over at once instead of after the leases
    /// expire. Call it when the process stops driving (the
    /// [`Driver`](crate::Driver) does on shutdown); a lease that cannot be
    /// released expires by itself.
    pub async fn release_leases(&self) {
        let leases: Vec<Lease> = lock(&self.0.leases)
            .drain()
            .map(|(_, held)| held.lease)
            .collect();
        for lease in leases {
            if let Err(e) = self.0.store.release(&lease).await {
                tracing::warn!(workspace = %lease.workspace, error = %e, "could not release the lease; it expires by itself");
            }
        }
    }

    /// The workspace's lease: reused while comfortably valid by this
    /// replica's own clock (more than half its time to live left since it was
    /// asked for), else acquired (or renewed) in the store.
    async fn lease(&self, id: &WorkspaceId, now: Timestamp) -> Result<Lease> {
        let ttl = self.0.config.lease_ttl;
        if let Some(held) = lock(&self.0.leases).get(id)
            && held.good_until.since(now) > ttl / 2
        {
            return Ok(held.lease.clone());
        }
        let lease = self.0.store.acquire(id, &self.0.config.holder, ttl).await?;
        lock(&self.0.leases).insert(id.clone(), Held::new(lease.clone(), now, ttl));
        Ok(lease)
    }

    async fn run_next(&self, tx: &mut Tx, lease: &Lease) -> Result<Action> {
        let now = tx.j.now;
        // Cancelled operations that are not mid-step are dropped.
        tx.rec
            .operations
            .retain(|op| !op.cancel_requested || mid_step(op));
        // Deploys waiting for a dependency that failed fail with it.
        if self.fail_orphaned_deploys(tx) {
            return Ok(Action::RunAgain);
        }

        for i in 0..tx.rec.operations.len() {
            let op = &tx.rec.operations[i];
            if blocked(&tx.rec, op) {
                continue;
            }
            let Some(j) = op.steps.iter().position(|s| !s.is_finished()) else {
                self.finish(tx, i);
                return Ok(Action::RunAgain);
            };
            let step = &op.steps[j];
            if step.command.is_none()
                && step.cancelling.is_some()
                && !self.cancel_settled(tx, i, j).await?
            {
                continue;
            }
            let op = &tx.rec.operations[i];
            let step = &op.steps[j];
            let mut awaited = None;
            if let Some(command) = &step.command {
                // Answered, and the executor asked to be called again later
                // (`InProgress`): not before then, whatever woke the workspace.
                if step.deadline.is_none() && op.wake_at.is_some_and(|t| t > now) {
                    continue;
                }
                let status = self.0.store.get_command(&tx.rec.id, command).await?.status;
                if status == CommandStatus::Pending && step.deadline.is_none_or(|d| now < d) {
                    continue;
                }
                awaited = Some(status);
            } else if op.wake_at.is_some_and(|t| t > now) && step.name != plan::AWAIT_AGENT {
                continue;
            }
            tx.awaited = awaited;
            if self.run_step(tx, lease, i, j).await? {
                return Ok(Action::RunAgain);
            }
            break; // one effect per call; the step now waits
        }
        if tx.rec.operations.is_empty() {
            return Ok(Action::Done);
        }
        let awaiting_agent = tx.rec.operations.iter().any(|op| {
            !blocked(&tx.rec, op)
                && op.steps.iter().find(|s| !s.is_finished()).is_some_and(|s| {
                    // A command not answered yet (an answered one's step
                    // waits on time), one being cancelled, or the agent's
                    // first poll.
                    (s.command.is_some() && s.deadline.is_some())
                        || (s.command.is_none() && s.cancelling.is_some())
                        || s.name == plan::AWAIT_AGENT
                })
        });
        Ok(match next_wake(&tx.rec, now) {
            Some(t) if t <= now => Action::RunAgain,
            until if awaiting_agent => Action::AwaitAgent { until },
            Some(t) => Action::WakeAt(t),
            None => Action::Done,
        })
    }

    /// Whether step `j` of operation `i`, whose agent was asked to cancel a
    /// command of an earlier attempt, may start its next attempt: once that
    /// command is answered (the answer is recorded and ignored), once a new
    /// agent has connected since the cancel request (whatever ran it is gone),
    /// or — in-cluster teardown — once the teardown deadline has passed (the
    /// agent's uninstall and the cluster's deletion follow). Until then the
    /// step waits: an agent's answer wakes the workspace, and it looks again
    /// every [`command_deadline`](super::EngineConfig::command_deadline).
    async fn cancel_settled(&self, tx: &mut Tx, i: usize, j: usize) -> Result<bool> {
        let now = tx.j.now;
        let id = tx.rec.id.clone();
        let op = &tx.rec.operations[i];
        let step = &op.steps[j];
        let Some(old) = step.cancelling.clone() else {
            return Ok(true);
        };
        let teardown = op.kind == OperationKind::Destroy
            && StepKind::of(op.kind, op.stack.as_ref(), step)
                .is_some_and(|k| k.agent_run(&tx.rec.stacks));
        let teardown_over = teardown && self.teardown_over(step, now);
        let settled = match self.0.store.get_command(&id, &old).await {
            Ok(q) => match q.status {
                CommandStatus::Answered { result, .. } => {
                    Some(Some(matches!(result.outcome, CommandOutcome::Succeeded)))
                }
                CommandStatus::Cancelling { at } => {
                    let credentials = self.0.store.list_credentials(&id).await?;
                    let reconnected = credentials
                        .iter()
                        .any(|c| c.renewed_from.is_none() && c.issued_at > at && c.was_used());
                    (reconnected || teardown_over).then_some(None)
                }
                // Withdraw never leaves a delivered command pending or
                // withdrawn; nothing of it can run.
                CommandStatus::Pending | CommandStatus::Withdrawn { .. } => Some(None),
            },
            // Purged with the workspace's queue: nothing of it is left.
            Err(Error::NotFound(_)) => Some(None),
            Err(e) => return Err(e),
        };
        let Some(succeeded) = settled else {
            let op = &mut tx.rec.operations[i];
            if op.wake_at.is_none_or(|t| t <= now) {
                op.wake_at = Some(now + self.0.config.command_deadline);
            }
            return Ok(false);
        };
        // The next attempt starts now (an answer woke the workspace before the
        // look the wait had scheduled).
        tx.rec.operations[i].wake_at = None;
        let step = &mut tx.rec.operations[i].steps[j];
        step.cancelling = None;
        let name = step.name.clone();
        let how = match succeeded {
            Some(true) => "answered late (succeeded); its answer is ignored",
            Some(false) => "answered late (failed); its answer is ignored",
            None if teardown_over => "is let go: the teardown deadline passed",
            None => "is let go: a new agent connected since it was cancelled",
        };
        tx.event(
            EventKind::CommandSuperseded {
                id: old.clone(),
                succeeded,
            },
            format!("{name}: command {old} {how}"),
        );
        Ok(true)
    }

    /// Whether `step`'s current run of attempts started longer than the
    /// teardown deadline ago (what in-cluster teardown keeps trying for).
    fn teardown_over(&self, step: &crate::store::StepRecord, now: Timestamp) -> bool {
        now >= step.started_at.unwrap_or(now) + self.0.config.teardown_deadline
    }

    /// Runs one attempt of step `j` of operation `i`; returns whether the step
    /// moved on (finished, failed, or must start over) rather than waits.
    async fn run_step(&self, tx: &mut Tx, lease: &Lease, i: usize, j: usize) -> Result<bool> {
        let now = tx.j.now;
        let op = &tx.rec.operations[i];
        let (seq, name) = (op.seq, op.steps[j].name.clone());
        let kind = StepKind::of(op.kind, op.stack.as_ref(), &op.steps[j]).ok_or_else(|| {
            Error::Corrupt {
                source: None,
                what: Resource::Workspace(tx.rec.id.clone()),
                detail: format!("operation {seq} has a step {name:?} this engine does not know"),
            }
        })?;
        let span = tracing::info_span!("step", operation = seq, step = %name);
        let in_destroy = tx.rec.operations[i].kind == OperationKind::Destroy;
        let teardown = in_destroy && kind.agent_run(&tx.rec.stacks);
        // A stack whose teardown failed an earlier destroy is torn down again.
        if in_destroy
            && let StepKind::StackDestroy(stack) = &kind
            && let Some(StackState::Failed(_)) = tx.rec.stacks.get(stack).map(|e| &e.state)
            && let Ok(to) = tx.rec.stacks.apply(stack, &StackEvent::RetryRequested, now)
        {
            tx.j.stack_transition(
                &tx.rec,
                stack,
                Some(crate::stack::StackStateName::Failed),
                &to,
            );
        }
        let step = &mut tx.rec.operations[i].steps[j];
        if step.status == StepStatus::Pending {
            step.status = StepStatus::Running;
            step.attempts += 1;
            step.started_at.get_or_insert(now);
            let attempt = step.attempts;
            tx.event(
                EventKind::StepStarted {
                    operation: seq,
                    step: name.clone(),
                    attempt,
                },
                format!("{name}: attempt {attempt}"),
            );
            tx.notice(EngineEventKind::StepStarted {
                operation: seq,
                step: name.clone(),
                attempt,
            });
        }
        let called = std::time::Instant::now();
        let outcome = self
            .guarded(lease, self.effect(tx, lease, i, j, &kind))
            .instrument(span)
            .await?;
        metrics::histogram!(crate::metrics::STEP_SECONDS, "kind" => kind.label())
            .record(called.elapsed().as_secs_f64());
        metrics::counter!(
            crate::metrics::STEPS,
            "kind" => kind.label(),
            "outcome" => outcome.label()
        )
        .increment(1);
        let moved_on = !matches!(
            outcome,
            Outcome::InProgress(..) | Outcome::AwaitAgent(_) | Outcome::AwaitCommand(_)
        );
        if let Some(answer) = tx.answer.take()
            && !matches!(outcome, Outcome::InProgress(..))
        {
            tx.j.events.push(answer);
        }
        let failed_before = matches!(tx.rec.state, WorkspaceState::Failed(_));
        let destroy = tx.rec.operations[i].kind == OperationKind::Destroy;
        self.apply_outcome(tx, i, j, &kind, teardown, outcome)?;
        // A destroy that failed names its blocker: the step, its stack, and
        // what it was to remove that still exists.
        if destroy && !failed_before {
            let rec = &tx.rec;
            if let WorkspaceState::Failed(f) = &rec.state
                && f.operation == crate::state::WorkspaceOperation::Destroy
            {
                let remaining = Leftovers::new(self, rec, seq).of(&kind).await;
                if let WorkspaceState::Failed(f) = &mut tx.rec.state {
                    f.stack = match &kind {
                        StepKind::StackDestroy(name) => Some(name.clone()),
                        _ => None,
                    };
                    f.remaining = remaining;
                }
            }
        }
        Ok(moved_on)
    }

    /// Runs a step's call under `lease`: the lease is renewed every third of
    /// its time to live while the call runs (a call of minutes keeps it, so
    /// no other replica starts the same step meanwhile); a call past
    /// [`call_timeout`](super::EngineConfig::call_timeout) is cancelled and
    /// the attempt fails as a transient error; a lease found lost — taken
    /// over, or not renewed before it ran out — cancels the call before
    /// anything else is done in its name, and is returned.
    async fn guarded(
        &self,
        lease: &Lease,
        call: impl std::future::Future<Output = Result<Outcome>>,
    ) -> Result<Outcome> {
        let ttl = self.0.config.lease_ttl;
        let timeout = self.0.config.call_timeout;
        let started = tokio::time::Instant::now();
        let mut current = lease.clone();
        // Until when the lease surely holds, by this process's own clock.
        let mut holds_until = started + ttl;
        tokio::pin!(call);
        loop {
            tokio::select! {
                biased;
                outcome = &mut call => return outcome,
                () = tokio::time::sleep_until(started + timeout) => {
                    return Ok(Outcome::Failed(Error::Unavailable {
                        service: "engine".into(),
                        detail: format!(
                            "the step's call did not finish within {}; cancelled",
                            humantime::format_duration(timeout)
                        ), source: None,}));
                }
                () = tokio::time::sleep(ttl / 3) => {
                    let asked = tokio::time::Instant::now();
                    let asked_at = self.0.clock.now();
                    match self.0.store.renew(&current, ttl).await {
                        Ok(renewed) => {
                            lock(&self.0.leases).insert(
                                renewed.workspace.clone(),
                                Held::new(renewed.clone(), asked_at, ttl),
                            );
                            current = renewed;
                            holds_until = asked + ttl;
                        }
                        Err(e @ Error::LeaseLost { .. }) => return Err(e),
                        Err(e) if tokio::time::Instant::now() >= holds_until => {
                            tracing::warn!(workspace = %current.workspace, error = %e, "the lease ran out before it could be renewed: the step's call is cancelled");
                            return Err(Error::LeaseLost {
                                workspace: current.workspace.clone(),
                                fence: current.fence.0,
                            });
                        }
                        Err(e) => {
                            tracing::warn!(workspace = %current.workspace, error = %e, "could not renew the lease; trying again");
                        }
                    }
                }
            }
        }
    }

    /// Performs the step's side effect through the traits. The step's own
    /// failure is an outcome; what is not the step's is returned, and
    /// `advance` keeps nothing of the attempt (no retry spent, nothing
    /// failed): this engine lacks an implementation the step needs, or the
    /// engine's store failed under it (an outage, a lost lease) — in the
    /// engine's own reads and writes or through the provider's checkpoint,
    /// whatever error the provider made of it.
    async fn effect(
        &self,
        tx: &mut Tx,
        lease: &Lease,
        i: usize,
        j: usize,
        kind: &StepKind,
    ) -> Result<Outcome> {
        let (seq, name) = (
            tx.rec.operations[i].seq,
            &tx.rec.operations[i].steps[j].name,
        );
        let checkpoint = Arc::new(StoreCheckpoint::new(
            self.0.store.clone(),
            tx.rec.id.clone(),
            CheckpointKey::for_step(seq, name)?,
            lease.fence,
        ));
        match self.try_effect(tx, i, j, kind, &checkpoint).await {
            Ok(outcome) => Ok(outcome),
            Err(e @ Error::NotConfigured { .. }) => Err(e),
            Err(e) if checkpoint.store_failed() => Err(e),
            Err(e) => Ok(Outcome::Failed(e)),
        }
    }

    async fn try_effect(
        &self,
        tx: &mut Tx,
        i: usize,
        j: usize,
        kind: &StepKind,
        checkpoint: &Arc<StoreCheckpoint>,
    ) -> Result<Outcome> {
        let now = tx.j.now;
        let id = tx.rec.id.clone();
        let op = &tx.rec.operations[i];
        let step = &op.steps[j];
        let key = IdempotencyKey::derive(&id, op.seq, &step.name);
        let checkpoint_for = || -> Arc<dyn crate::checkpoint::Checkpoint> { checkpoint.clone() };
        Ok(match kind {
            StepKind::Layer(layer) => {
                let provisioner = self.provisioner(&tx.rec.spec)?;
                let request = LayerRequest::new(
                    id.clone(),
                    tx.rec.spec.clone(),
                    *layer,
                    key,
                    checkpoint_for(),
                );
                match op.kind {
                    OperationKind::Destroy => match provisioner.destroy(request).await? {
                        Progress::Ready(()) => {
                            if *layer == InfraLayer::Cluster {
                                tx.rec.cluster = None;
                            }
                            tx.rec.layers.remove(layer);
                            Outcome::Done
                        }
                        other => waiting(other),
                    },
                    _ => {
                        // A layer that exists is changed from the spec it was
                        // built from (an update, or a provision resumed with a
                        // corrected spec), never built again.
                        let progress = match tx.rec.layers.get(layer) {
                            Some(built) => {
                                let from = built.spec.clone();
                                provisioner.update(request.updating_from(from)).await?
                            }
                            None => provisioner.provision(request).await?,
                        };
                        match progress {
                            Progress::Ready(state) => {
                                if state.cluster.is_some() {
                                    tx.rec.cluster = state.cluster;
                                }
                                let built = BuiltLayer {
                                    spec: tx.rec.spec.clone(),
                                    resources: state.resources,
                                    at: now,
                                };
                                tx.rec.layers.insert(*layer, built);
                                Outcome::Done
                            }
                            other => waiting(other),
                        }
                    }
                }
            }
            StepKind::IssueToken => {
                let token = checkpoint.watch(
                    issue_bootstrap_token(self.0.store.as_ref(), &id, now, self.0.config.token_ttl)
                        .await,
                )?;
                let hash = token.hash();
                lock(&self.0.tokens).insert(id, (op.seq, step.attempts, token));
                // The wait for the agent accepts only this token's descendants.
                tx.rec.operations[i].token = Some(hash);
                Outcome::Done
            }
            StepKind::InstallAgent => {
                let cluster = tx.rec.cluster.clone().ok_or_else(|| Error::Rejected {
                    service: "engine".into(),
                    detail: "the cluster's access is unknown; provision the cluster first".into(),
                    source: None,
                })?;
                // The token of this operation's latest issue; anything else (a crash
                // lost it, another replica issued a newer one) means issuing again.
                let issued = op
                    .steps
                    .iter()
                    .find(|s| s.name == plan::ISSUE_TOKEN)
                    .map(|s| s.attempts);
                let Some(token) = lock(&self.0.tokens)
                    .get(&id)
                    .filter(|(seq, attempt, _)| *seq == op.seq && Some(*attempt) == issued)
                    .map(|(_, _, token)| token.clone())
                else {
                    return Ok(Outcome::ReissueToken);
                };
                match self
                    .0
                    .installer
                    .install(AgentInstall::new(id.clone(), cluster, token, key))
                    .await?
                {
                    Progress::Ready(()) => {
                        lock(&self.0.tokens).remove(&id);
                        Outcome::Done
                    }
                    other => waiting(other),
                }
            }
            StepKind::AwaitAgent => {
                let (started, token) = (op.started_at, op.token);
                let credentials = checkpoint.watch(self.0.store.list_credentials(&id).await)?;
                let polled = credentials.iter().any(|c| {
                    c.revoked.is_none()
                        && c.was_used()
                        && match token {
                            // Obtained with this operation's token (or a renewal of one).
                            Some(t) => c.token == Some(t),
                            // An operation stored before tokens were recorded.
                            None => c.issued_at >= started,
                        }
                });
                let deadline = step
                    .deadline
                    .unwrap_or(now + self.0.config.agent_poll_deadline);
                if polled {
                    Outcome::Done
                } else if now >= deadline {
                    Outcome::Failed(Error::Rejected {
                        service: "agent".into(),
                        detail: format!("the agent did not poll by {deadline}"),
                        source: None,
                    })
                } else {
                    Outcome::AwaitAgent(deadline)
                }
            }
            StepKind::RevokeAgent => {
                let revoked = checkpoint.watch(
                    self.0
                        .store
                        .revoke_all(&id, "workspace destroyed", now)
                        .await,
                )?;
                if let Some(t) = &self.0.transport {
                    t.disconnect(&id, "workspace destroyed").await?;
                }
                tx.event(
                    EventKind::Note,
                    format!("revoked {} agent certificate(s)", revoked.len()),
                );
                Outcome::Done
            }
            StepKind::UninstallAgent => match tx.rec.cluster.clone() {
                None => Outcome::Skipped("no cluster: nothing to uninstall".into()),
                Some(cluster) => match self.0.installer.uninstall(&id, &cluster).await {
                    Ok(progress) => waiting(progress),
                    Err(error) if error.is_transient() => Outcome::Unreachable {
                        error,
                        last_seen: None,
                    },
                    Err(error) => Outcome::Failed(error),
                },
            },
            StepKind::StackApply(name) | StepKind::StackDestroy(name) => {
                let Some(entry) = tx.rec.stacks.get(name) else {
                    return Ok(Outcome::Skipped(format!("stack {name} is gone")));
                };
                let executor = self.executor(ExecutorKind::of(&entry.spec.executor))?;
                let mut request = StackRequest::new(
                    ExecutionTarget::new(id.clone(), tx.rec.cluster.clone()),
                    entry.spec.clone(),
                    key,
                    checkpoint_for(),
                );
                if let Some(command) = step.command.clone() {
                    let command = &command;
                    let mut status = match tx.awaited.take() {
                        Some(status) => status,
                        None => {
                            checkpoint
                                .watch(self.0.store.get_command(&id, command).await)?
                                .status
                        }
                    };
                    if status == CommandStatus::Pending {
                        // Unanswered by its deadline (a step waiting on a pending
                        // command runs only then): taken back before anything
                        // retries it. An answer that beat the withdrawal is used.
                        status =
                            checkpoint.watch(self.0.store.withdraw(&id, command, now).await)?;
                    }
                    match status {
                        CommandStatus::Answered { mut result, at } => {
                            let succeeded = matches!(result.outcome, CommandOutcome::Succeeded);
                            tx.answer = Some(crate::store::NewEvent {
                                at,
                                actor: Actor::Agent,
                                kind: EventKind::CommandAnswered {
                                    id: command.clone(),
                                    succeeded,
                                },
                                message: format!(
                                    "{}: the agent answered command {command}: {}",
                                    step.name,
                                    if succeeded { "succeeded" } else { "failed" }
                                ),
                            });
                            // The executor sees its own id, without the attempt suffix.
                            result.id = base_command_id(command, step.attempts);
                            request = request.with_command_result(result);
                        }
                        CommandStatus::Pending
                        | CommandStatus::Cancelling { .. }
                        | CommandStatus::Withdrawn { .. } => {
                            // Withdrawn: no agent will see it. Cancelling: an agent
                            // has it; the next attempt waits for its answer.
                            let delivered = !matches!(status, CommandStatus::Withdrawn { .. });
                            if delivered {
                                tx.rec.operations[i].steps[j].cancelling = Some(command.clone());
                            }
                            tx.event(
                                EventKind::CommandWithdrawn {
                                    id: command.clone(),
                                    delivered,
                                },
                                format!(
                                    "{}: command {command} {}",
                                    tx.rec.operations[i].steps[j].name,
                                    if delivered {
                                        "was not answered by its deadline; the agent is asked to cancel it, and the next attempt waits for its answer"
                                    } else {
                                        "was not delivered by its deadline; withdrawn"
                                    }
                                ),
                            );
                            let last_seen = self.presence(&id).await.map(|p| p.last_seen);
                            return Ok(Outcome::Unreachable {
                                error: Error::Unavailable {
                                    service: "agent".into(),
                                    detail: format!(
                                        "no answer to command {command} by its deadline"
                                    ),
                                    source: None,
                                },
                                last_seen,
                            });
                        }
                    }
                }
                if let StepKind::StackApply(name) = kind {
                    match executor.apply(request).await? {
                        Progress::Ready(status) => {
                            if let StackStatus::Installed {
                                revision,
                                resources,
                            } = status
                            {
                                let inventory = StackInventory {
                                    revision,
                                    resources,
                                    at: now,
                                };
                                tx.rec.stacks.set_inventory(name, inventory);
                            }
                            Outcome::Done
                        }
                        other => waiting(other),
                    }
                } else {
                    waiting(executor.destroy(request).await?)
                }
            }
            StepKind::Purge => {
                let Some(policy) = self.0.config.purge else {
                    return Ok(Outcome::Skipped(
                        "purging is disabled (EngineConfig::purge)".into(),
                    ));
                };
                let due = op.started_at + policy.after;
                if now < due {
                    Outcome::InProgress(due.since(now), None)
                } else {
                    tx.purge = Some(policy.history);
                    Outcome::Done
                }
            }
        })
    }

    /// Records how the attempt ended. `teardown`: the step is agent-run work
    /// of a destroy, which keeps trying until its deadline and is then skipped
    /// if the agent cannot be reached.
    fn apply_outcome(
        &self,
        tx: &mut Tx,
        i: usize,
        j: usize,
        kind: &StepKind,
        teardown: bool,
        outcome: Outcome,
    ) -> Result<()> {
        let now = tx.j.now;
        let seq = tx.rec.operations[i].seq;
        let name = tx.rec.operations[i].steps[j].name.clone();
        let attempt = tx.rec.operations[i].steps[j].attempts;
        if !matches!(
            outcome,
            Outcome::InProgress(..) | Outcome::AwaitAgent(_) | Outcome::AwaitCommand(_)
        ) {
            // The call ended: what it said while running is no longer news.
            // (A step's first message is always stored with it, so a step
            // with none stored has nothing in memory either: no lock taken.)
            if tx.rec.operations[i].steps[j].progress.take().is_some() {
                lock(&self.0.progress).remove(&tx.rec.id);
            }
        }
        if tx.rec.operations[i].cancel_requested
            && !matches!(
                outcome,
                Outcome::InProgress(..) | Outcome::AwaitAgent(_) | Outcome::AwaitCommand(_)
            )
        {
            // Superseded (by a destroy or a removal): its running step has ended,
            // so it goes, and changes no workspace or stack state on its way out.
            tx.rec.operations.remove(i);
            tx.event(
                EventKind::Note,
                format!("operation {seq} cancelled after its running step {name} ended"),
            );
            return Ok(());
        }
        let window = self.0.config.teardown_deadline;
        let started = tx.rec.operations[i].steps[j].started_at.unwrap_or(now);
        // In-cluster teardown keeps trying for the teardown deadline.
        let teardown_over = self.teardown_over(&tx.rec.operations[i].steps[j], now);
        let outcome = match outcome {
            // In-cluster teardown whose agent (or cluster) has been out of reach
            // for the teardown deadline is skipped: deleting the cluster removes
            // what it left there. The receipt says what that was, and since when
            // the agent was silent (its last poll as the transport saw it, or
            // the start of the step).
            Outcome::Unreachable { error, last_seen }
                if teardown && now >= last_seen.unwrap_or(started) + window =>
            {
                let since = last_seen.unwrap_or(started);
                let (stack, left) = leftovers::in_cluster(&tx.rec, kind);
                tx.rec.left_behind.push(LeftBehind {
                    operation: seq,
                    step: name.clone(),
                    stack,
                    resources: left.clone(),
                    why: LeftReason::Unreachable {
                        since,
                        error: error.to_string(),
                    },
                    at: now,
                });
                let why = format!(
                    "unreachable since {since} ({error}); deleting the cluster removes what was left in it: {}",
                    left.join(", ")
                );
                tx.event(
                    EventKind::StepSkipped {
                        operation: seq,
                        step: name.clone(),
                        left,
                        unreachable_since: Some(since),
                    },
                    why.clone(),
                );
                self.finish_step(tx, i, j, kind, Some(why));
                return Ok(());
            }
            other => other,
        };
        match outcome {
            Outcome::Done => {
                tx.event(
                    EventKind::StepDone {
                        operation: seq,
                        step: name.clone(),
                    },
                    format!("{name} done"),
                );
                self.finish_step(tx, i, j, kind, None);
            }
            Outcome::Skipped(why) => {
                tx.event(
                    EventKind::StepSkipped {
                        operation: seq,
                        step: name.clone(),
                        left: Vec::new(),
                        unreachable_since: None,
                    },
                    why.clone(),
                );
                self.finish_step(tx, i, j, kind, Some(why));
            }
            Outcome::InProgress(poll_after, message) => {
                let until = now + poll_after;
                tx.rec.operations[i].wake_at = Some(until);
                // A command's answer was read: the step no longer waits on
                // it, only on time.
                tx.rec.operations[i].steps[j].deadline = None;
                let reason = match &message {
                    Some(m) => {
                        self.progress_reported(tx, i, j, m.clone());
                        m.to_string()
                    }
                    None => "in progress".into(),
                };
                tx.notice(EngineEventKind::StepWaiting {
                    operation: seq,
                    step: name,
                    until: Some(until),
                    reason,
                });
            }
            Outcome::AwaitAgent(deadline) => {
                tx.rec.operations[i].steps[j].deadline = Some(deadline);
                tx.rec.operations[i].wake_at = Some(deadline);
                tx.notice(EngineEventKind::StepWaiting {
                    operation: seq,
                    step: name,
                    until: Some(deadline),
                    reason: "waiting for the agent's first poll".into(),
                });
            }
            Outcome::AwaitCommand(mut command) => {
                // One id per attempt, so a retried step never collides with the
                // command of an earlier attempt.
                let id = CommandId::new(format!("{}.{attempt}", command.id))
                    .unwrap_or_else(|_| command.id.clone());
                let step = &mut tx.rec.operations[i].steps[j];
                if step.command.as_ref() != Some(&id) {
                    command.id = id.clone();
                    tx.commands.push(command);
                    tx.event(
                        EventKind::CommandQueued { id: id.clone() },
                        format!("{name}: command {id} queued for the agent"),
                    );
                }
                let step = &mut tx.rec.operations[i].steps[j];
                step.command = Some(id);
                // An in-cluster teardown's first commands wait no longer than its
                // teardown deadline; once past it, each gets the full wait.
                let mut wait = now + self.0.config.command_deadline;
                if teardown && !teardown_over {
                    wait = wait.min(started + window);
                }
                let until = *step.deadline.get_or_insert(wait);
                let until = Some(until);
                tx.rec.operations[i].wake_at = until;
                tx.notice(EngineEventKind::StepWaiting {
                    operation: seq,
                    step: name,
                    until,
                    reason: "waiting for the agent".into(),
                });
            }
            Outcome::ReissueToken => {
                for s in &mut tx.rec.operations[i].steps {
                    if s.name == plan::ISSUE_TOKEN || s.name == plan::INSTALL_AGENT {
                        s.status = StepStatus::Pending;
                    }
                }
                tx.event(
                    EventKind::Note,
                    "the bootstrap token was lost with an earlier process; issuing a new one"
                        .into(),
                );
            }
            Outcome::Failed(error) | Outcome::Unreachable { error, .. } => {
                // In-cluster teardown keeps trying for its teardown deadline (it
                // is skipped once the agent has been out of reach that long,
                // above); other steps, and in-cluster teardown past its deadline
                // whose agent is still heard from, stop after the policy's
                // attempts.
                let used = attempt - tx.rec.operations[i].steps[j].budget_from;
                let retry = error.is_transient()
                    && (used < self.0.config.retry.max_attempts || (teardown && !teardown_over));
                metrics::counter!(
                    if retry { crate::metrics::STEP_RETRIES } else { crate::metrics::STEP_FAILURES },
                    "kind" => kind.label(),
                    "class" => error.class()
                )
                .increment(1);
                tx.event(
                    EventKind::StepFailed {
                        operation: seq,
                        step: name.clone(),
                        attempt,
                        will_retry: retry,
                    },
                    error.to_string(),
                );
                tx.notice(EngineEventKind::StepFailed {
                    operation: seq,
                    step: name.clone(),
                    attempt,
                    error: error.to_string(),
                    will_retry: retry,
                });
                let step = &mut tx.rec.operations[i].steps[j];
                step.last_error = Some(error.to_string());
                step.command = None;
                step.deadline = None;
                if retry {
                    step.status = StepStatus::Pending;
                    let at_least = match error.retry() {
                        crate::error::Retry::After(d) => d,
                        _ => None,
                    };
                    let delay =
                        self.0
                            .config
                            .retry
                            .delay(attempt, at_least, &mut *lock(&self.0.rng));
                    tx.rec.operations[i].wake_at = Some(now + delay);
                } else {
                    let error = if error.is_transient() {
                        Error::Exhausted {
                            attempts: used,
                            last: Box::new(error),
                        }
                    } else {
                        error
                    };
                    self.fail(tx, i, j, error);
                }
            }
        }
        Ok(())
    }

    /// Marks step `j` of operation `i` finished (`skipped`: why not run), and
    /// ends the operation if it was its last.
    /// Keeps a step's progress message in memory, and in the step's record
    /// (and its history) when it is the step's first or the last one stored
    /// is older than [`progress_flush`](super::EngineConfig::progress_flush)
    /// and says something else: the poll writes the record anyway, so a
    /// message costs no write of its own.
    fn progress_reported(&self, tx: &mut Tx, i: usize, j: usize, message: ProgressMessage) {
        let now = tx.j.now;
        let seq = tx.rec.operations[i].seq;
        let step = &mut tx.rec.operations[i].steps[j];
        let note = ProgressNote { message, at: now };
        lock(&self.0.progress).insert(
            tx.rec.id.clone(),
            super::LiveProgress {
                operation: seq,
                step: step.name.clone(),
                note: note.clone(),
            },
        );
        let flush = step.progress.as_ref().is_none_or(|stored| {
            stored.message != note.message && now >= stored.at + self.0.config.progress_flush
        });
        if flush {
            let name = step.name.clone();
            let text = note.message.to_string();
            step.progress = Some(note);
            tx.event(
                EventKind::StepProgress {
                    operation: seq,
                    step: name,
                },
                text,
            );
        }
    }

    fn finish_step(
        &self,
        tx: &mut Tx,
        i: usize,
        j: usize,
        kind: &StepKind,
        skipped: Option<String>,
    ) {
        let seq = tx.rec.operations[i].seq;
        let step = &mut tx.rec.operations[i].steps[j];
        let name = step.name.clone();
        step.status = match &skipped {
            Some(reason) => StepStatus::Skipped {
                reason: reason.clone(),
            },
            None => StepStatus::Done,
        };
        step.command = None;
        step.deadline = None;
        tx.rec.operations[i].wake_at = None;
        tx.notice(EngineEventKind::StepDone {
            operation: seq,
            step: name,
            skipped,
        });
        self.after_step(tx, kind);
        if tx.rec.operations[i].steps.iter().all(|s| s.is_finished()) {
            self.finish(tx, i);
        }
    }

    /// Fails every stack deploy waiting for a dependency that will not be
    /// deployed — failed, gone, being removed, or no longer being deployed —
    /// with a reason naming it; dependents of those fail in turn. Returns
    /// whether any did.
    fn fail_orphaned_deploys(&self, tx: &mut Tx) -> bool {
        let mut any = false;
        loop {
            let rec = &tx.rec;
            let orphan = rec.operations.iter().enumerate().find_map(|(i, op)| {
                if op.kind != OperationKind::StackDeploy || op.cancel_requested {
                    return None;
                }
                let j = op.steps.iter().position(|s| !s.is_finished())?;
                if op.steps[j].status == StepStatus::Failed {
                    return None;
                }
                let entry = rec.stacks.get(op.stack.as_ref()?)?;
                entry.spec.depends_on.iter().find_map(|dep| {
                    let why = match rec.stacks.get(dep).map(|e| &e.state) {
                        None => "was removed".to_owned(),
                        Some(StackState::Deployed) => return None,
                        Some(StackState::Deploying) => {
                            let deploying = rec.operations.iter().any(|o| {
                                o.kind == OperationKind::StackDeploy
                                    && o.stack.as_ref() == Some(dep)
                                    && !o.cancel_requested
                            });
                            if deploying {
                                return None;
                            }
                            "is no longer being deployed".to_owned()
                        }
                        Some(StackState::Failed(f)) => {
                            format!("failed at {}: {}", f.step, f.error)
                        }
                        Some(other) => format!("is {}", other.name()),
                    };
                    Some((i, j, format!("dependency {dep} {why}")))
                })
            });
            let Some((i, j, why)) = orphan else {
                return any;
            };
            any = true;
            let seq = tx.rec.operations[i].seq;
            let name = tx.rec.operations[i].steps[j].name.clone();
            tx.event(
                EventKind::StepFailed {
                    operation: seq,
                    step: name,
                    attempt: tx.rec.operations[i].steps[j].attempts,
                    will_retry: false,
                },
                why.clone(),
            );
            self.fail(
                tx,
                i,
                j,
                Error::Rejected {
                    service: "engine".into(),
                    detail: why,
                    source: None,
                },
            );
        }
    }

    /// Bookkeeping after a step finished: stack states.
    fn after_step(&self, tx: &mut Tx, kind: &StepKind) {
        let now = tx.j.now;
        let (event, name) = match kind {
            StepKind::StackApply(name) => (StackEvent::DeploySucceeded, name.clone()),
            StepKind::StackDestroy(name) => (StackEvent::DestroySucceeded, name.clone()),
            _ => return,
        };
        let from = tx.rec.stacks.get(&name).map(|e| e.state.name());
        if let Ok(to) = tx.rec.stacks.apply(&name, &event, now) {
            tx.j.stack_transition(&tx.rec, &name, from, &to);
            if event == StackEvent::DestroySucceeded {
                let _ = tx.rec.stacks.forget(&name);
            }
        }
    }

    /// Ends a finished operation: the workspace transition it leads to, and its
    /// removal from the record.
    fn finish(&self, tx: &mut Tx, i: usize) {
        let op = tx.rec.operations.remove(i);
        let event = match op.kind {
            OperationKind::Provision => WorkspaceEvent::AgentFirstPoll,
            OperationKind::Update => WorkspaceEvent::UpdateCompleted,
            OperationKind::Destroy => WorkspaceEvent::DestroyCompleted,
            OperationKind::StackDeploy | OperationKind::StackDestroy => return,
            OperationKind::Purge => {
                if tx.purge.is_some() {
                    tx.rec.purged_at = Some(tx.j.now);
                    tx.event(
                        EventKind::Purged,
                        "commands, checkpoints, bootstrap tokens and agent credentials deleted; the record and its history are kept".into(),
                    );
                }
                return;
            }
        };
        if op.cancel_requested {
            return;
        }
        match step(&tx.rec.state, &event, tx.j.now) {
            Ok(t) => {
                let why = match op.kind {
                    OperationKind::Provision => "the agent's first authenticated poll arrived",
                    OperationKind::Update => "every changed layer is applied",
                    _ => "everything is torn down",
                };
                if matches!(op.kind, OperationKind::Provision | OperationKind::Update) {
                    // Every layer now matches the spec where it is concerned.
                    for layer in tx.rec.layers.values_mut() {
                        layer.spec = tx.rec.spec.clone();
                    }
                    tx.rec.applied = Some(tx.rec.spec.clone());
                }
                let left = tx.rec.left_behind.len();
                let why = if op.kind == OperationKind::Destroy && left > 0 {
                    format!(
                        "{why}, but for what the receipt lists ({left} step(s) left things behind)"
                    )
                } else {
                    why.to_owned()
                };
                tx.j.transition(&mut tx.rec, t, &why);
                if tx.rec.state == WorkspaceState::Destroyed {
                    tx.rec.operations.clear();
                    tx.rec.cluster = None;
                    if let Some(policy) = self.0.config.purge {
                        let now = tx.j.now;
                        tx.j.plan(&mut tx.rec, OperationKind::Purge, None, plan::purge());
                        if let Some(purge) = tx.rec.operations.last_mut() {
                            purge.wake_at = Some(now + policy.after);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "finished operation no longer matches the workspace state")
            }
        }
    }

    /// Fails step `j` of operation `i` for good.
    fn fail(&self, tx: &mut Tx, i: usize, j: usize, error: Error) {
        let now = tx.j.now;
        let op = &mut tx.rec.operations[i];
        op.steps[j].status = StepStatus::Failed;
        op.steps[j].last_error = Some(error.to_string());
        op.wake_at = None;
        let step_name = op.steps[j].name.clone();
        let step_kind = StepKind::of(op.kind, op.stack.as_ref(), &op.steps[j]);
        let kind = op.kind;
        let stack = op.stack.clone();
        match kind {
            OperationKind::StackDeploy | OperationKind::StackDestroy => {
                let Some(name) = stack else { return };
                let from = tx.rec.stacks.get(&name).map(|e| e.state.name());
                let event = StackEvent::OperationFailed {
                    step: step_name,
                    error: error.to_string(),
                };
                if let Ok(to) = tx.rec.stacks.apply(&name, &event, now) {
                    tx.j.stack_transition(&tx.rec, &name, from, &to);
                }
            }
            _ => {
                // A destroy's stack teardown failing fails the stack and the destroy.
                if let Some(StepKind::StackDestroy(name)) = step_kind {
                    let event = StackEvent::OperationFailed {
                        step: step_name.clone(),
                        error: error.to_string(),
                    };
                    let from = tx.rec.stacks.get(&name).map(|e| e.state.name());
                    if let Ok(to) = tx.rec.stacks.apply(&name, &event, now) {
                        tx.j.stack_transition(&tx.rec, &name, from, &to);
                    }
                }
                let event = WorkspaceEvent::OperationFailed {
                    step: step_name,
                    error: error.to_string(),
                };
                if let Ok(t) = step(&tx.rec.state, &event, now) {
                    tx.j.transition(&mut tx.rec, t, &error.to_string());
                    if let WorkspaceState::Failed(f) = &mut tx.rec.state {
                        f.retryable = Some(!matches!(error.retry(), crate::Retry::Never));
                    }
                }
            }
        }
    }
}

/// The id the executor asked for, before the engine added the attempt number.
fn base_command_id(queued: &CommandId, attempt: u32) -> CommandId {
    queued
        .as_str()
        .strip_suffix(&format!(".{attempt}"))
        .and_then(|base| CommandId::new(base).ok())
        .unwrap_or_else(|| queued.clone())
}

fn waiting<T>(progress: Progress<T>) -> Outcome {
    match progress {
        Progress::Ready(_) => Outcome::Done,
        Progress::InProgress {
            poll_after,
            message,
        } => Outcome::InProgress(poll_after, message),
        Progress::AwaitCommand(command) => Outcome::AwaitCommand(command),
    }
}

/// Whether an operation cannot run now whatever the time: it failed (and waits
/// for a retry or a destroy), it deploys a stack whose dependencies are not
/// deployed yet (it runs once they are), it is a destroy waiting for superseded operations to
/// finish their running step, it deploys a stack into a workspace that is not
/// `Active` or `Updating`, or it concerns a stack whose superseded operation has
/// not finished its running step yet.
fn blocked(rec: &WorkspaceRecord, op: &OperationRecord) -> bool {
    op.steps.iter().any(|s| s.status == StepStatus::Failed)
        || (op.kind == OperationKind::StackDeploy
            && !op.cancel_requested
            && waits_for_dependencies(rec, op))
        || (op.kind == OperationKind::Destroy && rec.operations.iter().any(|o| o.cancel_requested))
        || (op.kind == OperationKind::StackDeploy
            && !op.cancel_requested
            && !matches!(rec.state, WorkspaceState::Active | WorkspaceState::Updating))
        || (op.stack.is_some()
            && !op.cancel_requested
            && rec
                .operations
                .iter()
                .any(|o| o.cancel_requested && o.stack == op.stack && mid_step(o)))
}

/// When the workspace next needs driving: now if an operation can run, else the
/// earliest wake time of a waiting one; `None` when nothing waits on time.
fn next_wake(rec: &WorkspaceRecord, now: Timestamp) -> Option<Timestamp> {
    rec.operations
        .iter()
        .filter(|op| !blocked(rec, op))
        .map(|op| op.wake_at.unwrap_or(now))
        .min()
}

/// Whether a stack deploy waits for dependencies still deploying.
fn waits_for_dependencies(rec: &WorkspaceRecord, op: &OperationRecord) -> bool {
    let Some(entry) = op.stack.as_ref().and_then(|s| rec.stacks.get(s)) else {
        return false;
    };
    entry.spec.depends_on.iter().any(|d| {
        rec.stacks
            .get(d)
            .is_none_or(|e| e.state != StackState::Deployed)
    })
}
