//! The crash harness: the whole lifecycle — provision, stack deploys, an update,
//! a stack removal, destroy and purge — and the paths that correct and unblock
//! it — a provision and an update corrected (and reverted) after failing on
//! their spec, a destroy blocked for good and unblocked by abandoning a stack,
//! a stack graph submitted at once with a dependency that fails — replayed
//! while the engine is killed at every step boundary and between every side
//! effect and the write of its outcome, with transient faults, lost responses,
//! cloud latency and a second engine racing for the lease. Time is the manual
//! clock's, so hundreds of runs take seconds.
//!
//! `COGRION_SIM_SEED` picks the first seed (default 1) and `COGRION_SIM_RUNS` how
//! many seeds run (default 200); a failure names its seed.

use std::time::Duration;

use cogrion::sim::{FaultPlan, FaultTarget};
use cogrion::*;
use cogrion::{provider::*, store::*};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::drive::{check_destroyed, check_history, check_no_duplicates, drive};
use crate::world::{CrashPoint, World, api, spec, spec_with_instance, stack};

type Outcome = std::result::Result<(), String>;

/// Drives `id` to rest; when transient faults exhausted a step's retries (the
/// workspace or a stack is `Failed` with "gave up after"), retries as an operator
/// would and drives again. Any other failure is left for the checks to report.
async fn settle(world: &World, engines: &mut [Engine], id: &WorkspaceId) -> Outcome {
    for _ in 0..8 {
        drive(world, engines, id).await?;
        let rec = engines[0].workspace(id).await.map_err(|e| e.to_string())?;
        let exhausted = |error: &str| error.contains("gave up after");
        if let WorkspaceState::Failed(f) = &rec.state
            && exhausted(&f.error)
        {
            engines[0]
                .retry(id, api())
                .await
                .map_err(|e| format!("retry refused: {e}"))?;
            continue;
        }
        let failed: Vec<StackName> = rec
            .stacks
            .iter()
            .filter(|(_, s)| matches!(&s.state, StackState::Failed(f) if exhausted(&f.error)))
            .map(|(n, _)| n.clone())
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        for name in failed {
            engines[0]
                .retry_stack(id, &name, api())
                .await
                .map_err(|e| format!("retry of {name} refused: {e}"))?;
        }
    }
    Err(format!("workspace {id} kept exhausting its retries"))
}

/// A request's result, as a run's outcome.
fn api_call(r: Result<WorkspaceRecord>) -> Outcome {
    r.map(|_| ()).map_err(|e| format!("request refused: {e}"))
}

/// Creates the run's workspace from `spec` and drives it to rest.
async fn created(
    world: &World,
    engines: &mut [Engine],
    spec: WorkspaceSpec,
) -> Result<WorkspaceId, String> {
    let id: WorkspaceId = "sim-ws".parse().unwrap();
    api_call(engines[0].create(id.clone(), spec, api()).await)?;
    settle(world, engines, &id).await?;
    Ok(id)
}

async fn expect_state(e: &Engine, id: &WorkspaceId, want: StateName, phase: &str) -> Outcome {
    let got = e.workspace(id).await.map_err(|e| e.to_string())?.state;
    if got.name() != want {
        if std::env::var("COGRION_SIM_DEBUG").is_ok() {
            for ev in e.history(id).await.unwrap_or_default() {
                eprintln!("{} {:?} {}", ev.event.at, ev.event.kind, ev.event.message);
            }
            eprintln!("{:?}", e.store().list_credentials(id).await);
        }
        return Err(format!("after {phase}: expected {want}, found {got:?}"));
    }
    Ok(())
}

async fn expect_stacks(e: &Engine, id: &WorkspaceId, want: &[&str], phase: &str) -> Outcome {
    let rec = e.workspace(id).await.map_err(|e| e.to_string())?;
    let deployed: Vec<String> = rec
        .stacks
        .iter()
        .filter(|(_, s)| s.state == StackState::Deployed)
        .map(|(n, _)| n.to_string())
        .collect();
    if deployed != want || rec.stacks.len() != want.len() {
        return Err(format!(
            "after {phase}: expected stacks {want:?} deployed, found {:?}",
            rec.stacks
        ));
    }
    Ok(())
}

