//! Engine throughput against the store's raw write rate, and the built-in driver
//! at scale.
//!
//! Run with `cargo bench --bench engine`. Every number is measured in the same
//! run as the limit it is compared with:
//!
//! - `raw_write`: one compare-and-swap, fenced commit of a workspace record with
//!   one event — what a step persists — on `InMemoryStore`.
//! - `engine_step`: one step through `Engine::advance` on the same store, the
//!   simulated cloud at zero latency, simulated agents; whole lifecycles
//!   (provision, destroy) of 100 workspaces.
//! - the ratio of the two rates, and the wall time to take 10,000 workspaces from
//!   create to `Active` to `Destroyed` with the built-in driver.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedWorld};
use cogrion::*;
use criterion::{Criterion, Throughput};
use tokio::runtime::Runtime;

struct Bench {
    store: Arc<dyn WorkspaceStore>,
    engine: Engine,
    agents: SimulatedAgents,
    cloud: SimulatedCloud,
}

fn setup(concurrent_driver: bool) -> Bench {
    setup_on(Arc::new(InMemoryStore::new()), concurrent_driver)
}

fn setup_on(store: Arc<dyn WorkspaceStore>, concurrent_driver: bool) -> Bench {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let cloud = SimulatedCloud::builder().clock(clock.clone()).build();
    let mut config = EngineConfig::new("bench".parse().unwrap());
    if concurrent_driver {
        config = config.with_lease_ttl(Duration::from_secs(60));
    }
    let world = SimulatedWorld::new(cloud.clone(), FaultPlan::none());
    let engine = world.engine(store.clone(), clock, config).unwrap();
    let agents = world.agents;
    Bench {
        store,
        engine,
        agents,
        cloud,
    }
}

fn spec() -> WorkspaceSpec {
    cogrion::conformance::sample_workspace_spec()
}

fn actor() -> Actor {
    Actor::Api {
        principal: "bench".into(),
    }
}

/// Drives one workspace until it rests; returns the steps taken.
async fn drive(b: &Bench, id: &WorkspaceId) -> u64 {
    let mut steps = 0;
    loop {
        match b.engine.advance(id).await.unwrap() {
            Action::RunAgain => steps += 1,
            Action::AwaitAgent { .. } => {
                b.agents.step_all().await;
            }
            Action::WakeAt(_) => tokio::task::yield_now().await,
            Action::Done => return steps,
        }
    }
}

/// Whole lifecycles of `n` workspaces through `advance`; returns the steps.
async fn lifecycles(b: &Bench, prefix: &str, n: usize) -> u64 {
    let mut steps = 0;
    for i in 0..n {
        let id: WorkspaceId = format!("{prefix}-{i}").parse().unwrap();
        b.engine.create(id.clone(), spec(), actor()).await.unwrap();
        steps += drive(b, &id).await;
        b.engine.destroy(&id, actor()).await.unwrap();
        steps += drive(b, &id).await;
    }
    steps
}

/// `n` raw writes of the size a step makes.
async fn raw_writes(store: &dyn WorkspaceStore, id: &WorkspaceId, lease: &Lease, n: u64) {
    for _ in 0..n {
        let current = store.get_workspace(id).await.unwrap();
        let mut rec = current.value;
        rec.next_operation += 1;
        let write = WorkspaceWrite::update(rec, current.revision, Timestamp::EPOCH)
            .fenced(lease.fence)
            .event(NewEvent {
                at: Timestamp::EPOCH,
                actor: Actor::Engine {
                    holder: lease.holder.clone(),
                },
                kind: EventKind::StepDone {
                    operation: 1,
                    step: "network".into(),
                },
                message: "network done".into(),
            });
        black_box(store.commit(write).await.unwrap());
    }
}

async fn raw_target(store: &dyn WorkspaceStore, name: &str) -> (WorkspaceId, Lease) {
    let id: WorkspaceId = name.parse().unwrap();
    store
        .commit(WorkspaceWrite::create(
            WorkspaceRecord::new(id.clone(), spec(), Timestamp::EPOCH),
            Timestamp::EPOCH,
        ))
        .await
        .unwrap();
    let lease = store
        .acquire(
            &id,
            &"bench".parse().unwrap(),
            Duration::from_secs(3600),
            Timestamp::EPOCH,
        )
        .await
        .unwrap();
    (id, lease)
}

