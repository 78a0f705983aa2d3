//! The built-in driver: a tokio task that calls [`Engine::advance`] for many
//! workspaces at once.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

use super::{Action, Engine};
use crate::clock::Timestamp;
use crate::error::Error;
use crate::ids::WorkspaceId;

/// How often the driver counts the workspaces by state for the metrics.
const WORKSPACE_GAUGES: Duration = Duration::from_secs(15);

/// Settings of the [`Driver`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DriverConfig {
    /// The most workspaces advanced at the same time (default 64).
    pub concurrency: usize,
    /// How often the store is swept for due workspaces — the safety net for
    /// missed wakeups, and how work left by a stopped process is found
    /// (default 1 s).
    pub sweep_interval: Duration,
    /// How long to wait before trying a workspace again after `advance` failed
    /// (default 1 s).
    pub error_backoff: Duration,
    /// How often a workspace waiting on its agent is checked even without an
    /// agent event — the net under a missed wakeup (default 5 s; a read, no write).
    pub agent_recheck: Duration,
    /// How many workspaces the first sweep after start may claim at once
    /// (default 20,000): everything left in flight by a restart is taken up in
    /// one round, each workspace advanced once before any is advanced twice,
    /// instead of in batches sized for steady running (twice the concurrency).
    pub startup_claim: usize,
    /// How often the agents are checked ([`Engine::check_agents`]; default 5
    /// min; a read of every `Active` and `Updating` workspace's credentials
    /// each time): `Active` workspaces whose agent holds no good certificate
    /// any more (it was away past its certificate's life) are re-bootstrapped,
    /// and agents silent past the threshold are reported. `None`: never.
    pub agent_expiry_check: Option<Duration>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            sweep_interval: Duration::from_secs(1),
            error_backoff: Duration::from_secs(1),
            agent_recheck: Duration::from_secs(5),
            startup_claim: 20_000,
            agent_expiry_check: Some(Duration::from_secs(300)),
        }
    }
}

impl DriverConfig {
    /// With this concurrency (at least 1).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// With this sweep interval.
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// With this interval between checks for agents whose certificates all
    /// expired (`None`: no checks).
    pub fn with_agent_expiry_check(mut self, interval: Option<Duration>) -> Self {
        self.agent_expiry_check = interval;
        self
    }
}

/// What a driver did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Calls to `advance`.
    pub advances: u64,
    /// Calls that returned an error.
    pub errors: u64,
}

/// Drives workspaces for hosts that bring no scheduler of their own.
///
/// # Expected flow
/// [`Driver::spawn`] starts a task on the current tokio runtime. It advances every
/// workspace the engine wakes (requests, agent events), every workspace whose
/// timer falls due, and every workspace a periodic sweep of the store finds due —
/// so after a restart it picks up all work left in flight. Hosts with their own
/// scheduler call [`Engine::advance`] themselves and ignore this type.
///
/// # Guarantees
/// At most [`DriverConfig::concurrency`] workspaces run at once, and one
/// workspace never runs twice at once in one driver (across drivers, the lease
/// decides). [`DriverHandle::shutdown`] lets running steps finish and starts no
/// new one: every workspace stays resumable from the store.
///
/// # Caveats
/// Timers follow the engine's clock converted to real time: use a clock that
/// moves with real time ([`SystemClock`](crate::SystemClock)); simulations with a
/// [`ManualClock`](crate::ManualClock) call `advance` directly.
#[derive(Debug)]
pub struct Driver;

/// Controls a running [`Driver`]. Dropping it stops the driver as
/// [`shutdown`](Self::shutdown) would, without waiting.
#[derive(Debug)]
pub struct DriverHandle {
    kick: mpsc::UnboundedSender<WorkspaceId>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<DriverStats>,
}

impl DriverHandle {
    /// Asks the driver to advance `workspace` soon.
    pub fn kick(&self, workspace: &WorkspaceId) {
        let _ = self.kick.send(workspace.clone());
    }

    /// Stops taking new work, waits for running steps to finish, and returns what
    /// the driver did.
    pub async fn shutdown(self) -> DriverStats {
        let _ = self.shutdown.send(true);
        self.task.await.unwrap_or_default()
    }
}

impl Driver {
    /// Starts driving `engine`'s workspaces on the current tokio runtime.
    pub fn spawn(engine: Engine, config: DriverConfig) -> DriverHandle {
        let (kick, kicks) = mpsc::unbounded_channel();
        let (shutdown, stop) = watch::channel(false);
        let wakeups = engine.wakeups();
        let task = tokio::spawn(Loop::new(engine, config).run(kicks, wakeups, stop));
        DriverHandle {
            kick,
            shutdown,
            task,
        }
    }
}

