//! Cogrion's quickstart: one workspace's whole life on the embedded defaults.
//!
//! The store is a SQLite file (`cogrion-quickstart.db`, or `$COGRION_QUICKSTART_DB`):
//! run it twice and the second run lists the first one's workspace and history.
//! Stop it (Ctrl-C) while the cloud infrastructure is being built and run it
//! again: it resumes that workspace at the step where it stopped, on the
//! resources the simulated cloud kept in `cogrion-quickstart.db.cloud.json`.
//! A simulated cloud with realistic (shortened) latency stands in for EKS / GKE /
//! AKS, simulated Cluster Agents answer over an in-process transport, and the
//! built-in driver runs the lifecycle engine. Watch it create a workspace, deploy
//! two stacks where one depends on the other, update the node pool, destroy
//! everything, and print the stored history.
//!
//! Run with `cargo run --example quickstart`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cogrion::providers::sqlite::SqliteStore;
use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedWorld};
use cogrion::*;
use tokio::sync::broadcast::error::RecvError;

const SPEC: &str = r#"{
  "tenant": "acme",
  "cloud": { "provider": "simulated" },
  "region": "local-1",
  "kubernetes_version": "1.34",
  "network": { "cidr": "10.42.0.0/16" },
  "node_pools": [
    { "name": "general", "instance_type": "sim-small", "size": { "min": 1, "desired": 2, "max": 4 } }
  ]
}"#;

/// Prints engine events as they happen.
async fn show_progress(engine: Engine, started: Instant) {
    let mut events = engine.subscribe();
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                println!("        ({n} events skipped)");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let t = started.elapsed().as_secs_f32();
        let line = match event.kind {
            EngineEventKind::OperationStarted {
                operation,
                kind,
                steps,
            } => {
                format!(
                    "plan  {kind:?} #{operation}: {}",
                    if steps.is_empty() {
                        "-".into()
                    } else {
                        steps.join(" → ")
                    }
                )
            }
            EngineEventKind::StepStarted { step, attempt, .. } if attempt > 1 => {
                format!("  ▶ {step} (attempt {attempt})")
            }
            EngineEventKind::StepStarted { step, .. } => format!("  ▶ {step}"),
            EngineEventKind::StepWaiting { step, reason, .. } => format!("  … {step}: {reason}"),
            EngineEventKind::StepDone {
                step,
                skipped: None,
                ..
            } => format!("  ✓ {step}"),
            EngineEventKind::StepDone {
                step,
                skipped: Some(why),
                ..
            } => format!("  ↷ {step} skipped: {why}"),
            EngineEventKind::StepFailed {
                step,
                error,
                will_retry,
                ..
            } => {
                format!(
                    "  ✗ {step}: {error}{}",
                    if will_retry { " — will retry" } else { "" }
                )
            }
            EngineEventKind::Transition { from, to } => format!("STATE {from} → {to}"),
            EngineEventKind::StackTransition { stack, from, to } => {
                format!(
                    "  stack {stack}: {} → {to}",
                    from.map_or("new".to_string(), |f| f.to_string())
                )
            }
            other => format!("{other:?}"),
        };
        println!("{t:6.1}s  {}  {line}", event.workspace);
    }
}