/// The lifecycle every run plays, checking each phase's outcome.
async fn scenario(world: &World, engines: &mut [Engine]) -> Outcome {
    let id = created(world, engines, spec()).await?;
    expect_state(&engines[0], &id, StateName::Active, "provision").await?;

    api_call(
        engines[0]
            .deploy_stack(&id, stack("db", ExecutorKind::Helm, &[]), api())
            .await,
    )?;
    api_call(
        engines[0]
            .deploy_stack(&id, stack("infra", ExecutorKind::Terraform, &[]), api())
            .await,
    )?;
    settle(world, engines, &id).await?;
    api_call(
        engines[0]
            .deploy_stack(&id, stack("web", ExecutorKind::Manifests, &["db"]), api())
            .await,
    )?;
    settle(world, engines, &id).await?;
    expect_stacks(&engines[0], &id, &["db", "infra", "web"], "stack deploys").await?;

    let mut bigger = spec();
    bigger.node_pools[0].size = NodePoolSize::new(1, 3, 5).unwrap();
    api_call(engines[0].update(&id, bigger, api()).await)?;
    settle(world, engines, &id).await?;
    expect_state(&engines[0], &id, StateName::Active, "update").await?;

    api_call(
        engines[0]
            .remove_stack(&id, &"web".parse().unwrap(), api())
            .await,
    )?;
    settle(world, engines, &id).await?;
    expect_stacks(&engines[0], &id, &["db", "infra"], "stack removal").await?;

    destroy_and_check(world, engines, &id).await
}

/// Requests that interrupt work in flight: a stack removed while its deploy is
/// under way, then a destroy while an update runs — or, for `early`, a destroy
/// while the workspace is still provisioning. `steps` advances happen before each
/// interruption, so seeds interrupt at different points.
async fn interrupting_scenario(
    world: &World,
    engines: &mut [Engine],
    steps: usize,
    early: bool,
) -> Outcome {
    let id: WorkspaceId = "sim-ws".parse().unwrap();
    let partial = |engines: &mut [Engine]| {
        let engine = engines[0].clone();
        let id = id.clone();
        async move {
            for _ in 0..steps {
                // Crashes and lease races surface later, in `drive`.
                if !matches!(engine.advance(&id).await, Ok(Action::RunAgain)) {
                    break;
                }
            }
        }
    };
    api_call(engines[0].create(id.clone(), spec(), api()).await)?;
    if early {
        partial(engines).await;
        api_call(engines[0].destroy(&id, api()).await)?;
    } else {
        settle(world, engines, &id).await?;
        expect_state(&engines[0], &id, StateName::Active, "provision").await?;
        api_call(
            engines[0]
                .deploy_stack(&id, stack("db", ExecutorKind::Terraform, &[]), api())
                .await,
        )?;
        api_call(
            engines[0]
                .deploy_stack(&id, stack("web", ExecutorKind::Helm, &[]), api())
                .await,
        )?;
        partial(engines).await;
        api_call(
            engines[0]
                .remove_stack(&id, &"web".parse().unwrap(), api())
                .await,
        )?;
        settle(world, engines, &id).await?;
        expect_stacks(&engines[0], &id, &["db"], "removal during deploy").await?;
        let mut bigger = spec();
        bigger.node_pools[0].size = NodePoolSize::new(1, 3, 5).unwrap();
        api_call(engines[0].update(&id, bigger, api()).await)?;
        partial(engines).await;
        api_call(engines[0].destroy(&id, api()).await)?;
    }
    settle(world, engines, &id).await?;
    finish_checks(world, engines, &id).await
}

