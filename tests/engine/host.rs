//! What a host sees: a workspace's status with its running step's progress
//! message, why it failed and whether a retry alone may succeed; listing by
//! labels, cloud and state with paging and counts; the durable event feed and
//! `watch`. On the in-memory store and the simulated world; the feed across
//! replicas on PostgreSQL is in `feed_on_postgres` below.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cogrion::sim::FaultPlan;
use cogrion::*;
use cogrion::{provider::*, store::*};
use futures::StreamExt;

use crate::drive::drive;
use crate::world::{World, api, spec, ws};

/// The simulated cloud, except that its first `chatty` network provisions
/// answer "in progress" with a new message each time, 5 s apart (a fake
/// around the real simulation: the engine's handling of messages is what is
/// tested).
#[derive(Debug)]
struct Chatty {
    inner: Arc<dyn CloudProvisioner>,
    left: AtomicU32,
    polls: AtomicU32,
}

#[async_trait]
impl CloudProvisioner for Chatty {
    async fn provision(&self, r: LayerRequest) -> Result<Progress<LayerState>> {
        if r.layer == InfraLayer::Network
            && self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            return Ok(Progress::in_progress_with(
                Duration::from_secs(5),
                format!("VPC CREATING, poll {n}"),
            ));
        }
        self.inner.provision(r).await
    }
    async fn update(&self, r: LayerRequest) -> Result<Progress<LayerState>> {
        self.inner.update(r).await
    }
    async fn destroy(&self, r: LayerRequest) -> Result<Progress<()>> {
        self.inner.destroy(r).await
    }
    async fn describe(&self, w: &WorkspaceId, s: &WorkspaceSpec) -> Result<InfraDescription> {
        self.inner.describe(w, s).await
    }
}

/// Advances `id` once on `engine` and moves the clock to when it asks to be
/// woken (at most `step`).
async fn advance_once(world: &World, engine: &Engine, id: &WorkspaceId) -> Action {
    let action = engine.advance(id).await.unwrap();
    if let Action::WakeAt(t) = action {
        let now = world.clock.now();
        if t > now {
            world.clock.advance(t.since(now));
        }
    }
    action
}

fn progress_events(history: &[EventRecord]) -> Vec<String> {
    history
        .iter()
        .filter(|e| matches!(e.event.kind, EventKind::StepProgress { .. }))
        .map(|e| e.event.message.clone())
        .collect()
}

#[tokio::test]
async fn status_shows_the_running_steps_latest_message_and_the_store_gets_it_at_intervals() {
    let world = World::new(1, FaultPlan::none());
    let chatty = Arc::new(Chatty {
        inner: Arc::new(world.cloud.clone()),
        left: AtomicU32::new(10),
        polls: AtomicU32::new(0),
    });
    let flush = |c: EngineConfig| c.with_progress_flush(Duration::from_secs(30));
    let a = world.engine_on("replica-a", Some(chatty.clone()), flush);
    let b = world.engine_on("replica-b", Some(chatty.clone()), flush);
    let id = ws("chatty");
    let labels = Labels::new().with("team", "payments").unwrap();
    a.create_labelled(id.clone(), spec(), labels.clone(), api())
        .await
        .unwrap();
    // Ten polls of the network step, 5 s apart: 0, 5, …, 45 s.
    for _ in 0..10 {
        advance_once(&world, &a, &id).await;
    }
    let status = a.status(&id).await.unwrap();
    assert_eq!(status.state, StateName::Provisioning);
    assert_eq!(status.labels, labels);
    assert_eq!(status.cloud, CloudKind::Simulated);
    let op = &status.operations[0];
    assert_eq!(
        (op.kind, op.steps_done, op.steps),
        (OperationKind::Provision, 0, 6)
    );
    let step = op.step.as_ref().expect("the step it is at");
    assert_eq!(step.name, "network");
    assert_eq!(
        step.progress.as_ref().map(|p| p.message.as_str()),
        Some("VPC CREATING, poll 10"),
        "the replica running the step shows its latest message"
    );
    // The store got the first message, then the first changed one 30 s later:
    // two writes of ten messages, each within a poll's own write.
    let history = a.history(&id).await.unwrap();
    assert_eq!(
        progress_events(&history),
        ["VPC CREATING, poll 1", "VPC CREATING, poll 7"]
    );
    let elsewhere = b.status(&id).await.unwrap();
    assert_eq!(
        elsewhere.operations[0]
            .step
            .as_ref()
            .and_then(|s| s.progress.as_ref())
            .map(|p| p.message.as_str()),
        Some("VPC CREATING, poll 7"),
        "another replica shows what was flushed"
    );
    // The step ends: its message goes with it.
    drive(&world, &mut [a.clone()], &id).await.unwrap();
    let status = a.status(&id).await.unwrap();
    assert_eq!(status.state, StateName::Active);
    assert!(status.operations.is_empty(), "{:?}", status.operations);
    assert!(status.agent.connected, "{:?}", status.agent);
    assert_eq!(status.spec.applied.as_ref(), Some(&status.spec.desired));
    assert!(status.spec.pending.is_empty());
    let record = a.workspace(&id).await.unwrap();
    assert!(
        record
            .operations
            .iter()
            .flat_map(|o| &o.steps)
            .all(|s| s.progress.is_none())
    );
}