/// Waits until the workspace's record satisfies `done`.
async fn wait_for(
    engine: &Engine,
    id: &WorkspaceId,
    what: &str,
    done: impl Fn(&WorkspaceRecord) -> bool,
) -> Result<WorkspaceRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rec = engine.workspace(id).await?;
        if done(&rec) {
            return Ok(rec);
        }
        if let WorkspaceState::Failed(f) = &rec.state {
            return Err(Error::Rejected {
                service: "quickstart".into(),
                detail: format!("{what}: failed at {}: {}", f.step, f.error),
            });
        }
        if Instant::now() > deadline {
            return Err(Error::Unavailable {
                service: "quickstart".into(),
                detail: format!("{what} took too long"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stack(name: &str, kind: StackKind, executor: ExecutorSpec, deps: &[&str]) -> Result<StackSpec> {
    Ok(StackSpec {
        name: name.parse()?,
        kind,
        executor,
        depends_on: deps.iter().map(|d| d.parse()).collect::<Result<_, _>>()?,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let started = Instant::now();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    // The embedded defaults: a SQLite file, a simulated cloud whose network,
    // cluster and node pools take a few seconds each, simulated stacks and agents.
    let path =
        std::env::var("COGRION_QUICKSTART_DB").unwrap_or_else(|_| "cogrion-quickstart.db".into());
    let store: Arc<dyn WorkspaceStore> = Arc::new(SqliteStore::open(&path).await?);
    let earlier = store.list_workspaces(&ListQuery::new()).await?;
    if !earlier.is_empty() {
        println!(
            "{path} already holds {} workspace(s) from earlier runs:",
            earlier.len()
        );
        for w in &earlier {
            let events = store.read_events(&w.value.id, EventSeq(0), 0).await?;
            let last = events
                .last()
                .map(|e| format!("{} — {}", e.event.at, e.event.message))
                .unwrap_or_default();
            println!(
                "    {:<10} {:<12} {} events, last: {last}",
                w.value.id,
                w.value.state.name(),
                events.len()
            );
        }
    }
    // The simulated cloud keeps its resources next to the database, so that a
    // run stopped mid-provision finds them again, as it would on a real cloud.
    let cloud_file = format!("{path}.cloud.json");
    let cloud = SimulatedCloud::builder()
        .clock(clock.clone())
        .latency(InfraLayer::Network, Duration::from_millis(1200))
        .latency(InfraLayer::Cluster, Duration::from_millis(3500))
        .latency(InfraLayer::NodePools, Duration::from_millis(2000))
        .build_persistent(&cloud_file)
        .map_err(|e| Error::Unavailable {
            service: "simulated cloud".into(),
            detail: e.to_string(),
        })?;
    let world = SimulatedWorld::new(cloud.clone(), FaultPlan::none());
    // Short deadlines suit a demo: the simulated agents answer in milliseconds,
    // and a leftover workspace whose agent died with an earlier run has its
    // in-cluster teardown skipped (the history says so) after 5 s, not 10 min.
    let config = EngineConfig::new("quickstart".parse()?).with_deadlines(
        Duration::from_secs(30),
        Duration::from_secs(30),
        Duration::from_secs(5),
    );
    let engine = world.engine(store, clock, config)?;
    let agents = world.agents.clone();

    let progress = tokio::spawn(show_progress(engine.clone(), started));
    let (stop_agents, agents_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn({
        let agents = agents.clone();
        async move {
            agents
                .run(Duration::from_millis(100), async {
                    let _ = agents_stopped.await;
                })
                .await
        }
    });
    let driver = Driver::spawn(
        engine.clone(),
        DriverConfig::default().with_sweep_interval(Duration::from_millis(250)),
    );

    let actor = Actor::Api {
        principal: "platform-team".into(),
    };
    // A run that was stopped part-way left its workspace in flight. One stopped
    // while its cloud infrastructure was being built is resumed where it stopped:
    // the store has its operation and checkpoints, the cloud file its resources.
    // The simulated Cluster Agent, though, lived inside the stopped process (the
    // real one runs in the cluster and outlives it), so a workspace stopped after
    // its agent was installed, or later in the tour, is destroyed instead.
    let mut resumed = None;
    for w in earlier
        .iter()
        .filter(|w| w.value.state != WorkspaceState::Destroyed)
    {
        let id = &w.value.id;
        let provisioning = w
            .value
            .operations
            .iter()
            .find(|o| o.kind == OperationKind::Provision);
        let agent_installed = provisioning.is_some_and(|o| {
            o.steps
                .iter()
                .any(|s| s.name == "install-agent" && s.is_finished())
        });
        if resumed.is_none() && provisioning.is_some() && !agent_installed {
            let done: Vec<&str> = provisioning
                .into_iter()
                .flat_map(|o| &o.steps)
                .filter(|s| s.is_finished())
                .map(|s| s.name.as_str())
                .collect();
            println!(
                "Resuming {id}, stopped mid-provision by an earlier run (steps already done: {}; cloud resources found: {})…",
                if done.is_empty() {
                    "none".into()
                } else {
                    done.join(", ")
                },
                cloud.live_resources(id).len()
            );
            resumed = Some(id.clone());
            continue;
        }
        println!(
            "Destroying {id} left {} by an earlier run…",
            w.value.state.name()
        );
        if w.value.state != WorkspaceState::Destroying {
            engine.destroy(id, actor.clone()).await?;
        }
        match wait_for(&engine, id, "cleanup", |r| {
            r.state == WorkspaceState::Destroyed
        })
        .await
        {
            Ok(_) => {}
            // Planned by an earlier run with longer deadlines: it finishes in
            // the background, or in a later run.
            Err(Error::Unavailable { .. }) => {
                println!("    {id} is still being destroyed; carrying on without it")
            }
            Err(e) => return Err(e),
        }
    }
    let id = match resumed {
        Some(id) => id,
        None => {
            let id: WorkspaceId = format!("acme-{}", earlier.len() + 1).parse()?;
            println!("Creating workspace {id} on the simulated cloud…");
            engine
                .create(id.clone(), WorkspaceSpec::from_json(SPEC)?, actor.clone())
                .await?;
            id
        }
    };
    wait_for(&engine, &id, "provisioning", |r| {
        r.state == WorkspaceState::Active
    })
    .await?;

    println!("Deploying cert-manager, then shop (which depends on it)…");
    let cert_manager = stack(
        "cert-manager",
        StackKind::InfraAddon,
        ExecutorSpec::Helm {
            source: "oci://quay.io/jetstack/charts/cert-manager".into(),
            version: "1.16.2".into(),
            values: Default::default(),
        },
        &[],
    )?;
    engine
        .deploy_stack(&id, cert_manager, actor.clone())
        .await?;
    let deployed = |name: &'static str| {
        move |r: &WorkspaceRecord| {
            r.stacks
                .iter()
                .any(|(n, s)| n.as_str() == name && s.state == StackState::Deployed)
        }
    };
    wait_for(&engine, &id, "cert-manager", deployed("cert-manager")).await?;
    let shop = stack(
        "shop",
        StackKind::Application,
        ExecutorSpec::Manifests {
            documents: vec![serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "shop" },
                "spec": { "replicas": 2 }
            })],
        },
        &["cert-manager"],
    )?;
    engine.deploy_stack(&id, shop, actor.clone()).await?;
    wait_for(&engine, &id, "shop", deployed("shop")).await?;

    println!("Updating the node pool to 3 nodes…");
    let mut bigger = WorkspaceSpec::from_json(SPEC)?;
    bigger.node_pools[0].size = NodePoolSize::new(1, 3, 5)?;
    engine.update(&id, bigger, actor.clone()).await?;
    wait_for(&engine, &id, "update", |r| {
        r.state == WorkspaceState::Active && r.operations.is_empty()
    })
    .await?;

    println!("Destroying — the dry run first:");
    for s in engine.destroy_plan(&id).await?.steps {
        println!("    {:<26} {}", s.step, s.removes.join(", "));
    }
    engine.destroy(&id, actor).await?;
    wait_for(&engine, &id, "destroy", |r| {
        r.state == WorkspaceState::Destroyed
    })
    .await?;

    let stats = driver.shutdown().await;
    let _ = stop_agents.send(());
    let _ = agent_task.await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    progress.abort();

    println!("\nHistory of {id}:");
    for e in engine.history(&id).await? {
        let who = match &e.event.actor {
            Actor::Api { principal } => principal.clone(),
            Actor::Engine { holder } => holder.to_string(),
            Actor::Agent => "agent".into(),
        };
        println!(
            "  #{:<3} {}  {:<14} {:<44} {}",
            e.seq.0,
            e.event.at,
            who,
            e.event.kind.to_string(),
            e.event.message
        );
    }
    println!(
        "\nDone in {:.1}s: {} engine steps, cloud resources left: {}, duplicated cloud resources ever: {}.",
        started.elapsed().as_secs_f32(),
        stats.advances,
        cloud.all_live(),
        cloud.duplicates().len()
    );
    Ok(())
}
