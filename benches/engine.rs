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
use cogrion::{sim::*, store::*};
use criterion::{Criterion, Throughput};
use tokio::runtime::Runtime;

#[path = "support/durable.rs"]
mod durable;
#[path = "support/host.rs"]
mod host;
#[path = "support/proc.rs"]
mod proc;

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
    // No purge: a destroyed workspace would wait its retention (7 days by
    // default) for it, and the lifecycles measured end at `Destroyed`.
    let mut config = EngineConfig::new("bench".parse().unwrap()).with_purge(None);
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

/// The write one engine step makes: the record, compare-and-swap and fenced,
/// with one history event.
fn step_write(rec: WorkspaceRecord, revision: Revision, lease: &Lease) -> WorkspaceWrite {
    WorkspaceWrite::update(rec, revision, Timestamp::EPOCH)
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
        })
}

/// `n` raw writes of the size a step makes.
async fn raw_writes(store: &dyn WorkspaceStore, id: &WorkspaceId, lease: &Lease, n: u64) {
    for _ in 0..n {
        let current = store.get_workspace(id).await.unwrap();
        let mut rec = current.value;
        rec.next_operation += 1;
        black_box(
            store
                .commit(step_write(rec, current.revision, lease))
                .await
                .unwrap(),
        );
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
        .acquire(&id, &"bench".parse().unwrap(), Duration::from_secs(3600))
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

/// 10,000 workspaces from create to Active to Destroyed with the built-in driver.
fn report_driver(rt: &Runtime) {
    const N: usize = 10_000;
    let b = setup(true);
    let agents = {
        let _runtime = rt.enter();
        b.agents.spawn(Duration::from_millis(5))
    };
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
    rt.block_on(agents.stop());
    assert_eq!(b.cloud.all_live(), 0);
    println!(
        "REPORT driver: {N} workspaces create -> Active -> Destroyed in {:.2}s ({} advances, {} errors, {:.0} advances/s)",
        total.as_secs_f64(),
        stats.advances,
        stats.errors,
        stats.advances as f64 / total.as_secs_f64()
    );
}

/// Which reports to run: `COGRION_BENCH` lists them, comma-separated, from
/// `memory`, `driver`, `sqlite` (`sqlite-batched`: only its group-commit
/// measurements), `postgres`, `resume`, `resume-postgres`, `host` (status
/// and list at 10,000 workspaces, `COGRION_BENCH_HOST` says otherwise; the
/// feed's lag on PostgreSQL) (default: all). The
/// PostgreSQL ones need the `postgres` feature and a server at
/// `COGRION_TEST_POSTGRES_URL` (`scripts/peers/postgres.sh start` prints one).
fn wanted(report: &str) -> bool {
    std::env::var("COGRION_BENCH").map_or(true, |list| list.split(',').any(|r| r.trim() == report))
}

fn postgres_targets() -> Vec<durable::Target> {
    #[cfg(feature = "postgres")]
    if let Ok(url) = std::env::var("COGRION_TEST_POSTGRES_URL") {
        return vec![durable::Target::Postgres(url)];
    }
    println!(
        "REPORT postgres: NOT MEASURED — build with `--features postgres` and set COGRION_TEST_POSTGRES_URL"
    );
    Vec::new()
}

/// Workspaces and driver concurrency of the group-commit measurements
/// (`COGRION_BENCH_WORKSPACES`, `COGRION_BENCH_CONCURRENCY`; default 1,000
/// and 256).
fn batched_size() -> (usize, usize) {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        var("COGRION_BENCH_WORKSPACES", 1000),
        var("COGRION_BENCH_CONCURRENCY", 256),
    )
}

fn main() {
    use cogrion::providers::sqlite::Durability;
    use durable::Target;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    if wanted("memory") {
        bench_steps(&mut c, &rt);
        c.final_summary();
    }
    // The head-to-head ratios and the driver runs only when measuring, not when
    // `cargo test --benches` smoke-tests the target.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if wanted("memory") {
        report_ratio(&rt);
    }
    if wanted("sqlite") || wanted("sqlite-batched") {
        if wanted("sqlite") {
            durable::report_single(&rt, &Target::Sqlite(Durability::Normal), 5_000, 100);
            durable::report_single(&rt, &Target::Sqlite(Durability::Full), 1_000, 20);
        }
        let (n, concurrency) = batched_size();
        if wanted("memory") {
            durable::report_batched(&rt, &Target::Memory, n, concurrency);
        }
        durable::report_batched(&rt, &Target::Sqlite(Durability::Normal), n, concurrency);
        durable::report_batched(&rt, &Target::Sqlite(Durability::Full), n, concurrency);
    }
    if wanted("postgres") {
        for target in postgres_targets() {
            durable::report_single(&rt, &target, 1_000, 20);
            let (n, concurrency) = batched_size();
            durable::report_batched(&rt, &target, n, concurrency);
        }
    }
    if wanted("resume") {
        // 10,000 unless COGRION_BENCH_RESUME says otherwise (for quick looks).
        let n = std::env::var("COGRION_BENCH_RESUME")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        durable::report_resume(&Target::Sqlite(Durability::Normal), n);
        durable::report_resume(&Target::Sqlite(Durability::Full), n);
    }
    if (wanted("resume") && wanted("postgres")) || wanted("resume-postgres") {
        let n = std::env::var("COGRION_BENCH_RESUME")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        for target in postgres_targets() {
            durable::report_resume(&target, n);
        }
    }
    if wanted("driver") {
        report_driver(&rt);
    }
    if wanted("host") {
        let n = std::env::var("COGRION_BENCH_HOST")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        host::report_reads(&rt, n);
        #[cfg(feature = "postgres")]
        if let Ok(url) = std::env::var("COGRION_TEST_POSTGRES_URL") {
            host::report_feed_lag(&rt, &url);
        }
    }
    let dir = std::env::temp_dir().join(format!("cogrion-bench-{}", std::process::id()));
    std::fs::remove_dir_all(dir).ok();
}
