//! The lifecycle engine with the real agent path: the engine's transport is the
//! HTTPS endpoint, its installer hands the one-time token to a real agent
//! runtime, and provisioning reaches `Active` only through that agent's mTLS
//! bootstrap and first authenticated poll; destroying revokes its certificate;
//! an agent away past its certificate comes back through a fresh token.
//!
//! The cloud is the simulated one (no real cloud exists here); TLS, the CA, the
//! endpoint, the agent runtime and the engine are real.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cogrion_agent::{AgentConfig, AgentRuntime, Handlers};
use cogrion_core::sim::SimulatedCloud;
use cogrion_core::{
    Actor, Clock, CloudKind, Driver, DriverConfig, Engine, EngineConfig, SystemClock, WorkspaceId,
    WorkspaceSpec, WorkspaceState,
    agent::{AgentInstall, AgentInstaller, LateSink},
    provider::{ClusterAccess, Progress},
    store::{CredentialStore, InMemoryStore, RecordStore},
};

mod support;

/// Installs an agent by writing its token where it reads it and starting its
/// runtime (in a cluster: a Deployment and a Secret).
#[derive(Debug)]
struct Installer {
    dir: std::path::PathBuf,
    addr: std::net::SocketAddr,
    ca_pem: String,
    running: Mutex<HashMap<WorkspaceId, tokio::sync::oneshot::Sender<()>>>,
}

#[async_trait]
impl AgentInstaller for Installer {
    async fn install(&self, request: AgentInstall) -> cogrion_core::Result<Progress<()>> {
        let dir = self.dir.join(request.workspace.as_str());
        std::fs::create_dir_all(&dir).unwrap();
        cogrion_agent::write_token_file(&dir.join("token"), request.token.expose()).unwrap();
        let mut running = self.running.lock().unwrap();
        if !running.contains_key(&request.workspace) {
            let config = AgentConfig::new(
                self.addr,
                "localhost",
                self.ca_pem.clone(),
                request.workspace.clone(),
                dir.join("token"),
                dir.join("state"),
            )
            .with_poll_wait(2);
            let mut agent =
                AgentRuntime::new(config, Handlers::builtin(&request.workspace)).unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let _ = agent
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            running.insert(request.workspace.clone(), stop);
        }
        Ok(Progress::Ready(()))
    }

    async fn uninstall(
        &self,
        workspace: &WorkspaceId,
        _: &ClusterAccess,
    ) -> cogrion_core::Result<Progress<()>> {
        if let Some(stop) = self.running.lock().unwrap().remove(workspace) {
            let _ = stop.send(());
        }
        Ok(Progress::Ready(()))
    }
}

impl Installer {
    /// Stops the agent without uninstalling it: it is away (a cluster down, a
    /// network cut).
    fn take_away(&self, workspace: &WorkspaceId) {
        if let Some(stop) = self.running.lock().unwrap().remove(workspace) {
            let _ = stop.send(());
        }
    }
}

/// The control plane (store, CA, HTTPS endpoint, engine, driver) and the
/// installer of real agent runtimes; certificates live `validity`.
struct Rig {
    store: Arc<InMemoryStore>,
    engine: Engine,
    installer: Arc<Installer>,
    driver: Option<cogrion_core::DriverHandle>,
    dir: std::path::PathBuf,
    _stop: cogrion_providers::https::ServerHandle,
}

