//! The agents' endpoint under load, each number against the raw limit measured
//! in the same run:
//!
//! - **bootstrap exchanges/s** through `AgentServer` (TLS handshake, strict
//!   decoding, the CSR check, the token consumed and the credential stored in
//!   SQLite at its default durability, the certificate signed) against a bare
//!   rustls server doing only the TLS handshake and the CSR signing;
//! - **delivery latency** of one command to one agent among many holding
//!   long-polls: from the queued command's notify to the agent holding it.
//!
//! Run with `cargo bench --bench agents` (`COGRION_BENCH_AGENTS` sets how many
//! agents hold polls, default 1,000). Agents here share the control plane's
//! process, so each costs two of the process's file descriptors; the issue's
//! 10,000-agent figures need load generators in their own processes (not built
//! yet).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cogrion::ca::{CaConfig, CertificateAuthority, KeyAlgorithm, LocalCaKey};
use cogrion::conformance::sample_workspace_spec;
use cogrion::proto::v1::{self, AgentVersion, BootstrapRequest, TokenText};
use cogrion::proto::{CommandId, CommandKind, CommandOutcome, CommandResult, PROTOCOL_VERSION};
use cogrion::providers::https::{AgentClient, AgentServer, AgentServerConfig};
use cogrion::providers::sqlite::SqliteStore;
use cogrion::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONCURRENCY: usize = 32;

/// Ignores agent events (no engine in these measurements).
#[derive(Debug)]
struct Ignore;

#[async_trait::async_trait]
impl AgentEventSink for Ignore {
    async fn on_agent_event(&self, _: AgentEvent) -> Result<()> {
        Ok(())
    }
}

struct Plane {
    store: Arc<SqliteStore>,
    ca: Arc<CertificateAuthority>,
    server: AgentServer,
    server_cert: cogrion::ca::ServerCertificate,
    addr: std::net::SocketAddr,
}

async fn plane(dir: &std::path::Path) -> Plane {
    std::fs::create_dir_all(dir).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(SqliteStore::open(dir.join("cp.db")).await.unwrap());
    let key = LocalCaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let ca = Arc::new(
        CertificateAuthority::create(Arc::new(key), "bench CA", clock.now(), CaConfig::default())
            .unwrap(),
    );
    let server_cert = ca.issue_server(&["localhost"], clock.now()).unwrap();
    let gateway = AgentGateway::new(
        store.clone(),
        clock.clone(),
        Arc::new(Ignore),
        Default::default(),
    );
    let server = AgentServer::new(
        gateway,
        ca.clone(),
        clock,
        &server_cert,
        AgentServerConfig::default().with_admission(1024, 1024),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    Plane {
        store,
        ca,
        server,
        server_cert,
        addr,
    }
}

/// `n` workspaces, each with a token and a ready CSR (key generation is the
/// agent's cost, not the endpoint's).
async fn candidates(plane: &Plane, prefix: &str, n: usize) -> Vec<(WorkspaceId, String, String)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ws: WorkspaceId = format!("{prefix}-{i}").parse().unwrap();
        plane
            .store
            .commit(WorkspaceWrite::create(
                WorkspaceRecord::new(ws.clone(), sample_workspace_spec(), SystemClock.now()),
                SystemClock.now(),
            ))
            .await
            .unwrap();
        let token = issue_bootstrap_token(
            plane.store.as_ref(),
            &ws,
            SystemClock.now(),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        out.push((ws, token.expose().to_owned(), csr));
    }
    out
}

/// Runs `jobs` with `CONCURRENCY` at a time; returns jobs per second.
async fn rate<F>(jobs: Vec<F>) -> f64
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let n = jobs.len();
    let start = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(
        jobs.into_iter().map(Box::pin).collect::<Vec<_>>(),
    ));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let queue = queue.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let job = queue.lock().unwrap().pop();
                match job {
                    Some(job) => job.await,
                    None => return,
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A bare TLS server: handshake, read a CSR (length-prefixed), sign it, answer
/// the certificate. The raw limit of a bootstrap exchange.
async fn raw_server(plane: &Plane) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(
        plane.server_cert.certificate_pem.as_bytes(),
    )
    .collect::<std::result::Result<Vec<_>, _>>()
    .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(plane.server_cert.key_pem.as_bytes())
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ca = plane.ca.clone();
    tokio::spawn(async move {
        let mut serial = 0u64;
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            serial += 1;
            let (acceptor, ca) = (acceptor.clone(), ca.clone());
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let len = tls.read_u32().await.unwrap() as usize;
                let mut csr = vec![0; len];
                tls.read_exact(&mut csr).await.unwrap();
                let ws: WorkspaceId = "raw".parse().unwrap();
                let serial: CertSerial = format!("{serial:032x}").parse().unwrap();
                let cert = ca
                    .sign_agent(
                        std::str::from_utf8(&csr).unwrap(),
                        &ws,
                        &serial,
                        SystemClock.now(),
                    )
                    .unwrap();
                tls.write_u32(cert.pem.len() as u32).await.unwrap();
                tls.write_all(cert.pem.as_bytes()).await.unwrap();
                tls.shutdown().await.ok();
            });
        }
    });
    addr
}

fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn report_bootstrap(rt: &tokio::runtime::Runtime, dir: &std::path::Path) {
    const N: usize = 500;
    rt.block_on(async {
        let plane = plane(dir).await;
        let raw_addr = raw_server(&plane).await;
        let connector = tokio_rustls::TlsConnector::from(client_config(plane.ca.certificate_pem()));
        let client = Arc::new(AgentClient::new(plane.addr, "localhost", plane.ca.certificate_pem()).unwrap());
        let (mut best_raw, mut best_endpoint) = (0f64, 0f64);
        // Best of three each, alternating, on the same machine in the same run.
        for round in 0..3 {
            // Raw: handshake + CSR signing.
            let raw_jobs: Vec<_> = candidates(&plane, &format!("raw{round}"), N)
                .await
                .into_iter()
                .map(|(_, _, csr)| {
                    let connector = connector.clone();
                    async move {
                        let tcp = tokio::net::TcpStream::connect(raw_addr).await.unwrap();
                        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                        let mut tls = connector.connect(name, tcp).await.unwrap();
                        tls.write_u32(csr.len() as u32).await.unwrap();
                        tls.write_all(csr.as_bytes()).await.unwrap();
                        let len = tls.read_u32().await.unwrap() as usize;
                        let mut cert = vec![0; len];
                        tls.read_exact(&mut cert).await.unwrap();
                    }
                })
                .collect();
            best_raw = best_raw.max(rate(raw_jobs).await);
            // The endpoint: the same handshake and signature, plus HTTP, strict
            // decoding, the CSR check, the token and the credential in SQLite.
            let jobs: Vec<_> = candidates(&plane, &format!("boot{round}"), N)
                .await
                .into_iter()
                .map(|(ws, token, csr)| {
                    let client = client.clone();
                    async move {
                        let body = v1::encode(&BootstrapRequest {
                            version: PROTOCOL_VERSION,
                            workspace: ws,
                            token: TokenText::new(token).unwrap(),
                            csr_pem: csr,
                            agent_version: AgentVersion::new("0.1.0").unwrap(),
                        });
                        let (status, answer) = client.send_raw("/v1/bootstrap", body).await.unwrap();
                        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
                    }
                })
                .collect();
            best_endpoint = best_endpoint.max(rate(jobs).await);
        }
        println!(
            "REPORT agents bootstrap: endpoint {best_endpoint:.0} exchanges/s vs raw TLS handshake + CSR signing {best_raw:.0}/s \
             (best of 3 rounds of {N} each, {CONCURRENCY} at a time; SQLite NORMAL) -> ratio {:.3}",
            best_endpoint / best_raw
        );
    });
}

fn report_latency(rt: &tokio::runtime::Runtime, dir: &std::path::Path, agents: usize) {
    rt.block_on(async {
        let plane = plane(dir).await;
        // Bootstrap the agents, then have every one hold a long-poll.
        let mut clients = Vec::with_capacity(agents);
        for (ws, token, _) in candidates(&plane, "lp", agents).await {
            let client = AgentClient::new(plane.addr, "localhost", plane.ca.certificate_pem()).unwrap();
            client.bootstrap(&ws, &token, "0.1.0").await.unwrap();
            client.poll(Vec::new(), 0).await.unwrap();
            clients.push((ws, Arc::new(client)));
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
        for (i, (_, client)) in clients.iter().enumerate() {
            let (client, tx) = (client.clone(), tx.clone());
            tokio::spawn(async move {
                loop {
                    match client.poll(Vec::new(), 30).await {
                        Ok(p) if !p.commands.is_empty() => {
                            let _ = tx.send((i, Instant::now()));
                            for c in p.commands {
                                let result = CommandResult::new(c.id, CommandOutcome::Succeeded, serde_json::Value::Null).unwrap();
                                client.post_result(result).await.unwrap();
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // every poll is held
        let rounds = 200.min(agents);
        let mut latencies = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let target = (round * 7919) % agents;
            let ws = &clients[target].0;
            let current = plane.store.get_workspace(ws).await.unwrap();
            plane
                .store
                .commit(WorkspaceWrite::update(current.value, current.revision, SystemClock.now()).command(NewCommand {
                    id: CommandId::new(format!("l{round}")).unwrap(),
                    kind: CommandKind::new("health").unwrap(),
                    payload: serde_json::json!({}),
                }))
                .await
                .unwrap();
            let start = Instant::now();
            plane.server.notify(ws).await.unwrap();
            loop {
                let (i, at) = rx.recv().await.unwrap();
                if i == target {
                    latencies.push(at.duration_since(start));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        println!(
            "REPORT agents delivery: {agents} agents holding long-polls; one command to one agent: p50 {:.2} ms, p99 {:.2} ms ({rounds} rounds)",
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
        );
    });
}

fn main() {
    // `cargo test --benches` only builds and starts this target; measuring is for
    // `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("cogrion-agents-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    report_bootstrap(&rt, &dir.join("boot"));
    let agents = std::env::var("COGRION_BENCH_AGENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    std::fs::create_dir_all(dir.join("lat")).unwrap();
    report_latency(&rt, &dir.join("lat"), agents);
    std::fs::remove_dir_all(&dir).ok();
}