/// A provision that fails on its spec (an instance type the cloud does not
/// offer) is corrected; an update that fails the same way is reverted; another
/// is corrected; then destroy.
async fn correction_scenario(world: &World, engines: &mut [Engine]) -> Outcome {
    world.offer_only_listed_instance_types();
    let id = created(world, engines, spec_with_instance("sim-huge")).await?;
    let expect_failed = async |engines: &mut [Engine], step: &str, phase: &str| -> Outcome {
        match engines[0]
            .workspace(&id)
            .await
            .map_err(|e| e.to_string())?
            .state
        {
            WorkspaceState::Failed(f) if f.step == step && f.error.contains("not offered") => {
                Ok(())
            }
            other => Err(format!(
                "after {phase}: expected a failure at {step}, found {other:?}"
            )),
        }
    };
    expect_failed(engines, "node-pools", "a provision with a bad spec").await?;
    api_call(
        engines[0]
            .correct(&id, spec_with_instance("sim-medium"), api())
            .await,
    )?;
    settle(world, engines, &id).await?;
    expect_state(
        &engines[0],
        &id,
        StateName::Active,
        "the corrected provision",
    )
    .await?;

    api_call(
        engines[0]
            .update(&id, spec_with_instance("sim-huge"), api())
            .await,
    )?;
    settle(world, engines, &id).await?;
    expect_failed(engines, "node-pools", "an update with a bad spec").await?;
    api_call(engines[0].revert(&id, api()).await)?;
    settle(world, engines, &id).await?;
    expect_state(&engines[0], &id, StateName::Active, "the reverted update").await?;

    let mut bad = spec_with_instance("sim-huge");
    bad.node_pools[0].size = NodePoolSize::new(1, 3, 5).unwrap();
    api_call(engines[0].update(&id, bad, api()).await)?;
    settle(world, engines, &id).await?;
    expect_failed(engines, "node-pools", "a second update with a bad spec").await?;
    let mut fixed = spec_with_instance("sim-large");
    fixed.node_pools[0].size = NodePoolSize::new(1, 3, 5).unwrap();
    api_call(engines[0].correct(&id, fixed.clone(), api()).await)?;
    settle(world, engines, &id).await?;
    expect_state(&engines[0], &id, StateName::Active, "the corrected update").await?;
    let rec = engines[0].workspace(&id).await.map_err(|e| e.to_string())?;
    if rec.applied.as_ref() != Some(&fixed) {
        return Err(format!(
            "the corrected spec was not applied: {:?}",
            rec.applied
        ));
    }
    destroy_and_check(world, engines, &id).await
}

/// A destroy blocked for good by a Terraform stack's teardown, unblocked by
/// abandoning that stack (with a receipt); the rest is torn down.
async fn abandon_scenario(world: &World, engines: &mut [Engine]) -> Outcome {
    let id = created(world, engines, spec()).await?;
    submit(
        world,
        engines,
        &id,
        vec![
            stack("db", ExecutorKind::Terraform, &[]),
            stack("web", ExecutorKind::Helm, &["db"]),
        ],
    )
    .await?;
    expect_stacks(&engines[0], &id, &["db", "web"], "stack deploys").await?;
    let db: StackName = "db".parse().unwrap();
    world
        .cloud
        .faults()
        .fail_permanently(FaultTarget::Stack(db.clone()));
    api_call(engines[0].destroy(&id, api()).await)?;
    settle(world, engines, &id).await?;
    match engines[0]
        .workspace(&id)
        .await
        .map_err(|e| e.to_string())?
        .state
    {
        WorkspaceState::Failed(f) if f.step == "stack/db" && f.stack.as_ref() == Some(&db) => {}
        other => {
            return Err(format!(
                "expected the destroy blocked at stack/db, found {other:?}"
            ));
        }
    }
    api_call(
        engines[0]
            .abandon(&id, &[db.clone().into()], "kept on purpose", api())
            .await,
    )?;
    settle(world, engines, &id).await?;
    let rec = engines[0].workspace(&id).await.map_err(|e| e.to_string())?;
    let receipt: Vec<_> = rec.left_behind.iter().map(|l| l.step.as_str()).collect();
    if receipt != ["stack/db"] {
        return Err(format!(
            "expected a receipt for stack/db alone, found {:?}",
            rec.left_behind
        ));
    }
    finish_checks(world, engines, &id).await
}

