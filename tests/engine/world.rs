//! A whole simulated world for engine tests: a manual clock, a store that can
//! "crash" the engine at a chosen commit, the simulated cloud, cluster, executors
//! and agents, and engines that can be thrown away and rebuilt from the store.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedCluster, SimulatedWorld};
use cogrion::*;
use cogrion::{agent::*, provider::*, sim::*, store::*};

pub const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

/// Where a simulated crash hits a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The step's side effect happened; its outcome is never persisted.
    BeforeCommit,
    /// The outcome is persisted; the process dies before it learns so.
    AfterCommit,
}

/// A store that delegates to an [`InMemoryStore`] and can fail one engine commit
/// as a crash would: the engine that sees the error is thrown away.
#[derive(Debug, Clone)]
pub struct CrashStore {
    inner: Arc<dyn WorkspaceStore>,
    /// Engine (fenced) commits so far.
    commits: Arc<AtomicUsize>,
    crash: Arc<Mutex<Vec<(usize, CrashPoint)>>>,
    crashed: Arc<AtomicU64>,
    /// Every write yields to other tasks first, as a store across a network
    /// does: concurrent calls on one task interleave at each write.
    yielding: Arc<std::sync::atomic::AtomicBool>,
    /// Checkpoint writes so far, and the ones that meet a store outage.
    checkpoints: Arc<AtomicUsize>,
    outages: Arc<Mutex<Vec<usize>>>,
}

pub const CRASH: &str = "simulated crash";

/// What a checkpoint write meeting a simulated store outage fails with.
pub const OUTAGE: &str = "simulated store outage";

impl CrashStore {
    pub fn new(inner: Arc<dyn WorkspaceStore>) -> Self {
        Self {
            inner,
            commits: Arc::default(),
            crash: Arc::default(),
            crashed: Arc::default(),
            yielding: Arc::default(),
            checkpoints: Arc::default(),
            outages: Arc::default(),
        }
    }

    /// The checkpoint writes (counted from 0) that fail as in a store outage.
    pub fn fail_checkpoint_writes(&self, at: Vec<usize>) {
        *self.outages.lock().unwrap() = at;
    }

    /// Makes every write yield to other tasks first (so that concurrent
    /// calls interleave).
    pub fn yield_on_writes(&self) {
        self.yielding.store(true, Ordering::SeqCst);
    }

    /// Crash at these (commit index, point) pairs.
    pub fn crash_at(&self, points: Vec<(usize, CrashPoint)>) {
        *self.crash.lock().unwrap() = points;
    }

    pub fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }

    pub fn crashes(&self) -> u64 {
        self.crashed.load(Ordering::SeqCst)
    }

    fn crash_point(&self, fenced: bool) -> Option<CrashPoint> {
        if !fenced {
            return None;
        }
        let n = self.commits.fetch_add(1, Ordering::SeqCst);
        let point = self
            .crash
            .lock()
            .unwrap()
            .iter()
            .find(|(i, _)| *i == n)
            .map(|(_, p)| *p);
        if point.is_some() {
            self.crashed.fetch_add(1, Ordering::SeqCst);
        }
        point
    }
}

fn crashed() -> Error {
    Error::Unavailable {
        service: "process".into(),
        detail: CRASH.into(),
        source: None,
    }
}

impl CrashStore {
    /// An engine commit, crashing before or after it when told to; every other
    /// write goes straight through.
    async fn write(&self, write: BatchWrite) -> Result<BatchOutcome> {
        if self.yielding.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        if matches!(write, BatchWrite::PutCheckpoint { .. }) {
            let n = self.checkpoints.fetch_add(1, Ordering::SeqCst);
            if self.outages.lock().unwrap().contains(&n) {
                return Err(Error::Unavailable {
                    service: "store".into(),
                    detail: OUTAGE.into(),
                    source: None,
                });
            }
        }
        let BatchWrite::Commit(commit) = write else {
            return write.apply_alone(self.inner.as_ref()).await;
        };
        match self.crash_point(commit.fence.is_some()) {
            None => self.inner.commit(commit).await.map(BatchOutcome::Committed),
            Some(CrashPoint::BeforeCommit) => Err(crashed()),
            Some(CrashPoint::AfterCommit) => {
                self.inner.commit(commit).await?;
                Err(crashed())
            }
        }
    }
}

cogrion::delegate_store!(CrashStore, inner);

