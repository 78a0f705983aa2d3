//! The agents' endpoint under load: a fleet of agents in load-generator
//! processes of their own, against a control plane in a process of its own,
//! each number against the raw limit measured in the same run.
//!
//! Run with `cargo bench --bench agents`. The bench re-executes itself in four
//! roles (`--role …`): the control plane (`AgentServer` on the SQLite store in
//! its default mode), the bare baseline server, and load generators of each
//! kind. Settings (environment):
//! - `COGRION_BENCH_AGENTS` — agents in the fleet runs (default 10,000);
//! - `COGRION_BENCH_GENERATORS` — load-generator processes (default 4; each
//!   talks to its own loopback address, 127.0.0.1 to 127.0.0.4, so ephemeral
//!   ports never run short);
//! - `COGRION_BENCH_HOLD` — agents for the "one process holds" run (default:
//!   the file limit minus 100; `0` skips it);
//! - `COGRION_BENCH_HOSTILE=1` — instead of the runs below, the endpoint's
//!   legitimate work (bootstraps/s, delivery p99, server CPU per bootstrap)
//!   with and without an intruder's load in a process of its own: 5,000 idle
//!   and 500 slow-header connections (`COGRION_BENCH_HOSTILE_IDLE`, `_SLOW`)
//!   from 64 loopback addresses (`_SOURCES`; 127.0.1.1 on) that reconnect as
//!   soon as they are closed, and the server's memory per hostile connection;
//!   `COGRION_BENCH_HOSTILE_AGENTS` agents per fleet (default 8,000);
//! - `COGRION_BENCH_ROUNDS` (default 3), `COGRION_BENCH_WARMUP` (default
//!   1,000), `COGRION_BENCH_SERVER_THREADS` — tokio workers of both servers
//!   (default 2, one per core here).
//!
//! What is measured:
//! - **bootstrap exchanges/s**: every agent of the fleet bootstraps (a fresh
//!   key and CSR, the TLS handshake, `POST /v1/bootstrap`: strict decoding, the
//!   CSR check, the token consumed and the credential stored, the certificate
//!   signed), 16 at a time per generator, no agent polling before every
//!   generator is done — against the raw limit, the bare
//!   server's TLS handshake and CSR signing (no HTTP, no store) fed by the same
//!   generators in the same way;
//! - **resident memory per connected agent**: the server's RSS once every agent
//!   has had a response and holds its next long-poll, minus its RSS before the
//!   first agent came, over the agents — against a bare hyper + rustls server
//!   (HTTP/1.1, the same mutual TLS) that answers a connection's first request
//!   at once and holds the next ones;
//! - **delivery latency**: one command queued for one random agent of the
//!   fleet, from the store's commit to the agent's process having decoded it
//!   (both ends stamp the system clock, which the processes share);
//! - **agents one process holds**: a fleet as large as the file limit allows
//!   minus a reserve, every agent on one connection, each having had a response.

#[path = "support/proc.rs"]
mod proc;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cogrion::ca::{CaConfig, CertificateAuthority};
use cogrion::conformance::sample_workspace_spec;
use cogrion::proto::v1::{self, PollRequest};
use cogrion::proto::{CommandId, CommandKind, CommandOutcome, CommandResult};
use cogrion::providers::https::{AgentClient, AgentServer, AgentServerConfig, new_key_and_csr};
use cogrion::providers::sqlite::SqliteStore;
use cogrion::*;
use cogrion::{agent::*, provider::*, store::*};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Bootstraps in flight per generator.
const CONCURRENCY: usize = 16;
/// Deliveries measured per endpoint fleet (one command to one random agent
/// each).
const LATENCY_ROUNDS: usize = 200;
/// How long the held polls are held.
const HOLD_SECS: u32 = 30;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_nanos()
}

/// One line to the orchestrating process.
fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout");
    out.flush().expect("stdout");
}

/// Lines from the orchestrating process, until it closes our stdin.
fn orders() -> tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>> {
    tokio::io::BufReader::new(tokio::io::stdin()).lines()
}

/// Ignores agent events (no engine in these measurements).
#[derive(Debug)]
struct Ignore;

#[async_trait::async_trait]
impl AgentEventSink for Ignore {
    async fn on_agent_event(&self, _: AgentEvent) -> Result<()> {
        Ok(())
    }
}

fn workspace_name(i: usize) -> String {
    format!("agent-{i}")
}

fn ca_dir(dir: &Path) -> PathBuf {
    dir.join("ca")
}

fn open_ca(dir: &Path) -> CertificateAuthority {
    CertificateAuthority::open_or_create(&ca_dir(dir), SystemClock.now(), CaConfig::default())
        .expect("the bench CA")
}

/// The loopback addresses the servers listen on, one per generator.
fn hosts(generators: usize) -> Vec<String> {
    (1..=generators.clamp(1, 8))
        .map(|i| format!("127.0.0.{i}"))
        .collect()
}

// ---------------------------------------------------------------------------
// Role: the control plane.