/// A stack graph submitted at once deploys in dependency order; a second one
/// whose root fails fails its dependents, which deploy once it is fixed and
/// they are retried.
async fn graph_scenario(world: &World, engines: &mut [Engine]) -> Outcome {
    let id = created(world, engines, spec()).await?;
    submit(
        world,
        engines,
        &id,
        vec![
            stack("web", ExecutorKind::Manifests, &["api"]),
            stack("api", ExecutorKind::Helm, &["db"]),
            stack("db", ExecutorKind::Terraform, &[]),
        ],
    )
    .await?;
    expect_stacks(&engines[0], &id, &["api", "db", "web"], "the graph").await?;

    let queue: StackName = "queue".parse().unwrap();
    world
        .cloud
        .faults()
        .fail_permanently(FaultTarget::Stack(queue.clone()));
    submit(
        world,
        engines,
        &id,
        vec![
            stack("queue", ExecutorKind::Terraform, &[]),
            stack("worker", ExecutorKind::Helm, &["queue", "db"]),
        ],
    )
    .await?;
    let rec = engines[0].workspace(&id).await.map_err(|e| e.to_string())?;
    match rec.stacks.get(&"worker".parse().unwrap()).map(|s| &s.state) {
        Some(StackState::Failed(f)) if f.error.contains("dependency queue failed") => {}
        other => {
            return Err(format!(
                "expected worker failed naming queue, found {other:?}"
            ));
        }
    }
    world
        .cloud
        .faults()
        .clear_permanent(FaultTarget::Stack(queue.clone()));
    for name in ["queue", "worker"] {
        api_call(
            engines[0]
                .retry_stack(&id, &name.parse().unwrap(), api())
                .await,
        )?;
    }
    settle(world, engines, &id).await?;
    expect_stacks(
        &engines[0],
        &id,
        &["api", "db", "queue", "web", "worker"],
        "the retried graph",
    )
    .await?;
    destroy_and_check(world, engines, &id).await
}

/// Submits a stack graph at once and drives the workspace to rest.
async fn submit(
    world: &World,
    engines: &mut [Engine],
    id: &WorkspaceId,
    stacks: Vec<StackSpec>,
) -> Outcome {
    api_call(engines[0].deploy_stacks(id, stacks, api()).await)?;
    settle(world, engines, id).await
}

/// Destroys `id` and runs the checks every scenario ends with.
async fn destroy_and_check(world: &World, engines: &mut [Engine], id: &WorkspaceId) -> Outcome {
    engines[0]
        .destroy(id, api())
        .await
        .map_err(|e| format!("request refused: {e}"))?;
    settle(world, engines, id).await?;
    finish_checks(world, engines, id).await
}

/// Nothing left unless a receipt names it, no duplicate, a history that
/// chains to `Destroyed`.
async fn finish_checks(world: &World, engines: &mut [Engine], id: &WorkspaceId) -> Outcome {
    check_destroyed(world, &engines[0], id).await?;
    check_no_duplicates(world)?;
    let history = engines[0].history(id).await.map_err(|e| e.to_string())?;
    match check_history(&history)? {
        StateName::Destroyed => Ok(()),
        other => Err(format!("the history ends in {other}")),
    }
}

/// Which lifecycle a run plays.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// The whole lifecycle.
    Lifecycle,
    /// Requests interrupting work in flight, after `steps` advances (`early`:
    /// a destroy during provisioning).
    Interrupted { steps: usize, early: bool },
    /// Corrections and a revert.
    Correction,
    /// A blocked destroy, abandoned.
    Abandon,
    /// Stack graphs submitted at once.
    Graph,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Lifecycle => "lifecycle",
            Self::Interrupted { .. } => "interrupted",
            Self::Correction => "correction",
            Self::Abandon => "abandon",
            Self::Graph => "graph",
        }
    }

    async fn play(self, world: &World, engines: &mut [Engine]) -> Outcome {
        match self {
            Self::Lifecycle => scenario(world, engines).await,
            Self::Interrupted { steps, early } => {
                interrupting_scenario(world, engines, steps, early).await
            }
            Self::Correction => correction_scenario(world, engines).await,
            Self::Abandon => abandon_scenario(world, engines).await,
            Self::Graph => graph_scenario(world, engines).await,
        }
    }
}

/// Which store a run uses.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite,
}

/// One run of `plan` on `backend`; its outcome, the engine's commits and the
/// crashes that happened.
async fn run_on(backend: Backend, seed: u64, plan: SeedPlan) -> (Outcome, usize, u64) {
    let (outcome, commits, crashes, _) = run_counting(backend, seed, plan).await;
    (outcome, commits, crashes)
}