struct Loop {
    engine: Engine,
    config: DriverConfig,
    ready: VecDeque<WorkspaceId>,
    queued: HashSet<WorkspaceId>,
    running: HashSet<WorkspaceId>,
    /// Woken while running: run again when the current call returns.
    rerun: HashSet<WorkspaceId>,
    timers: BTreeMap<Timestamp, BTreeSet<WorkspaceId>>,
    timer_of: std::collections::HashMap<WorkspaceId, Timestamp>,
    tasks: JoinSet<(WorkspaceId, Result<Action, Error>)>,
    /// Which workspace each task advances, so a panicking task can be accounted.
    task_workspace: std::collections::HashMap<tokio::task::Id, WorkspaceId>,
    /// The last sweep's claim came back full: claim again when the queue runs low.
    more_due: bool,
    /// The due time of the last sweep, for those follow-up claims.
    sweep_until: Timestamp,
    /// How many more workspaces the startup sweep may still claim.
    startup_left: usize,
    stats: DriverStats,
}

impl Loop {
    fn new(engine: Engine, config: DriverConfig) -> Self {
        Self {
            engine,
            config,
            ready: VecDeque::new(),
            queued: HashSet::new(),
            running: HashSet::new(),
            rerun: HashSet::new(),
            timers: BTreeMap::new(),
            timer_of: Default::default(),
            tasks: JoinSet::new(),
            task_workspace: Default::default(),
            more_due: false,
            sweep_until: Timestamp::EPOCH,
            startup_left: 0,
            stats: DriverStats::default(),
        }
    }

    fn wake(&mut self, id: WorkspaceId) {
        if self.running.contains(&id) {
            self.rerun.insert(id);
        } else if self.queued.insert(id.clone()) {
            if let Some(t) = self.timer_of.remove(&id)
                && let Some(set) = self.timers.get_mut(&t)
            {
                set.remove(&id);
                if set.is_empty() {
                    self.timers.remove(&t);
                }
            }
            self.ready.push_back(id);
        }
    }

    fn schedule(&mut self, id: WorkspaceId, at: Timestamp) {
        if self.queued.contains(&id) {
            return;
        }
        if let Some(old) = self.timer_of.get(&id).copied() {
            if old <= at {
                return;
            }
            if let Some(set) = self.timers.get_mut(&old) {
                set.remove(&id);
            }
        }
        self.timer_of.insert(id.clone(), at);
        self.timers.entry(at).or_default().insert(id);
    }

    fn fire_timers(&mut self) {
        let now = self.engine.clock().now();
        while let Some(entry) = self.timers.first_entry() {
            if *entry.key() > now {
                break;
            }
            for id in entry.remove() {
                self.timer_of.remove(&id);
                self.wake(id);
            }
        }
    }

    fn start_ready(&mut self) {
        while self.tasks.len() < self.config.concurrency {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            self.queued.remove(&id);
            self.running.insert(id.clone());
            let engine = self.engine.clone();
            let task = self.tasks.spawn({
                let id = id.clone();
                async move {
                    let result = engine.advance(&id).await;
                    (id, result)
                }
            });
            self.task_workspace.insert(task.id(), id);
        }
    }

    fn finished(&mut self, id: WorkspaceId, result: Result<Action, Error>) {
        self.running.remove(&id);
        self.stats.advances += 1;
        let now = self.engine.clock().now();
        match result {
            Ok(Action::RunAgain) => self.wake(id.clone()),
            Ok(Action::WakeAt(t)) => self.schedule(id.clone(), t),
            Ok(Action::AwaitAgent { until }) => {
                let recheck = now + self.config.agent_recheck;
                self.schedule(id.clone(), until.map_or(recheck, |t| t.min(recheck)));
            }
            Ok(Action::Done) => {}
            // Gone (purged with its history, or never created): nothing to drive.
            Err(Error::NotFound(crate::error::Resource::Workspace(_))) => {
                tracing::debug!(workspace = %id, "the workspace is gone; not driving it");
            }
            Err(e) => {
                self.stats.errors += 1;
                tracing::warn!(workspace = %id, error = %e, "advance failed");
                let backoff = match e {
                    Error::LeaseLost { .. } => self.engine.config().lease_ttl,
                    _ => self.config.error_backoff,
                };
                self.schedule(id.clone(), now + backoff);
            }
        }
        if self.rerun.remove(&id) {
            self.wake(id);
        }
    }

    /// Claims workspaces due by `until` and wakes them. It claims only what it
    /// can start soon — up to twice the concurrency, minus
    /// what is already queued or running — so replicas spread the work; when a
    /// claim comes back full, more is claimed as soon as the queue runs low.
    async fn sweep(&mut self, until: Timestamp) {
        self.sweep_until = until;
        let want =
            (2 * self.config.concurrency).saturating_sub(self.ready.len() + self.running.len());
        self.claim(until, want).await;
    }

    /// Claims up to `want` workspaces due by `until` and wakes them.
    async fn claim(&mut self, until: Timestamp, want: usize) {
        if want == 0 {
            self.more_due = true;
            return;
        }
        match self.engine.claim_due(until, want).await {
            Ok(ids) => {
                self.more_due = ids.len() == want;
                for id in ids {
                    self.wake(id);
                }
            }
            Err(e) => {
                self.more_due = false;
                tracing::warn!(error = %e, "claiming due workspaces failed");
            }
        }
    }

