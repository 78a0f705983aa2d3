//! The durable stores' measurements: engine steps against the store's raw write
//! rate (one workspace at a time, and batched through group commit), and the
//! time to resume 10,000 in-flight workspaces after a crash. Each line compares
//! numbers measured in the same run on the same store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cogrion::providers::sqlite::{Durability, SqliteOptions, SqliteStore};
use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedWorld};
use cogrion::*;
use tokio::runtime::Runtime;

use super::{actor, lifecycles, raw_target, raw_writes, setup_on, spec};

/// A store to measure on.
pub(crate) enum Target {
    /// A fresh SQLite file (in the temporary folder, on disk) per measurement.
    Sqlite(Durability),
    /// The PostgreSQL server at this URL; every measurement gets a database
    /// of its own on it.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

/// Where one measurement's data lives, so it can be opened again after a crash.
#[derive(Clone)]
enum Location {
    Sqlite(std::path::PathBuf, Durability),
    /// The server's URL and the measurement's database on it.
    #[cfg(feature = "postgres")]
    Postgres(String, String),
}

impl Location {
    async fn open(&self) -> Arc<dyn WorkspaceStore> {
        match self {
            Self::Sqlite(path, durability) => Arc::new(
                SqliteStore::open_with(path, SqliteOptions::default().with_durability(*durability))
                    .await
                    .unwrap(),
            ),
            #[cfg(feature = "postgres")]
            Self::Postgres(server, db) => {
                use cogrion::providers::postgres::{PostgresOptions, PostgresStore};
                use sqlx::Connection;
                // A database of its own, made at the first opening: a shared
                // one fills up with earlier runs' workspaces, which the
                // driver's first sweep (everything pending, whenever due)
                // then claims along with this run's.
                let mut admin = sqlx::PgConnection::connect(server).await.unwrap();
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                        .bind(db)
                        .fetch_optional(&mut admin)
                        .await
                        .unwrap();
                if exists.is_none() {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                        .execute(&mut admin)
                        .await
                        .unwrap();
                }
                admin.close().await.unwrap();
                let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
                Arc::new(
                    PostgresStore::connect_with(
                        &format!("{base}/{db}"),
                        PostgresOptions::default().with_max_connections(32),
                    )
                    .await
                    .unwrap(),
                )
            }
        }
    }
}

impl Target {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Sqlite(Durability::Normal) => "sqlite NORMAL",
            Self::Sqlite(_) => "sqlite FULL",
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
        }
    }

    /// The group-commit wrapper for this store: one transaction at a time on
    /// SQLite (one writer), four at once on PostgreSQL.
    fn group(&self, store: Arc<dyn WorkspaceStore>) -> GroupCommit {
        match self {
            Self::Sqlite(_) => GroupCommit::new(store, 256),
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => GroupCommit::with_lanes(store, 256, 4),
        }
    }

    /// The driver's concurrency after the restart: PostgreSQL serves many
    /// transactions at once and gains from more in flight.
    fn concurrency(&self) -> usize {
        match self {
            Self::Sqlite(_) => 64,
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => 128,
        }
    }

    fn fresh(&self) -> Location {
        match self {
            Self::Sqlite(durability) => {
                let dir =
                    std::env::temp_dir().join(format!("cogrion-bench-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                Location::Sqlite(dir.join(format!("{}.db", unique("db"))), *durability)
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(url) => Location::Postgres(url.clone(), unique("cogrion_bench_")),
        }
    }
}

/// A name no earlier run used.
fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// Engine steps (`StepDone` events written by the engine) in the workspaces'
/// histories.
async fn engine_steps(store: &dyn WorkspaceStore, ids: &[WorkspaceId]) -> u64 {
    let mut steps = 0;
    for id in ids {
        steps += store
            .read_events(id, EventSeq(0), 0)
            .await
            .unwrap()
            .iter()
            .filter(|e| {
                matches!(e.event.kind, EventKind::StepDone { .. })
                    && matches!(e.event.actor, Actor::Engine { .. })
            })
            .count() as u64;
    }
    steps
}

/// One workspace at a time: raw step-sized writes (one transaction each) against
/// whole lifecycles through `advance`.
pub(crate) fn report_single(rt: &Runtime, target: &Target, writes: u64, workspaces: usize) {
    let b = setup_on(rt.block_on(target.fresh().open()), false);
    let (id, lease) = rt.block_on(raw_target(b.store.as_ref(), &unique("raw")));
    let start = Instant::now();
    rt.block_on(raw_writes(b.store.as_ref(), &id, &lease, writes));
    let raw = writes as f64 / start.elapsed().as_secs_f64();
    let b = setup_on(rt.block_on(target.fresh().open()), false);
    let start = Instant::now();
    let steps = rt.block_on(lifecycles(&b, &unique("one"), workspaces));
    let engine = steps as f64 / start.elapsed().as_secs_f64();
    println!(
        "REPORT {} one at a time: raw writes/s {raw:>8.0}, engine steps/s {engine:>8.0}, ratio {:.3}",
        target.name(),
        engine / raw
    );
}

/// Raw step-sized writes for 100 workspaces per transaction, against engine
/// steps through the driver (concurrency 64) on the group-commit wrapper, which
/// turns concurrent commits into one transaction.
pub(crate) fn report_batched(rt: &Runtime, target: &Target, n: usize) {
    let raw_store = rt.block_on(target.fresh().open());
    let prefix = unique("raw");
    let targets: Vec<(WorkspaceId, Lease)> = (0..100)
        .map(|i| rt.block_on(raw_target(raw_store.as_ref(), &format!("{prefix}-{i}"))))
        .collect();
    let rounds = 20;
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..rounds {
            let mut writes = Vec::new();
            for (id, lease) in &targets {
                let current = raw_store.get_workspace(id).await.unwrap();
                let mut rec = current.value;
                rec.next_operation += 1;
                writes.push(super::step_write(rec, current.revision, lease));
            }
            for r in raw_store.commit_batch(writes).await {
                r.unwrap();
            }
        }
    });
    let raw = (rounds * targets.len()) as f64 / start.elapsed().as_secs_f64();

    let inner = rt.block_on(target.fresh().open());
    let grouped = {
        let _runtime = rt.enter(); // the wrapper starts its writing task here
        Arc::new(target.group(inner.clone()))
    };
    let b = setup_on(grouped.clone(), true);
    let prefix = unique("g");
    let ids: Vec<WorkspaceId> = (0..n)
        .map(|i| format!("{prefix}-{i}").parse().unwrap())
        .collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agents = b.agents.clone();
    let agent_task = rt.spawn(async move {
        agents
            .run(Duration::from_millis(5), async {
                let _ = stopped.await;
            })
            .await
    });
    let start = Instant::now();
    let stats = rt.block_on(async {
        let driver = Driver::spawn(
            b.engine.clone(),
            DriverConfig::default().with_concurrency(64),
        );
        for id in &ids {
            b.engine.create(id.clone(), spec(), actor()).await.unwrap();
        }
        wait_all(b.store.as_ref(), &ids, |r| {
            r.state == WorkspaceState::Active
        })
        .await;
        for id in &ids {
            b.engine.destroy(id, actor()).await.unwrap();
        }
        wait_all(b.store.as_ref(), &ids, |r| {
            r.state == WorkspaceState::Destroyed
        })
        .await;
        driver.shutdown().await
    });
    let elapsed = start.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = rt.block_on(agent_task);
    let steps = rt.block_on(engine_steps(inner.as_ref(), &ids));
    let (batches, writes) = grouped.stats();
    let mix = grouped.write_counts();
    let engine = steps as f64 / elapsed;
    // The same rows the engine wrote, per step, written raw in the same run.
    let rows_store = rt.block_on(target.fresh().open());
    let same_rows = rt.block_on(raw_same_rows(rows_store.as_ref(), mix, steps, 20));
    println!(
        "REPORT {} batched: engine steps/s {engine:>8.0} ({steps} steps, {} advances, {:.0} advances/s, {writes} writes \
         ({} commits, {} checkpoints, {} acquires, {} releases) in {batches} transactions, {n} workspaces \
         create -> Active -> Destroyed in {elapsed:.2}s)",
        target.name(),
        stats.advances,
        stats.advances as f64 / elapsed,
        mix.commits,
        mix.checkpoints,
        mix.acquires,
        mix.releases,
    );
    println!(
        "REPORT {} batched: raw, the same rows per step (100 steps per transaction): {same_rows:>8.0} steps/s -> ratio {:.3}; \
         raw, one commit per step (100 per transaction): {raw:>8.0} steps/s -> ratio {:.3}",
        target.name(),
        engine / same_rows,
        engine / raw
    );
}