fn bench_steps(c: &mut Criterion, rt: &Runtime) {
    const WORKSPACES: usize = 100;
    const WRITES: u64 = 2000;
    let probe = setup(false);
    let steps = rt.block_on(lifecycles(&probe, "probe", WORKSPACES));

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(WRITES));
    g.bench_function("raw_write", |bench| {
        let b = setup(false);
        let (id, lease) = rt.block_on(raw_target(b.store.as_ref(), "raw"));
        bench.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..iters {
                    raw_writes(b.store.as_ref(), &id, &lease, WRITES).await;
                }
            });
            start.elapsed()
        });
    });
    g.throughput(Throughput::Elements(steps));
    g.bench_function("engine_step", |bench| {
        let mut round = 0;
        bench.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let b = setup(false);
                round += 1;
                let start = Instant::now();
                let done = rt.block_on(lifecycles(&b, &format!("r{round}"), WORKSPACES));
                elapsed += start.elapsed();
                assert_eq!(done, steps, "every lifecycle takes the same steps");
            }
            elapsed
        });
    });
    g.finish();
}

/// The ratio, measured head to head in this run (best of five each).
fn report_ratio(rt: &Runtime) {
    let best = |f: &dyn Fn() -> (u64, Duration)| {
        (0..5)
            .map(|_| f())
            .map(|(n, d)| n as f64 / d.as_secs_f64())
            .fold(0.0, f64::max)
    };
    let raw = best(&|| {
        let b = setup(false);
        let (id, lease) = rt.block_on(raw_target(b.store.as_ref(), "raw"));
        let start = Instant::now();
        rt.block_on(raw_writes(b.store.as_ref(), &id, &lease, 20_000));
        (20_000, start.elapsed())
    });
    let engine = best(&|| {
        let b = setup(false);
        let start = Instant::now();
        let steps = rt.block_on(lifecycles(&b, "ratio", 500));
        (steps, start.elapsed())
    });
    println!("\nREPORT raw store writes/s:      {raw:>12.0}");
    println!("REPORT engine steps/s (advance): {engine:>12.0}");
    println!("REPORT ratio engine/raw:         {:>12.3}", engine / raw);
}