    /// The first sweep: everything with work pending, whenever due, up to
    /// [`DriverConfig::startup_claim`], a page of 1,000 at a time — one page per
    /// turn of the loop, so the first workspaces run while the next are claimed.
    async fn startup_page(&mut self) {
        let page = self.startup_left.min(1000);
        self.claim(Timestamp::from_millis(u64::MAX), page).await;
        self.startup_left -= page;
        if !self.more_due {
            self.startup_left = 0;
        }
        if self.startup_left == 0 {
            self.more_due = false;
        }
    }

    async fn run(
        mut self,
        mut kicks: mpsc::UnboundedReceiver<WorkspaceId>,
        mut wakeups: broadcast::Receiver<WorkspaceId>,
        mut stop: watch::Receiver<bool>,
    ) -> DriverStats {
        // What this replica held before a restart is claimable at once.
        match self.engine.recover_leases().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                leases = n,
                "released the leases of this replica's previous run"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not release the previous run's leases; they expire by themselves")
            }
        }
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first_sweep = true;
        let mut expiry_check = tokio::time::interval(
            self.config
                .agent_expiry_check
                .unwrap_or(Duration::from_secs(3600)),
        );
        expiry_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick comes at once: the first check waits one interval.
        expiry_check.tick().await;
        let mut checking: Option<tokio::task::JoinHandle<()>> = None;
        let mut gauges = tokio::time::interval(WORKSPACE_GAUGES);
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut counting: Option<tokio::task::JoinHandle<()>> = None;
        self.startup_left = self.config.startup_claim;
        loop {
            self.fire_timers();
            if self.startup_left > 0 {
                self.startup_page().await;
            } else if self.more_due && self.ready.len() < self.config.concurrency {
                self.sweep(self.sweep_until).await;
            }
            self.start_ready();
            let next_timer = self
                .timers
                .keys()
                .next()
                .map(|t| t.since(self.engine.clock().now()));
            let timer = tokio::time::sleep(next_timer.unwrap_or(Duration::from_secs(3600)));
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => match done {
                    Ok((task, (id, result))) => {
                        self.task_workspace.remove(&task);
                        self.finished(id, result);
                    }
                    Err(e) => {
                        // The workspace is accounted as failed and retried later,
                        // not left marked as running forever.
                        tracing::error!(error = %e, "an advance task panicked");
                        if let Some(id) = self.task_workspace.remove(&e.id()) {
                            let failure = Error::Unavailable { service: "driver".into(), detail: format!("advance panicked: {e}"), source: None};
                            self.finished(id, Err(failure));
                        }
                    }
                },
                Some(id) = kicks.recv() => self.wake(id),
                woken = wakeups.recv() => match woken {
                    Ok(id) => self.wake(id),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.sweep(self.engine.clock().now()).await,
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                _ = sweep.tick() => {
                    // The first tick comes at once: the startup pages cover it.
                    if !first_sweep && self.startup_left == 0 {
                        self.sweep(self.engine.clock().now()).await;
                    }
                    first_sweep = false;
                }
                _ = gauges.tick() => {
                    // The workspaces by state, for the metrics: one count of
                    // the store at a time, in a task of its own.
                    if counting.as_ref().is_none_or(|c| c.is_finished()) {
                        let engine = self.engine.clone();
                        counting = Some(tokio::spawn(async move {
                            match engine.count(&crate::store::ListQuery::new()).await {
                                Ok(counts) => {
                                    for state in crate::state::StateName::ALL {
                                        let n = counts.get(&state).copied().unwrap_or(0);
                                        metrics::gauge!(crate::metrics::WORKSPACES, "state" => state.as_str())
                                            .set(n as f64);
                                    }
                                }
                                Err(e) => tracing::debug!(error = %e, "could not count the workspaces"),
                            }
                        }));
                    }
                }
                _ = expiry_check.tick(), if self.config.agent_expiry_check.is_some() => {
                    // In a task of its own (it reads every Active workspace),
                    // one at a time.
                    if checking.as_ref().is_none_or(|c| c.is_finished()) {
                        let engine = self.engine.clone();
                        checking = Some(tokio::spawn(async move {
                            let actor = crate::store::Actor::Engine { holder: engine.config().holder.clone() };
                            match engine.check_agents(actor).await {
                                Ok(check) => {
                                    if !check.rebootstrapped.is_empty() {
                                        tracing::info!(workspaces = check.rebootstrapped.len(), "re-bootstrapping agents whose certificates expired");
                                    }
                                    if !check.silent.is_empty() {
                                        tracing::warn!(workspaces = check.silent.len(), "agents went silent");
                                    }
                                }
                                Err(e) => tracing::warn!(error = %e, "checking the agents failed"),
                            }
                        }));
                    }
                }
                _ = timer, if next_timer.is_some() => {}
            }
        }
        if let Some(check) = checking {
            check.abort();
        }
        // Graceful: running steps finish and persist; nothing new starts.
        while let Some(done) = self.tasks.join_next().await {
            if let Ok((id, result)) = done {
                self.running.remove(&id);
                self.stats.advances += 1;
                if result.is_err() {
                    self.stats.errors += 1;
                }
            }
        }
        // Another process can take these workspaces over now, not in a lease TTL.
        self.engine.release_leases().await;
        self.stats
    }
}
