//! Cogrion's quickstart: one workspace's whole life on the embedded defaults.
//!
//! The store is a SQLite file (`cogrion-quickstart.db`, or `$COGRION_QUICKSTART_DB`):
//! run it twice and the second run lists the first one's workspace and history.
//! Stop it (Ctrl-C) while the cloud infrastructure is being built and run it
//! again: it resumes that workspace at the step where it stopped, on the
//! resources the simulated cloud kept in `cogrion-quickstart.db.cloud.json`.
//! A simulated cloud with realistic (shortened) latency stands in for EKS / GKE /
//! AKS. The Cluster Agent is real: the control plane serves its HTTPS endpoint on
//! loopback (rustls mTLS, its CA in `cogrion-quickstart.db.ca/`), and each
//! workspace's agent is this same program re-executed in agent mode (`--agent`,
//! a separate process), bootstrapping with its one-time token; only what it does
//! in the cluster (installing stacks) is simulated. The built-in driver runs the
//! lifecycle engine. Watch it create a workspace whose spec has a typo (the
//! provision fails at the node pools), correct the spec (the provision resumes
//! at its failed step), deploy two stacks at once where one depends on the
//! other, update the node pool, destroy everything, and print the destroy's
//! receipt (when something was left behind) and the stored history.
//!
//! Run with `cargo run --example quickstart`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cogrion::ca::{CaConfig, CertificateAuthority};
use cogrion::providers::https::{AgentServer, AgentServerConfig};
use cogrion::providers::sqlite::SqliteStore;
use cogrion::sim::SimulatedCluster;
use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedWorld};
use cogrion::*;
use cogrion::{agent::*, provider::*, store::*};
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

