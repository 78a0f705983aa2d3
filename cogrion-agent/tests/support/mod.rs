//! The control plane's agent endpoint, as the agent tests need it: a fresh CA,
//! the gateway over the given store, and the HTTPS server on loopback, with
//! certificates living `validity`.

use std::sync::Arc;
use std::time::Duration;

use cogrion_core::ca::{CaConfig, CertificateAuthority, KeyAlgorithm, LocalCaKey};
use cogrion_core::{
    Clock, SystemClock,
    agent::{AgentEventSink, AgentGateway, GatewayConfig},
    store::InMemoryStore,
};
use cogrion_providers::https::{AgentServer, AgentServerConfig};

/// A serving endpoint; it stops when `stop` is dropped.
pub(crate) struct Endpoint {
    pub(crate) ca: Arc<CertificateAuthority>,
    pub(crate) server: AgentServer,
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) stop: cogrion_providers::https::ServerHandle,
}

/// Starts an endpoint reporting agent events to `sink`.
pub(crate) async fn endpoint(
    store: Arc<InMemoryStore>,
    sink: Arc<dyn AgentEventSink>,
    validity: Duration,
) -> Endpoint {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let key = LocalCaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let ca = Arc::new(
        CertificateAuthority::create(
            Arc::new(key),
            "test CA",
            clock.now(),
            CaConfig::default().with_validity(validity),
        )
        .unwrap(),
    );
    let server_cert = ca.issue_server(&["localhost"], clock.now()).unwrap();
    let mut gateway_config = GatewayConfig::default();
    gateway_config.credential_ttl = validity;
    let gateway = AgentGateway::new(store, clock.clone(), sink, gateway_config);
    let server = AgentServer::new(
        gateway,
        ca.clone(),
        clock,
        &server_cert,
        AgentServerConfig::default(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = server.spawn(listener);
    Endpoint {
        ca,
        server,
        addr,
        stop,
    }
}
