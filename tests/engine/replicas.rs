//! Several replicas on one PostgreSQL: three engines, each with its own
//! connection pool, holder name and built-in driver, drive workspaces through
//! provision → stack deploy → update → destroy with transient faults, while an
//! audit around the cloud checks that no two lease holders ever execute steps of
//! one workspace at the same time. Requests come in through a fourth, driverless
//! engine, so the drivers find all their work by claiming due workspaces
//! (`FOR UPDATE SKIP LOCKED`), and the test checks the claims spread it.
//!
//! The replicas share one process (and so one simulated cloud and cluster): the
//! simulated cloud keeps its state in memory, so separate processes would each see
//! a different cloud.

#![cfg(feature = "postgres")]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cogrion::providers::postgres::{PostgresOptions, PostgresStore};
use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedWorld};
use cogrion::*;
use cogrion::{provider::*, store::*};

use crate::world::{api, spec, stack};

/// Records which holder is executing a step of each workspace right now.
#[derive(Debug, Default)]
struct Audit {
    running: Mutex<HashMap<WorkspaceId, String>>,
    overlaps: Mutex<Vec<String>>,
    calls: Mutex<u64>,
    /// The workspaces each holder executed cloud steps for.
    by_holder: Mutex<HashMap<String, HashSet<WorkspaceId>>>,
}

/// One replica's view of the cloud: every call is attributed to its holder.
#[derive(Debug)]
struct Audited {
    holder: String,
    inner: SimulatedCloud,
    audit: Arc<Audit>,
}

