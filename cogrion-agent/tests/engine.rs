//! The lifecycle engine with the real agent path: the engine's transport is the
//! HTTPS endpoint, its installer hands the one-time token to a real agent
//! runtime, and provisioning reaches `Active` only through that agent's mTLS
//! bootstrap and first authenticated poll; destroying revokes its certificate.
//!
//! The cloud is the simulated one (no real cloud exists here); TLS, the CA, the
//! endpoint, the agent runtime and the engine are real.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cogrion_agent::{AgentConfig, AgentRuntime, Handlers};
use cogrion_core::ca::{CaConfig, CertificateAuthority, KeyAlgorithm, LocalCaKey};
use cogrion_core::sim::SimulatedCloud;
use cogrion_core::{
    Actor, AgentGateway, AgentInstall, AgentInstaller, Clock, CloudKind, ClusterAccess,
    CredentialStore, Driver, DriverConfig, Engine, EngineConfig, InMemoryStore, LateSink, Progress,
    SystemClock, WorkspaceId, WorkspaceSpec, WorkspaceState,
};
use cogrion_providers::https::{AgentServer, AgentServerConfig};

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
        std::fs::write(dir.join("token"), request.token.expose()).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_reaches_active_through_a_real_agent_over_mutual_tls() {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(InMemoryStore::new());
    let key = LocalCaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let ca = Arc::new(
        CertificateAuthority::create(Arc::new(key), "test CA", clock.now(), CaConfig::default())
            .unwrap(),
    );
    let server_cert = ca.issue_server(&["localhost"], clock.now()).unwrap();
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
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });

    let dir = std::env::temp_dir().join(format!("cogrion-engine-agent-{}", rand::random::<u64>()));
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
    let driver = Driver::spawn(
        engine.clone(),
        DriverConfig::default().with_sweep_interval(Duration::from_millis(200)),
    );

    let ws: WorkspaceId = "acme-prod".parse().unwrap();
    let spec = WorkspaceSpec::from_json(
        r#"{"tenant":"acme","cloud":{"provider":"simulated"},"region":"local-1","kubernetes_version":"1.34",
            "network":{"cidr":"10.42.0.0/16"},
            "node_pools":[{"name":"general","instance_type":"sim-small","size":{"min":1,"desired":2,"max":3}}]}"#,
    )
    .unwrap();
    let api = Actor::Api {
        principal: "test".into(),
    };
    engine.create(ws.clone(), spec, api.clone()).await.unwrap();
    let wait = |target: WorkspaceState| {
        let engine = engine.clone();
        let ws = ws.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let record = engine.workspace(&ws).await.unwrap();
                if record.state == target {
                    return;
                }
                assert!(Instant::now() < deadline, "stuck in {:?}", record.state);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait(WorkspaceState::Active).await;
    let credentials = store.list_credentials(&ws).await.unwrap();
    assert_eq!(
        credentials.len(),
        1,
        "one certificate, from the agent's bootstrap"
    );
    assert!(
        credentials[0].first_poll_at.is_some(),
        "Active came from its first authenticated poll"
    );

    engine.destroy(&ws, api).await.unwrap();
    wait(WorkspaceState::Destroyed).await;
    let credentials = store.list_credentials(&ws).await.unwrap();
    assert!(
        credentials.iter().all(|c| c.revoked.is_some()),
        "destroy revokes the agent's certificate"
    );
    assert!(
        installer.running.lock().unwrap().is_empty(),
        "and uninstalls the agent"
    );
    driver.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
