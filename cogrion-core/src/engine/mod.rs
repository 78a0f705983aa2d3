//! The lifecycle engine: operations as persisted plans of idempotent steps,
//! driven one step at a time by [`Engine::advance`].
//!
//! # Expected flow
//! A host calls an operation — [`create`](Engine::create),
//! [`update`](Engine::update), [`retry`](Engine::retry),
//! [`destroy`](Engine::destroy), [`deploy_stack`](Engine::deploy_stack),
//! [`remove_stack`](Engine::remove_stack) — which checks the request against the
//! workspace's state, plans the operation's steps and stores them with the
//! workspace in one compare-and-swap write. Then something calls
//! [`advance`](Engine::advance) for the workspace until it answers
//! [`Action::Done`]: the built-in [`Driver`](crate::Driver), or the host's own
//! scheduler. Each call takes the workspace's lease, runs the next step through
//! the traits, and persists the outcome with a fenced compare-and-swap write.
//!
//! # Guarantees
//! - **Crash-safe.** All state is in the store. A process can die anywhere —
//!   before a step, between a step's side effect and the write of its outcome,
//!   after it — and the next `advance`, on any replica, resumes from the last
//!   persisted step. Steps are idempotent (deterministic names, idempotency keys,
//!   checkpoints), so a repeated effect adopts what the first one did.
//! - **One driver at a time.** A replica that lost the lease, or whose write meets
//!   a newer revision, stops and changes nothing. Within one engine, calls of
//!   [`advance`](Engine::advance) for one workspace from several tasks run one
//!   after the other.
//! - **Clocks may disagree.** Whether a lease has expired is the store's
//!   judgement, by its own clock; a replica trusts a lease for at most its time
//!   to live from when it asked, by its own clock. A replica whose clock runs
//!   ahead never takes a lease another still holds.
//! - **No command runs twice at once.** A command its step gave up on is
//!   withdrawn before the retry is queued if no agent had it; if one did, the
//!   agent is asked to cancel it on every poll and the retry waits for its
//!   answer (recorded, then ignored) or for a new agent's connection.
//! - **Agent identities hold.** A bootstrap whose answer was lost is replayed
//!   (same token, same key: the certificate already issued); a renewal is
//!   checked and stored in one store operation; a re-bootstrap revokes every
//!   certificate before its token exists and waits only for that token's
//!   agent. [`agent_connectivity`](Engine::agent_connectivity) and
//!   [`check_agents`](Engine::check_agents) say, on any replica, whether an
//!   agent is seen and since when it is silent.
//! - **Bounded retries.** A transient error is retried with exponential backoff and
//!   full jitter, its attempt count persisted; a permanent error, or the last
//!   allowed attempt, fails the operation with its step and error recorded.
//!   What is not the step's — the engine's store failing under it, an
//!   implementation this engine lacks ([`Error::NotConfigured`]) — spends no
//!   attempt: `advance` returns it and keeps nothing of the attempt.
//! - **Long calls keep their lease.** A step's lease is renewed while its
//!   call runs; a call past [`EngineConfig::call_timeout`] is cancelled; a
//!   lease found lost cancels the call.
//! - **Retry resumes.** [`retry`](Engine::retry) continues a failed operation at the
//!   failed step; finished steps never run again.
//! - **Failures can be corrected.** [`correct`](Engine::correct) and
//!   [`revert`](Engine::revert) resume a failed provision or update with another
//!   spec, at its failed step.
//! - **Destroy converges, or says exactly why.** Every teardown step is
//!   idempotent; in-cluster teardown that cannot reach the agent is skipped after
//!   a deadline with a receipt; control-plane teardown is never skipped; a step
//!   that fails for good names the blocker, which the host fixes and retries or
//!   [`abandon`](Engine::abandon)s with a receipt.
//! - **Nothing outlives its retention.** A destroyed workspace's commands,
//!   checkpoints, tokens and credentials are purged after
//!   [`EngineConfig::purge`]'s retention.
//!
//! # Caveats
//! A step's attempt is counted when it fails; a process that crashes in the middle
//! of an attempt, over and over, retries without limit. Steps waiting on the
//! cloud or the agent hold no thread: `advance` returns and the caller wakes it.