impl Audited {
    async fn run<T>(&self, ws: &WorkspaceId, f: impl std::future::Future<Output = T>) -> T {
        {
            let mut running = self.audit.running.lock().unwrap();
            if let Some(other) = running.get(ws)
                && other != &self.holder
            {
                self.audit
                    .overlaps
                    .lock()
                    .unwrap()
                    .push(format!("{ws}: {} while {other}", self.holder));
            }
            running.insert(ws.clone(), self.holder.clone());
            *self.audit.calls.lock().unwrap() += 1;
            self.audit
                .by_holder
                .lock()
                .unwrap()
                .entry(self.holder.clone())
                .or_default()
                .insert(ws.clone());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let out = f.await;
        self.audit.running.lock().unwrap().remove(ws);
        out
    }
}

#[async_trait]
impl CloudProvisioner for Audited {
    async fn provision(&self, r: LayerRequest) -> Result<Progress<LayerState>> {
        let ws = r.workspace.clone();
        self.run(&ws, self.inner.provision(r)).await
    }
    async fn update(&self, r: LayerRequest) -> Result<Progress<LayerState>> {
        let ws = r.workspace.clone();
        self.run(&ws, self.inner.update(r)).await
    }
    async fn destroy(&self, r: LayerRequest) -> Result<Progress<()>> {
        let ws = r.workspace.clone();
        self.run(&ws, self.inner.destroy(r)).await
    }
    async fn describe(&self, w: &WorkspaceId, s: &WorkspaceSpec) -> Result<InfraDescription> {
        self.inner.describe(w, s).await
    }
}

async fn count(
    store: &PostgresStore,
    prefix: &str,
    done: impl Fn(&WorkspaceRecord) -> bool,
) -> usize {
    let all = store
        .list_workspaces(&ListQuery::new().limit(100_000))
        .await
        .unwrap();
    all.iter()
        .filter(|r| r.value.id.as_str().starts_with(prefix) && done(&r.value))
        .count()
}

async fn wait_for(
    store: &PostgresStore,
    prefix: &str,
    n: usize,
    what: &str,
    done: impl Fn(&WorkspaceRecord) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let got = count(store, prefix, &done).await;
        if got == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {n} workspaces reached {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A prefix for this run's workspace ids, ending in `-`. The test server's data
/// outlives runs and process ids repeat between CI runs, so the prefix takes the
/// time as well: no id of an earlier run may match it (a run once counted the
/// 500 destroyed workspaces of an earlier one with its own).
pub(crate) fn run_prefix(letter: char) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{letter}{:x}{:x}-",
        std::process::id(),
        nanos % 0x1_0000_0000
    )
}

/// The PostgreSQL tests of this binary take turns: one of them restarts the server.
pub(crate) static SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test server's URL; `None` (and a printed reason) when it is not configured
/// outside `scripts/test.sh`, a failure when the script said it would be.
pub(crate) fn server() -> Option<String> {
    match std::env::var("COGRION_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("COGRION_REQUIRE_POSTGRES").is_err(),
                "COGRION_TEST_POSTGRES_URL is not set"
            );
            eprintln!(
                "SKIPPED: COGRION_TEST_POSTGRES_URL is not set (scripts/test.sh starts PostgreSQL)"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_postgres_drive_workspaces_without_overlapping() {
    let Some(server) = server() else { return };
    let _turn = SERVER.lock().await;
    let n: usize = std::env::var("COGRION_REPLICA_WORKSPACES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let prefix = run_prefix('r');
    let faults = FaultPlan::transient(7, 0.03);
    let cloud = SimulatedCloud::builder()
        .latency_all(Duration::from_millis(20))
        .faults(faults.clone())
        .build();
    let sim = SimulatedWorld::new(cloud.clone(), faults);
    let audit = Arc::new(Audit::default());

    let mut engines = Vec::new();
    let mut drivers = Vec::new();
    let mut stores = Vec::new();
    for r in 0..3 {
        let store = PostgresStore::connect_with(
            &server,
            PostgresOptions::default().with_max_connections(6),
        )
        .await
        .unwrap();
        let holder = format!("replica-{r}");
        let audited = Arc::new(Audited {
            holder: holder.clone(),
            inner: cloud.clone(),
            audit: audit.clone(),
        });
        let engine = sim
            .engine_builder(Arc::new(store.clone()), Arc::new(SystemClock))
            .cloud(CloudKind::Simulated, audited)
            .config(
                EngineConfig::new(holder.parse().unwrap()).with_retry(RetryPolicy::new(
                    12,
                    Duration::from_millis(50),
                    Duration::from_secs(1),
                )),
            )
            .build()
            .unwrap();
        drivers.push(Driver::spawn(
            engine.clone(),
            DriverConfig::default()
                .with_concurrency(8)
                .with_sweep_interval(Duration::from_millis(100)),
        ));
        engines.push(engine);
        stores.push(store);
    }
    // Requests arrive through a front replica that drives nothing (an API
    // server): the three drivers find every workspace by claiming due ones from
    // the store, so how the work spreads is the claims' doing.
    let front = sim
        .engine_builder(Arc::new(stores[0].clone()), Arc::new(SystemClock))
        .config(EngineConfig::new("front".parse().unwrap()))
        .build()
        .unwrap();
    // The agents answer through the first engine's gateway; every engine hears
    // about their polls through the store and its sweeps.
    sim.attach(&engines[0]);
    let agents = sim.agents.spawn(Duration::from_millis(20));

    let ids: Vec<WorkspaceId> = (0..n)
        .map(|i| format!("{prefix}{i}").parse().unwrap())
        .collect();
    let store = &stores[0];
    for id in &ids {
        front.create(id.clone(), spec(), api()).await.unwrap();
    }
    wait_for(store, &prefix, n, "Active", |r| {
        r.state == WorkspaceState::Active
    })
    .await;
    for id in &ids {
        front
            .deploy_stack(id, stack("web", ExecutorKind::Helm, &[]), api())
            .await
            .unwrap();
    }
    wait_for(store, &prefix, n, "a deployed stack", |r| {
        r.stacks
            .iter()
            .any(|(_, s)| s.state == StackState::Deployed)
            && r.operations.is_empty()
    })
    .await;
    let mut bigger = spec();
    bigger.node_pools[0].size = NodePoolSize::new(1, 3, 5).unwrap();
    for id in &ids {
        front.update(id, bigger.clone(), api()).await.unwrap();
    }
    wait_for(store, &prefix, n, "Active after the update", |r| {
        r.state == WorkspaceState::Active && r.operations.is_empty()
    })
    .await;
    for id in &ids {
        front.destroy(id, api()).await.unwrap();
    }
    wait_for(store, &prefix, n, "Destroyed", |r| {
        r.state == WorkspaceState::Destroyed
    })
    .await;

    let mut advances = 0;
    for d in drivers {
        advances += d.shutdown().await.advances;
    }
    agents.stop().await;

    let overlaps = audit.overlaps.lock().unwrap().clone();
    assert!(
        overlaps.is_empty(),
        "two lease holders executed steps of one workspace at once: {overlaps:?}"
    );
    assert!(cloud.duplicates().is_empty(), "{:?}", cloud.duplicates());
    let spread: Vec<(String, usize)> = {
        let by_holder = audit.by_holder.lock().unwrap();
        let mut v: Vec<_> = by_holder
            .iter()
            .map(|(h, w)| (h.clone(), w.len()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        spread.len(),
        3,
        "every replica executed cloud steps: {spread:?}"
    );
    for (holder, count) in &spread {
        assert!(
            *count >= n / 10,
            "{holder} executed steps of only {count} of {n} workspaces: claims did not spread the work ({spread:?})"
        );
    }
    for id in &ids {
        assert!(cloud.live_resources(id).is_empty(), "{id} left resources");
        // Every queued command was delivered and executed exactly once by the agent.
        let history = engines[0].history(id).await.unwrap();
        let queued = history
            .iter()
            .filter(|e| matches!(e.event.kind, EventKind::CommandQueued { .. }))
            .count() as u64;
        assert_eq!(
            sim.agents.executed(id),
            queued,
            "{id}: commands queued vs executed by the agent"
        );
    }
    println!(
        "replicas: {n} workspaces on 3 engines, {advances} advances, {} audited cloud calls, no overlap; \
         workspaces with cloud steps per replica: {spread:?}",
        audit.calls.lock().unwrap()
    );
}

/// The durable feed on PostgreSQL, where sequence values commit out of
/// order: two replicas drive workspaces while a consumer reads every
/// workspace's events through `watch`, stopping every 25 events and
/// resuming from the last cursor it handled on the other replica (a
/// restart); a transaction that wrote an event stays open while every
/// later event commits. The consumer sees nothing of those later events
/// while it is open (reading past it could skip it), then every event
/// exactly once, each workspace's history in order, the late one included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_consumer_sees_every_event_once_across_replicas_restarts_and_a_late_commit() {
    use futures::StreamExt;
    use sqlx::Connection;

    let Some(server) = server() else { return };
    let _turn = SERVER.lock().await;
    let prefix = run_prefix('f');
    let cloud = SimulatedCloud::builder()
        .latency_all(Duration::from_millis(10))
        .build();
    let sim = SimulatedWorld::new(cloud, FaultPlan::none());
    let mut engines = Vec::new();
    let mut drivers = Vec::new();
    let mut stores = Vec::new();
    for r in 0..2 {
        let store = PostgresStore::connect(&server).await.unwrap();
        let engine = sim
            .engine_builder(Arc::new(store.clone()), Arc::new(SystemClock))
            .config(
                EngineConfig::new(format!("feed-{r}").parse().unwrap())
                    .with_feed_poll(Duration::from_millis(50)),
            )
            .build()
            .unwrap();
        drivers.push(Driver::spawn(
            engine.clone(),
            DriverConfig::default().with_sweep_interval(Duration::from_millis(100)),
        ));
        engines.push(engine);
        stores.push(store);
    }
    sim.attach(&engines[0]);
    let agents = sim.agents.spawn(Duration::from_millis(20));
    let start = engines[0].feed_head().await.unwrap();

    // A writer whose transaction stays open: a workspace and its first event.
    let held_id: WorkspaceId = format!("{prefix}held").parse().unwrap();
    let mut held = sqlx::PgConnection::connect(&server).await.unwrap();
    let mut tx = held.begin().await.unwrap();
    let record = WorkspaceRecord::new(held_id.clone(), spec(), SystemClock.now());
    sqlx::query(
        "INSERT INTO workspaces (id, revision, tenant, state, wake_at, record) VALUES ($1, 1, $2, 'provisioning', NULL, $3)",
    )
    .bind(held_id.as_str())
    .bind(record.spec.tenant.as_str())
    .bind(serde_json::to_string(&record).unwrap())
    .execute(&mut *tx)
    .await
    .unwrap();
    let event = NewEvent {
        at: SystemClock.now(),
        actor: api(),
        kind: EventKind::Created,
        message: "written by a transaction that commits late".into(),
    };
    sqlx::query("INSERT INTO events (workspace, seq, body) VALUES ($1, 1, $2)")
        .bind(held_id.as_str())
        .bind(serde_json::to_string(&event).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();

    // The consumer: 25 events at a time, on alternate replicas.
    let seen: Arc<Mutex<Vec<FeedEvent>>> = Arc::default();
    let consumer = {
        let (engines, seen, prefix) = (engines.clone(), seen.clone(), prefix.clone());
        tokio::spawn(async move {
            let mut cursor = start;
            for turn in 0.. {
                let mut stream = Box::pin(engines[turn % 2].watch(cursor));
                for _ in 0..25 {
                    let event = stream.next().await.unwrap().unwrap();
                    cursor = event.cursor;
                    if event.workspace.as_str().starts_with(&prefix) {
                        seen.lock().unwrap().push(event);
                    }
                }
            }
        })
    };

    let n = 12;
    let ids: Vec<WorkspaceId> = (0..n)
        .map(|i| format!("{prefix}{i}").parse().unwrap())
        .collect();
    for (i, id) in ids.iter().enumerate() {
        engines[i % 2]
            .create(id.clone(), spec(), api())
            .await
            .unwrap();
    }
    wait_for(&stores[0], &prefix, n, "Active", |r| {
        r.state == WorkspaceState::Active && r.operations.is_empty()
    })
    .await;
    for d in drivers {
        d.shutdown().await;
    }
    agents.stop().await;
    let mut expected = 0;
    for id in &ids {
        expected += engines[0].history(id).await.unwrap().len();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing committed after the open transaction began is read while it is open"
    );
    tx.commit().await.unwrap();
    held.close().await.unwrap();
    expected += 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < expected {
        assert!(
            Instant::now() < deadline,
            "the consumer saw {} of {expected} events",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.abort();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), expected, "no event twice");
    assert!(seen.windows(2).all(|p| p[0].cursor < p[1].cursor));
    crate::drive::check_fed(&engines[1], &seen, ids.iter().chain([&held_id])).await;
}