/// What a run did besides its outcome, commits and crashes.
#[derive(Default)]
struct Counts {
    /// Cancel requests the agents answered.
    cancels: u64,
    /// Cloud calls that outlasted the lease.
    long_calls: u64,
}

/// [`run_on`], and what the run did.
async fn run_counting(
    backend: Backend,
    seed: u64,
    plan: SeedPlan,
) -> (Outcome, usize, u64, Counts) {
    let clock = crate::world::new_clock();
    let store_clock: std::sync::Arc<dyn Clock> = std::sync::Arc::new(clock.clone());
    let (store, _dir): (
        std::sync::Arc<dyn WorkspaceStore>,
        Option<crate::world::TempDir>,
    ) = match backend {
        Backend::Memory => (
            std::sync::Arc::new(InMemoryStore::with_clock(store_clock)),
            None,
        ),
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            let dir = crate::world::TempDir::new("crash");
            let store = cogrion::providers::sqlite::SqliteStore::open(dir.db())
                .await
                .expect("open sqlite")
                .with_clock(store_clock);
            (std::sync::Arc::new(store), Some(dir))
        }
    };
    let faults = plan
        .faults
        .map_or_else(FaultPlan::none, |p| FaultPlan::transient(seed, p));
    let world = World::with_store(seed, faults, plan.latency, store, clock);
    world.store.crash_at(plan.crashes);
    world.store.fail_checkpoint_writes(plan.outages);
    world.agents.lose_bootstrap_answers(plan.lost_answers);
    if let Some((rounds, count)) = plan.slow_commands {
        // Commands outlive a 5 s deadline: the drive's rounds are half a
        // second while a step waits on the agent.
        world
            .command_deadline_secs
            .store(5, std::sync::atomic::Ordering::SeqCst);
        world.agents.hold_commands(rounds, count);
    }
    if plan.concurrent {
        world.store.yield_on_writes();
        world
            .concurrent_advance
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let long = plan.long_calls.map(|n| {
        let long = world.long_calls(n);
        long.intruder(world.engine(crate::world::INTRUDER));
        long
    });
    if plan.skew_ms != 0 {
        world
            .skews
            .lock()
            .unwrap()
            .insert("replica-b".into(), plan.skew_ms);
    }
    let mut engines = vec![world.engine("replica-a")];
    if plan.racing {
        engines.push(world.engine("replica-b"));
    }
    let mut outcome = plan.scenario.play(&world, &mut engines).await;
    let intrusions = long
        .as_ref()
        .map(|l| l.intrusions.lock().unwrap().clone())
        .unwrap_or_default();
    if outcome.is_ok() && !intrusions.is_empty() {
        outcome = Err(intrusions.join("; "));
    }
    let overlaps = world.agents.overlaps();
    if outcome.is_ok() && !overlaps.is_empty() {
        outcome = Err(format!(
            "two commands of one step ran at once on the agent: {overlaps:?}"
        ));
    }
    (
        outcome,
        world.store.commits(),
        world.store.crashes(),
        Counts {
            cancels: world.agents.cancel_requests_answered(),
            long_calls: long.map_or(0, |l| l.done.load(std::sync::atomic::Ordering::SeqCst)),
        },
    )
}

/// The scenarios the sweep kills at every commit.
const SWEPT: [Scenario; 6] = [
    Scenario::Lifecycle,
    Scenario::Interrupted {
        steps: 2,
        early: false,
    },
    Scenario::Interrupted {
        steps: 3,
        early: true,
    },
    Scenario::Correction,
    Scenario::Abandon,
    Scenario::Graph,
];