/// Everything one simulated run needs.
pub struct World {
    pub clock: ManualClock,
    pub store: CrashStore,
    pub cloud: SimulatedCloud,
    pub cluster: SimulatedCluster,
    pub agents: SimulatedAgents,
    pub seed: u64,
    /// `drive` calls `advance` from two tasks at once on each engine.
    pub concurrent_advance: std::sync::atomic::AtomicBool,
    /// How long the world's engines wait for a command's answer, in seconds
    /// (0: two minutes).
    pub command_deadline_secs: AtomicU64,
    /// Engines whose clocks are off the world's (and the store's), by name
    /// (`replica-b`), in milliseconds either way.
    pub skews: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// When set (by [`World::long_calls`]): the cloud every engine of the
    /// world uses, whose first calls last long.
    long_calls: std::sync::OnceLock<Arc<LongCalls>>,
    sim: SimulatedWorld,
    engines: AtomicU64,
}

impl World {
    pub fn new(seed: u64, faults: FaultPlan) -> Self {
        Self::with_latency(seed, faults, Duration::ZERO)
    }

    /// A world whose cloud takes `latency` for every create and delete.
    pub fn with_latency(seed: u64, faults: FaultPlan, latency: Duration) -> Self {
        let clock = ManualClock::new(T0);
        let store = Arc::new(InMemoryStore::with_clock(Arc::new(clock.clone())));
        Self::with_store(seed, faults, latency, store, clock)
    }

    /// A world on `store`, whose leases run on `clock` (the world's clock,
    /// which [`World::clock`] then is; make it with [`new_clock`]).
    pub fn with_store(
        seed: u64,
        faults: FaultPlan,
        latency: Duration,
        store: Arc<dyn WorkspaceStore>,
        clock: ManualClock,
    ) -> Self {
        let cloud = SimulatedCloud::builder()
            .clock(Arc::new(clock.clone()))
            .latency_all(latency)
            .faults(faults.clone())
            .build();
        Self::assemble(seed, faults, clock, cloud, store)
    }

    /// A world on `store` whose cloud keeps its resources in the file `cloud`
    /// (as an earlier process left it), on `clock` (the store's leases run on
    /// it too).
    pub fn resumed(
        store: Arc<dyn WorkspaceStore>,
        cloud: &std::path::Path,
        latency: Duration,
        clock: ManualClock,
    ) -> Self {
        let faults = FaultPlan::none();
        let cloud = SimulatedCloud::builder()
            .clock(Arc::new(clock.clone()))
            .latency_all(latency)
            .build_persistent(cloud)
            .unwrap();
        Self::assemble(1, faults, clock, cloud, store)
    }

    fn assemble(
        seed: u64,
        faults: FaultPlan,
        clock: ManualClock,
        cloud: SimulatedCloud,
        store: Arc<dyn WorkspaceStore>,
    ) -> Self {
        let sim = SimulatedWorld::new(cloud, faults);
        Self {
            clock,
            store: CrashStore::new(store),
            cloud: sim.cloud.clone(),
            cluster: sim.cluster.clone(),
            agents: sim.agents.clone(),
            seed,
            concurrent_advance: Default::default(),
            command_deadline_secs: AtomicU64::new(0),
            skews: Default::default(),
            long_calls: Default::default(),
            sim,
            engines: AtomicU64::new(0),
        }
    }

    /// A gateway as the agents' transport has, on the world's store and clock,
    /// reporting to `engine`. Its certificates may be renewed at any time (the
    /// tests race renewals against revocations and lost answers at once; the
    /// renewal window has its own test, with [`gateway_with`](Self::gateway_with)).
    pub fn gateway(&self, engine: &Engine) -> AgentGateway {
        let mut config = GatewayConfig::default();
        config.renew_from_percent = 0;
        self.gateway_with(engine, config)
    }

    /// A gateway with these settings.
    pub fn gateway_with(&self, engine: &Engine, config: GatewayConfig) -> AgentGateway {
        AgentGateway::new(
            Arc::new(self.store.clone()),
            Arc::new(self.clock.clone()),
            Arc::new(engine.clone()),
            config,
        )
    }

    /// A new engine process on the shared world (a restart, or another replica).
    pub fn engine(&self, name: &str) -> Engine {
        self.engine_with(name, |c| c)
    }

    /// An engine as [`engine`](Self::engine) makes it, with its settings
    /// changed by `configure`.
    pub fn engine_with(
        &self,
        name: &str,
        configure: impl FnOnce(EngineConfig) -> EngineConfig,
    ) -> Engine {
        let cloud: Option<Arc<dyn CloudProvisioner>> = match self.long_calls.get() {
            Some(cloud) => Some(cloud.clone()),
            None => None,
        };
        self.engine_on(name, cloud, configure)
    }