mod agents;
mod correct;
mod driver;
mod events;
mod feed;
mod journal;
mod leftovers;
mod plan;
mod retry;
mod run;
mod status;
mod teardown;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use agents::{AgentCheck, AgentConnectivity};
pub use driver::{Driver, DriverConfig, DriverHandle, DriverStats};
pub use events::{EngineEvent, EngineEventKind};
pub use retry::RetryPolicy;
pub use status::{
    OperationStatus, SpecStatus, StackSummary, StepNow, WorkspacePage, WorkspaceStatus,
};
pub use teardown::{AbandonTarget, DestroyPlan, PlannedStep};

use journal::Journal;

use crate::agent::{AgentInstaller, BootstrapToken};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::executor::{Executor, ExecutorKind};
use crate::ids::{HolderId, Labels, StackName, WorkspaceId};
use crate::lock;
use crate::provisioner::CloudProvisioner;
use crate::spec::{CloudTarget, StackSpec, WorkspaceSpec};
use crate::stack::StackEvent;
use crate::state::{WorkspaceEvent, WorkspaceState, step};
use crate::store::{
    Actor, EventKind, EventRecord, EventSeq, HistoryRetention, OperationKind, OperationRecord,
    StepStatus, WorkspaceRecord, WorkspaceStore, WorkspaceWrite,
};
use crate::transport::{AgentEvent, AgentEventSink, AgentTransport};

/// What the caller of [`Engine::advance`] should do next for that workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Call `advance` again now: there is more to do.
    RunAgain,
    /// Nothing to do before this time (a cloud operation in progress, a backoff, a
    /// lease held by another replica).
    WakeAt(Timestamp),
    /// Waiting for the agent (its first poll, a command's result): call again on
    /// an agent event for this workspace, or at the deadline.
    AwaitAgent {
        /// When the wait gives up.
        until: Option<Timestamp>,
    },
    /// No operation in progress: nothing to do until the next request.
    Done,
}

/// Which cloud a [`CloudProvisioner`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloudKind {
    /// AWS.
    Aws,
    /// Google Cloud.
    Gcp,
    /// Azure.
    Azure,
    /// Cogrion's simulated cloud.
    Simulated,
}

impl CloudKind {
    /// The cloud a workspace targets.
    pub fn of(target: &CloudTarget) -> Self {
        match target {
            CloudTarget::Aws { .. } => Self::Aws,
            CloudTarget::Gcp { .. } => Self::Gcp,
            CloudTarget::Azure { .. } => Self::Azure,
            CloudTarget::Simulated => Self::Simulated,
        }
    }

    /// Its name, as stores keep it (`aws`, `gcp`, `azure`, `simulated`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Gcp => "gcp",
            Self::Azure => "azure",
            Self::Simulated => "simulated",
        }
    }
}

impl std::fmt::Display for CloudKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CloudKind {
    type Err = crate::InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Aws, Self::Gcp, Self::Azure, Self::Simulated]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| crate::InvalidValue::Malformed {
                what: "cloud kind",
                reason: format!("{s:?} is not one of aws, gcp, azure, simulated"),
            })
    }
}