impl Rig {
    async fn start(validity: Duration, driver: DriverConfig) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = Arc::new(InMemoryStore::new());
        let sink = Arc::new(LateSink::new());
        let support::Endpoint {
            ca,
            server,
            addr,
            stop,
        } = support::endpoint(store.clone(), sink.clone(), validity).await;
        let dir =
            std::env::temp_dir().join(format!("cogrion-engine-agent-{}", rand::random::<u64>()));
        let installer = Arc::new(Installer {
            dir: dir.clone(),
            addr,
            ca_pem: ca.certificate_pem().to_owned(),
            running: Mutex::default(),
        });
        let engine = Engine::builder(store.clone())
            .clock(clock.clone())
            .cloud(
                CloudKind::Simulated,
                Arc::new(SimulatedCloud::builder().clock(clock.clone()).build()),
            )
            .agent_installer(installer.clone())
            .transport(Arc::new(server.clone()))
            .config(EngineConfig::new("cp-0".parse().unwrap()))
            .build()
            .unwrap();
        assert!(sink.set(Arc::new(engine.clone())));
        let driver = Some(Driver::spawn(engine.clone(), driver));
        Self {
            store,
            engine,
            installer,
            driver,
            dir,
            _stop: stop,
        }
    }

    async fn create(&self, name: &str) -> WorkspaceId {
        let ws: WorkspaceId = name.parse().unwrap();
        let spec = WorkspaceSpec::from_json(
            r#"{"tenant":"acme","cloud":{"provider":"simulated"},"region":"local-1","kubernetes_version":"1.34",
                "network":{"cidr":"10.42.0.0/16"},
                "node_pools":[{"name":"general","instance_type":"sim-small","size":{"min":1,"desired":2,"max":3}}]}"#,
        )
        .unwrap();
        self.engine.create(ws.clone(), spec, api()).await.unwrap();
        ws
    }

    /// Waits (up to 30 s) for `ws` to be in `target`.
    async fn wait(&self, ws: &WorkspaceId, target: WorkspaceState) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let record = self.engine.workspace(ws).await.unwrap();
            if record.state == target {
                return;
            }
            if Instant::now() >= deadline {
                let history = self.engine.history(ws).await.unwrap();
                let credentials = self.store.list_credentials(ws).await.unwrap();
                panic!(
                    "stuck in {:?}; history {history:#?}; credentials {credentials:#?}; operations {:#?}",
                    record.state, record.operations
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(driver) = self.driver.take() {
            driver.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn api() -> Actor {
    Actor::Api {
        principal: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_reaches_active_through_a_real_agent_over_mutual_tls() {
    let rig = Rig::start(
        Duration::from_secs(24 * 3600),
        DriverConfig::default().with_sweep_interval(Duration::from_millis(200)),
    )
    .await;
    let ws = rig.create("acme-prod").await;
    rig.wait(&ws, WorkspaceState::Active).await;
    let credentials = rig.store.list_credentials(&ws).await.unwrap();
    assert_eq!(
        credentials.len(),
        1,
        "one certificate, from the agent's bootstrap"
    );
    assert!(
        credentials[0].first_poll_at.is_some(),
        "Active came from its first authenticated poll"
    );

    rig.engine.destroy(&ws, api()).await.unwrap();
    rig.wait(&ws, WorkspaceState::Destroyed).await;
    let credentials = rig.store.list_credentials(&ws).await.unwrap();
    assert!(
        credentials.iter().all(|c| c.revoked.is_some()),
        "destroy revokes the agent's certificate"
    );
    assert!(
        rig.installer.running.lock().unwrap().is_empty(),
        "and uninstalls the agent"
    );
    // Only an Active workspace's agent is re-bootstrapped: refused, nothing changes.
    let before = rig.store.get_workspace(&ws).await.unwrap();
    assert!(matches!(
        rig.engine.rebootstrap_agent(&ws, api()).await,
        Err(cogrion_core::Error::WrongState(_))
    ));
    assert_eq!(
        rig.store.get_workspace(&ws).await.unwrap().revision,
        before.revision
    );
    rig.stop().await;
}

/// An agent away longer than its certificate lives cannot renew it: the
/// driver's check finds the workspace's certificates all expired and
/// re-bootstraps the agent — a fresh token, handed over by re-installing — and
/// the agent, back, exchanges it and polls: `Active` again, the old
/// certificates revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_away_past_its_certificate_comes_back_through_a_fresh_token() {
    let validity = Duration::from_secs(4);
    let rig = Rig::start(
        validity,
        DriverConfig::default()
            .with_sweep_interval(Duration::from_millis(200))
            .with_agent_expiry_check(Some(Duration::from_millis(300))),
    )
    .await;
    let ws = rig.create("acme-away").await;
    rig.wait(&ws, WorkspaceState::Active).await;
    let first = rig.store.list_credentials(&ws).await.unwrap();

    rig.installer.take_away(&ws);
    // Away past every certificate it holds; the driver's check notices, and
    // the re-bootstrap brings it back.
    tokio::time::sleep(validity + Duration::from_secs(2)).await;
    rig.wait(&ws, WorkspaceState::Active).await;
    let history = rig.engine.history(&ws).await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| format!("{e:?}").contains("agent re-bootstrap requested")),
        "the history says why: {history:?}"
    );
    let credentials = rig.store.list_credentials(&ws).await.unwrap();
    let live: Vec<_> = credentials.iter().filter(|c| c.revoked.is_none()).collect();
    assert_eq!(live.len(), 1, "one live certificate: {credentials:?}");
    assert!(live[0].first_poll_at.is_some(), "it polled");
    assert!(
        first.iter().all(|old| old.serial != live[0].serial),
        "a new identity, not the expired one"
    );
    assert!(
        credentials
            .iter()
            .filter(|c| c.serial != live[0].serial)
            .all(|c| c.revoked.is_some()),
        "the earlier certificates are revoked"
    );
    // Nothing to do now: its certificate is good.
    assert!(
        rig.engine
            .rebootstrap_expired_agents(api())
            .await
            .unwrap()
            .is_empty()
    );
    rig.stop().await;
}
