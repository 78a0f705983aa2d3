//! The built-in driver on the real clock: many workspaces at once, bounded
//! concurrency, a graceful shutdown mid-flight and a restart that resumes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedWorld};
use cogrion::*;
use cogrion::{provider::*, store::*};

use crate::world::{api, spec};

/// Counts how many cloud calls run at once.
#[derive(Debug)]
struct Counting {
    inner: SimulatedCloud,
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Counting {
    async fn track<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
        let out = f.await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

#[async_trait]
impl CloudProvisioner for Counting {
    async fn provision(&self, r: LayerRequest) -> Result<Progress<LayerState>> {
        self.track(self.inner.provision(r)).await
    }
    async fn update(&self, r: LayerRequest) -> Result<Progress<LayerState>> {
        self.track(self.inner.update(r)).await
    }
    async fn destroy(&self, r: LayerRequest) -> Result<Progress<()>> {
        self.track(self.inner.destroy(r)).await
    }
    async fn describe(&self, w: &WorkspaceId, s: &WorkspaceSpec) -> Result<InfraDescription> {
        self.inner.describe(w, s).await
    }
}

struct Setup {
    store: Arc<dyn WorkspaceStore>,
    cloud: Arc<Counting>,
    sim: SimulatedWorld,
}

impl Setup {
    /// An engine process whose cloud calls go through the counter.
    fn engine(&self, holder: &str) -> Engine {
        let config =
            EngineConfig::new(holder.parse().unwrap()).with_lease_ttl(Duration::from_secs(1));
        let engine = self
            .sim
            .engine_builder(self.store.clone(), Arc::new(SystemClock))
            .cloud(CloudKind::Simulated, self.cloud.clone())
            .config(config)
            .build()
            .unwrap();
        self.sim.attach(&engine);
        engine
    }
}

async fn count(engine: &Engine, state: StateName) -> usize {
    let q = ListQuery::new().state(state).limit(10_000);
    engine.store().list_workspaces(&q).await.unwrap().len()
}

async fn wait_until(engine: &Engine, state: StateName, n: usize) {
    for _ in 0..600 {
        if count(engine, state).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "only {} of {n} workspaces reached {state}",
        count(engine, state).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_drives_many_workspaces_and_a_restart_resumes_them() {
    const N: usize = 100;
    const CONCURRENCY: usize = 8;
    let cloud = SimulatedCloud::builder()
        .latency_all(Duration::from_millis(30))
        .build();
    let sim = SimulatedWorld::new(cloud.clone(), FaultPlan::none());
    let agents = sim.agents.clone();
    let setup = Setup {
        store: Arc::new(InMemoryStore::new()),
        cloud: Arc::new(Counting {
            inner: cloud.clone(),
            now: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
        }),
        sim,
    };
    let agents = agents.spawn(Duration::from_millis(20));

    let first = setup.engine("replica-1");
    let ids: Vec<WorkspaceId> = (0..N)
        .map(|i| format!("ws-{i:03}").parse().unwrap())
        .collect();
    for id in &ids {
        first.create(id.clone(), spec(), api()).await.unwrap();
    }
    let driver = Driver::spawn(
        first.clone(),
        DriverConfig::default()
            .with_concurrency(CONCURRENCY)
            .with_sweep_interval(Duration::from_millis(100)),
    );
    // Stop it while work is in flight: running steps finish, nothing new starts.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stats = driver.shutdown().await;
    assert!(stats.advances > 0);
    let active_at_shutdown = count(&first, StateName::Active).await;
    assert!(
        active_at_shutdown < N,
        "the shutdown came mid-flight ({active_at_shutdown} already active)"
    );

    // A new process resumes every workspace from the store.
    let second = setup.engine("replica-2");
    let driver = Driver::spawn(
        second.clone(),
        DriverConfig::default()
            .with_concurrency(CONCURRENCY)
            .with_sweep_interval(Duration::from_millis(100)),
    );
    wait_until(&second, StateName::Active, N).await;
    for id in &ids {
        second.destroy(id, api()).await.unwrap();
    }
    wait_until(&second, StateName::Destroyed, N).await;
    let stats = driver.shutdown().await;
    assert_eq!(stats.errors, 0, "no advance failed");
    agents.stop().await;

    assert_eq!(cloud.all_live(), 0, "nothing left in the cloud");
    assert!(cloud.duplicates().is_empty(), "{:?}", cloud.duplicates());
    let max = setup.cloud.max.load(Ordering::SeqCst);
    assert!(
        max <= CONCURRENCY,
        "{max} cloud calls ran at once; the bound is {CONCURRENCY}"
    );
    assert!(
        max > 1,
        "workspaces were driven concurrently ({max} at once)"
    );
}