/// The engine's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// This replica's name, written into leases and the history.
    pub holder: HolderId,
    /// How long a lease lasts unless renewed (default 30 s). While a step's
    /// call runs, its lease is renewed every third of this.
    pub lease_ttl: Duration,
    /// The longest a step's call (to a provisioner, an executor or the agent
    /// installer) may run before it is cancelled (default 10 min): the
    /// attempt fails as a transient error and is retried.
    pub call_timeout: Duration,
    /// How transient errors are retried.
    pub retry: RetryPolicy,
    /// How long provisioning waits for the agent's first poll (default 15 min).
    pub agent_poll_deadline: Duration,
    /// How long a step waits for an agent command's result (default 15 min).
    pub command_deadline: Duration,
    /// How long an in-cluster teardown step keeps trying before it is skipped,
    /// if the agent (or, for its uninstall, the cluster) has been out of reach
    /// that long (default 10 min).
    pub teardown_deadline: Duration,
    /// How long a bootstrap token is valid (default 1 h).
    pub token_ttl: Duration,
    /// How long an agent may go unseen before
    /// [`check_agents`](Engine::check_agents) reports it silent
    /// ([`EventKind::AgentSilent`]) and [`agent_connectivity`](Engine::agent_connectivity)
    /// says so (default 10 min). Keep it above the gateway's
    /// [`seen_interval`](crate::agent::GatewayConfig::seen_interval), the grain of
    /// what the store knows.
    pub agent_silence: Duration,
    /// When and how a destroyed workspace is purged (default: after 7 days,
    /// keeping its record and history); `None`: never.
    pub purge: Option<PurgePolicy>,
    /// Seed of the backoff jitter (random when `None`); set it for reproducible
    /// simulations.
    pub seed: Option<u64>,
    /// How often a step's changing progress message is written to the store
    /// (default 30 s): the latest is kept in memory and shown by
    /// [`status`](Engine::status) at once; the store gets the first, then at
    /// most one changed message per interval (into the step's record, which
    /// the poll writes anyway, and its history as [`EventKind::StepProgress`]).
    pub progress_flush: Duration,
    /// How often [`watch`](Engine::watch) reads the store for events other
    /// replicas committed (default 250 ms); this engine's own wake it at once.
    pub feed_poll: Duration,
}

impl EngineConfig {
    /// The defaults, for the replica `holder`.
    pub fn new(holder: HolderId) -> Self {
        Self {
            holder,
            lease_ttl: Duration::from_secs(30),
            call_timeout: Duration::from_secs(600),
            retry: RetryPolicy::default(),
            agent_poll_deadline: Duration::from_secs(15 * 60),
            command_deadline: Duration::from_secs(15 * 60),
            teardown_deadline: Duration::from_secs(10 * 60),
            token_ttl: Duration::from_secs(3600),
            agent_silence: Duration::from_secs(600),
            purge: Some(PurgePolicy::default()),
            seed: None,
            progress_flush: Duration::from_secs(30),
            feed_poll: Duration::from_millis(250),
        }
    }

    /// With this interval between reads of the store by
    /// [`watch`](Engine::watch).
    pub fn with_feed_poll(mut self, every: Duration) -> Self {
        self.feed_poll = every;
        self
    }

    /// With this interval between writes of a step's changing progress
    /// message.
    pub fn with_progress_flush(mut self, every: Duration) -> Self {
        self.progress_flush = every;
        self
    }

    /// With this limit on a step's call.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// With this threshold of agent silence.
    pub fn with_agent_silence(mut self, silence: Duration) -> Self {
        self.agent_silence = silence;
        self
    }

    /// With this retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// With this lease time to live.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// With these deadlines: the agent's first poll, a command's result, an
    /// in-cluster teardown step.
    pub fn with_deadlines(
        mut self,
        agent_poll: Duration,
        command: Duration,
        teardown: Duration,
    ) -> Self {
        self.agent_poll_deadline = agent_poll;
        self.command_deadline = command;
        self.teardown_deadline = teardown;
        self
    }

    /// With this purge policy (`None`: destroyed workspaces are never purged).
    pub fn with_purge(mut self, purge: Option<PurgePolicy>) -> Self {
        self.purge = purge;
        self
    }