/// Raw writes of the rows the engine wrote in its run, in the same proportions
/// per step — commits (record and event), checkpoints, lease releases and
/// acquisitions — 100 steps' worth per `write_batch` (one transaction), for 100
/// workspaces; returns steps' worth per second.
async fn raw_same_rows(
    store: &dyn WorkspaceStore,
    mix: WriteCounts,
    steps: u64,
    rounds: usize,
) -> f64 {
    let per_100 = |n: u64| ((n as f64) * 100.0 / steps as f64).round() as usize;
    let (commits, checkpoints, acquires, releases) = (
        per_100(mix.commits),
        per_100(mix.checkpoints),
        per_100(mix.acquires),
        per_100(mix.releases),
    );
    // Every released lease is taken again before its next fenced write (the
    // engine's counts differ by a few: leases still held at the end).
    let acquires = acquires.max(releases);
    let prefix = unique("rows");
    let mut targets: Vec<(WorkspaceId, Lease)> = Vec::new();
    for i in 0..100 {
        targets.push(raw_target(store, &format!("{prefix}-{i}")).await);
    }
    let key = CheckpointKey::new("op1/network").unwrap();
    let start = Instant::now();
    for _ in 0..rounds {
        let mut writes = Vec::new();
        for (i, (id, lease)) in targets.iter().enumerate() {
            let current = store.get_workspace(id).await.unwrap();
            if i < checkpoints {
                writes.push(BatchWrite::PutCheckpoint {
                    workspace: id.clone(),
                    key: key.clone(),
                    value: serde_json::json!({ "vpc": format!("vpc-{i}"), "subnets": ["subnet-a", "subnet-b"] }),
                    fence: lease.fence,
                });
            }
            // The first commits chain on each other's revisions.
            let n = if i < commits.saturating_sub(100) {
                2
            } else {
                1
            };
            for k in 0..n {
                let mut rec = current.value.clone();
                rec.next_operation += 1 + k;
                let revision = Revision(current.revision.0 + k);
                writes.push(BatchWrite::Commit(super::step_write(rec, revision, lease)));
            }
            if i < releases {
                writes.push(BatchWrite::Release(lease.clone()));
            }
            if i < acquires {
                writes.push(BatchWrite::Acquire {
                    workspace: id.clone(),
                    holder: lease.holder.clone(),
                    ttl: Duration::from_secs(3600),
                });
            }
        }
        for r in store.write_batch(writes).await {
            if let BatchOutcome::Lease(l) = r.unwrap() {
                let t = targets
                    .iter_mut()
                    .find(|(id, _)| *id == l.workspace)
                    .unwrap();
                t.1 = l;
            }
        }
    }
    (100 * rounds) as f64 / start.elapsed().as_secs_f64()
}