/// Every step boundary, and every gap between a side effect and its write, once:
/// a fault-free run counts the engine's commits, then one run per commit and crash
/// point kills the engine exactly there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_survives_a_crash_at_every_commit() {
    let mut runs = 0;
    // The whole lifecycle, the interrupted ones (removal during a deploy and
    // destroy during an update; destroy during provisioning), corrections, an
    // abandoned destroy, stack graphs.
    for scenario in SWEPT {
        let (outcome, commits, _) =
            run_on(Backend::Memory, 0, SeedPlan::sweep(scenario, Vec::new())).await;
        outcome.unwrap_or_else(|e| panic!("the crash-free run of {scenario:?}: {e}"));
        assert!(commits > 5, "the scenario commits {commits} times");
        for k in 0..commits {
            for point in [CrashPoint::BeforeCommit, CrashPoint::AfterCommit] {
                let plan = SeedPlan::sweep(scenario, vec![(k, point)]);
                let (outcome, _, crashed) = run_on(Backend::Memory, 0, plan).await;
                if let Err(e) = outcome {
                    panic!("{scenario:?}: crash {point:?} commit {k} of {commits}: {e}");
                }
                assert_eq!(crashed, 1, "the crash at commit {k} happened");
                runs += 1;
            }
        }
    }
    println!(
        "crash sweep: {runs} runs, one crash each, at every engine commit of {} scenarios",
        SWEPT.len()
    );
}

/// Random seeds: crashes at random commits, transient faults and lost responses,
/// cloud latency, and sometimes a second engine racing for every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_runs_with_crashes_faults_and_races_converge() {
    let (first, runs) = seeds();
    seeded_runs(Backend::Memory, first, runs).await;
}

/// `COGRION_SIM_SEED` (first seed, default 1) and `COGRION_SIM_RUNS` (how many,
/// default 200). With `COGRION_SIM_DEBUG` set, each seed's plan is printed, and
/// a run ending in the wrong state prints its history and credentials.
fn seeds() -> (u64, u64) {
    let var = |name: &str, default| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    (var("COGRION_SIM_SEED", 1), var("COGRION_SIM_RUNS", 200))
}

/// What one seed decides about its run (or what a sweep's run is).
#[derive(Debug)]
struct SeedPlan {
    faults: Option<f64>,
    latency: Duration,
    racing: bool,
    scenario: Scenario,
    crashes: Vec<(usize, CrashPoint)>,
    /// Bootstrap answers each installed agent loses on the way back.
    lost_answers: u32,
    /// Two tasks of one host call `advance` at once (over writes that yield).
    concurrent: bool,
    /// The checkpoint writes (counted from 0) that meet a store outage.
    outages: Vec<usize>,
    /// Slow commands: each agent runs its first `.1` commands for `.0` of its
    /// rounds, past a command deadline of 5 s (ten rounds).
    slow_commands: Option<(u32, u32)>,
    /// How far the racing replica's clock is off the store's, in
    /// milliseconds either way (up to half a lease).
    skew_ms: i64,
    /// Long steps: the first `n` cloud calls last longer than the (100 ms)
    /// lease, kept by heartbeats (see `World::long_calls`).
    long_calls: Option<u32>,
}

impl SeedPlan {
    /// A sweep's run: `scenario` with these crashes and nothing else.
    fn sweep(scenario: Scenario, crashes: Vec<(usize, CrashPoint)>) -> Self {
        Self {
            faults: None,
            latency: Duration::ZERO,
            racing: false,
            scenario,
            crashes,
            lost_answers: 0,
            concurrent: false,
            outages: Vec::new(),
            slow_commands: None,
            skew_ms: 0,
            long_calls: None,
        }
    }

