//! Cogrion's quickstart: one workspace's whole life on the embedded defaults.
//!
//! The control plane is [`ControlPlane`] with its defaults: a SQLite store and
//! the agents' CA in a data directory (`cogrion-quickstart/`, or
//! `$COGRION_QUICKSTART_DIR`), the agents' HTTPS endpoint on loopback (rustls
//! mutual TLS), the lifecycle engine and its driver. Run it twice and the
//! second run lists the first one's workspaces (`Engine::list`, `status`).
//! Stop it (Ctrl-C) while the cloud infrastructure is being built and run it
//! again: it resumes that workspace at the step where it stopped, on the
//! resources the simulated cloud kept in `cogrion-quickstart/cloud.json`.
//! A simulated cloud with realistic (shortened) latency stands in for EKS /
//! GKE / AKS, and says what it is doing ("cluster CREATING, 4 s left": the
//! progress messages in the status and history). The Cluster Agent is real:
//! each workspace's agent is this same program re-executed in agent mode
//! (`--agent`, a separate process), bootstrapping with its one-time token;
//! only what it does in the cluster (installing stacks) is simulated. Watch it
//! create a workspace whose spec has a typo (the provision fails at the node
//! pools; its status says the failure needs a fix, not a retry), correct the
//! spec (the provision resumes at its failed step), deploy two stacks at once
//! where one depends on the other, update the node pool, destroy everything,
//! and print the destroy's receipt (when something was left behind) and the
//! stored history.
//!
//! Run with `cargo run --example quickstart`.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
fn print_receipt(destroyed: &WorkspaceStatus) {
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

/// Waits until the workspace's status satisfies `done`.
async fn wait_for(
    engine: &Engine,
    id: &WorkspaceId,
    what: &str,
    done: impl Fn(&WorkspaceStatus) -> bool,
) -> Result<WorkspaceStatus> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = engine.status(id).await?;
        if done(&status) {
            return Ok(status);
        }
        if let Some(f) = &status.failure {
            return Err(Error::Rejected {
                service: "quickstart".into(),
                detail: format!("{what}: failed at {}: {}", f.step, f.error),
                source: None,
            });
        }
        if Instant::now() > deadline {
            return Err(Error::Unavailable {
                service: "quickstart".into(),
                detail: format!("{what} took too long"),
                source: None,
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
    endpoint: AgentEndpoint,
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
            .env("COGRION_ENDPOINT", self.endpoint.address.to_string())
            .env("COGRION_SERVER_NAME", &self.endpoint.server_name)
            .env(
                "COGRION_CA_FILE",
                self.endpoint
                    .ca_file
                    .as_ref()
                    .ok_or_else(|| std::io::Error::other("the CA is not on disk"))?,
            )
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
            source: None,
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

async fn control_plane() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let dir = std::path::PathBuf::from(
        std::env::var("COGRION_QUICKSTART_DIR").unwrap_or_else(|_| "cogrion-quickstart".into()),
    );
    std::fs::create_dir_all(&dir)?;
    // A simulated cloud whose network, cluster and node pools take a few
    // seconds each. It keeps its resources in the data directory, so that a
    // run stopped mid-provision finds them again, as it would on a real cloud.
    let cloud = SimulatedCloud::builder()
        .instance_types(["sim-small", "sim-medium", "sim-large"])
        .latency(InfraLayer::Network, Duration::from_millis(1200))
        .latency(InfraLayer::Cluster, Duration::from_millis(3500))
        .latency(InfraLayer::NodePools, Duration::from_millis(2000))
        .build_persistent(dir.join("cloud.json"))?;
    let world = SimulatedWorld::new(cloud.clone(), FaultPlan::none());

    // The control plane on its defaults: the SQLite store and the agents' CA
    // in `dir`, the agents' endpoint (any free port on loopback), the engine
    // and its driver. The host brings the cloud, the executors and the agent
    // installer — here the simulated ones and a process launcher. Short
    // deadlines suit a demo: a leftover workspace whose agent cannot come
    // back has its in-cluster teardown skipped (the history says so) after
    // 5 s, not 10 min.
    let installer = Arc::new(std::sync::OnceLock::<Arc<ProcessInstaller>>::new());
    let mut builder = ControlPlane::builder()
        .data_dir(&dir)
        .agents_listen("127.0.0.1:0".parse()?)
        .cloud(CloudKind::Simulated, Arc::new(cloud.clone()))
        .serves_stacks([ExecutorKind::Helm, ExecutorKind::Manifests])
        .engine_config(EngineConfig::new("quickstart".parse()?).with_deadlines(
            Duration::from_secs(30),
            Duration::from_secs(30),
            Duration::from_secs(5),
        ))
        .driver_config(DriverConfig::default().with_sweep_interval(Duration::from_millis(250)));
    for executor in world.executors() {
        builder = builder.executor(executor);
    }
    let (slot, agents_dir) = (installer.clone(), dir.join("agents"));
    let plane = builder
        .installer(move |endpoint| {
            let made = slot.get_or_init(|| {
                Arc::new(ProcessInstaller {
                    dir: agents_dir,
                    endpoint: endpoint.clone(),
                    children: Default::default(),
                })
            });
            made.clone()
        })
        .build()
        .await?;
    let installer = installer.get().expect("made by build").clone();
    /// Stops the agents when the control plane returns, however it returns.
    struct StopAgents(Arc<ProcessInstaller>);
    impl Drop for StopAgents {
        fn drop(&mut self) {
            self.0.stop_all();
        }
    }
    let _stop_agents = StopAgents(installer.clone());
    let engine = plane.engine().clone();
    if let Some(endpoint) = plane.agent_endpoint() {
        println!(
            "Agents' endpoint: {} (mutual TLS, CA in {})",
            endpoint.url,
            dir.join("ca").display()
        );
    }

    // What earlier runs left, as a host sees it: a listing, then each one's status.
    let earlier = engine.list(&ListQuery::new()).await?.workspaces;
    if !earlier.is_empty() {
        println!(
            "{} already holds {} workspace(s) from earlier runs:",
            dir.display(),
            earlier.len()
        );
        for w in &earlier {
            let history = engine.history(&w.id).await?;
            let last = history
                .last()
                .map(|e| format!("{} — {}", e.event.at, e.event.message))
                .unwrap_or_default();
            println!(
                "    {:<10} {:<12} {} events, last: {last}",
                w.id,
                w.state.as_str(),
                history.len()
            );
        }
    }

    let progress = tokio::spawn(show_progress(engine.clone(), started));

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
    for w in earlier.iter().filter(|w| w.state != StateName::Destroyed) {
        let id = &w.id;
        if installer.agent_dir(id).join("state").exists() {
            installer.launch(id)?;
        }
        let status = engine.status(id).await?;
        let provisioning = status
            .operations
            .iter()
            .find(|o| o.kind == OperationKind::Provision);
        if let (None, Some(op)) = (&resumed, provisioning) {
            println!(
                "Resuming {id}, stopped mid-provision by an earlier run ({} of {} steps already done, now at {}; cloud resources found: {})…",
                op.steps_done,
                op.steps,
                op.step.as_ref().map_or("-", |s| s.name.as_str()),
                cloud.live_resources(id).len()
            );
            resumed = Some(id.clone());
            continue;
        }
        println!("Destroying {id} left {} by an earlier run…", w.state);
        if w.state != StateName::Destroying {
            engine.destroy(id, actor.clone()).await?;
        }
        match wait_for(&engine, id, "cleanup", |s| s.state == StateName::Destroyed).await {
            Ok(destroyed) => print_receipt(&destroyed),
            // Planned by an earlier run with longer deadlines: it finishes in
            // the background, or in a later run.
            Err(Error::Unavailable { .. }) => {
                println!("    {id} is still being destroyed; carrying on without it")
            }
            Err(e) => return Err(e.into()),
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
    let provisioned = wait_for(&engine, &id, "provisioning", |s| {
        matches!(s.state, StateName::Active | StateName::Failed)
    })
    .await?;
    if let Some(f) = &provisioned.failure {
        println!(
            "Provisioning failed at {}: {} ({})",
            f.step,
            f.error,
            match f.retryable {
                Some(false) => "a retry alone cannot succeed: fix the spec",
                Some(true) => "a retry may succeed",
                None => "stored before this was recorded",
            }
        );
        let fixed = WorkspaceSpec::from_json(SPEC)?;
        for change in provisioned.spec.desired.diff(&fixed) {
            println!("Correcting the spec: {change}");
        }
        engine.correct(&id, fixed, actor.clone()).await?;
        wait_for(&engine, &id, "the corrected provision", |s| {
            s.state == StateName::Active
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
    wait_for(&engine, &id, "the stacks", |s| {
        s.stacks.len() == 2 && s.stacks.iter().all(|s| s.state == StackStateName::Deployed)
    })
    .await?;

    println!("Updating the node pool to 3 nodes…");
    let mut bigger = WorkspaceSpec::from_json(SPEC)?;
    bigger.node_pools[0].size = NodePoolSize::new(1, 3, 5)?;
    engine.update(&id, bigger, actor.clone()).await?;
    wait_for(&engine, &id, "update", |s| {
        s.state == StateName::Active && s.operations.is_empty()
    })
    .await?;

    println!("Destroying — the dry run first:");
    for s in engine.destroy_plan(&id).await?.steps {
        println!("    {:<26} {}", s.step, s.removes.join(", "));
    }
    engine.destroy(&id, actor).await?;
    let destroyed = wait_for(&engine, &id, "destroy", |s| s.state == StateName::Destroyed).await?;

    let advances = plane.shutdown().await;
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
        advances,
        cloud.all_live(),
        cloud.duplicates().len()
    );
    Ok(())
}
