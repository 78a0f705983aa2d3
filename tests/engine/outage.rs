//! PostgreSQL dies like a power cut while workspaces are being provisioned, and
//! comes back: every workspace still converges, no write was half applied (every
//! history chains), and the cloud holds no duplicate.

#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cogrion::providers::postgres::PostgresStore;
use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedWorld};
use cogrion::store::*;
use cogrion::*;

use crate::drive::check_history;
use crate::replicas::{SERVER, run_prefix, server};
use crate::world::{api, spec};

async fn all_in(store: &PostgresStore, prefix: &str, n: usize, state: WorkspaceState) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        // Reads fail while the server is down; keep asking.
        if let Ok(all) = store
            .list_workspaces(&ListQuery::new().limit(100_000))
            .await
        {
            let got = all
                .iter()
                .filter(|r| r.value.id.as_str().starts_with(prefix) && r.value.state == state)
                .count();
            if got == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {got} of {n} workspaces reached {state:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_under_load_loses_nothing_and_writes_nothing_halfway() {
    let Some(server) = server() else { return };
    let _turn = SERVER.lock().await;
    const N: usize = 60;
    let prefix = run_prefix('o');
    // The cloud's latencies run on its default clock, which cannot be
    // stepped: on the wall clock, a step back after the destroy would make
    // resources deleted just before it look as if still being deleted.
    let cloud = SimulatedCloud::builder()
        .latency_all(Duration::from_millis(150))
        .build();
    let sim = SimulatedWorld::new(cloud.clone(), FaultPlan::none());
    let store = PostgresStore::connect(&server).await.unwrap();
    let engine = sim
        .engine(
            Arc::new(store.clone()),
            Arc::new(SystemClock),
            EngineConfig::new("outage-0".parse().unwrap()),
        )
        .unwrap();
    let driver = Driver::spawn(
        engine.clone(),
        DriverConfig::default()
            .with_concurrency(16)
            .with_sweep_interval(Duration::from_millis(200)),
    );
    let agents = sim.agents.spawn(Duration::from_millis(20));

    let ids: Vec<WorkspaceId> = (0..N)
        .map(|i| format!("{prefix}{i}").parse().unwrap())
        .collect();
    for id in &ids {
        engine.create(id.clone(), spec(), api()).await.unwrap();
    }
    // Mid-provisioning: the database dies and restarts.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut in_flight = 0;
    for id in &ids {
        if store.get_workspace(id).await.unwrap().value.state != WorkspaceState::Active {
            in_flight += 1;
        }
    }
    assert!(
        in_flight > 0,
        "the crash must hit workspaces still provisioning"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/peers/postgres.sh");
    let status = tokio::process::Command::new("bash")
        .arg(script)
        .arg("crash-restart")
        .status()
        .await
        .unwrap();
    assert!(status.success(), "restarting PostgreSQL failed");

    all_in(&store, &prefix, N, WorkspaceState::Active).await;
    for id in &ids {
        // Requests may meet a connection the crash broke: a transient error.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match engine.destroy(id, api()).await {
                Ok(_) => break,
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("destroy {id}: {e}"),
            }
        }
    }
    all_in(&store, &prefix, N, WorkspaceState::Destroyed).await;
    let stats = driver.shutdown().await;
    agents.stop().await;

    // Whether an advance met the outage depends on timing (all may have been
    // waiting on the cloud then); that the crash hit work in flight is checked
    // above.
    println!(
        "outage: {in_flight} of {N} workspaces in flight at the crash; {} advances, {} failed on the outage",
        stats.advances, stats.errors
    );
    assert!(cloud.duplicates().is_empty(), "{:?}", cloud.duplicates());
    // What is left, and the history of a workspace that left it.
    let left: Vec<(&WorkspaceId, Vec<_>)> = ids
        .iter()
        .map(|id| (id, cloud.live_resources(id)))
        .filter(|(_, live)| !live.is_empty())
        .collect();
    if let Some((id, live)) = left.first() {
        let history = engine.history(id).await.unwrap();
        let lines: Vec<String> = history
            .iter()
            .map(|e| format!("#{} {} {}", e.seq.0, e.event.kind, e.event.message))
            .collect();
        panic!(
            "{} workspaces left cloud resources; {id} left {live:?} after:\n{}",
            left.len(),
            lines.join("\n")
        );
    }
    assert_eq!(cloud.all_live(), 0);
    for id in &ids {
        let history = engine.history(id).await.unwrap();
        assert_eq!(
            check_history(&history).unwrap_or_else(|e| panic!("{id}: {e}")),
            StateName::Destroyed
        );
    }
    println!(
        "outage: {N} workspaces converged across a PostgreSQL crash; {} advances, {} failed",
        stats.advances, stats.errors
    );
}