    /// With a fixed jitter seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// What happens to a destroyed workspace's data, and when.
///
/// Once a workspace is `Destroyed`, the engine plans a purge that runs after
/// `after`: it deletes the workspace's agent commands, checkpoints, bootstrap
/// tokens and agent credentials ([`RecordStore::purge`](crate::store::RecordStore::purge)),
/// and keeps or deletes its record and history as `history` says. The
/// retention is read when the purge runs, so changing it applies to
/// workspaces destroyed earlier too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgePolicy {
    /// How long after the destroy (default 7 days).
    pub after: Duration,
    /// Whether the record and history are kept (the default) or deleted.
    pub history: HistoryRetention,
}

impl PurgePolicy {
    /// Purge `after` the destroy, with the history kept or deleted.
    pub fn new(after: Duration, history: HistoryRetention) -> Self {
        Self { after, history }
    }
}

impl Default for PurgePolicy {
    fn default() -> Self {
        Self::new(Duration::from_secs(7 * 24 * 3600), HistoryRetention::Keep)
    }
}

/// Builds an [`Engine`].
#[derive(Debug)]
pub struct EngineBuilder {
    store: Arc<dyn WorkspaceStore>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    clouds: BTreeMap<CloudKind, Arc<dyn CloudProvisioner>>,
    executors: BTreeMap<ExecutorKind, Arc<dyn Executor>>,
    installer: Option<Arc<dyn AgentInstaller>>,
    transport: Option<Arc<dyn AgentTransport>>,
}

impl EngineBuilder {
    /// An engine over `store`, with the system clock and default settings for a
    /// holder named `cogrion-<random>` (give each replica a stable, unique name
    /// with [`config`](Self::config): two replicas under one name share a lease).
    pub fn new(store: Arc<dyn WorkspaceStore>) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
            config: EngineConfig::new(
                HolderId::new(format!("cogrion-{:016x}", rand::random::<u64>()))
                    .expect("a valid holder"),
            ),
            clouds: BTreeMap::new(),
            executors: BTreeMap::new(),
            installer: None,
            transport: None,
        }
    }

    /// Uses this clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Uses these settings.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Provisions workspaces on `cloud` with `provisioner`.
    pub fn cloud(mut self, cloud: CloudKind, provisioner: Arc<dyn CloudProvisioner>) -> Self {
        self.clouds.insert(cloud, provisioner);
        self
    }

    /// Deploys stacks of `executor.kind()` with `executor`.
    pub fn executor(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executors.insert(executor.kind(), executor);
        self
    }

    /// Installs Cluster Agents with `installer` (required).
    pub fn agent_installer(mut self, installer: Arc<dyn AgentInstaller>) -> Self {
        self.installer = Some(installer);
        self
    }

    /// Notifies and disconnects agents through `transport`.
    pub fn transport(mut self, transport: Arc<dyn AgentTransport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The engine. Fails if no agent installer was given.
    pub fn build(self) -> Result<Engine> {
        let installer = self.installer.ok_or_else(|| Error::Rejected {
            service: "engine".into(),
            detail: "an agent installer is required (EngineBuilder::agent_installer)".into(),
            source: None,
        })?;
        let rng = match self.config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        crate::metrics::describe();
        let (events, _) = broadcast::channel(4096);
        let (wakeups, _) = broadcast::channel(4096);
        Ok(Engine(Arc::new(Inner {
            store: self.store,
            clock: self.clock,
            config: self.config,
            clouds: self.clouds,
            executors: self.executors,
            installer,
            transport: self.transport,
            rng: Mutex::new(rng),
            leases: Mutex::default(),
            tokens: Mutex::default(),
            turns: Mutex::default(),
            events,
            wakeups,
            progress: Mutex::default(),
        })))
    }
}