/// `--role endpoint DIR N HOSTS`: `AgentServer` on SQLite (default mode) with
/// `N` workspaces and their tokens (written to `DIR/tokens`), listening on each
/// of `HOSTS`. Orders: `SEND <workspace> <command>` queues a command and
/// notifies (answer `SENT <workspace> <ns>`), `STATS`.
async fn role_endpoint(dir: PathBuf, n: usize, hosts: Vec<String>) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(SqliteStore::open(dir.join("cp.db")).await.unwrap());
    let ca = Arc::new(open_ca(&dir));
    let server_cert = ca.issue_server(&["localhost"], clock.now()).unwrap();
    let tokens: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let store = store.clone();
            async move {
                let ws: WorkspaceId = workspace_name(i).parse().unwrap();
                let now = SystemClock.now();
                store
                    .commit(WorkspaceWrite::create(
                        WorkspaceRecord::new(ws.clone(), sample_workspace_spec(), now),
                        now,
                    ))
                    .await
                    .unwrap();
                let token =
                    issue_bootstrap_token(store.as_ref(), &ws, now, Duration::from_secs(3600))
                        .await
                        .unwrap();
                format!("{ws} {}\n", token.expose())
            }
        })
        .buffered(32)
        .collect()
        .await;
    std::fs::write(dir.join("tokens"), tokens.concat()).unwrap();
    let gateway = AgentGateway::new(
        store.clone(),
        clock.clone(),
        Arc::new(Ignore),
        Default::default(),
    );
    // The default bound on handshakes computed at once and on unauthenticated
    // connections in all (a fleet connecting at once waits in the listen
    // backlog, as in production); bootstrap exchanges bounded above the
    // generators' concurrency, and the whole fleet one source's share (it
    // connects from loopback): the bench measures throughput, not refusals.
    let defaults = AgentServerConfig::default();
    let handshakes = defaults.max_handshakes;
    let unauthenticated = defaults.max_unauthenticated;
    let server = AgentServer::new(
        gateway,
        ca,
        clock,
        &server_cert,
        defaults
            .with_admission(handshakes, 1024)
            .with_unauthenticated_caps(unauthenticated, unauthenticated),
    )
    .unwrap();
    let mut addrs = Vec::new();
    for host in hosts {
        let listener = tokio::net::TcpListener::bind((host.as_str(), 0))
            .await
            .unwrap();
        addrs.push(listener.local_addr().unwrap().to_string());
        let serving = server.clone();
        tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    }
    say(format!("READY {}", addrs.join(",")));
    let mut orders = orders();
    while let Ok(Some(line)) = orders.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["SEND", ws, id] => {
                let ws: WorkspaceId = ws.parse().unwrap();
                let current = store.get_workspace(&ws).await.unwrap();
                store
                    .commit(
                        WorkspaceWrite::update(current.value, current.revision, SystemClock.now())
                            .command(NewCommand {
                                id: CommandId::new(*id).unwrap(),
                                kind: CommandKind::new("health").unwrap(),
                                payload: serde_json::json!({}),
                            }),
                    )
                    .await
                    .unwrap();
                let queued = now_ns();
                server.notify(&ws).await.unwrap();
                say(format!("SENT {ws} {queued}"));
            }
            ["STATS"] => {
                let stats = server.stats();
                let sqlite = store.stats();
                say(format!(
                    "STATS {} {} {} {} {}",
                    stats.handshakes,
                    stats.open_connections,
                    sqlite.transactions,
                    sqlite.writes,
                    sqlite.reads
                ));
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Role: the bare baseline.

/// `--role bare DIR HOSTS`: on each host, a raw bootstrap port (TLS, then a
/// length-prefixed CSR signed and answered — the raw limit of a bootstrap) and
/// a bare hyper + rustls long-poll port (the same mutual TLS as the endpoint;
/// a connection's first request is answered at once, later ones are held).
async fn role_bare(dir: PathBuf, hosts: Vec<String>) {
    let ca = Arc::new(open_ca(&dir));
    let server_cert = ca.issue_server(&["localhost"], SystemClock.now()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = pem_certs(&server_cert.certificate_pem);
    let key = pem_key(&server_cert.key_pem);
    // Without session tickets, like the endpoint: no work beyond the handshake.
    let mut raw_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .unwrap();
    raw_tls.send_tls13_tickets = 0;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca.certificate_pem())),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut lp_tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    lp_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    lp_tls.send_tls13_tickets = 0;
    let raw_acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(raw_tls));
    let lp_acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(lp_tls));
    let serial = Arc::new(AtomicUsize::new(0));
    let (mut raw_addrs, mut lp_addrs) = (Vec::new(), Vec::new());
    for host in hosts {
        let raw = tokio::net::TcpListener::bind((host.as_str(), 0))
            .await
            .unwrap();
        raw_addrs.push(raw.local_addr().unwrap().to_string());
        let (acceptor, ca, serial) = (raw_acceptor.clone(), ca.clone(), serial.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = raw.accept().await else {
                    continue;
                };
                tcp.set_nodelay(true).unwrap();
                let (acceptor, ca, serial) = (acceptor.clone(), ca.clone(), serial.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let len = tls.read_u32().await.unwrap() as usize;
                    let mut csr = vec![0; len];
                    tls.read_exact(&mut csr).await.unwrap();
                    let ws: WorkspaceId = "raw".parse().unwrap();
                    let n = serial.fetch_add(1, Ordering::Relaxed) + 1;
                    let serial: CertSerial = format!("{n:032x}").parse().unwrap();
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
        let lp = tokio::net::TcpListener::bind((host.as_str(), 0))
            .await
            .unwrap();
        lp_addrs.push(lp.local_addr().unwrap().to_string());
        let acceptor = lp_acceptor.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = lp.accept().await else {
                    continue;
                };
                tcp.set_nodelay(true).unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let first = Arc::new(AtomicBool::new(true));
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let first = first.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let _ = req.into_body().collect().await;
                                if !first.swap(false, Ordering::Relaxed) {
                                    tokio::time::sleep(Duration::from_secs(HOLD_SECS.into())).await;
                                }
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(hyper::body::Bytes::from_static(
                                        b"{\"version\":1,\"commands\":[]}",
                                    )),
                                ))
                            }
                        },
                    );
                    // The same timer, idle timeout and head buffer as the
                    // agent server's authenticated connections.
                    let defaults = AgentServerConfig::default();
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(defaults.authenticated_idle_timeout)
                        .max_buf_size(8 * 1024)
                        .max_headers(32)
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
    }
    say(format!(
        "READY {} {}",
        raw_addrs.join(","),
        lp_addrs.join(",")
    ));
    let mut orders = orders();
    while let Ok(Some(_)) = orders.next_line().await {}
}

