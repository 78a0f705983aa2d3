//! The engine under concurrency, missing configuration and store outages
//! (issue 14, items 7 and 8), against the simulated world (cloud, cluster and
//! agents simulated; the engine and the in-memory store real).

use std::time::Duration;

use cogrion::sim::FaultPlan;
use cogrion::*;
use cogrion::{provider::*, store::*};

use crate::drive::drive;
use crate::world::{World, api, spec, ws};

/// Item 7: two tasks of one host call `advance` on one workspace at once,
/// over a store whose writes yield (as one across a network does): each
/// step's effect runs once — the cloud sees exactly the calls of a run with
/// one caller — and the workspace becomes Active. (Before: both calls used
/// the cached lease and ran the same step.)
#[tokio::test]
async fn concurrent_advance_calls_run_each_step_once() {
    async fn run(concurrent: bool) -> cogrion::sim::ApiCallCounts {
        let w = World::new(6, FaultPlan::none());
        w.store.yield_on_writes();
        let engine = w.engine("cp");
        let id = ws("concurrent");
        engine.create(id.clone(), spec(), api()).await.unwrap();
        for _ in 0..2_000 {
            let (a, b) = if concurrent {
                tokio::join!(engine.advance(&id), engine.advance(&id))
            } else {
                (engine.advance(&id).await, engine.advance(&id).await)
            };
            a.unwrap();
            b.unwrap();
            if engine.workspace(&id).await.unwrap().state == WorkspaceState::Active {
                return w.cloud.api().calls();
            }
            w.agents.step_all().await;
            w.clock.advance(Duration::from_millis(500));
        }
        panic!("never became Active");
    }
    assert_eq!(run(true).await, run(false).await);
}