#[tokio::test]
async fn status_says_why_a_workspace_failed_and_whether_a_retry_alone_may_succeed() {
    // A permanent refusal: a retry alone cannot help.
    let world = World::new(2, FaultPlan::none());
    let engine = world.engine("replica-a");
    let id = ws("refused");
    world.cloud.faults().fail_permanently(InfraLayer::NodePools);
    engine.create(id.clone(), spec(), api()).await.unwrap();
    drive(&world, &mut [engine.clone()], &id).await.unwrap();
    let status = engine.status(&id).await.unwrap();
    assert_eq!(status.state, StateName::Failed);
    let failure = status.failure.expect("the failure");
    assert_eq!(failure.step, "node-pools");
    assert_eq!(failure.retryable, Some(false), "{failure:?}");
    assert!(failure.error.contains("permanent"), "{}", failure.error);
    let op = &status.operations[0];
    assert_eq!((op.steps_done, op.steps), (2, 6));
    let step = op.step.as_ref().expect("the failed step");
    assert_eq!(step.status, StepStatus::Failed);
    assert_eq!(step.last_error.as_deref(), Some(failure.error.as_str()));

    // Transient errors past the retry budget: a retry alone may succeed.
    let world = World::new(3, FaultPlan::none());
    let engine = world.engine_with("replica-a", |c| {
        c.with_retry(RetryPolicy::new(
            2,
            Duration::from_millis(10),
            Duration::from_millis(20),
        ))
    });
    let id = ws("flaky");
    for _ in 0..2 {
        world
            .cloud
            .faults()
            .inject_next_for(InfraLayer::Network, cogrion::sim::Fault::Unavailable);
    }
    engine.create(id.clone(), spec(), api()).await.unwrap();
    drive(&world, &mut [engine.clone()], &id).await.unwrap();
    let status = engine.status(&id).await.unwrap();
    let failure = status.failure.expect("the failure");
    assert_eq!(
        (failure.step.as_str(), failure.retryable),
        ("network", Some(true))
    );
    engine.retry(&id, api()).await.unwrap();
    drive(&world, &mut [engine.clone()], &id).await.unwrap();
    assert_eq!(engine.status(&id).await.unwrap().state, StateName::Active);
}