/// The same head-to-head on the SQLite store, at both durabilities: raw
/// step-sized writes against engine steps, on fresh database files.
fn report_sqlite(rt: &Runtime) {
    use cogrion::providers::sqlite::{Durability, SqliteOptions, SqliteStore};
    let dir = std::env::temp_dir().join(format!("cogrion-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut n = 0;
    let mut open = |durability| {
        n += 1;
        let path = dir.join(format!("bench-{n}.db"));
        let store = rt
            .block_on(SqliteStore::open_with(
                path,
                SqliteOptions::default().with_durability(durability),
            ))
            .unwrap();
        Arc::new(store) as Arc<dyn WorkspaceStore>
    };
    for (name, durability, writes, workspaces) in [
        ("NORMAL", Durability::Normal, 5_000, 100),
        ("FULL", Durability::Full, 1_000, 20),
    ] {
        let b = setup_on(open(durability), false);
        let (id, lease) = rt.block_on(raw_target(b.store.as_ref(), "raw"));
        let start = Instant::now();
        rt.block_on(raw_writes(b.store.as_ref(), &id, &lease, writes));
        let raw = writes as f64 / start.elapsed().as_secs_f64();
        let b = setup_on(open(durability), false);
        let start = Instant::now();
        let steps = rt.block_on(lifecycles(&b, "sqlite", workspaces));
        let engine = steps as f64 / start.elapsed().as_secs_f64();
        println!(
            "REPORT sqlite {name}: raw writes/s {raw:>10.0}, engine steps/s {engine:>10.0}, ratio {:.3}",
            engine / raw
        );
    }
    // Fully durable, batched: raw step-sized writes, 100 workspaces' writes per
    // transaction, against engine steps through the driver (concurrency 64) on
    // the group-commit wrapper.
    let raw_store = open(Durability::Full);
    let targets: Vec<(WorkspaceId, Lease)> = (0..100)
        .map(|i| rt.block_on(raw_target(raw_store.as_ref(), &format!("raw-{i}"))))
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
                writes.push(
                    WorkspaceWrite::update(rec, current.revision, Timestamp::EPOCH)
                        .fenced(lease.fence)
                        .event(NewEvent {
                            at: Timestamp::EPOCH,
                            actor: Actor::Engine {
                                holder: lease.holder.clone(),
                            },
                            kind: EventKind::StepDone {
                                operation: 1,
                                step: "network".into(),
                            },
                            message: "network done".into(),
                        }),
                );
            }
            for r in raw_store.commit_batch(writes).await {
                r.unwrap();
            }
        }
    });
    let raw_batched = (rounds * targets.len()) as f64 / start.elapsed().as_secs_f64();
    let inner = open(Durability::Full);
    let grouped = {
        let _runtime = rt.enter(); // the wrapper starts its writing task here
        Arc::new(GroupCommit::new(inner, 256))
    };
    let b = setup_on(grouped.clone(), true);
    let n = 300;
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
        for i in 0..n {
            b.engine
                .create(format!("g-{i}").parse().unwrap(), spec(), actor())
                .await
                .unwrap();
        }
        let count = |state| {
            let store = b.store.clone();
            async move {
                store
                    .list_workspaces(&ListQuery::new().state(state).limit(100_000))
                    .await
                    .unwrap()
                    .len()
            }
        };
        while count(StateName::Active).await < n {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for i in 0..n {
            b.engine
                .destroy(&format!("g-{i}").parse().unwrap(), actor())
                .await
                .unwrap();
        }
        while count(StateName::Destroyed).await < n {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver.shutdown().await
    });
    let elapsed = start.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = rt.block_on(agent_task);
    let (batches, writes) = grouped.stats();
    let engine = stats.advances as f64 / elapsed;
    println!(
        "REPORT sqlite FULL batched: raw writes/s {raw_batched:>8.0} (100 per transaction); engine advances/s {engine:>8.0} \
         through the driver with group commit ({writes} commits in {batches} transactions); ratio {:.3}",
        engine / raw_batched
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// 10,000 workspaces from create to Active to Destroyed with the built-in driver.
fn report_driver(rt: &Runtime) {
    const N: usize = 10_000;
    let b = setup(true);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agents = b.agents.clone();
    let agent_task = rt.spawn(async move {
        agents
            .run(Duration::from_millis(5), async {
                let _ = stopped.await;
            })
            .await
    });
    let count = |state| {
        let store = b.store.clone();
        async move {
            store
                .list_workspaces(&ListQuery::new().state(state).limit(100_000))
                .await
                .unwrap()
                .len()
        }
    };
    let start = Instant::now();
    let stats = rt.block_on(async {
        let driver = Driver::spawn(
            b.engine.clone(),
            DriverConfig::default()
                .with_concurrency(64)
                .with_sweep_interval(Duration::from_millis(200)),
        );
        for i in 0..N {
            b.engine
                .create(format!("ws-{i}").parse().unwrap(), spec(), actor())
                .await
                .unwrap();
        }
        while count(StateName::Active).await < N {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let active = start.elapsed();
        for i in 0..N {
            b.engine
                .destroy(&format!("ws-{i}").parse().unwrap(), actor())
                .await
                .unwrap();
        }
        while count(StateName::Destroyed).await < N {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!(
            "REPORT driver: {N} workspaces Active after {:.2}s",
            active.as_secs_f64()
        );
        driver.shutdown().await
    });
    let total = start.elapsed();
    let _ = stop.send(());
    let _ = rt.block_on(agent_task);
    assert_eq!(b.cloud.all_live(), 0);
    println!(
        "REPORT driver: {N} workspaces create -> Active -> Destroyed in {:.2}s ({} advances, {} errors, {:.0} advances/s)",
        total.as_secs_f64(),
        stats.advances,
        stats.errors,
        stats.advances as f64 / total.as_secs_f64()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    bench_steps(&mut c, &rt);
    c.final_summary();
    // The head-to-head ratio and the driver run only when measuring, not when
    // `cargo test --benches` smoke-tests the target.
    if std::env::args().any(|a| a == "--bench") {
        report_ratio(&rt);
        report_sqlite(&rt);
        report_driver(&rt);
    }
}