    /// An engine as [`engine_with`](Self::engine_with) makes it, on `cloud`
    /// instead of the world's simulated cloud when given.
    pub fn engine_on(
        &self,
        name: &str,
        cloud: Option<Arc<dyn CloudProvisioner>>,
        configure: impl FnOnce(EngineConfig) -> EngineConfig,
    ) -> Engine {
        let mut builder = self
            .sim
            .engine_builder(Arc::new(self.store.clone()), self.clock_of(name));
        if let Some(cloud) = cloud {
            builder = builder.cloud(CloudKind::Simulated, cloud);
        }
        let engine = builder
            .config(configure(self.config(name)))
            .build()
            .unwrap();
        if name != INTRUDER {
            self.sim.attach(&engine);
        }
        engine
    }

    /// Makes the first `count` cloud calls of the world's engines from now on
    /// last 300 ms of real time each, the world's clock moving along, with
    /// leases of 100 ms: a step holds its lease only by its heartbeats, as a
    /// step of minutes does against a 30 s lease. Returns how many calls
    /// lasted long so far (read it after the run).
    pub fn long_calls(&self, count: u32) -> Arc<LongCalls> {
        self.long_calls
            .get_or_init(|| {
                Arc::new(LongCalls {
                    inner: self.cloud.clone(),
                    clock: self.clock.clone(),
                    left: std::sync::atomic::AtomicU32::new(count),
                    done: AtomicU64::new(0),
                    intruder: Default::default(),
                    intrusions: Default::default(),
                })
            })
            .clone()
    }

    /// `t`, an instant by the clock of the engine named `name`, on the
    /// world's clock.
    pub fn world_time(&self, name: &str, t: Timestamp) -> Timestamp {
        let skew = self.skews.lock().unwrap().get(name).copied().unwrap_or(0);
        Timestamp::from_millis((t.as_millis() as i64 - skew).max(0) as u64)
    }

    /// The clock of an engine named `name`: the world's, off by its skew.
    fn clock_of(&self, name: &str) -> Arc<dyn Clock> {
        let skew = self.skews.lock().unwrap().get(name).copied().unwrap_or(0);
        Arc::new(Skewed(self.clock.clone(), skew))
    }

    /// The settings of the world's engines, for a new one named after `name`.
    fn config(&self, name: &str) -> EngineConfig {
        let n = self.engines.fetch_add(1, Ordering::SeqCst);
        let ttl = if self.long_calls.get().is_some() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(30)
        };
        EngineConfig::new(format!("{name}-{n}").parse().unwrap())
            .with_lease_ttl(ttl)
            .with_seed(self.seed.wrapping_add(n))
            .with_retry(RetryPolicy::new(
                10,
                Duration::from_millis(200),
                Duration::from_secs(5),
            ))
            .with_deadlines(
                Duration::from_secs(600),
                match self.command_deadline_secs.load(Ordering::SeqCst) {
                    0 => Duration::from_secs(120),
                    secs => Duration::from_secs(secs),
                },
                Duration::from_secs(120),
            )
    }

    /// An engine as [`engine`](Self::engine) makes it, with some of its
    /// simulated pieces replaced by `change`.
    pub fn engine_from(
        &self,
        name: &str,
        change: impl FnOnce(EngineBuilder) -> EngineBuilder,
    ) -> Engine {
        let config = self.config(name);
        let builder = self
            .sim
            .engine_builder(Arc::new(self.store.clone()), self.clock_of(name));
        let engine = change(builder).config(config).build().unwrap();
        self.sim.attach(&engine);
        engine
    }
}

/// The world's simulated cloud, whose first `left` provisioning, update and
/// destroy calls last 300 ms of real time each, moving the world's clock
/// along in 10 ms steps (see [`World::long_calls`]).
#[derive(Debug)]
pub struct LongCalls {
    inner: SimulatedCloud,
    clock: ManualClock,
    left: std::sync::atomic::AtomicU32,
    /// Calls that lasted their whole time.
    pub done: AtomicU64,
    /// A replica that asks for the workspace halfway through each long call.
    intruder: std::sync::OnceLock<Engine>,
    /// What it got that it should not have: answers other than "held".
    pub intrusions: Mutex<Vec<String>>,
}

impl LongCalls {
    /// Sets the replica that asks for the workspace halfway through each
    /// long call (built with [`INTRUDER`] as its name, not attached to the
    /// agents).
    pub fn intruder(&self, engine: Engine) {
        let _ = self.intruder.set(engine);
    }