/// Prints a destroyed workspace's receipt: what its destroy left behind, and
/// why (nothing when it left nothing).
fn print_receipt(destroyed: &WorkspaceRecord) {
    if destroyed.left_behind.is_empty() {
        return;
    }
    println!(
        "\nDestroy receipt of {} — what was left behind, and why:",
        destroyed.id
    );
    for left in &destroyed.left_behind {
        let why = match &left.why {
            LeftReason::Unreachable { since, error } => {
                format!("skipped: unreachable since {since} ({error})")
            }
            LeftReason::Abandoned { actor, reason, .. } => {
                format!("abandoned by {actor:?}: {reason}")
            }
            other => format!("{other:?}"),
        };
        println!("  {:<22} {why}", left.step);
        for r in &left.resources {
            println!("  {:<22}   left: {r}", "");
        }
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

/// Installs a workspace's agent as a separate process: this program in agent
/// mode, with the one-time token written where it reads it (in a cluster: a
/// Secret and a Deployment).
#[derive(Debug)]
struct ProcessInstaller {
    dir: std::path::PathBuf,
    endpoint: std::net::SocketAddr,
    ca_file: std::path::PathBuf,
    children: std::sync::Mutex<std::collections::HashMap<WorkspaceId, tokio::process::Child>>,
}

impl ProcessInstaller {
    /// Stops every agent this run started.
    fn stop_all(&self) {
        for child in self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values_mut()
        {
            let _ = child.start_kill();
        }
    }

    fn agent_dir(&self, ws: &WorkspaceId) -> std::path::PathBuf {
        self.dir.join(ws.as_str())
    }

    /// Starts the workspace's agent unless it runs already; it resumes from its
    /// state directory if it has one.
    fn launch(&self, ws: &WorkspaceId) -> std::io::Result<()> {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = children.get_mut(ws)
            && child.try_wait()?.is_none()
        {
            return Ok(());
        }
        let dir = self.agent_dir(ws);
        std::fs::create_dir_all(&dir)?;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("--agent")
            .env("COGRION_ENDPOINT", self.endpoint.to_string())
            .env("COGRION_SERVER_NAME", "localhost")
            .env("COGRION_CA_FILE", &self.ca_file)
            .env("COGRION_WORKSPACE", ws.as_str())
            .env("COGRION_TOKEN_FILE", dir.join("token"))
            .env("COGRION_STATE_DIR", dir.join("state"))
            .env("COGRION_POLL_WAIT_SECS", "20")
            .kill_on_drop(true)
            .spawn()?;
        children.insert(ws.clone(), child);
        Ok(())
    }
}

#[async_trait::async_trait]
impl AgentInstaller for ProcessInstaller {
    async fn install(&self, request: AgentInstall) -> Result<Progress<()>> {
        let failed = |e: std::io::Error| Error::Unavailable {
            service: "agent installer".into(),
            detail: e.to_string(),
        };
        let dir = self.agent_dir(&request.workspace);
        std::fs::create_dir_all(&dir).map_err(failed)?;
        cogrion_agent::write_token_file(&dir.join("token"), request.token.expose())
            .map_err(failed)?;
        self.launch(&request.workspace).map_err(failed)?;
        Ok(Progress::Ready(()))
    }

    async fn uninstall(&self, ws: &WorkspaceId, _: &ClusterAccess) -> Result<Progress<()>> {
        let child = self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(ws);
        if let Some(mut child) = child {
            let _ = child.kill().await;
        }
        let _ = std::fs::remove_dir_all(self.agent_dir(ws));
        Ok(Progress::Ready(()))
    }
}

/// Agent mode: the Cluster Agent of one workspace, with the builtin handlers and
/// a simulated cluster for the stacks' commands.
async fn run_agent() -> std::process::ExitCode {
    let config = match cogrion_agent::AgentConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("quickstart agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut handlers = cogrion_agent::Handlers::builtin(&config.workspace);
    let cluster = SimulatedCluster::new();
    for kind in [
        SimulatedCluster::APPLY,
        SimulatedCluster::DESTROY,
        SimulatedCluster::STATUS,
    ] {
        let (cluster, ws) = (cluster.clone(), config.workspace.clone());
        handlers.register(kind, Arc::new(move |c| cluster.handle(&ws, c)));
    }
    let mut agent = match cogrion_agent::AgentRuntime::new(config, handlers) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("quickstart agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // In a cluster the agent outlives the control plane; here it is the
    // control plane's child, and stops when its parent is gone (a new run starts
    // it again from its state directory).
    let parent = std::os::unix::process::parent_id();
    let orphaned = async move {
        while std::os::unix::process::parent_id() == parent {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    match agent.run(orphaned).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if std::env::args().any(|a| a == "--agent") {
        return run_agent().await;
    }
    match control_plane().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn control_plane() -> Result<()> {
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
        .instance_types(["sim-small", "sim-medium", "sim-large"])
        .latency(InfraLayer::Network, Duration::from_millis(1200))
        .latency(InfraLayer::Cluster, Duration::from_millis(3500))
        .latency(InfraLayer::NodePools, Duration::from_millis(2000))
        .build_persistent(&cloud_file)
        .map_err(|e| Error::Unavailable {
            service: "simulated cloud".into(),
            detail: e.to_string(),
        })?;
    let world = SimulatedWorld::new(cloud.clone(), FaultPlan::none());

    // The agents' endpoint: its CA (kept next to the database, the key file
    // 0600) issues the server's certificate and, at bootstrap, each agent's.
    let unavailable = |what: &str, e: &dyn std::fmt::Display| Error::Unavailable {
        service: what.into(),
        detail: e.to_string(),
    };
    let ca_dir = std::path::PathBuf::from(format!("{path}.ca"));
    let ca = Arc::new(
        CertificateAuthority::open_or_create(&ca_dir, clock.now(), CaConfig::default())
            .map_err(|e| unavailable("certificate authority", &e))?,
    );
    let server_cert = ca
        .issue_server(&["localhost"], clock.now())
        .map_err(|e| unavailable("certificate authority", &e))?;
    let sink = Arc::new(LateSink::new());
    let gateway = AgentGateway::new(
        store.clone(),
        clock.clone(),
        sink.clone(),
        Default::default(),
    );
    let server = AgentServer::new(
        gateway,
        ca.clone(),
        clock.clone(),
        &server_cert,
        AgentServerConfig::default(),
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| unavailable("agent endpoint", &e))?;
    let endpoint = listener
        .local_addr()
        .map_err(|e| unavailable("agent endpoint", &e))?;
    let serving = server.spawn(listener);
    println!(
        "Agents' endpoint: https://localhost:{} (mutual TLS, CA in {})",
        endpoint.port(),
        ca_dir.display()
    );
    let installer = Arc::new(ProcessInstaller {
        dir: format!("{path}.agents").into(),
        endpoint,
        ca_file: ca_dir.join("ca.pem"),
        children: Default::default(),
    });
    /// Stops the agents when the control plane returns, however it returns.
    struct StopAgents(Arc<ProcessInstaller>);
    impl Drop for StopAgents {
        fn drop(&mut self) {
            self.0.stop_all();
        }
    }
    let _stop_agents = StopAgents(installer.clone());

    // Short deadlines suit a demo: a leftover workspace whose agent cannot come
    // back has its in-cluster teardown skipped (the history says so) after 5 s,
    // not 10 min.
    let config = EngineConfig::new("quickstart".parse()?).with_deadlines(
        Duration::from_secs(30),
        Duration::from_secs(30),
        Duration::from_secs(5),
    );
    let engine = world
        .engine_builder(store, clock)
        .agent_installer(installer.clone())
        .transport(Arc::new(server.clone()))
        .config(config)
        .build()?;
    sink.set(Arc::new(engine.clone()));

    let progress = tokio::spawn(show_progress(engine.clone(), started));
    let driver = Driver::spawn(
        engine.clone(),
        DriverConfig::default().with_sweep_interval(Duration::from_millis(250)),
    );

    let actor = Actor::Api {
        principal: "platform-team".into(),
    };
    // A run that was stopped part-way left its workspace in flight. Its agent
    // (in a real cluster it would have kept running) is started again from its
    // state directory, with the certificate it already has; a workspace stopped
    // mid-provision is resumed at the step where it stopped — the store has its
    // operation and checkpoints, the cloud file its resources — and one stopped
    // later in the tour is destroyed.
    let mut resumed = None;
    for w in earlier
        .iter()
        .filter(|w| w.value.state != WorkspaceState::Destroyed)
    {
        let id = &w.value.id;
        if installer.agent_dir(id).join("state").exists() {
            installer.launch(id).map_err(|e| unavailable("agent", &e))?;
        }
        let provisioning = w
            .value
            .operations
            .iter()
            .find(|o| o.kind == OperationKind::Provision);
        if resumed.is_none() && provisioning.is_some() {
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
            Ok(destroyed) => print_receipt(&destroyed),
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
            // A typo in the spec: an instance type the cloud does not offer. The
            // provision fails at the node pools, is corrected, and resumes there.
            let id: WorkspaceId = format!("acme-{}", earlier.len() + 1).parse()?;
            let typo = WorkspaceSpec::from_json(&SPEC.replace("sim-small", "sim-smal"))?;
            println!(
                "Creating workspace {id} on the simulated cloud (its node pool's instance type has a typo)…"
            );
            engine.create(id.clone(), typo, actor.clone()).await?;
            id
        }
    };
    let provisioned = wait_for(&engine, &id, "provisioning", |r| {
        matches!(r.state, WorkspaceState::Active | WorkspaceState::Failed(_))
    })
    .await?;
    if let WorkspaceState::Failed(f) = &provisioned.state {
        println!("Provisioning failed at {}: {}", f.step, f.error);
        let fixed = WorkspaceSpec::from_json(SPEC)?;
        for change in provisioned.spec.diff(&fixed) {
            println!("Correcting the spec: {change}");
        }
        engine.correct(&id, fixed, actor.clone()).await?;
        wait_for(&engine, &id, "the corrected provision", |r| {
            r.state == WorkspaceState::Active
        })
        .await?;
    }

    println!("Deploying cert-manager and shop (which depends on it) at once…");
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
    // shop waits for cert-manager, then deploys.
    engine
        .deploy_stacks(&id, vec![shop, cert_manager], actor.clone())
        .await?;
    wait_for(&engine, &id, "the stacks", |r| {
        r.stacks
            .iter()
            .all(|(_, s)| s.state == StackState::Deployed)
    })
    .await?;

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
    let destroyed = wait_for(&engine, &id, "destroy", |r| {
        r.state == WorkspaceState::Destroyed
    })
    .await?;

    let stats = driver.shutdown().await;
    serving.stop().await;
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
    print_receipt(&destroyed);
    println!(
        "\nDone in {:.1}s: {} engine steps, cloud resources left: {}, duplicated cloud resources ever: {}.",
        started.elapsed().as_secs_f32(),
        stats.advances,
        cloud.all_live(),
        cloud.duplicates().len()
    );
    Ok(())
}