    /// The same seed makes the same plan on every store.
    fn of(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let faults = rng.random_bool(0.7).then(|| rng.random_range(0.02..0.12));
        let latency = Duration::from_millis(rng.random_range(0..4000));
        let racing = rng.random_bool(0.4);
        let scenario = match rng.random_range(0..20) {
            0..7 => Scenario::Interrupted {
                steps: rng.random_range(0..8),
                early: rng.random_bool(0.5),
            },
            7..10 => Scenario::Correction,
            10..13 => Scenario::Abandon,
            13..16 => Scenario::Graph,
            _ => Scenario::Lifecycle,
        };
        let crash_rate = rng.random_range(0.0..0.15);
        let mut crashes = Vec::new();
        for k in 0..400 {
            if rng.random_bool(crash_rate) {
                let point = if rng.random_bool(0.5) {
                    CrashPoint::BeforeCommit
                } else {
                    CrashPoint::AfterCommit
                };
                crashes.push((k, point));
            }
        }
        // Drawn last, so that the plans of earlier seeds stay as they were.
        let lost_answers = if rng.random_bool(0.4) {
            rng.random_range(1..4)
        } else {
            0
        };
        let concurrent = !racing && rng.random_bool(0.3);
        let outages = if rng.random_bool(0.3) {
            (0..rng.random_range(1..6))
                .map(|_| rng.random_range(0..60))
                .collect()
        } else {
            Vec::new()
        };
        let slow_commands = rng
            .random_bool(0.3)
            .then(|| (rng.random_range(12..40), rng.random_range(1..4)));
        let skew_ms = if racing && rng.random_bool(0.6) {
            rng.random_range(-15_000..=15_000)
        } else {
            0
        };
        let long_calls = rng.random_bool(0.15).then(|| rng.random_range(1..4));
        Self {
            faults,
            latency,
            racing,
            scenario,
            crashes,
            lost_answers,
            concurrent,
            outages,
            slow_commands,
            skew_ms,
            long_calls,
        }
    }
}

/// Runs `count` seeds from `first` on `backend`; a failure names its seed.
async fn seeded_runs(backend: Backend, first: u64, count: u64) {
    let (mut crashes, mut raced, mut faulty) = (0, 0, 0);
    let (mut lossy, mut concurrent, mut outages, mut slow, mut cancels) = (0, 0, 0, 0, 0);
    let (mut skewed, mut long_calls) = (0, 0);
    let mut scenarios: std::collections::BTreeMap<&str, u64> = Default::default();
    for seed in first..first + count {
        let plan = SeedPlan::of(seed);
        if std::env::var("COGRION_SIM_DEBUG").is_ok() {
            eprintln!("seed {seed}: {plan:?}");
        }
        faulty += u64::from(plan.faults.is_some());
        raced += u64::from(plan.racing);
        lossy += u64::from(plan.lost_answers > 0);
        concurrent += u64::from(plan.concurrent);
        outages += plan.outages.len();
        slow += u64::from(plan.slow_commands.is_some());
        skewed += u64::from(plan.skew_ms != 0);
        *scenarios.entry(plan.scenario.name()).or_default() += 1;
        let (outcome, _, crashed, counts) = run_counting(backend, seed, plan).await;
        cancels += counts.cancels;
        long_calls += counts.long_calls;
        if let Err(e) = outcome {
            panic!(
                "{backend:?} seed {seed} failed: {e}\nreplay it with COGRION_SIM_SEED={seed} COGRION_SIM_RUNS=1"
            );
        }
        crashes += crashed;
    }
    println!(
        "{backend:?}: {count} seeds from {first}: {crashes} crashes, {raced} raced ({skewed} with the racing replica's clock off by up to half a lease), {faulty} with faults, {lossy} losing bootstrap answers, {concurrent} with concurrent advance calls, {outages} store outages planned under steps, {slow} with commands outliving their deadline ({cancels} cancel requests answered), {long_calls} steps outlasting their lease on heartbeats; scenarios {scenarios:?}"
    );
}

/// The crash sweep again, on the SQLite store: every commit of the whole
/// lifecycle, crashed before and after.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_survives_a_crash_at_every_commit_on_sqlite() {
    let plan = |crashes| SeedPlan::sweep(Scenario::Lifecycle, crashes);
    let (outcome, commits, _) = run_on(Backend::Sqlite, 0, plan(Vec::new())).await;
    outcome.expect("the crash-free run on sqlite");
    for k in 0..commits {
        for point in [CrashPoint::BeforeCommit, CrashPoint::AfterCommit] {
            let (outcome, _, crashed) = run_on(Backend::Sqlite, 0, plan(vec![(k, point)])).await;
            if let Err(e) = outcome {
                panic!("sqlite: crash {point:?} commit {k} of {commits}: {e}");
            }
            assert_eq!(crashed, 1);
        }
    }
}

/// The same seeded plans on the SQLite store (a quarter as many as in memory).
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_runs_converge_on_sqlite() {
    let (first, runs) = seeds();
    seeded_runs(Backend::Sqlite, first, (runs / 4).max(1)).await;
}