/// Waits until every workspace of `ids` satisfies `done`.
async fn wait_all(
    store: &dyn WorkspaceStore,
    ids: &[WorkspaceId],
    done: impl Fn(&WorkspaceRecord) -> bool,
) {
    let wanted: HashSet<&WorkspaceId> = ids.iter().collect();
    loop {
        let all = list_all(store).await;
        if all
            .iter()
            .filter(|r| wanted.contains(&r.id) && done(r))
            .count()
            == ids.len()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn list_all(store: &dyn WorkspaceStore) -> Vec<WorkspaceRecord> {
    let mut out = Vec::new();
    let mut query = ListQuery::new().limit(5000);
    loop {
        let page = store.list_workspaces(&query).await.unwrap();
        let Some(last) = page.last().map(|r| r.value.id.clone()) else {
            return out;
        };
        out.extend(page.into_iter().map(|r| r.value));
        query.after = Some(last);
    }
}

/// Steps finished in the workspace's provisioning (or all of them, once Active).
fn progress(r: &WorkspaceRecord) -> usize {
    match r
        .operations
        .iter()
        .find(|o| o.kind == OperationKind::Provision)
    {
        Some(op) => op.steps.iter().filter(|s| s.is_finished()).count(),
        None => usize::MAX,
    }
}

/// 10,000 workspaces are taken part-way through provisioning by one process,
/// which then crashes (its runtime is dropped mid-step, its leases stay in the
/// store); a new engine with the same replica name, on a new connection to the
/// same store, resumes them. The cloud, the clusters and the agents outlive the
/// control plane, as they would. Reports the time until every workspace has made
/// durable progress past where the crash left it, and until all are `Active`,
/// and checks that no cloud resource was created twice and no step finished twice.
pub(crate) fn report_resume(target: &Target, n: usize) {
    let location = target.fresh();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let cloud = SimulatedCloud::builder()
        .clock(clock.clone())
        .latency(InfraLayer::Cluster, Duration::from_millis(1500))
        .build();
    let world = SimulatedWorld::new(cloud.clone(), FaultPlan::none());
    let config = EngineConfig::new("replica-a".parse().unwrap())
        .with_lease_ttl(Duration::from_secs(60))
        // The lifecycles measured end at `Destroyed`, not a retention later.
        .with_purge(None);
    let prefix = unique("r");
    let ids: Vec<WorkspaceId> = (0..n)
        .map(|i| format!("{prefix}-{i}").parse().unwrap())
        .collect();

    // Before the crash: its own runtime, so that dropping it stops everything
    // at whatever await point each task is at.
    let before = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    before.block_on(async {
        let store = location.open().await;
        let engine = world
            .engine(
                Arc::new(target.group(store.clone())),
                clock.clone(),
                config.clone(),
            )
            .unwrap();
        let driver = Driver::spawn(engine.clone(), DriverConfig::default().with_concurrency(64));
        for chunk in ids.chunks(256) {
            futures::future::join_all(
                chunk
                    .iter()
                    .map(|id| engine.create(id.clone(), spec(), actor())),
            )
            .await
            .into_iter()
            .for_each(|r| {
                r.unwrap();
            });
        }
        // Until every workspace has its network built: then they are spread over
        // the cluster, node-pool and agent steps.
        wait_all(store.as_ref(), &ids, |r| progress(r) >= 1).await;
        std::mem::forget(driver); // a crash does not shut down gracefully
    });
    let before_secs = started.elapsed().as_secs_f64();
    before.shutdown_background();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = location.open().await;
        let at_crash: HashMap<WorkspaceId, usize> =
            list_all(store.as_ref()).await.into_iter().filter(|r| r.id.as_str().starts_with(&prefix)).map(|r| (r.id.clone(), progress(&r))).collect();
        assert_eq!(at_crash.len(), n);
        let mut spread: Vec<(usize, usize)> = {
            let mut m: HashMap<usize, usize> = HashMap::new();
            for p in at_crash.values() {
                *m.entry(*p).or_default() += 1;
            }
            m.into_iter().collect()
        };
        spread.sort();
        let creates_before = cloud.api_calls().total_creates();

        // The restart: a new engine (same replica name) on a new connection.
        let restarted = Instant::now();
        let grouped = Arc::new(target.group(store.clone()));
        let engine = world.engine(grouped.clone(), clock.clone(), config.clone()).unwrap();
        let driver = Driver::spawn(engine.clone(), DriverConfig::default().with_concurrency(target.concurrency()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agents = world.agents.clone();
        let agent_task = tokio::spawn(async move {
            agents
                .run(Duration::from_millis(20), async {
                    let _ = stopped.await;
                })
                .await
        });
        // Progress is watched through the engine's events (published after each
        // commit), which costs the engine nothing; a store scan checks the end.
        let mut events = engine.subscribe();
        let mut progressed = HashSet::new();
        let mut active = HashSet::new();
        let mut resumed_at = None;
        let mut lagged = 0;
        let active_at = loop {
            let event = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
            match event {
                Ok(Ok(e)) if at_crash.contains_key(&e.workspace) => match e.kind {
                    EngineEventKind::StepDone { .. } => {
                        progressed.insert(e.workspace);
                    }
                    EngineEventKind::Transition { to: StateName::Active, .. } => {
                        progressed.insert(e.workspace.clone());
                        active.insert(e.workspace);
                    }
                    _ => {}
                },
                Ok(Ok(_)) => {}
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => lagged += n,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => panic!("engine gone"),
                Err(_) if lagged > 0 => {
                    // Events were missed: fall back to the store.
                    let all = list_all(store.as_ref()).await;
                    for r in all.iter().filter(|r| at_crash.contains_key(&r.id)) {
                        if progress(r) > at_crash[&r.id] {
                            progressed.insert(r.id.clone());
                        }
                        if r.state == WorkspaceState::Active {
                            active.insert(r.id.clone());
                        }
                    }
                }
                Err(_) => {}
            }
            if resumed_at.is_none() && progressed.len() == n {
                resumed_at = Some(restarted.elapsed());
            }
            if active.len() == n {
                break restarted.elapsed();
            }
        };
        let all = list_all(store.as_ref()).await;
        assert!(
            all.iter()
                .filter(|r| at_crash.contains_key(&r.id))
                .all(|r| r.state == WorkspaceState::Active),
            "the store agrees: all Active"
        );
        let stats = driver.shutdown().await;
        let _ = stop.send(());
        let _ = agent_task.await;

        // None ran twice: no cloud resource was created twice, and no step of any
        // workspace's provisioning finished twice in its history.
        assert!(cloud.duplicates().is_empty(), "{:?}", cloud.duplicates());
        let mut twice = 0;
        for id in &ids {
            let mut seen = HashSet::new();
            for e in store.read_events(id, EventSeq(0), 0).await.unwrap() {
                if let EventKind::StepDone { operation, step } = &e.event.kind
                    && !seen.insert((*operation, step.clone()))
                {
                    twice += 1;
                }
            }
        }
        assert_eq!(twice, 0, "steps finished twice");
        let clusters = cloud.api_calls().creates_of("cluster");
        assert_eq!(clusters as usize, n, "one cluster created per workspace");
        let (batches, writes) = grouped.stats();
        println!(
            "REPORT {} resume: {n} in-flight workspaces (finished provisioning steps at the crash -> workspaces: {spread:?}; \
             {before_secs:.1}s to get there); after the restart every one made durable progress in {:.2}s and all were Active \
             in {:.2}s ({} advances, {writes} commits in {batches} transactions); cloud creates before/after the crash {creates_before}/{}, \
             duplicates 0, steps finished twice 0{}",
            target.name(),
            resumed_at.expect("resumed").as_secs_f64(),
            active_at.as_secs_f64(),
            stats.advances,
            cloud.api_calls().total_creates() - creates_before,
            if lagged > 0 { format!(" ({lagged} events missed; the store was scanned instead)") } else { String::new() },
        );
    });
}