fn pem_certs(pem: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .unwrap()
}

fn pem_key(pem: &str) -> rustls_pki_types::PrivateKeyDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(ca_pem) {
        roots.add(cert).unwrap();
    }
    roots
}

// ---------------------------------------------------------------------------
// Role: load generators.

/// Says `READY`, then waits for `GO` from the orchestrating process.
async fn ready_and_go(orders: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>) {
    say("READY");
    wait_for(orders, "GO").await;
}

/// Waits for the order `order`; exits when the orchestrating process is gone.
async fn wait_for(
    orders: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
    order: &str,
) {
    while let Ok(Some(line)) = orders.next_line().await {
        if line.trim() == order {
            return;
        }
    }
    std::process::exit(0);
}

/// Counts agents that had their first response; says `POLLING n` at the last.
struct FirstResponses {
    seen: AtomicUsize,
    of: usize,
}

impl FirstResponses {
    fn one(&self) {
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.of {
            say(format!("POLLING {}", self.of));
        }
    }
}

/// `--role agents DIR FROM TO ADDR`: agents `FROM..TO` of the fleet, each an
/// `AgentClient` (the real protocol client): bootstrap with the agent's token,
/// a first poll answered at once, then long-polls; a command is reported
/// (`GOT <workspace> <command> <ns>`), answered, and reported finished.
async fn role_agents(dir: PathBuf, from: usize, to: usize, addr: SocketAddr) {
    let ca_pem = std::fs::read_to_string(ca_dir(&dir).join("ca.pem")).unwrap();
    let tokens: Vec<(WorkspaceId, String)> = std::fs::read_to_string(dir.join("tokens"))
        .unwrap()
        .lines()
        .skip(from)
        .take(to - from)
        .map(|line| {
            let (ws, token) = line.split_once(' ').unwrap();
            (ws.parse().unwrap(), token.to_owned())
        })
        .collect();
    let mut orders = orders();
    ready_and_go(&mut orders).await;
    let started = now_ns();
    let clients: Vec<(WorkspaceId, AgentClient)> = futures::stream::iter(tokens)
        .map(|(ws, token)| {
            let ca_pem = &ca_pem;
            async move {
                let client = AgentClient::new(addr, "localhost", ca_pem).unwrap();
                client.bootstrap(&ws, &token, "0.1.0").await.unwrap();
                (ws, client)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    say(format!(
        "BOOTSTRAPPED {} {started} {}",
        clients.len(),
        now_ns()
    ));
    // No poll before every generator has bootstrapped all its agents: the
    // bootstrap rate is of bootstraps alone.
    wait_for(&mut orders, "POLL").await;
    let first = Arc::new(FirstResponses {
        seen: AtomicUsize::new(0),
        of: clients.len(),
    });
    for (ws, client) in clients {
        let first = first.clone();
        tokio::spawn(async move {
            while client.poll(Vec::new(), 0).await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            first.one();
            let mut finished = Vec::new();
            loop {
                match client.poll(std::mem::take(&mut finished), HOLD_SECS).await {
                    Ok(poll) => {
                        for command in poll.commands {
                            say(format!("GOT {ws} {} {}", command.id, now_ns()));
                            let result = CommandResult::new(
                                command.id.clone(),
                                CommandOutcome::Succeeded,
                                serde_json::Value::Null,
                            )
                            .unwrap();
                            client.post_result(result).await.unwrap();
                            finished.push(command.id);
                        }
                    }
                    Err(e) => {
                        eprintln!("agent {ws}: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }
    while let Ok(Some(_)) = orders.next_line().await {}
}

/// The loopback address of hostile source `i` (127.0.1.1 on): another host,
/// as far as the server can tell.
fn hostile_source(i: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8).into()
}

/// `--role hostile DIR ADDR IDLE SLOW SOURCES`: an intruder's load on `ADDR`,
/// spread over `SOURCES` loopback addresses: `IDLE` connections that never
/// send a ClientHello, and `SLOW` that complete TLS (no client certificate)
/// and then send a request head one byte every 10 s; each reconnects as soon
/// as the server closes it. Says `HOSTILE <open>` once every one has
/// connected; orders: `STATS` (answer `HOSTILE_STATS <connects>`).
async fn role_hostile(dir: PathBuf, addr: SocketAddr, idle: usize, slow: usize, sources: usize) {
    let ca_pem = std::fs::read_to_string(ca_dir(&dir).join("ca.pem")).unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&ca_pem))
        .with_no_client_auth(),
    );
    let connected = Arc::new(AtomicUsize::new(0));
    let connects = Arc::new(AtomicUsize::new(0));
    for i in 0..idle + slow {
        let source = SocketAddr::new(hostile_source(i % sources.max(1)), 0);
        let (config, connected, connects) = (config.clone(), connected.clone(), connects.clone());
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(source).unwrap();
                let Ok(mut tcp) = socket.connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                connects.fetch_add(1, Ordering::Relaxed);
                if std::mem::take(&mut first) {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                if i < idle {
                    // Silent until the server closes it.
                    let mut buf = [0u8; 64];
                    while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                    continue;
                }
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let Ok(mut tls) = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                else {
                    continue;
                };
                for byte in b"POST /v1/bootstrap HTTP/1.1\r\nhost: localhost\r\n"
                    .iter()
                    .cycle()
                {
                    if tls.write_all(&[*byte]).await.is_err() || tls.flush().await.is_err() {
                        break;
                    }
                    // A closed connection shows as the next write's error;
                    // the read notices it sooner.
                    let mut buf = [0u8; 64];
                    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
                        Err(_) => {}
                        Ok(_) => break,
                    }
                }
            }
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) < idle + slow && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(format!("HOSTILE {}", connected.load(Ordering::Relaxed)));
    let mut orders = orders();
    while let Ok(Some(line)) = orders.next_line().await {
        if line.trim() == "STATS" {
            say(format!(
                "HOSTILE_STATS {}",
                connects.load(Ordering::Relaxed)
            ));
        }
    }
}

/// `--role bare-agents DIR COUNT RAW_ADDR LP_ADDR`: `COUNT` raw clients: a key
/// and CSR, the raw bootstrap, then a mutual-TLS HTTP/1.1 connection to the bare
/// long-poll port with one request answered and the next held.
async fn role_bare_agents(dir: PathBuf, count: usize, raw: SocketAddr, lp: SocketAddr) {
    let ca_pem = std::fs::read_to_string(ca_dir(&dir).join("ca.pem")).unwrap();
    let roots = Arc::new(roots(&ca_pem));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // One configuration for all, without session resumption: every bootstrap
    // is an agent's first contact, a full handshake (as each `AgentClient`
    // has its own configuration, it never resumes a bootstrap either).
    let mut raw_config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    raw_config.resumption = rustls::client::Resumption::disabled();
    let raw_config = Arc::new(raw_config);
    let mut orders = orders();
    ready_and_go(&mut orders).await;
    let started = now_ns();
    let identities: Vec<(String, String)> = futures::stream::iter(0..count)
        .map(|_| {
            let connector = tokio_rustls::TlsConnector::from(raw_config.clone());
            async move {
                let (key, csr) = new_key_and_csr().unwrap();
                let tcp = tokio::net::TcpStream::connect(raw).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let mut tls = connector.connect(name, tcp).await.unwrap();
                tls.write_u32(csr.len() as u32).await.unwrap();
                tls.write_all(csr.as_bytes()).await.unwrap();
                let len = tls.read_u32().await.unwrap() as usize;
                let mut cert = vec![0; len];
                tls.read_exact(&mut cert).await.unwrap();
                (String::from_utf8(cert).unwrap(), key.serialize_pem())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    say(format!(
        "BOOTSTRAPPED {} {started} {}",
        identities.len(),
        now_ns()
    ));
    wait_for(&mut orders, "POLL").await;
    let first = Arc::new(FirstResponses {
        seen: AtomicUsize::new(0),
        of: identities.len(),
    });
    let body = v1::encode(&PollRequest::new(Vec::new(), HOLD_SECS).unwrap());
    for (cert, key) in identities {
        let (first, roots, provider, body) =
            (first.clone(), roots.clone(), provider.clone(), body.clone());
        tokio::spawn(async move {
            // The client's TLS settings per identity, as `AgentClient` has them.
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(pem_certs(&cert), pem_key(&key))
                .unwrap();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let tcp = tokio::net::TcpStream::connect(lp).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let mut answered = false;
            loop {
                let request = hyper::Request::post("/v1/poll")
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(hyper::body::Bytes::from(
                        body.clone(),
                    )))
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                use http_body_util::BodyExt;
                let _ = response.into_body().collect().await.unwrap();
                if !answered {
                    answered = true;
                    first.one();
                }
            }
        });
    }
    while let Ok(Some(_)) = orders.next_line().await {}
}

// ---------------------------------------------------------------------------
// The orchestrating process.

/// A child process of this bench, in a role, with its lines forwarded to `tx`.
struct Role {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Role {
    fn start(index: usize, args: &[String], tx: &mpsc::Sender<(usize, String)>) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--role")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send((index, line)).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    fn order(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Resident memory (KiB).
    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// A figure of `/proc/<pid>/status`, in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// CPU time used so far (user + system), in seconds.
    fn cpu_secs(&self) -> f64 {
        proc::cpu_seconds(&self.child.id().to_string())
    }

    /// Open file descriptors.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines from the roles, with a deadline per wait; lines not yet asked for
/// are kept for later.
struct Inbox {
    rx: mpsc::Receiver<(usize, String)>,
    kept: std::cell::RefCell<std::collections::VecDeque<(usize, Vec<String>)>>,
}

impl Inbox {
    /// The next line from any role whose first word is one of `prefixes`.
    fn next_of(&self, prefixes: &[&str], within: Duration) -> Option<(usize, Vec<String>)> {
        let wanted = |words: &Vec<String>| {
            words
                .first()
                .is_some_and(|w| prefixes.contains(&w.as_str()))
        };
        {
            let mut kept = self.kept.borrow_mut();
            if let Some(at) = kept.iter().position(|(_, words)| wanted(words)) {
                return kept.remove(at);
            }
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (from, line) = self.rx.recv_timeout(left).ok()?;
            let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            if wanted(&words) {
                return Some((from, words));
            }
            self.kept.borrow_mut().push_back((from, words));
        }
    }

    fn next(&self, prefix: &str, within: Duration) -> Option<(usize, Vec<String>)> {
        self.next_of(&[prefix], within)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `AgentServer` and `AgentClient`.
    Endpoint,
    /// The bare server and raw clients.
    Bare,
}

#[derive(Debug, Default)]
struct Fleet {
    agents: usize,
    bootstrapped: usize,
    bootstraps_per_sec: f64,
    /// CPU time per bootstrap (µs): the server's, the generators'.
    cpu_us_per_bootstrap: (f64, f64),
    polling: usize,
    rss_before_kib: u64,
    /// Agents of the warm-up wave, polling.
    warm: usize,
    /// After the warm-up wave.
    rss_warm_kib: u64,
    /// After every agent bootstrapped, before the second wave's polls.
    rss_bootstrapped_kib: u64,
    rss_after_kib: u64,
    fds: usize,
    open_connections: Option<u64>,
    /// SQLite write calls (exchanges, first polls, deliveries) per
    /// transaction, over the whole fleet.
    writes_per_transaction: f64,
    /// SQLite read calls (the endpoint only).
    sqlite_reads: Option<u64>,
    latencies_ms: Vec<f64>,
    /// Under a hostile load: the connections it holds open at the server
    /// (its fds), the server's RSS growth over them (KiB), and its connects.
    hostile: Option<HostileLoad>,
}

#[derive(Debug, Default)]
struct HostileLoad {
    held: usize,
    kib: u64,
    connects: usize,
    /// The intruder's own CPU time over its run (s) and the run's length (s):
    /// on this machine it shares the server's two cores.
    cpu_secs: f64,
    secs: f64,
}

/// An intruder's load: idle connections, slow-header ones, source addresses.
#[derive(Debug, Clone, Copy)]
struct Hostility {
    idle: usize,
    slow: usize,
    sources: usize,
}

impl Fleet {
    /// Growth since before the first agent, over every agent polling.
    fn kib_per_agent(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_before_kib)) as f64 / self.polling.max(1) as f64
    }

    /// Growth from the warm-up wave's end, over the second wave's agents.
    fn marginal_kib_per_agent(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_warm_kib)) as f64
            / self.polling.saturating_sub(self.warm).max(1) as f64
    }
}

/// Agents in the warm-up wave (`COGRION_BENCH_WARMUP`, default 1,000).
fn warmup() -> usize {
    env_usize("COGRION_BENCH_WARMUP").unwrap_or(1000)
}

/// Runs a fleet of `agents` of `kind` over `generators` processes; measures
/// latency in `rounds` rounds (endpoint only).
fn fleet(kind: Kind, agents: usize, generators: usize, rounds: usize) -> Fleet {
    fleet_under(kind, agents, generators, rounds, None)
}

/// [`fleet`], with an intruder's load on the server from before the first
/// agent to the end.
fn fleet_under(
    kind: Kind,
    agents: usize,
    generators: usize,
    rounds: usize,
    hostility: Option<Hostility>,
) -> Fleet {
    let dir = std::env::temp_dir().join(format!(
        "cogrion-agents-bench-{}-{kind:?}-{agents}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    open_ca(&dir); // created once, before any role opens it
    let (tx, rx) = mpsc::channel();
    let inbox = Inbox {
        rx,
        kept: Default::default(),
    };
    let d = dir.to_string_lossy().into_owned();
    let hosts = hosts(generators).join(",");
    let mut server = match kind {
        Kind::Endpoint => Role::start(
            0,
            &["endpoint".into(), d.clone(), agents.to_string(), hosts],
            &tx,
        ),
        Kind::Bare => Role::start(0, &["bare".into(), d.clone(), hosts], &tx),
    };
    let (_, ready) = inbox
        .next("READY", Duration::from_secs(600))
        .expect("the server started");
    let addrs: Vec<Vec<String>> = ready[1..]
        .iter()
        .map(|list| list.split(',').map(str::to_owned).collect())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut hostile_role = None;
    let mut hostile = None;
    let hostile_started = std::time::Instant::now();
    if let Some(h) = hostility {
        let (rss, fds) = (server.rss_kib(), server.fds());
        hostile_role = Some(Role::start(
            1000,
            &[
                "hostile".into(),
                d.clone(),
                addrs[0][0].clone(),
                h.idle.to_string(),
                h.slow.to_string(),
                h.sources.to_string(),
            ],
            &tx,
        ));
        inbox
            .next("HOSTILE", Duration::from_secs(180))
            .expect("the hostile load started");
        std::thread::sleep(Duration::from_secs(2));
        let held = server.fds().saturating_sub(fds);
        hostile = Some(HostileLoad {
            held,
            kib: server.rss_kib().saturating_sub(rss),
            connects: 0,
            cpu_secs: 0.0,
            secs: 0.0,
        });
    }
    let mut report = Fleet {
        agents,
        rss_before_kib: server.rss_kib(),
        hostile,
        ..Fleet::default()
    };
    // Two waves: a warm-up wave pays the server's fixed costs (caches, pools,
    // allocator arenas); the second wave's growth is the marginal memory per
    // agent. The bootstrap rate is the second wave's, over every generator.
    let warm = warmup().min(agents / 2);
    let mut roles = Vec::new();
    let wave = |from: usize, to: usize, generators: usize, roles: &mut Vec<Role>| {
        let first = roles.len();
        let per = (to - from).div_ceil(generators);
        for g in 0..generators {
            let (a, b) = ((from + g * per).min(to), (from + (g + 1) * per).min(to));
            let args = match kind {
                Kind::Endpoint => vec![
                    "agents".into(),
                    d.clone(),
                    a.to_string(),
                    b.to_string(),
                    addrs[0][g % addrs[0].len()].clone(),
                ],
                Kind::Bare => vec![
                    "bare-agents".into(),
                    d.clone(),
                    (b - a).to_string(),
                    addrs[0][g % addrs[0].len()].clone(),
                    addrs[1][g % addrs[1].len()].clone(),
                ],
            };
            roles.push(Role::start(first + g + 1, &args, &tx));
        }
        for _ in 0..generators {
            inbox
                .next("READY", Duration::from_secs(120))
                .expect("a generator started");
        }
        let cpu_before = (
            server.cpu_secs(),
            roles[first..].iter().map(Role::cpu_secs).sum::<f64>(),
        );
        for role in &mut roles[first..] {
            role.order("GO");
        }
        let (mut bootstrapped, mut first_start, mut last_end) = (0usize, u128::MAX, 0u128);
        for _ in 0..generators {
            let (_, words) = inbox
                .next("BOOTSTRAPPED", Duration::from_secs(600))
                .expect("every generator bootstrapped its agents");
            bootstrapped += words[1].parse::<usize>().unwrap();
            first_start = first_start.min(words[2].parse().unwrap());
            last_end = last_end.max(words[3].parse().unwrap());
        }
        let cpu_after = (
            server.cpu_secs(),
            roles[first..].iter().map(Role::cpu_secs).sum::<f64>(),
        );
        let rate = bootstrapped as f64 / ((last_end - first_start) as f64 / 1e9);
        let cpu_us = (
            (cpu_after.0 - cpu_before.0) * 1e6 / bootstrapped as f64,
            (cpu_after.1 - cpu_before.1) * 1e6 / bootstrapped as f64,
        );
        let rss_bootstrapped = server.rss_kib();
        for role in &mut roles[first..] {
            role.order("POLL");
        }
        let mut polling = 0;
        for _ in 0..generators {
            match inbox.next("POLLING", Duration::from_secs(180)) {
                Some((_, words)) => polling += words[1].parse::<usize>().unwrap(),
                None => break,
            }
        }
        // Every held poll registered, the handshakes' garbage settled.
        std::thread::sleep(Duration::from_secs(3));
        (
            bootstrapped,
            rate,
            cpu_us,
            rss_bootstrapped,
            polling,
            server.rss_kib(),
        )
    };
    let (_, _, _, _, warm_polling, rss_warm) = wave(0, warm, 1, &mut roles);
    let (bootstrapped, rate, cpu_us, rss_bootstrapped, polling, rss_after) =
        wave(warm, agents, generators, &mut roles);
    report.warm = warm_polling;
    report.rss_warm_kib = rss_warm;
    report.bootstrapped = warm_polling + bootstrapped;
    report.bootstraps_per_sec = rate;
    report.cpu_us_per_bootstrap = cpu_us;
    report.rss_bootstrapped_kib = rss_bootstrapped;
    report.polling = warm_polling + polling;
    report.rss_after_kib = rss_after;
    report.fds = server.fds();
    if kind == Kind::Endpoint {
        server.order("STATS");
        if let Some((_, words)) = inbox.next("STATS", Duration::from_secs(30)) {
            report.open_connections = words[2].parse().ok();
            let (transactions, writes): (f64, f64) = (
                words[3].parse().unwrap_or(0.0),
                words[4].parse().unwrap_or(0.0),
            );
            report.writes_per_transaction = writes / transactions.max(1.0);
            report.sqlite_reads = words[5].parse().ok();
        }
        let mut rng = rand::rng();
        for round in 0..rounds {
            let target = rand::Rng::random_range(&mut rng, 0..agents);
            let ws = workspace_name(target);
            let id = format!("l{round}");
            server.order(&format!("SEND {ws} {id}"));
            let (mut queued, mut got) = (None, None);
            while queued.is_none() || got.is_none() {
                let Some((_, words)) = inbox.next_of(&["SENT", "GOT"], Duration::from_secs(60))
                else {
                    panic!("command {id} for {ws} was not delivered")
                };
                match words.first().map(String::as_str) {
                    Some("SENT") if words[1] == ws => {
                        queued = Some(words[2].parse::<u128>().unwrap())
                    }
                    Some("GOT") if words[1] == ws && words[2] == id => {
                        got = Some(words[3].parse::<u128>().unwrap())
                    }
                    _ => {}
                }
            }
            let (queued, got) = (queued.unwrap(), got.unwrap());
            report
                .latencies_ms
                .push(got.saturating_sub(queued) as f64 / 1e6);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(role) = &mut hostile_role {
        role.order("STATS");
        if let (Some((_, words)), Some(h)) = (
            inbox.next("HOSTILE_STATS", Duration::from_secs(30)),
            report.hostile.as_mut(),
        ) {
            h.connects = words[1].parse().unwrap_or(0);
            h.cpu_secs = role.cpu_secs();
            h.secs = hostile_started.elapsed().as_secs_f64();
        }
    }
    drop(hostile_role);
    drop(roles);
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
    report
}

/// `COGRION_BENCH_HOSTILE=1`: the endpoint's legitimate work with and
/// without an intruder's load (5,000 idle and 500 slow-header connections
/// from 64 addresses, reconnecting as soon as closed), alternately, in
/// `COGRION_BENCH_ROUNDS` rounds of `COGRION_BENCH_HOSTILE_AGENTS` agents
/// (default 8,000: the second wave's bootstraps take a few seconds, longer
/// than the intruder's reconnect cycle).
fn hostile_runs(generators: usize) {
    let agents = env_usize("COGRION_BENCH_HOSTILE_AGENTS").unwrap_or(8000);
    let rounds = env_usize("COGRION_BENCH_ROUNDS").unwrap_or(3).max(1);
    let hostility = Hostility {
        idle: env_usize("COGRION_BENCH_HOSTILE_IDLE").unwrap_or(5000),
        slow: env_usize("COGRION_BENCH_HOSTILE_SLOW").unwrap_or(500),
        sources: env_usize("COGRION_BENCH_HOSTILE_SOURCES").unwrap_or(64),
    };
    let (mut boot, mut p99s, mut cpus, mut kib) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let clean = fleet(Kind::Endpoint, agents, generators, LATENCY_ROUNDS);
        let attacked = fleet_under(
            Kind::Endpoint,
            agents,
            generators,
            LATENCY_ROUNDS,
            Some(hostility),
        );
        let p99 = |f: &Fleet| {
            let mut l = f.latencies_ms.clone();
            l.sort_by(f64::total_cmp);
            percentile(&l, 0.99)
        };
        let h = attacked.hostile.as_ref().expect("the hostile load ran");
        let per_connection = h.kib as f64 / h.held.max(1) as f64;
        boot.push(attacked.bootstraps_per_sec / clean.bootstraps_per_sec);
        p99s.push(p99(&attacked) / p99(&clean));
        cpus.push((
            clean.cpu_us_per_bootstrap.0,
            attacked.cpu_us_per_bootstrap.0,
        ));
        kib.push(per_connection);
        println!(
            "REPORT hostile round {round}: bootstraps/s {:.0} under the load vs {:.0} without -> {:.3}; delivery p99 {:.2} ms vs {:.2} ms -> {:.2}x; \
             server CPU per bootstrap {:.0} µs vs {:.0} µs; the load: {} idle + {} slow-header connections from {} addresses, {} held open at the server \
             ({:.1} KiB each), {} connects in all, the intruder's process using {:.0}% of a core beside the server; {} of {} agents polling under it",
            attacked.bootstraps_per_sec,
            clean.bootstraps_per_sec,
            attacked.bootstraps_per_sec / clean.bootstraps_per_sec,
            p99(&attacked),
            p99(&clean),
            p99(&attacked) / p99(&clean),
            attacked.cpu_us_per_bootstrap.0,
            clean.cpu_us_per_bootstrap.0,
            hostility.idle,
            hostility.slow,
            hostility.sources,
            h.held,
            per_connection,
            h.connects,
            100.0 * h.cpu_secs / h.secs.max(1e-9),
            attacked.polling,
            attacked.agents,
        );
    }
    println!(
        "REPORT hostile: median over {rounds} rounds: bootstraps/s ratio {:.3} {boot:.3?} (target >= 0.8); delivery p99 ratio {:.2} {p99s:.2?} (target <= 2); \
         server CPU per bootstrap without/with {cpus:.0?} µs; KiB per hostile connection {kib:.1?}",
        median(&boot),
        median(&p99s),
    );
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// This process's soft limit on open files.
fn file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn role(args: &[String]) {
    let arg = |i: usize| args[i].clone();
    let list = |i: usize| -> Vec<String> { args[i].split(',').map(str::to_owned).collect() };
    let server_runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(
                env_usize("COGRION_BENCH_SERVER_THREADS")
                    .unwrap_or(2)
                    .max(1),
            )
            .enable_all()
            .build()
            .unwrap()
    };
    let generator_runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    match args[0].as_str() {
        "endpoint" => server_runtime().block_on(role_endpoint(
            arg(1).into(),
            arg(2).parse().unwrap(),
            list(3),
        )),
        "bare" => server_runtime().block_on(role_bare(arg(1).into(), list(2))),
        "agents" => generator_runtime().block_on(role_agents(
            arg(1).into(),
            arg(2).parse().unwrap(),
            arg(3).parse().unwrap(),
            arg(4).parse().unwrap(),
        )),
        "hostile" => generator_runtime().block_on(role_hostile(
            arg(1).into(),
            arg(2).parse().unwrap(),
            arg(3).parse().unwrap(),
            arg(4).parse().unwrap(),
            arg(5).parse().unwrap(),
        )),
        "bare-agents" => generator_runtime().block_on(role_bare_agents(
            arg(1).into(),
            arg(2).parse().unwrap(),
            arg(3).parse().unwrap(),
            arg(4).parse().unwrap(),
        )),
        other => panic!("unknown role {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--role") {
        role(&args[at + 1..]);
        return;
    }
    // `cargo test --benches` only builds and starts this target; measuring is for
    // `cargo bench`.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let agents = env_usize("COGRION_BENCH_AGENTS").unwrap_or(10_000);
    let generators = env_usize("COGRION_BENCH_GENERATORS").unwrap_or(4).max(1);
    if std::env::var("COGRION_BENCH_HOSTILE").is_ok_and(|v| v == "1") {
        hostile_runs(generators);
        return;
    }
    let limit = file_limit();
    let hold = env_usize("COGRION_BENCH_HOLD").unwrap_or(limit.saturating_sub(100));

    let rounds = env_usize("COGRION_BENCH_ROUNDS").unwrap_or(3).max(1);
    let mut boot_ratios = Vec::new();
    let mut memory_ratios = Vec::new();
    let mut latencies = Vec::new();
    let mut polling = 0;
    for round in 1..=rounds {
        // Alternating, on the same machine in the same run.
        let endpoint = fleet(Kind::Endpoint, agents, generators, LATENCY_ROUNDS);
        let bare = fleet(Kind::Bare, agents, generators, 0);
        let boot = endpoint.bootstraps_per_sec / bare.bootstraps_per_sec;
        let memory = endpoint.marginal_kib_per_agent() / bare.marginal_kib_per_agent();
        boot_ratios.push(boot);
        memory_ratios.push(memory);
        latencies.extend_from_slice(&endpoint.latencies_ms);
        polling = polling.max(endpoint.polling);
        println!(
            "REPORT agents round {round} bootstrap: endpoint {:.0} exchanges/s vs raw TLS handshake + CSR signing {:.0}/s \
             (the second wave: {} agents over {generators} generator processes, {CONCURRENCY} at a time each; SQLite default mode) -> ratio {boot:.3}; \
             CPU per exchange: endpoint server {:.0} µs + generators {:.0} µs, raw server {:.0} µs + generators {:.0} µs; \
             {:.1} write calls per SQLite transaction",
            endpoint.bootstraps_per_sec,
            bare.bootstraps_per_sec,
            endpoint.agents - endpoint.warm,
            endpoint.cpu_us_per_bootstrap.0,
            endpoint.cpu_us_per_bootstrap.1,
            bare.cpu_us_per_bootstrap.0,
            bare.cpu_us_per_bootstrap.1,
            endpoint.writes_per_transaction,
        );
        println!(
            "REPORT agents round {round} memory: per agent of the second wave (after a warm-up wave of {}): endpoint {:.1} KiB vs bare hyper + rustls {:.1} KiB -> ratio {memory:.3}",
            endpoint.warm,
            endpoint.marginal_kib_per_agent(),
            bare.marginal_kib_per_agent(),
        );
        for (name, fleet) in [("endpoint", &endpoint), ("bare", &bare)] {
            println!(
                "REPORT agents round {round} memory {name}: {} of {} polling; RSS {} KiB before, {} after the warm-up wave, {} bootstrapped, {} polling; \
                 {:.1} KiB per agent over everything; {} fds, {:?} open connections, {:?} SQLite reads",
                fleet.polling,
                fleet.agents,
                fleet.rss_before_kib,
                fleet.rss_warm_kib,
                fleet.rss_bootstrapped_kib,
                fleet.rss_after_kib,
                fleet.kib_per_agent(),
                fleet.fds,
                fleet.open_connections,
                fleet.sqlite_reads,
            );
        }
    }
    println!(
        "REPORT agents bootstrap: median ratio {:.3} over {rounds} rounds {boot_ratios:.3?}",
        median(&boot_ratios)
    );
    println!(
        "REPORT agents memory: median ratio {:.3} over {rounds} rounds {memory_ratios:.3?}",
        median(&memory_ratios)
    );
    latencies.sort_by(f64::total_cmp);
    if !latencies.is_empty() {
        println!(
            "REPORT agents delivery: one command to one agent among {polling} holding long-polls: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} deliveries)",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1],
            latencies.len()
        );
    }
    if hold > 0 {
        let held = fleet(Kind::Endpoint, hold, generators, 0);
        println!(
            "REPORT agents per process: {} of {hold} agents bootstrapped and polling on one control-plane process \
             ({} fds open, {:?} open connections; file limit {limit}) -> {:.3} of the limit; bootstrap {:.0}/s, {:.1} KiB per agent of the second wave",
            held.polling,
            held.fds,
            held.open_connections,
            held.polling as f64 / limit as f64,
            held.bootstraps_per_sec,
            held.marginal_kib_per_agent(),
        );
    }
}