#[tokio::test]
async fn listing_filters_by_labels_state_and_cloud_pages_and_counts() {
    let world = World::new(4, FaultPlan::none());
    let engine = world.engine("replica-a");
    let team = |t: &str| Labels::new().with("team", t).unwrap();
    for i in 0..7 {
        let labels = team(if i % 2 == 0 { "payments" } else { "search" });
        engine
            .create_labelled(ws(&format!("list-{i}")), spec(), labels, api())
            .await
            .unwrap();
    }
    drive(&world, &mut [engine.clone()], &ws("list-0"))
        .await
        .unwrap();
    let payments = ListQuery::new().labels(team("payments")).limit(3);
    let first = engine.list(&payments).await.unwrap();
    let names = |p: &WorkspacePage| {
        p.workspaces
            .iter()
            .map(|w| w.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&first), ["list-0", "list-2", "list-4"]);
    let second = engine
        .list(first.next.as_ref().expect("more"))
        .await
        .unwrap();
    assert_eq!(names(&second), ["list-6"]);
    assert!(second.next.is_none(), "the last page");
    assert_eq!(first.workspaces[0].state, StateName::Active);
    assert_eq!(
        engine
            .count(&ListQuery::new().labels(team("payments")))
            .await
            .unwrap(),
        [(StateName::Active, 1), (StateName::Provisioning, 3)]
            .into_iter()
            .collect()
    );
    let active = engine
        .list(
            &ListQuery::new()
                .state(StateName::Active)
                .cloud(CloudKind::Simulated),
        )
        .await
        .unwrap();
    assert_eq!(names(&active), ["list-0"]);
    assert!(
        engine
            .list(&ListQuery::new().cloud(CloudKind::Aws))
            .await
            .unwrap()
            .workspaces
            .is_empty()
    );
    // Relabelling changes nothing else, and is in the history.
    let before = engine.workspace(&ws("list-1")).await.unwrap();
    engine
        .set_labels(&ws("list-1"), team("payments"), api())
        .await
        .unwrap();
    let after = engine.workspace(&ws("list-1")).await.unwrap();
    assert_eq!(
        (after.state.clone(), &after.operations),
        (before.state, &before.operations)
    );
    assert_eq!(
        engine
            .count(&ListQuery::new().labels(team("payments")))
            .await
            .unwrap()
            .values()
            .sum::<u64>(),
        5
    );
    let history = engine.history(&ws("list-1")).await.unwrap();
    assert!(
        history
            .last()
            .is_some_and(|e| e.event.message == "labels {team=payments} (were {team=search})"),
        "{:?}",
        history.last()
    );
    // Labels that break their rule never get that far: they are refused
    // where they are made, or read.
    assert!(matches!(
        Labels::new().with("Team", "x"),
        Err(InvalidValue::BadCharacter { .. })
    ));
    assert!(serde_json::from_str::<Labels>(r#"{"team":"a b"}"#).is_err());
}

#[tokio::test]
async fn watch_sees_every_event_once_across_engines_and_a_restart() {
    let world = World::new(5, FaultPlan::none());
    let a = world.engine("replica-a");
    let b = world.engine_with("replica-b", |c| c.with_feed_poll(Duration::from_millis(20)));
    let ids: Vec<WorkspaceId> = (0..4).map(|i| ws(&format!("watched-{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        let engine = if i % 2 == 0 { &a } else { &b };
        engine.create(id.clone(), spec(), api()).await.unwrap();
    }
    let total = |ids: Vec<WorkspaceId>, engine: Engine| async move {
        let mut n = 0;
        for id in &ids {
            n += engine.history(id).await.unwrap().len();
        }
        n
    };
    // A consumer on replica b reads a few events, stops (as if it
    // restarted), and resumes from the last cursor it handled.
    let mut stream = Box::pin(b.watch(FeedCursor::START));
    let mut seen: Vec<FeedEvent> = Vec::new();
    for _ in 0..3 {
        seen.push(stream.next().await.unwrap().unwrap());
    }
    drop(stream);
    // Both replicas drive on meanwhile.
    for (i, id) in ids.iter().enumerate() {
        let engine = if i % 2 == 0 { a.clone() } else { b.clone() };
        drive(&world, &mut [engine], id).await.unwrap();
    }
    let expected = total(ids.clone(), a.clone()).await;
    let mut stream = Box::pin(b.watch(seen.last().unwrap().cursor));
    while seen.len() < expected {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream goes on")
            .unwrap()
            .unwrap();
        seen.push(next);
    }
    crate::drive::check_fed(&a, &seen, &ids).await;
    // And what a replica commits later wakes the stream.
    a.set_labels(&ids[0], Labels::new().with("late", "yes").unwrap(), api())
        .await
        .unwrap();
    let late = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("woken")
        .unwrap()
        .unwrap();
    assert_eq!(late.workspace, ids[0]);
    assert!(late.event.event.message.starts_with("labels {late=yes}"));
}

/// The ControlPlane on its defaults — a SQLite file and the agents' CA in
/// its data directory, the HTTPS endpoint with mutual TLS, the engine and its
/// driver — and real agent runtimes, installed as a cluster's Deployment
/// would be: the simulated cloud and cluster stand in for the cloud and
/// Kubernetes, which do not exist here.
#[cfg(all(feature = "sqlite", feature = "https"))]
mod control_plane {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use async_trait::async_trait;
    use cogrion::agent::{AgentInstall, AgentInstaller};
    use cogrion::provider::{ClusterAccess, ExecutorKind, Progress};
    use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedCluster, SimulatedWorld};
    use cogrion::*;

    use crate::world::{TempDir, api, spec, stack, ws};

    /// The simulated world's in-process agents as the installer.
    fn sim_agents(
        world: &SimulatedWorld,
    ) -> impl FnOnce(&AgentEndpoint) -> Arc<dyn AgentInstaller> + Send + 'static {
        let agents = world.agents.clone();
        move |_| Arc::new(agents)
    }

    /// Installs a real agent runtime per workspace, told where the endpoint is
    /// and what to trust by the control plane.
    #[derive(Debug)]
    struct Runtimes {
        endpoint: AgentEndpoint,
        dir: std::path::PathBuf,
        cluster: SimulatedCluster,
        running: Mutex<HashMap<WorkspaceId, tokio::sync::oneshot::Sender<()>>>,
    }

    #[async_trait]
    impl AgentInstaller for Runtimes {
        async fn install(&self, request: AgentInstall) -> Result<Progress<()>> {
            let dir = self.dir.join(request.workspace.as_str());
            std::fs::create_dir_all(&dir).unwrap();
            cogrion_agent::write_token_file(&dir.join("token"), request.token.expose()).unwrap();
            let mut running = self.running.lock().unwrap();
            if !running.contains_key(&request.workspace) {
                let ws = request.workspace.clone();
                let config = cogrion_agent::AgentConfig::new(
                    self.endpoint.address,
                    &self.endpoint.server_name,
                    self.endpoint.ca_pem.clone(),
                    ws.clone(),
                    dir.join("token"),
                    dir.join("state"),
                )
                .with_poll_wait(1);
                let mut handlers = cogrion_agent::Handlers::builtin(&ws);
                for kind in [
                    SimulatedCluster::APPLY,
                    SimulatedCluster::DESTROY,
                    SimulatedCluster::STATUS,
                ] {
                    let (cluster, ws) = (self.cluster.clone(), ws.clone());
                    handlers.register(kind, Arc::new(move |c| cluster.handle(&ws, c)));
                }
                let mut agent = cogrion_agent::AgentRuntime::new(config, handlers).unwrap();
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                tokio::spawn(async move {
                    let _ = agent
                        .run(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
                running.insert(ws, stop);
            }
            Ok(Progress::Ready(()))
        }

        async fn uninstall(&self, ws: &WorkspaceId, _: &ClusterAccess) -> Result<Progress<()>> {
            if let Some(stop) = self.running.lock().unwrap().remove(ws) {
                let _ = stop.send(());
            }
            Ok(Progress::Ready(()))
        }
    }

    fn builder(dir: &std::path::Path, world: &SimulatedWorld) -> ControlPlaneBuilder {
        let mut builder = ControlPlane::builder()
            .data_dir(dir)
            .agents_listen("127.0.0.1:0".parse().unwrap())
            .cloud(CloudKind::Simulated, Arc::new(world.cloud.clone()))
            .driver_config(DriverConfig::default().with_sweep_interval(Duration::from_millis(50)));
        for executor in world.executors() {
            builder = builder.executor(executor);
        }
        builder
    }

    async fn wait_for(
        plane: &ControlPlane,
        id: &WorkspaceId,
        done: impl Fn(&WorkspaceStatus) -> bool,
    ) -> WorkspaceStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = plane.engine().status(id).await.unwrap();
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "stuck: {status:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_control_plane_on_its_defaults_runs_a_workspace_s_whole_life() {
        let dir = TempDir::new("control-plane");
        let cloud = SimulatedCloud::builder()
            .latency_all(Duration::from_millis(20))
            .build();
        let world = SimulatedWorld::new(cloud, FaultPlan::none());
        let agents = dir.path().join("agents");
        let cluster = world.cluster.clone();
        let plane = builder(dir.path(), &world)
            .serves_clouds([CloudKind::Simulated])
            .serves_stacks([
                ExecutorKind::Helm,
                ExecutorKind::Manifests,
                ExecutorKind::Terraform,
            ])
            .installer(move |endpoint| {
                Arc::new(Runtimes {
                    endpoint: endpoint.clone(),
                    dir: agents,
                    cluster,
                    running: Mutex::default(),
                })
            })
            .build()
            .await
            .unwrap();
        let endpoint = plane.agent_endpoint().expect("the HTTPS endpoint").clone();
        assert_eq!(
            endpoint.url,
            format!("https://localhost:{}", endpoint.address.port())
        );
        assert!(
            dir.path().join("cogrion.db").exists(),
            "the store in the data directory"
        );
        assert!(
            dir.path().join("ca/ca.pem").exists(),
            "the CA in the data directory"
        );

        let engine = plane.engine();
        let id = ws("whole-life");
        engine.create(id.clone(), spec(), api()).await.unwrap();
        let active = wait_for(&plane, &id, |s| s.state == StateName::Active).await;
        assert!(
            active.agent.connected_here,
            "the agent's mTLS connection: {active:?}"
        );
        engine
            .deploy_stack(&id, stack("web", ExecutorKind::Helm, &[]), api())
            .await
            .unwrap();
        let deployed = wait_for(&plane, &id, |s| {
            s.stacks.iter().any(|s| s.state == StackStateName::Deployed)
        })
        .await;
        assert_eq!(deployed.stacks[0].name.as_str(), "web");
        engine.destroy(&id, api()).await.unwrap();
        let destroyed = wait_for(&plane, &id, |s| s.state == StateName::Destroyed).await;
        assert!(
            destroyed.left_behind.is_empty(),
            "{:?}",
            destroyed.left_behind
        );
        assert!(world.cloud.live_resources(&id).is_empty());
        let ca = plane.ca().certificate_pem().to_owned();
        assert!(plane.shutdown().await > 0, "the driver drove it");

        // A restart on the same data directory: the same store and CA.
        let again = builder(dir.path(), &world)
            .installer(sim_agents(&world))
            .build()
            .await
            .unwrap();
        assert_eq!(again.ca().certificate_pem(), ca, "the CA is kept");
        let listed = again.engine().list(&ListQuery::new()).await.unwrap();
        assert_eq!(listed.workspaces.len(), 1);
        assert_eq!(listed.workspaces[0].state, StateName::Destroyed);
        again.shutdown().await;
    }

    #[tokio::test]
    async fn each_missing_or_unusable_part_is_a_typed_error() {
        let dir = TempDir::new("control-plane-errors");
        let world = SimulatedWorld::new(SimulatedCloud::new(), FaultPlan::none());
        let refused = |r: std::result::Result<ControlPlane, ConfigError>| match r {
            Ok(_) => panic!("built"),
            Err(e) => e,
        };
        let none = ControlPlane::builder()
            .data_dir(dir.path())
            .installer(sim_agents(&world));
        assert!(matches!(refused(none.build().await), ConfigError::NoCloud));
        let aws = builder(dir.path(), &world)
            .serves_clouds([CloudKind::Aws])
            .installer(sim_agents(&world));
        assert!(matches!(
            refused(aws.build().await),
            ConfigError::MissingProvisioner(CloudKind::Aws)
        ));
        let bare = ControlPlane::builder()
            .data_dir(dir.path())
            .cloud(CloudKind::Simulated, Arc::new(world.cloud.clone()))
            .serves_stacks([ExecutorKind::Terraform])
            .installer(sim_agents(&world));
        assert!(matches!(
            refused(bare.build().await),
            ConfigError::MissingExecutor(ExecutorKind::Terraform)
        ));
        assert!(
            !dir.path().join("cogrion.db").exists(),
            "nothing is opened before the configuration is checked"
        );
        // The endpoint's address is taken.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = builder(dir.path(), &world)
            .agents_listen(taken.local_addr().unwrap())
            .installer(sim_agents(&world));
        assert!(matches!(
            refused(busy.build().await),
            ConfigError::Listen { address, .. } if address == taken.local_addr().unwrap()
        ));
        // A data directory that is a file.
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let bad_dir = builder(&file, &world).installer(sim_agents(&world));
        let e = refused(bad_dir.build().await);
        assert!(matches!(e, ConfigError::DataDir { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
        // The environment.
        let env = |pairs: &[(&str, &str)]| {
            let pairs: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ControlPlane::builder();
            ControlPlaneBuilder::from_vars(move |var| pairs.get(var).cloned())
        };
        for (var, value) in [
            ("COGRION_AGENTS_LISTEN", "localhost"),
            ("COGRION_REPLICA", "Not A Name"),
            ("COGRION_DATA_DIR", ""),
            ("COGRION_AGENTS_SERVER_NAME", "https://x"),
        ] {
            match env(&[(var, value)]) {
                Err(ConfigError::Env { var: v, .. }) => assert_eq!(v, var),
                other => panic!("{var}={value:?}: {other:?}"),
            }
        }
        let good = env(&[
            ("COGRION_AGENTS_LISTEN", "127.0.0.1:0"),
            ("COGRION_REPLICA", "cp-2"),
            (
                "COGRION_DATA_DIR",
                dir.path().join("from-env").to_str().unwrap(),
            ),
        ])
        .unwrap()
        .cloud(CloudKind::Simulated, Arc::new(world.cloud.clone()))
        .installer(sim_agents(&world))
        .build()
        .await
        .unwrap();
        assert_eq!(good.engine().config().holder.as_str(), "cp-2");
        assert!(dir.path().join("from-env/cogrion.db").exists());
        good.shutdown().await;
    }
}

/// The engine's metrics through the `metrics` facade, read by the facade's
/// debugging recorder (installed for the whole test binary: other tests'
/// steps add to the counts, so they are checked as lower bounds).
#[tokio::test]
async fn the_engine_reports_its_steps_failures_and_operations_as_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder this test binary installs");
    let world = World::new(6, FaultPlan::none());
    let engine = world.engine("replica-a");
    world.cloud.faults().fail_permanently(InfraLayer::NodePools);
    let id = ws("measured");
    engine.create(id.clone(), spec(), api()).await.unwrap();
    drive(&world, &mut [engine.clone()], &id).await.unwrap();

    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str, labels: &[(&str, &str)]| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                let key = key.key();
                key.name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, _, _, value)| value)
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    let counted = |name: &str, labels: &[(&str, &str)]| match find(name, labels) {
        DebugValue::Counter(n) => *n,
        other => panic!("{name} is {other:?}"),
    };
    assert!(counted(metrics::STEPS, &[("kind", "network"), ("outcome", "done")]) >= 1);
    assert!(
        counted(
            metrics::STEPS,
            &[("kind", "node-pools"), ("outcome", "failed")]
        ) >= 1
    );
    assert!(
        counted(
            metrics::STEP_FAILURES,
            &[("kind", "node-pools"), ("class", "rejected")]
        ) >= 1
    );
    assert!(counted(metrics::OPERATIONS_STARTED, &[("kind", "provision")]) >= 1);
    match find(metrics::STEP_SECONDS, &[("kind", "network")]) {
        DebugValue::Histogram(samples) => assert!(!samples.is_empty()),
        other => panic!("{other:?}"),
    }
}