/// The lifecycle engine. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Engine(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    store: Arc<dyn WorkspaceStore>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    clouds: BTreeMap<CloudKind, Arc<dyn CloudProvisioner>>,
    executors: BTreeMap<ExecutorKind, Arc<dyn Executor>>,
    installer: Arc<dyn AgentInstaller>,
    transport: Option<Arc<dyn AgentTransport>>,
    rng: Mutex<StdRng>,
    leases: Mutex<HashMap<WorkspaceId, run::Held>>,
    /// Bootstrap tokens between the step that issues them and the step that
    /// installs them, by workspace, with the operation and the issuing attempt.
    /// Never stored: a process that dies in between issues a new one (the old
    /// hash is replaced).
    tokens: Mutex<HashMap<WorkspaceId, (u64, u32, BootstrapToken)>>,
    /// One `advance` at a time per workspace within this engine: a turn is
    /// held from the lease's use to the write of the step's outcome.
    turns: Mutex<HashMap<WorkspaceId, Arc<tokio::sync::Mutex<()>>>>,
    events: broadcast::Sender<EngineEvent>,
    wakeups: broadcast::Sender<WorkspaceId>,
    /// The latest progress message of each workspace's running step, as its
    /// call reported it here (the store has it as of the last flush).
    progress: Mutex<HashMap<WorkspaceId, LiveProgress>>,
}

/// A progress message this engine's call of a step received.
#[derive(Debug, Clone)]
struct LiveProgress {
    operation: u64,
    step: String,
    note: crate::store::ProgressNote,
}

impl Engine {
    /// Starts building an engine over `store`.
    pub fn builder(store: Arc<dyn WorkspaceStore>) -> EngineBuilder {
        EngineBuilder::new(store)
    }

    /// The store the engine writes to.
    pub fn store(&self) -> &Arc<dyn WorkspaceStore> {
        &self.0.store
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.0.clock
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.0.config
    }