    async fn linger(&self, workspace: &WorkspaceId) {
        let long = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !long {
            return;
        }
        for i in 0..30 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.clock.advance(Duration::from_millis(10));
            // Two leases (200 ms) into the call: only heartbeats kept it.
            if i == 20
                && let Some(intruder) = self.intruder.get()
            {
                match intruder.advance(workspace).await {
                    Ok(Action::WakeAt(_)) => {}
                    other => lock(&self.intrusions).push(format!(
                        "{workspace}: another replica, asking during a step kept by heartbeats, got {other:?}"
                    )),
                }
            }
        }
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl CloudProvisioner for LongCalls {
    async fn provision(&self, request: LayerRequest) -> Result<Progress<LayerState>> {
        self.linger(&request.workspace).await;
        self.inner.provision(request).await
    }
    async fn update(&self, request: LayerRequest) -> Result<Progress<LayerState>> {
        self.linger(&request.workspace).await;
        self.inner.update(request).await
    }
    async fn destroy(&self, request: LayerRequest) -> Result<Progress<()>> {
        self.linger(&request.workspace).await;
        self.inner.destroy(request).await
    }
    async fn describe(
        &self,
        workspace: &WorkspaceId,
        spec: &WorkspaceSpec,
    ) -> Result<InfraDescription> {
        self.inner.describe(workspace, spec).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The name of the replica [`LongCalls`] sends in halfway through a call.
pub const INTRUDER: &str = "intruder";

/// A clock `.1` milliseconds off another (either way).
#[derive(Debug)]
struct Skewed(ManualClock, i64);

impl Clock for Skewed {
    fn now(&self) -> Timestamp {
        let ms = self.0.now().as_millis() as i64 + self.1;
        Timestamp::from_millis(ms.max(0) as u64)
    }
}

/// A clock for a world, at the worlds' start: hand it to the world's store
/// (`with_clock`) and then to [`World::with_store`].
pub fn new_clock() -> ManualClock {
    ManualClock::new(T0)
}

/// A workspace id from a literal.
pub fn ws(name: &str) -> WorkspaceId {
    name.parse().unwrap()
}

/// A stack name from a literal.
pub fn name(s: &str) -> StackName {
    s.parse().unwrap()
}

pub fn spec() -> WorkspaceSpec {
    cogrion::conformance::sample_workspace_spec()
}

pub fn stack(name: &str, kind: ExecutorKind, deps: &[&str]) -> StackSpec {
    let executor = match kind {
        ExecutorKind::Helm => ExecutorSpec::Helm {
            source: format!("oci://registry.example/charts/{name}"),
            version: "1.0.0".into(),
            values: Default::default(),
        },
        ExecutorKind::Manifests => ExecutorSpec::Manifests {
            documents: vec![
                serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}),
            ],
        },
        ExecutorKind::Terraform => ExecutorSpec::Terraform {
            source: format!("./modules/{name}"),
            variables: Default::default(),
        },
    };
    StackSpec {
        name: name.parse().unwrap(),
        kind: StackKind::Application,
        executor,
        depends_on: deps.iter().map(|d| d.parse().unwrap()).collect(),
    }
}

pub fn api() -> Actor {
    Actor::Api {
        principal: "test".into(),
    }
}

/// A temporary folder, removed when dropped.
#[cfg(feature = "sqlite")]
pub struct TempDir(std::path::PathBuf);

#[cfg(feature = "sqlite")]
impl TempDir {
    pub fn new(name: &str) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let suffix = RandomState::new().hash_one(std::time::SystemTime::now());
        let dir =
            std::env::temp_dir().join(format!("cogrion-{name}-{}-{suffix:x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn db(&self) -> std::path::PathBuf {
        self.0.join("cogrion.db")
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

#[cfg(feature = "sqlite")]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The instance types the tests' cloud offers, when a test makes it choosy.
pub const OFFERED: [&str; 3] = ["sim-small", "sim-medium", "sim-large"];

impl World {
    /// Makes the cloud offer only [`OFFERED`] instance types: a node pool of
    /// another type fails for good, until the spec is corrected.
    pub fn offer_only_listed_instance_types(&self) {
        self.cloud
            .api()
            .set_instance_types(Some(OFFERED.iter().map(|t| t.to_string()).collect()));
    }
}

/// The sample spec with its node pool's instance type set to `instance`.
pub fn spec_with_instance(instance: &str) -> WorkspaceSpec {
    let mut s = spec();
    s.node_pools[0].instance_type = instance.parse().unwrap();
    s
}

/// A world of `seed` failing as `faults` says, with one engine: the engine
/// also in a `Vec`, as `drive` takes engines.
pub fn with_one_engine(seed: u64, faults: FaultPlan) -> (World, Vec<Engine>, Engine) {
    let world = World::new(seed, faults);
    let engine = world.engine("cp");
    (world, vec![engine.clone()], engine)
}