/// Item 8 (first half): what an engine has no implementation for is a typed
/// refusal at the request, and a step meeting it on an engine without it
/// leaves the workspace as it was (no attempt spent, not failed) for an
/// engine that has it. (Before: `Rejected`, as if the cloud had refused, and
/// the step's failure failed the workspace.)
#[tokio::test]
async fn what_no_implementation_is_registered_for_is_configuration() {
    use std::sync::Arc;
    let w = World::new(7, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    // An engine with no provisioner and no executor, on the same store.
    let bare = Engine::builder(Arc::new(w.store.clone()))
        .clock(Arc::new(w.clock.clone()))
        .agent_installer(Arc::new(w.agents.clone()))
        .build()
        .unwrap();
    let refused = bare.create(ws("bare"), spec(), api()).await;
    assert!(
        matches!(refused, Err(Error::NotConfigured { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        w.store.get_workspace(&ws("bare")).await,
        Err(Error::NotFound(_))
    ));
    // A workspace another engine created: the bare engine's step changes nothing.
    let id = ws("configured");
    engines[0].create(id.clone(), spec(), api()).await.unwrap();
    let before = w.store.get_workspace(&id).await.unwrap();
    let stepped = bare.advance(&id).await;
    assert!(
        matches!(stepped, Err(Error::NotConfigured { .. })),
        "{stepped:?}"
    );
    bare.release_leases().await;
    let after = w.store.get_workspace(&id).await.unwrap();
    assert_eq!(
        after.value, before.value,
        "no attempt spent, nothing failed"
    );
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(
        engines[0].workspace(&id).await.unwrap().state,
        WorkspaceState::Active
    );
    // Requests the bare engine cannot carry out are refused, changing nothing.
    let before = w.store.get_workspace(&id).await.unwrap();
    let deploy = bare
        .deploy_stack(
            &id,
            crate::world::stack("db", ExecutorKind::Helm, &[]),
            api(),
        )
        .await;
    assert!(
        matches!(deploy, Err(Error::NotConfigured { .. })),
        "{deploy:?}"
    );
    let update = bare.update(&id, spec(), api()).await;
    assert!(
        matches!(update, Err(Error::NotConfigured { .. })),
        "{update:?}"
    );
    assert_eq!(w.store.get_workspace(&id).await.unwrap(), before);
}

/// Item 8 (second half): the store fails under a step — the provider's
/// checkpoint writes meet an outage, twenty times, against a retry budget of
/// two attempts. `advance` returns the store's error and keeps nothing of the
/// attempt: no retry spent, no failure recorded, and the workspace becomes
/// Active once the store is back. (Before: the provider's error failed the
/// attempt, and past the budget, the workspace.)
#[tokio::test]
async fn a_store_outage_inside_a_step_spends_no_retry() {
    let w = World::new(8, FaultPlan::none());
    let mut engines = vec![w.engine_with("cp", |c| {
        c.with_retry(RetryPolicy::new(
            2,
            Duration::from_millis(200),
            Duration::from_secs(1),
        ))
    })];
    w.store.fail_checkpoint_writes((0..20).collect());
    let id = ws("outage");
    engines[0].create(id.clone(), spec(), api()).await.unwrap();
    let before = w.store.get_workspace(&id).await.unwrap();
    let stepped = engines[0].advance(&id).await;
    assert!(
        matches!(&stepped, Err(Error::Unavailable { .. })),
        "the store's error: {stepped:?}"
    );
    assert_eq!(
        w.store.get_workspace(&id).await.unwrap(),
        before,
        "nothing of the attempt was kept"
    );
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(
        engines[0].workspace(&id).await.unwrap().state,
        WorkspaceState::Active
    );
    let failures = engines[0]
        .history(&id)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.event.kind, EventKind::StepFailed { .. }))
        .count();
    assert_eq!(failures, 0, "an outage is not a step's failure");
}

/// A clock that follows tokio's (paused, in these tests): timers and the
/// engine's clock move together, and no test sleeps for real.
#[derive(Debug)]
struct TokioClock(tokio::time::Instant);

impl TokioClock {
    fn new() -> Self {
        Self(tokio::time::Instant::now())
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        crate::world::T0 + self.0.elapsed()
    }
}

/// The simulated cloud, whose network layer's calls take `slow` each, or
/// never finish (`None`) the first `hang` times; counts those calls and the
/// ones dropped before they finished.
#[derive(Debug)]
struct SlowCloud {
    inner: cogrion::sim::SimulatedCloud,
    slow: Option<Duration>,
    hang: usize,
    calls: std::sync::atomic::AtomicUsize,
    cancelled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a call as cancelled unless it is disarmed when it finishes.
struct DropGuard(Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl SlowCloud {
    fn new(inner: cogrion::sim::SimulatedCloud, slow: Option<Duration>, hang: usize) -> Self {
        Self {
            inner,
            slow,
            hang,
            calls: Default::default(),
            cancelled: Default::default(),
        }
    }

    async fn slow_down(&self, layer: InfraLayer) -> DropGuard {
        use std::sync::atomic::Ordering::SeqCst;
        if layer != InfraLayer::Network {
            return DropGuard(None);
        }
        let n = self.calls.fetch_add(1, SeqCst);
        let mut guard = DropGuard(Some(self.cancelled.clone()));
        match self.slow {
            _ if n >= self.hang.max(1) && self.slow.is_none() => {}
            Some(d) if n >= self.hang => tokio::time::sleep(d).await,
            _ => std::future::pending::<()>().await,
        }
        guard.0 = None;
        guard
    }
}

#[async_trait::async_trait]
impl CloudProvisioner for SlowCloud {
    async fn provision(&self, request: LayerRequest) -> Result<Progress<LayerState>> {
        let _done = self.slow_down(request.layer).await;
        self.inner.provision(request).await
    }
    async fn update(&self, request: LayerRequest) -> Result<Progress<LayerState>> {
        self.inner.update(request).await
    }
    async fn destroy(&self, request: LayerRequest) -> Result<Progress<()>> {
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

/// Two replicas on one in-memory store and `cloud`, on tokio's clock.
fn replicas(
    w: &World,
    cloud: std::sync::Arc<SlowCloud>,
    configure: impl Fn(EngineConfig) -> EngineConfig,
) -> (Engine, Engine) {
    let clock: std::sync::Arc<dyn Clock> = std::sync::Arc::new(TokioClock::new());
    let store: std::sync::Arc<dyn WorkspaceStore> =
        std::sync::Arc::new(InMemoryStore::with_clock(clock.clone()));
    let engine = |name: &str| {
        Engine::builder(store.clone())
            .clock(clock.clone())
            .cloud(CloudKind::Simulated, cloud.clone())
            .agent_installer(std::sync::Arc::new(w.agents.clone()))
            .config(configure(EngineConfig::new(name.parse().unwrap())))
            .build()
            .unwrap()
    };
    (engine("a"), engine("b"))
}

/// A clock `by` ahead of another.
#[derive(Debug)]
struct Ahead(std::sync::Arc<dyn Clock>, Duration);

impl Clock for Ahead {
    fn now(&self) -> Timestamp {
        self.0.now() + self.1
    }
}

/// Item 5: replica b's clock runs half a lease (and a second) ahead of
/// replica a's and the store's. Replica a holds the lease (claimed at 0,
/// 30 s) and, 14 s later, starts a five-minute call under it; a second after
/// that, b — whose clock says the lease ran out — asks for the workspace and
/// is kept out, because the store judges expiry by its own clock. The call
/// runs once. (Before: each replica's own clock judged the lease; b took it
/// over and ran the same call next to a's.)
#[tokio::test(start_paused = true)]
async fn a_replica_whose_clock_runs_ahead_does_not_take_a_held_lease() {
    use std::sync::Arc;
    let w = World::new(13, FaultPlan::none());
    let cloud = Arc::new(SlowCloud::new(
        w.cloud.clone(),
        Some(Duration::from_secs(300)),
        0,
    ));
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let ttl = EngineConfig::new("x".parse().unwrap()).lease_ttl;
    let ahead: Arc<dyn Clock> = Arc::new(Ahead(clock.clone(), ttl / 2 + Duration::from_secs(1)));
    let store: Arc<dyn WorkspaceStore> = Arc::new(InMemoryStore::with_clock(clock.clone()));
    let engine = |name: &str, clock: &Arc<dyn Clock>| {
        Engine::builder(store.clone())
            .clock(clock.clone())
            .cloud(CloudKind::Simulated, cloud.clone())
            .agent_installer(Arc::new(w.agents.clone()))
            .config(EngineConfig::new(name.parse().unwrap()))
            .build()
            .unwrap()
    };
    let (a, b) = (engine("a", &clock), engine("b", &ahead));
    let id = ws("skewed");
    a.create(id.clone(), spec(), api()).await.unwrap();
    assert_eq!(
        a.claim_due(clock.now(), 10).await.unwrap(),
        vec![id.clone()]
    );
    tokio::time::sleep(Duration::from_secs(14)).await;
    let running = tokio::spawn({
        let (a, id) = (a.clone(), id.clone());
        async move { a.advance(&id).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cloud.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let answer = b.advance(&id).await.unwrap();
    assert!(
        matches!(answer, Action::WakeAt(_)),
        "the replica whose clock runs ahead is kept out: {answer:?}"
    );
    assert!(matches!(running.await.unwrap(), Ok(Action::RunAgain)));
    assert_eq!(
        cloud.calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the network layer's call ran once"
    );
}

/// Two replicas over a cloud whose network layer takes five minutes, a new
/// workspace `name`, and replica a's `advance` of it, running.
async fn five_minute_call(
    seed: u64,
    name: &str,
) -> (
    std::sync::Arc<SlowCloud>,
    Engine,
    Engine,
    WorkspaceId,
    tokio::task::JoinHandle<Result<Action>>,
) {
    let w = World::new(seed, FaultPlan::none());
    let cloud = std::sync::Arc::new(SlowCloud::new(
        w.cloud.clone(),
        Some(Duration::from_secs(300)),
        0,
    ));
    let (a, b) = replicas(&w, cloud.clone(), |c| c);
    let id = ws(name);
    a.create(id.clone(), spec(), api()).await.unwrap();
    let running = tokio::spawn({
        let (a, id) = (a.clone(), id.clone());
        async move { a.advance(&id).await }
    });
    (cloud, a, b, id, running)
}

/// Item 6: a control-plane step whose call runs for five minutes keeps its
/// lease by heartbeats: the other replica, trying every ten seconds, never
/// gets it, and the call runs once. (Before: the 30 s lease ran out under the
/// call and the other replica ran the same step next to it.)
#[tokio::test(start_paused = true)]
async fn a_step_running_for_minutes_keeps_its_lease() {
    let (cloud, a, b, id, running) = five_minute_call(9, "slow").await;
    // While the call runs (five minutes).
    for _ in 0..29 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let answer = b.advance(&id).await.unwrap();
        assert!(
            matches!(answer, Action::WakeAt(_)),
            "the other replica is kept out: {answer:?}"
        );
    }
    assert!(matches!(running.await.unwrap(), Ok(Action::RunAgain)));
    let rec = a.workspace(&id).await.unwrap();
    assert_eq!(rec.operations[0].steps[0].status, StepStatus::Done);
    assert_eq!(
        cloud.calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the network layer's call ran once"
    );
}

/// Item 6: a call that never finishes is cancelled at the call timeout; the
/// attempt fails as a transient error and the retry succeeds.
#[tokio::test(start_paused = true)]
async fn a_call_past_its_timeout_is_cancelled_and_retried() {
    let w = World::new(10, FaultPlan::none());
    let cloud = std::sync::Arc::new(SlowCloud::new(w.cloud.clone(), None, 1));
    let (a, _) = replicas(&w, cloud.clone(), |c| {
        c.with_call_timeout(Duration::from_secs(120))
    });
    let id = ws("hung");
    a.create(id.clone(), spec(), api()).await.unwrap();
    let answer = a.advance(&id).await.unwrap();
    assert!(matches!(answer, Action::RunAgain), "{answer:?}");
    assert_eq!(
        cloud.cancelled.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the hung call was cancelled"
    );
    let history = a.history(&id).await.unwrap();
    assert!(
        history.iter().any(|e| matches!(
            &e.event.kind,
            EventKind::StepFailed {
                will_retry: true,
                ..
            }
        ) && e.event.message.contains("did not finish within 2m")),
        "the attempt failed for the timeout, to be retried"
    );
    // The retry (after its backoff) finishes.
    for _ in 0..50 {
        if a.workspace(&id).await.unwrap().operations[0].steps[0].status == StepStatus::Done {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.advance(&id).await.unwrap();
    }
    assert_eq!(
        a.workspace(&id).await.unwrap().operations[0].steps[0].status,
        StepStatus::Done
    );
}

/// Item 6: the lease is lost while the call runs (the replica's leases were
/// released and the other replica took the workspace): at the next
/// heartbeat the call is cancelled and `advance` returns `LeaseLost`,
/// having written nothing in its name.
#[tokio::test(start_paused = true)]
async fn a_lost_lease_cancels_the_running_call() {
    let (cloud, a, b, id, running) = five_minute_call(11, "taken").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // As a restart under a's name would: its leases go, b takes over.
    a.store().release_all(&"a".parse().unwrap()).await.unwrap();
    let taken = tokio::spawn({
        let (b, id) = (b.clone(), id.clone());
        async move { b.advance(&id).await }
    });
    let lost = running.await.unwrap();
    assert!(matches!(lost, Err(Error::LeaseLost { .. })), "{lost:?}");
    assert_eq!(
        cloud.cancelled.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a's call was cancelled at its next heartbeat"
    );
    assert!(matches!(taken.await.unwrap(), Ok(Action::RunAgain)));
    let rec = b.workspace(&id).await.unwrap();
    assert_eq!(rec.operations[0].steps[0].status, StepStatus::Done);
    assert_eq!(
        rec.operations[0].steps[0].attempts, 1,
        "only b's attempt was recorded"
    );
}

/// A Helm executor that, once the agent answered, asks to be called again
/// in a minute `polls` times (a rollout still settling), and counts the calls
/// that carried the answer.
#[derive(Debug)]
struct Settling {
    inner: cogrion::sim::SimulatedExecutor,
    polls: usize,
    answered_calls: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Executor for Settling {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Helm
    }
    async fn apply(&self, request: StackRequest) -> Result<Progress<StackStatus>> {
        if request.command_result.is_some() {
            let n = self
                .answered_calls
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < self.polls {
                return Ok(Progress::in_progress(Duration::from_secs(60)));
            }
        }
        self.inner.apply(request).await
    }
    async fn destroy(&self, request: StackRequest) -> Result<Progress<()>> {
        self.inner.destroy(request).await
    }
    async fn status(&self, request: StackRequest) -> Result<Progress<StackStatus>> {
        self.inner.status(request).await
    }
}

/// Item 9 (its last sentence): after the agent answered, an executor's
/// `InProgress { poll_after }` is honoured whatever wakes the workspace: ten
/// `advance` calls within the minute call the executor once. (Before: every
/// call ran the step again.)
#[tokio::test]
async fn poll_after_is_honoured_on_wakeups() {
    let w = World::new(12, FaultPlan::none());
    let settling = std::sync::Arc::new(Settling {
        inner: cogrion::sim::SimulatedExecutor::new(
            ExecutorKind::Helm,
            w.cluster.clone(),
            FaultPlan::none(),
        ),
        polls: 2,
        answered_calls: Default::default(),
    });
    let engine = w.engine_from("cp", |b| b.executor(settling.clone()));
    let mut engines = vec![engine.clone()];
    let id = ws("settling");
    crate::drive::active(&w, &mut engines, &id).await;
    engine
        .deploy_stack(
            &id,
            crate::world::stack("web", ExecutorKind::Helm, &[]),
            api(),
        )
        .await
        .unwrap();
    // Until the agent's answer was read once.
    let calls = || {
        settling
            .answered_calls
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    for _ in 0..100 {
        if calls() > 0 {
            break;
        }
        engine.advance(&id).await.unwrap();
        w.agents.step_all().await;
    }
    assert_eq!(calls(), 1);
    for _ in 0..10 {
        engine.advance(&id).await.unwrap();
        w.clock.advance(Duration::from_secs(5));
    }
    assert_eq!(calls(), 1, "no call before the minute is up");
    w.clock.advance(Duration::from_secs(15));
    engine.advance(&id).await.unwrap();
    assert_eq!(calls(), 2, "one call once it is");
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(
        engine
            .workspace(&id)
            .await
            .unwrap()
            .stacks
            .get(&crate::world::name("web"))
            .map(|s| s.state.name()),
        Some(StackStateName::Deployed)
    );
}