    /// Engine events as they happen (operations planned, steps started, waiting,
    /// done, failed; state changes). A slow subscriber misses events rather than
    /// slowing the engine; the durable history has them all.
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.0.events.subscribe()
    }

    /// Workspaces that have something new to do (a request, an agent event), as
    /// they arise. The [`Driver`](crate::Driver) listens here; a host with its own
    /// scheduler can too.
    pub fn wakeups(&self) -> broadcast::Receiver<WorkspaceId> {
        self.0.wakeups.subscribe()
    }

    fn wake(&self, id: &WorkspaceId) {
        let _ = self.0.wakeups.send(id.clone());
    }

    /// Publishes what a write that succeeded did (and counts the operations
    /// it planned).
    fn publish(&self, events: Vec<EngineEvent>) {
        for e in events {
            if let EngineEventKind::OperationStarted { kind, .. } = &e.kind {
                metrics::counter!(crate::metrics::OPERATIONS_STARTED, "kind" => kind.as_str())
                    .increment(1);
            }
            let _ = self.0.events.send(e);
        }
    }

    /// The workspace's record.
    pub async fn workspace(&self, id: &WorkspaceId) -> Result<WorkspaceRecord> {
        Ok(self.0.store.get_workspace(id).await?.value)
    }

    /// The workspace's whole history, oldest first.
    pub async fn history(&self, id: &WorkspaceId) -> Result<Vec<EventRecord>> {
        let mut out = Vec::new();
        loop {
            let after = out.last().map_or(EventSeq(0), |e: &EventRecord| e.seq);
            let page = self.0.store.read_events(id, after, 1000).await?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }

    /// Creates a workspace in `Provisioning` and plans its provisioning. The spec
    /// must pass [`WorkspaceSpec::validate`] and name a cloud the engine has a
    /// provisioner for.
    pub async fn create(
        &self,
        id: WorkspaceId,
        spec: WorkspaceSpec,
        actor: Actor,
    ) -> Result<WorkspaceRecord> {
        self.create_labelled(id, spec, Labels::new(), actor).await
    }

    /// [`create`](Self::create) with the host's labels, to find the
    /// workspace by ([`list`](Self::list)); [`set_labels`](Self::set_labels)
    /// changes them later.
    pub async fn create_labelled(
        &self,
        id: WorkspaceId,
        spec: WorkspaceSpec,
        labels: Labels,
        actor: Actor,
    ) -> Result<WorkspaceRecord> {
        spec.validate()?;
        self.check_cloud(&spec)?;
        let now = self.0.clock.now();
        let mut record = WorkspaceRecord::new(id.clone(), spec, now);
        record.labels = labels;
        record.wake_at = Some(now);
        let mut j = Journal::new(actor, now);
        j.event(EventKind::Created, "workspace created".into());
        j.plan(
            &mut record,
            OperationKind::Provision,
            None,
            plan::provision(),
        );
        let mut write = WorkspaceWrite::create(record.clone(), now);
        write.events = std::mem::take(&mut j.events);
        self.0.store.commit(write).await?;
        self.publish(j.notices);
        self.wake(&id);
        Ok(record)
    }

    /// Resumes the failed operation of a `Failed` workspace at its failed step
    /// (finished steps do not run again). A failed wait for the agent restarts at
    /// issuing a new bootstrap token, since a token works once.
    pub async fn retry(&self, id: &WorkspaceId, actor: Actor) -> Result<WorkspaceRecord> {
        self.mutate(id, &actor, |rec, j| {
            let t = step(&rec.state, &WorkspaceEvent::RetryRequested, j.now)?;
            let kind = match &rec.state {
                WorkspaceState::Failed(f) => match f.operation {
                    crate::state::WorkspaceOperation::Provision => OperationKind::Provision,
                    crate::state::WorkspaceOperation::Update => OperationKind::Update,
                    crate::state::WorkspaceOperation::Destroy => OperationKind::Destroy,
                },
                _ => unreachable!("retry is accepted only from Failed"),
            };
            let op = rec
                .operations
                .iter_mut()
                .find(|o| o.kind == kind)
                .ok_or_else(|| Error::Corrupt {
                    source: None,
                    what: crate::error::Resource::Workspace(rec.id.clone()),
                    detail: format!("failed {kind:?} operation has no stored plan"),
                })?;
            reset_failed_steps(op, j.now);
            j.transition(rec, t, "retry requested");
            Ok(())
        })
        .await
    }

    /// Adds a stack (or upgrades it, if one of that name exists) and plans its
    /// deploy: [`deploy_stacks`](Self::deploy_stacks) with one stack.
    pub async fn deploy_stack(
        &self,
        id: &WorkspaceId,
        spec: StackSpec,
        actor: Actor,
    ) -> Result<WorkspaceRecord> {
        self.deploy_stacks(id, vec![spec], actor).await
    }

    /// Adds (or upgrades, for names that exist) several stacks at once — a
    /// graph, whose stacks may depend on each other — and plans a deploy of
    /// each. All or nothing: a bad spec, a duplicate name, an unknown
    /// dependency or a cycle refuses the whole request and changes nothing.
    ///
    /// Refused unless the workspace is `Active` or `Updating` and every
    /// dependency is deployed or being deployed. A deploy whose dependencies are
    /// still deploying waits for them; if one of them fails (or is removed),
    /// the waiting stack fails too, with a reason naming it.
    pub async fn deploy_stacks(
        &self,
        id: &WorkspaceId,
        specs: Vec<StackSpec>,
        actor: Actor,
    ) -> Result<WorkspaceRecord> {
        for spec in &specs {
            spec.validate()?;
            self.executor(ExecutorKind::of(&spec.executor))?;
        }
        self.mutate(id, &actor, |rec, j| {
            let mut names = std::collections::BTreeSet::new();
            let mut added = Vec::new();
            let mut upgraded = Vec::new();
            for spec in &specs {
                if !names.insert(spec.name.clone()) {
                    return Err(crate::stack::GraphError::DuplicateStack(spec.name.clone()).into());
                }
                if rec.stacks.get(&spec.name).is_some() {
                    upgraded.push(spec.clone());
                } else {
                    added.push(spec.clone());
                }
            }
            let before: BTreeMap<StackName, _> = names
                .iter()
                .map(|n| (n.clone(), rec.stacks.get(n).map(|e| e.state.name())))
                .collect();
            rec.stacks.add_all(added)?;
            for spec in upgraded {
                rec.stacks.upgrade(spec)?;
            }
            for name in rec.stacks.deploy_order() {
                if !names.contains(&name) {
                    continue;
                }
                let to = rec.stacks.request_deploy(&name, rec.state.name(), j.now)?;
                rec.operations.retain(|o| {
                    !(o.stack.as_ref() == Some(&name)
                        && o.steps.iter().any(|s| s.status == StepStatus::Failed))
                });
                j.stack_transition(rec, &name, before[&name], &to);
                j.plan(
                    rec,
                    OperationKind::StackDeploy,
                    Some(name),
                    plan::stack_deploy(),
                );
            }
            Ok(())
        })
        .await
    }

    /// Resumes a failed stack's operation at its failed step.
    pub async fn retry_stack(
        &self,
        id: &WorkspaceId,
        name: &StackName,
        actor: Actor,
    ) -> Result<WorkspaceRecord> {
        self.mutate(id, &actor, |rec, j| {
            let from = rec.stacks.get(name).map(|e| e.state.name());
            let to = rec.stacks.apply(name, &StackEvent::RetryRequested, j.now)?;
            let op = rec
                .operations
                .iter_mut()
                .find(|o| {
                    o.stack.as_ref() == Some(name)
                        && o.steps.iter().any(|s| s.status == StepStatus::Failed)
                })
                .ok_or_else(|| Error::Corrupt {
                    source: None,
                    what: crate::error::Resource::Stack(rec.id.clone(), name.clone()),
                    detail: "failed stack has no stored operation".into(),
                })?;
            reset_failed_steps(op, j.now);
            j.stack_transition(rec, name, from, &to);
            Ok(())
        })
        .await
    }

    /// Removes a stack: plans its teardown. Refused while other stacks depend on it.
    pub async fn remove_stack(
        &self,
        id: &WorkspaceId,
        name: &StackName,
        actor: Actor,
    ) -> Result<WorkspaceRecord> {
        self.mutate(id, &actor, |rec, j| {
            let from = rec.stacks.get(name).map(|e| e.state.name());
            if matches!(
                rec.state,
                WorkspaceState::Destroying | WorkspaceState::Destroyed
            ) {
                return Err(crate::state::TransitionError {
                    state: rec.state.name(),
                    event: crate::state::EventName::DestroyRequested,
                }
                .into());
            }
            let to = rec.stacks.request_removal(name, j.now)?;
            rec.operations.retain_mut(|o| {
                if o.stack.as_ref() != Some(name) {
                    return true;
                }
                o.cancel_requested = true;
                run::mid_step(o)
            });
            j.stack_transition(rec, name, from, &to);
            j.plan(
                rec,
                OperationKind::StackDestroy,
                Some(name.clone()),
                plan::stack_destroy(),
            );
            Ok(())
        })
        .await
    }

    fn check_cloud(&self, spec: &WorkspaceSpec) -> Result<()> {
        self.provisioner(spec).map(|_| ())
    }

    /// The provisioner registered for `spec`'s cloud, or
    /// [`Error::NotConfigured`] (at a request and at a step alike).
    fn provisioner(&self, spec: &WorkspaceSpec) -> Result<&Arc<dyn CloudProvisioner>> {
        let cloud = CloudKind::of(&spec.cloud);
        self.0
            .clouds
            .get(&cloud)
            .ok_or_else(|| Error::NotConfigured {
                what: format!("no provisioner registered for {cloud:?}"),
            })
    }

    /// The executor registered for `kind` stacks, or
    /// [`Error::NotConfigured`] (at a request and at a step alike).
    fn executor(&self, kind: ExecutorKind) -> Result<&Arc<dyn Executor>> {
        self.0
            .executors
            .get(&kind)
            .ok_or_else(|| Error::NotConfigured {
                what: format!("no executor registered for {kind:?} stacks"),
            })
    }

    /// Applies an API request to a workspace: load, change a copy, write it back
    /// with compare-and-swap (retrying a few times if the engine wrote in
    /// between), and wake it. A refused request writes nothing.
    async fn mutate<F>(
        &self,
        id: &WorkspaceId,
        actor: &Actor,
        mut change: F,
    ) -> Result<WorkspaceRecord>
    where
        F: FnMut(&mut WorkspaceRecord, &mut Journal) -> Result<()> + Send,
    {
        match self
            .write_record(id, actor, true, |rec, j| change(rec, j).map(|()| true))
            .await?
        {
            Some(rec) => Ok(rec),
            None => unreachable!("a change that always writes wrote nothing"),
        }
    }

    /// Load, change a copy, write it back with compare-and-swap, retrying a
    /// few times if another writer came in between. `change` answers whether
    /// there is anything to write (`false`: nothing is, and `None` is
    /// returned); `wake`: the workspace is due at once and woken, as after a
    /// request (else its schedule is left alone, as for a note).
    async fn write_record<F>(
        &self,
        id: &WorkspaceId,
        actor: &Actor,
        wake: bool,
        mut change: F,
    ) -> Result<Option<WorkspaceRecord>>
    where
        F: FnMut(&mut WorkspaceRecord, &mut Journal) -> Result<bool> + Send,
    {
        for _ in 0..16 {
            let current = self.0.store.get_workspace(id).await?;
            let now = self.0.clock.now();
            let mut rec = current.value.clone();
            let mut j = Journal::new(actor.clone(), now);
            if !change(&mut rec, &mut j)? {
                return Ok(None);
            }
            rec.updated_at = now;
            if wake {
                rec.wake_at = Some(now);
            }
            let mut write = WorkspaceWrite::update(rec.clone(), current.revision, now);
            write.events = std::mem::take(&mut j.events);
            match self.0.store.commit(write).await {
                Ok(_) => {
                    self.publish(j.notices);
                    if wake {
                        self.wake(id);
                    }
                    return Ok(Some(rec));
                }
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Unavailable {
            service: "engine".into(),
            detail: format!("workspace {id} kept changing; try again"),
            source: None,
        })
    }
}

/// Puts an operation's failed step (and, for a failed wait for the agent, the
/// token and install steps before it) back to pending.
fn reset_failed_steps(op: &mut OperationRecord, now: Timestamp) {
    let agent_wait_failed = op
        .steps
        .iter()
        .any(|s| s.name == plan::AWAIT_AGENT && s.status == StepStatus::Failed);
    for s in &mut op.steps {
        let restart = s.status == StepStatus::Failed
            || (agent_wait_failed
                && [plan::ISSUE_TOKEN, plan::INSTALL_AGENT].contains(&s.name.as_str()));
        if restart {
            s.status = StepStatus::Pending;
            s.budget_from = s.attempts;
            s.command = None;
            s.deadline = None;
            s.started_at = None;
        }
    }
    op.wake_at = Some(now);
}

/// The engine hears agents through its transport: each event wakes the workspace
/// (the facts themselves are already durable in the store).
#[async_trait]
impl AgentEventSink for Engine {
    async fn on_agent_event(&self, event: AgentEvent) -> Result<()> {
        let workspace = match &event {
            AgentEvent::Bootstrapped { workspace, .. }
            | AgentEvent::Polled { workspace, .. }
            | AgentEvent::CommandAnswered { workspace, .. } => workspace.clone(),
        };
        tracing::debug!(workspace = %workspace, ?event, "agent event");
        self.wake(&workspace);
        Ok(())
    }
}
