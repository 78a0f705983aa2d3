//! The control plane's side: TLS termination, identity from the client
//! certificate, the three endpoints, refusals.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cogrion_core::ca::{CaError, CertificateAuthority, ServerCertificate};
use cogrion_core::proto::v1::{
    self, BootstrapRequest, BootstrapResponse, DecodeError, ErrorCode, ErrorResponse, Message,
    PollRequest, PollResponse, PollSettings, RenewalRequest, RenewalResponse, RenewalSettings,
    ResultAck, ResultRequest,
};
use cogrion_core::proto::{AgentIdentity, PROTOCOL_VERSION};
use cogrion_core::{
    Clock, Error, Resource, Result, Timestamp, TokenRefusal, WorkspaceId,
    agent::{AgentGateway, AgentPresence, AgentTransport, BootstrapToken},
    store::CertSerial,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use super::admission::{
    LogLimit, Metered, Over, Unauthenticated, UnauthenticatedGuard, WindowCounts,
};

/// `limit` less up to a quarter, at random: a deadline that many connections
/// opened at once do not all reach at once.
fn jittered(limit: Duration) -> Duration {
    limit.mul_f64(1.0 - rand::random::<f64>() / 4.0)
}

/// The largest body read (and dropped) to refuse it as too large.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Sources whose refused bootstraps are counted at once, at most.
const MAX_TRACKED_SOURCES: usize = 4096;
/// Certificates whose renewals are counted at once, at most (only
/// authenticated agents add to it).
const MAX_TRACKED_CERTIFICATES: usize = 65_536;

/// hyper's smallest read buffer: a request's head must fit in it.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Headers a request may carry (the protocol's need four or five).
const MAX_HEADERS: usize = 32;

/// The server's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentServerConfig {
    /// How long a new connection may take to send its TLS ClientHello
    /// (default 5 s, less up to a quarter at random per connection, so that
    /// connections opened together are not closed together). Until it has,
    /// it holds no handshake slot and no TLS state.
    pub client_hello_timeout: Duration,
    /// How long a TLS handshake may take in all, from the connection's accept
    /// (default 10 s).
    pub handshake_timeout: Duration,
    /// A connection without a client certificate (a bootstrap's): how long it
    /// may stay idle and then take to send a request's headers (default 10 s,
    /// less up to a quarter at random per connection).
    /// hyper's header-read timeout, which runs from when the connection waits
    /// for a request: it bounds the idle time and the headers together.
    pub unauthenticated_idle_timeout: Duration,
    /// The same for an agent's connection, authenticated by its certificate
    /// (default 120 s: a long-polling agent asks again at once; one that does
    /// not reconnects).
    pub authenticated_idle_timeout: Duration,
    /// How long a request's body may take to arrive once its headers have
    /// (default 10 s); beyond it the request is refused (`408`).
    pub body_timeout: Duration,
    /// Connections not yet authenticated (in their handshake, or without a
    /// client certificate) from one source — an IPv4 address or an IPv6 /64
    /// (default 128); a new one beyond it closes the source's oldest, so one
    /// behind the same NAT as an attacker still gets in.
    /// Authenticated connections are not counted by address: agents behind
    /// one NAT are never capped by it.
    pub max_unauthenticated_per_source: usize,
    /// Connections not yet authenticated, in all (default: half the
    /// process's open-files limit, between 16 and 8,192); beyond it new
    /// connections wait in the listen backlog. Keep it above what the
    /// sources an attacker may hold can take (their count times
    /// `max_unauthenticated_per_source`), or bootstraps wait behind them.
    pub max_unauthenticated: usize,
    /// Renewals one certificate may ask for per [`renewal_limit_window`](Self::renewal_limit_window)
    /// (default 3: a renewal whose answer was lost is asked again); beyond it
    /// they are refused (`rate_limited`, with `Retry-After`) and the storm is
    /// logged once.
    pub renewals_per_certificate: u32,
    /// The window of that count (default 1 h).
    pub renewal_limit_window: Duration,
    /// Authenticated connections of one agent (workspace) at once (default 4);
    /// a new one beyond it closes the agent's oldest (a reconnecting agent's
    /// dead connections do not lock it out).
    pub max_connections_per_agent: usize,
    /// The longest the server holds a poll, whatever the agent asks (default 30 s).
    pub max_poll_wait: Duration,
    /// What agents are told at bootstrap about polling.
    pub poll: PollSettings,
    /// What agents are told at bootstrap about renewal.
    pub renewal: RenewalSettings,
    /// Refused bootstraps from one source (IPv4 address, IPv6 /64) per window
    /// before its further refusals are answered `rate_limited` (default 5). A
    /// token that verifies is never held back: the limiter slows down
    /// refusals only, in a table of at most 4,096 sources whose windows run.
    pub failed_bootstraps: u32,
    /// The window (default 60 s).
    pub failure_window: Duration,
    /// How long a refused bootstrap takes at least (default 50 ms): every
    /// token refusal is answered no sooner, so its timing does not tell a
    /// workspace that exists from one that does not.
    pub token_refusal_time: Duration,
    /// TLS handshakes the server computes at once (default 256): a connection
    /// takes a slot once its ClientHello has arrived and gives it back when
    /// the server's answer is written, so a client that is slow to speak or
    /// to answer holds none; the others wait for a slot within their
    /// handshake timeout.
    pub max_handshakes: usize,
    /// Bootstrap and renewal exchanges (CSR checks and signatures) in progress at
    /// once (default 64); beyond it they are refused with `overloaded` and a
    /// jittered `Retry-After`.
    pub max_exchanges: usize,
    /// The longest `Retry-After` given when overloaded, in seconds (default 10;
    /// each refusal picks 1 to this at random, so retries spread out).
    pub max_retry_after_secs: u32,
}

impl Default for AgentServerConfig {
    fn default() -> Self {
        Self {
            client_hello_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            unauthenticated_idle_timeout: Duration::from_secs(10),
            authenticated_idle_timeout: Duration::from_secs(120),
            body_timeout: Duration::from_secs(10),
            max_unauthenticated_per_source: 128,
            max_unauthenticated: super::admission::open_files_limit()
                .map_or(4096, |files| (files / 2).clamp(16, 8192) as usize),
            max_connections_per_agent: 4,
            renewals_per_certificate: 3,
            renewal_limit_window: Duration::from_secs(3600),
            max_poll_wait: Duration::from_secs(30),
            poll: PollSettings {
                wait_secs: 30,
                max_commands: 32,
            },
            renewal: RenewalSettings {
                renew_at_percent: 66,
            },
            failed_bootstraps: 5,
            failure_window: Duration::from_secs(60),
            token_refusal_time: Duration::from_millis(50),
            max_handshakes: 256,
            max_exchanges: 64,
            max_retry_after_secs: 10,
        }
    }
}

impl AgentServerConfig {
    /// With these admission bounds: handshakes and bootstrap/renewal exchanges
    /// in progress at once.
    pub fn with_admission(mut self, max_handshakes: usize, max_exchanges: usize) -> Self {
        self.max_handshakes = max_handshakes;
        self.max_exchanges = max_exchanges;
        self
    }

    /// With this handshake timeout.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// With these deadlines: the ClientHello's, and the idle (and header)
    /// time of connections without and with a client certificate.
    pub fn with_deadlines(
        mut self,
        client_hello: Duration,
        unauthenticated_idle: Duration,
        authenticated_idle: Duration,
    ) -> Self {
        self.client_hello_timeout = client_hello;
        self.unauthenticated_idle_timeout = unauthenticated_idle;
        self.authenticated_idle_timeout = authenticated_idle;
        self
    }

    /// With these caps on connections not yet authenticated: per source and
    /// in all.
    pub fn with_unauthenticated_caps(mut self, per_source: usize, total: usize) -> Self {
        self.max_unauthenticated_per_source = per_source;
        self.max_unauthenticated = total;
        self
    }
}

/// The agents' HTTPS endpoint; see the [module](super) documentation. It is the
/// engine's [`AgentTransport`]: clones share one server.
#[derive(Clone)]
pub struct AgentServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AgentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

struct Shared {
    gateway: AgentGateway,
    ca: Arc<CertificateAuthority>,
    clock: Arc<dyn Clock>,
    tls: tokio_rustls::TlsAcceptor,
    config: AgentServerConfig,
    /// What the server keeps per agent that has connected, by workspace.
    /// Revoking the agent removes it (and wakes its waiters).
    agents: Mutex<HashMap<WorkspaceId, Agent>>,
    /// Refused bootstraps by source.
    failures: WindowCounts<IpAddr>,
    /// Renewals asked by certificate.
    renewals: WindowCounts<CertSerial>,
    handshakes: Arc<Semaphore>,
    unauthenticated: Arc<Unauthenticated>,
    /// Refusals logged at most once a second each, with the count skipped.
    log_refused: LogLimit,
    log_connections: LogLimit,
    exchanges: Semaphore,
    /// TLS handshakes completed since start.
    handshakes_done: AtomicU64,
    /// Connections open past their handshake.
    open: AtomicU64,
}

/// A listener served by [`AgentServer::spawn`]: it stops accepting when the
/// handle is stopped or dropped (connections already open are served on).
#[derive(Debug)]
pub struct ServerHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting, and waits until the listener is closed.
    pub async fn stop(mut self) {
        self.stop.take();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // Dropping the sender ends `serve`'s shutdown wait.
        self.stop.take();
    }
}

/// What an [`AgentServer`] has done so far, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentServerStats {
    /// TLS handshakes completed since the server started.
    pub handshakes: u64,
    /// Connections open now (past their handshake).
    pub open_connections: u64,
    /// Sources (IPv4 addresses, IPv6 /64s) with unauthenticated connections
    /// open now: what the server keeps per source, no more.
    pub unauthenticated_sources: usize,
}

/// What the server keeps for one agent: small, as there is one per agent of
/// the fleet.
#[derive(Default)]
struct Agent {
    /// What its held polls and its connections wait on.
    notify: Arc<Notify>,
    /// Its last answered poll: when, and the identity it presented (the
    /// connection's own, shared).
    seen: Option<(Timestamp, Arc<Peer>)>,
    /// Its open connections, oldest first: each one's flag, set to close it.
    /// A connection that ended holds its flag no more (the count is 1).
    connections: VecDeque<Arc<AtomicBool>>,
}

/// Counts a connection as open while it lives (an agent's, in the
/// metrics, when it presented a certificate).
struct OpenGuard(Arc<Shared>, bool);

impl OpenGuard {
    fn new(shared: Arc<Shared>, agent: bool) -> Self {
        shared.open.fetch_add(1, Ordering::Relaxed);
        if agent {
            metrics::gauge!(cogrion_core::metrics::AGENT_CONNECTIONS).increment(1.0);
        }
        Self(shared, agent)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        if self.1 {
            metrics::gauge!(cogrion_core::metrics::AGENT_CONNECTIONS).decrement(1.0);
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection served until it ends or its agent's credentials are
    /// revoked. A plain future, the revocation wait inline: the task serving a
    /// connection holds the connection and little else.
    struct Serving<C> {
        connection: C,
        #[pin]
        revocation: Option<Revocation>,
        addr: SocketAddr,
        open: OpenGuard,
    }
}

pin_project_lite::pin_project! {
    /// The wait for an agent's revocation: on the agent's `Notify` in the
    /// server's map, which a revocation removes (and wakes). Commands for the
    /// agent wake it too; it then looks again.
    struct Revocation {
        #[pin]
        notified: tokio::sync::futures::OwnedNotified,
        notify: Arc<Notify>,
        // The connection's agent (shared with its requests).
        peer: Arc<Peer>,
        // Set when a newer connection of the agent took its place.
        evicted: Arc<AtomicBool>,
        // Registered with the `Notify` (then the map is looked at).
        armed: bool,
    }
}

impl<C> std::future::Future for Serving<C>
where
    C: std::future::Future<Output = hyper::Result<()>> + Unpin,
{
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let this = self.project();
        if let Some(mut revocation) = this.revocation.as_pin_mut() {
            loop {
                let mut r = revocation.as_mut().project();
                if !*r.armed {
                    // Registered before looking, so a revocation from now on
                    // wakes it.
                    r.notified.as_mut().enable();
                    *r.armed = true;
                    if !this.open.0.is_current(&r.peer.workspace, r.notify) {
                        tracing::info!(peer = %this.addr, "closing a revoked agent's connection");
                        return Poll::Ready(());
                    }
                    if r.evicted.load(Ordering::Relaxed) {
                        tracing::debug!(peer = %this.addr, "closing an agent's oldest connection");
                        return Poll::Ready(());
                    }
                }
                if r.notified.poll(cx).is_pending() {
                    break;
                }
                // Woken: wait again, then look.
                let again = r.notify.clone().notified_owned();
                let mut r = revocation.as_mut().project();
                r.notified.set(again);
                *r.armed = false;
            }
        }
        match std::pin::Pin::new(this.connection).poll(cx) {
            Poll::Ready(ended) => {
                if let Err(e) = ended {
                    tracing::debug!(peer = %this.addr, error = %e, "connection ended");
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The agent a connection's client certificate names.
#[derive(Debug, Clone)]
struct Peer {
    workspace: WorkspaceId,
    serial: CertSerial,
}

/// A refusal: its status, code and reason.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<u32>,
    /// What the server logs and does not send (an internal error's cause).
    detail: Option<String>,
}

impl Refusal {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            detail: None,
        }
    }

    /// Telling the client to come back after `wait` (whole seconds, at
    /// least one).
    fn retry_after(mut self, wait: Duration) -> Self {
        let secs = wait
            .as_millis()
            .div_ceil(1000)
            .clamp(1, u128::from(u32::MAX));
        self.retry_after = Some(secs as u32);
        self
    }

    /// With `detail` logged, not sent.
    fn detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    fn decode(e: DecodeError) -> Self {
        let status = match e.code() {
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.code(), e.to_string())
    }

    fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "this endpoint needs a client certificate from the control plane's CA",
        )
    }

    /// A refusal for what the gateway said about a credential or a command.
    fn gateway(e: Error) -> Self {
        match e {
            Error::CredentialRevoked { serial, at } => Self::new(
                StatusCode::FORBIDDEN,
                ErrorCode::CertificateRevoked,
                format!("certificate {serial} was revoked at {at}"),
            ),
            Error::NotFound(Resource::Credential(serial)) => Self::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                format!("no credential {serial}"),
            ),
            Error::NotFound(Resource::Command(_, id)) => Self::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotYourCommand,
                format!("no command {id} for this agent"),
            ),
            e @ Error::CredentialExpired { .. } => Self::new(
                StatusCode::FORBIDDEN,
                ErrorCode::CertificateExpired,
                e.to_string(),
            ),

            other => Self::internal(other),
        }
    }

    /// An internal failure: the client is told only that; the cause (a
    /// store's error, say) is logged.
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the control plane failed; retry later",
        )
        .detail(e)
    }

    /// The one answer to a bootstrap token that does not verify for the
    /// workspace named — unknown, another workspace's, or for a workspace
    /// that does not exist — so the answer tells nothing about which
    /// workspaces exist.
    fn token_invalid(why: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorCode::TokenInvalid,
            "the bootstrap token does not verify for this workspace",
        )
        .detail(why)
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let body = v1::encode(&ErrorResponse::new(
            self.code,
            self.message.clone(),
            self.retry_after,
        ));
        let mut response = Response::builder()
            .status(self.status)
            .header("content-type", "application/json");
        if let Some(secs) = self.retry_after {
            response = response.header("retry-after", secs.to_string());
        }
        response
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}

/// A poll's answer, encoded: `commands` and `cancel` when they fit both the
/// count ([`v1::MAX_COMMANDS_PER_POLL`]) and the size an agent accepts
/// ([`PollResponse`]'s limit) — encoded once, the usual case — or else, in
/// order, as many as fit ([`fit_answer`]). The rest stay open and go with the
/// next polls, so an answer is never one the agent must refuse (five commands
/// of ~0.9 MiB each were, and were sent again on every poll).
fn poll_answer(
    commands: Vec<cogrion_core::proto::Command>,
    cancel: Vec<cogrion_core::proto::CommandId>,
) -> Vec<u8> {
    let whole = PollResponse {
        version: PROTOCOL_VERSION,
        commands,
        cancel,
    };
    if whole.commands.len() + whole.cancel.len() <= v1::MAX_COMMANDS_PER_POLL {
        let encoded = v1::encode(&whole);
        if encoded.len() <= <PollResponse as Message>::MAX_LEN {
            return encoded;
        }
    }
    let (commands, cancel) = fit_answer(whole.commands, whole.cancel);
    v1::encode(&PollResponse {
        version: PROTOCOL_VERSION,
        commands,
        cancel,
    })
}

/// The first of `commands` and `cancel`, in order, that fit one answer —
/// always the first command, which fits alone.
fn fit_answer(
    commands: Vec<cogrion_core::proto::Command>,
    cancel: Vec<cogrion_core::proto::CommandId>,
) -> (
    Vec<cogrion_core::proto::Command>,
    Vec<cogrion_core::proto::CommandId>,
) {
    // The envelope's fields and punctuation, with room to spare.
    const ENVELOPE: usize = 1024;
    let mut budget = <PollResponse as Message>::MAX_LEN.saturating_sub(ENVELOPE);
    let mut fitted = Vec::new();
    for command in commands {
        if fitted.len() == v1::MAX_COMMANDS_PER_POLL {
            break;
        }
        // Its JSON and the comma before it.
        let len = serde_json::to_vec(&command).map_or(usize::MAX, |json| json.len() + 1);
        if len > budget && !fitted.is_empty() {
            break;
        }
        budget = budget.saturating_sub(len);
        fitted.push(command);
    }
    let mut ids = Vec::new();
    for id in cancel {
        // Quoted, escaped at worst six bytes a character, and a comma.
        let len = id.as_str().len() * 6 + 3;
        if fitted.len() + ids.len() == v1::MAX_COMMANDS_PER_POLL || len > budget {
            break;
        }
        budget -= len;
        ids.push(id);
    }
    (fitted, ids)
}

fn ok<M: Message>(message: &M) -> Response<Full<Bytes>> {
    ok_encoded(v1::encode(message))
}

/// A `200` with a message already encoded.
fn ok_encoded(body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Reads a body of at most `M::MAX_LEN` bytes within `timeout` and decodes
/// it strictly.
async fn body<M: Message>(
    body: Incoming,
    declared: Option<usize>,
    timeout: Duration,
) -> std::result::Result<M, Refusal> {
    if let Some(len) = declared
        && len > M::MAX_LEN
    {
        // A body not much larger is read and dropped, within the body's
        // deadline, so that the refusal reaches the client: a connection
        // closed on unread bytes is reset, and the reset can take the answer
        // with it. A larger one is not read at all.
        if len <= DRAIN_LIMIT {
            let _ = tokio::time::timeout(timeout, Limited::new(body, DRAIN_LIMIT).collect()).await;
        }
        return Err(Refusal::decode(DecodeError::TooLarge {
            what: M::NAME,
            len,
            max: M::MAX_LEN,
        }));
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, M::MAX_LEN).collect())
        .await
        .map_err(|_| {
            Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                format!("the body did not arrive within {timeout:?}"),
            )
        })?;
    let bytes = collected
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Refusal::decode(DecodeError::TooLarge {
                    what: M::NAME,
                    len: M::MAX_LEN + 1,
                    max: M::MAX_LEN,
                })
            } else {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    format!("unreadable body: {e}"),
                )
            }
        })?
        .to_bytes();
    v1::decode::<M>(&bytes).map_err(Refusal::decode)
}

/// A request's message for an endpoint that needs a client certificate, with
/// the certificate's agent; or the refusal.
fn authenticated<M>(
    peer: Option<&Arc<Peer>>,
    m: std::result::Result<M, Refusal>,
) -> std::result::Result<(&Arc<Peer>, M), Refusal> {
    match (peer, m) {
        (None, _) => Err(Refusal::unauthenticated()),
        (_, Err(r)) => Err(r),
        (Some(peer), Ok(m)) => Ok((peer, m)),
    }
}

/// What a request asks for, read from its head (which is then dropped: the
/// future serving the request keeps only the body).
#[derive(Debug, Clone, Copy)]
enum Route {
    Bootstrap,
    Poll,
    Result,
    Renew,
    /// Not a POST.
    WrongMethod,
    Unknown,
}

impl Route {
    /// The endpoint's path, for logs.
    fn path(self) -> &'static str {
        match self {
            Self::Bootstrap => "/v1/bootstrap",
            Self::Poll => "/v1/poll",
            Self::Result => "/v1/result",
            Self::Renew => "/v1/renew",
            Self::WrongMethod => "(not POST)",
            Self::Unknown => "(unknown)",
        }
    }
}

/// A request's route and declared body length.
struct Head {
    route: Route,
    declared: Option<usize>,
    /// Whether the agent understands cancel requests
    /// ([`v1::FEATURES_HEADER`]).
    cancel: bool,
}

impl Head {
    fn of(req: &Request<Incoming>) -> Self {
        let route = match req.uri().path() {
            _ if req.method() != Method::POST => Route::WrongMethod,
            "/v1/bootstrap" => Route::Bootstrap,
            "/v1/poll" => Route::Poll,
            "/v1/result" => Route::Result,
            "/v1/renew" => Route::Renew,
            _ => Route::Unknown,
        };
        let declared = req
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let cancel = req
            .headers()
            .get_all(v1::FEATURES_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|f| f.trim() == v1::FEATURE_CANCEL);
        Self {
            route,
            declared,
            cancel,
        }
    }
}

/// The agent a client certificate names: the workspace of its URI SAN and its
/// serial. `None` without a certificate.
fn peer_of(certs: Option<&[CertificateDer<'_>]>) -> std::result::Result<Option<Peer>, String> {
    let Some(leaf) = certs.and_then(|c| c.first()) else {
        return Ok(None);
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable SAN: {e}"))?
        .ok_or("the client certificate names no agent")?;
    let identity = san
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => AgentIdentity::parse_uri(uri).ok(),
            _ => None,
        })
        .ok_or("the client certificate names no agent")?;
    // The gateway's serials are 16 bytes; the certificate may carry a leading
    // zero byte for the sign, or drop leading zeros.
    let raw: Vec<u8> = cert
        .raw_serial()
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    if raw.len() > 16 {
        return Err("the client certificate's serial is not one of ours".into());
    }
    let mut bytes = [0u8; 16];
    bytes[16 - raw.len()..].copy_from_slice(&raw);
    let mut hex = String::with_capacity(32);
    for b in bytes {
        for digit in [b >> 4, b & 0xf] {
            hex.push(char::from_digit(u32::from(digit), 16).unwrap_or('0'));
        }
    }
    let serial = CertSerial::new(hex).map_err(|e| e.to_string())?;
    Ok(Some(Peer {
        workspace: identity.workspace().clone(),
        serial,
    }))
}

impl AgentServer {
    /// A server for `gateway`, with `ca` signing the agents' certificates and
    /// `server` as its own TLS identity.
    pub fn new(
        gateway: AgentGateway,
        ca: Arc<CertificateAuthority>,
        clock: Arc<dyn Clock>,
        server: &ServerCertificate,
        config: AgentServerConfig,
    ) -> Result<Self> {
        let rejected = |detail: String| Error::Rejected {
            service: "agent server".into(),
            detail,
            source: None,
        };
        let provider = super::provider();
        let roots = super::roots(ca.certificate_pem()).map_err(rejected)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| rejected(e.to_string()))?;
        let chain = super::certificates(&server.certificate_pem).map_err(rejected)?;
        let key = super::private_key(&server.key_pem).map_err(rejected)?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| rejected(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| rejected(e.to_string()))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No session tickets: rustls keeps resumable sessions in a cache of 256
        // in memory, which serves no fleet of agents (and is gone after a
        // restart, when the whole fleet reconnects); issuing them costs every
        // handshake. An agent keeps its connection instead.
        tls.send_tls13_tickets = 0;
        Ok(Self {
            shared: Arc::new(Shared {
                gateway,
                ca,
                clock,
                tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
                agents: Mutex::default(),
                failures: WindowCounts::new(config.failure_window, MAX_TRACKED_SOURCES),
                renewals: WindowCounts::new(config.renewal_limit_window, MAX_TRACKED_CERTIFICATES),
                handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
                unauthenticated: Arc::new(Unauthenticated::new(
                    config.max_unauthenticated,
                    config.max_unauthenticated_per_source,
                )),
                log_refused: LogLimit::new(Duration::from_secs(1)),
                log_connections: LogLimit::new(Duration::from_secs(1)),
                exchanges: Semaphore::new(config.max_exchanges),
                handshakes_done: AtomicU64::new(0),
                open: AtomicU64::new(0),
                config,
            }),
        })
    }

    /// Handshakes completed and connections open.
    pub fn stats(&self) -> AgentServerStats {
        AgentServerStats {
            handshakes: self.shared.handshakes_done.load(Ordering::Relaxed),
            open_connections: self.shared.open.load(Ordering::Relaxed),
            unauthenticated_sources: self.shared.unauthenticated.sources(),
        }
    }

    /// Serves `listener` on a task of its own until the returned handle is
    /// stopped or dropped ([`serve`](Self::serve) with the handle as the
    /// shutdown signal).
    pub fn spawn(&self, listener: TcpListener) -> ServerHandle {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = self.clone();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        ServerHandle {
            stop: Some(stop),
            task,
        }
    }

    /// Accepts connections on `listener` until `shutdown` completes. It may be
    /// called for several listeners at once (several addresses, one server).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                // Admission: no more unauthenticated connections than allowed
                // in all (the rest wait in the listen backlog), and no more
                // than a source's share from one source.
                permit = self.shared.unauthenticated.total().acquire_owned() => {
                    let Ok(permit) = permit else { return };
                    let accepted = tokio::select! {
                        _ = &mut shutdown => return,
                        accepted = listener.accept() => accepted,
                    };
                    match accepted {
                        Ok((tcp, addr)) => {
                            let guard = self.shared.unauthenticated.admit(addr.ip(), permit);
                            let shared = self.shared.clone();
                            tokio::spawn(async move { shared.connection(tcp, addr, guard).await });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }
    }
}

impl Shared {
    async fn connection(
        self: Arc<Self>,
        tcp: tokio::net::TcpStream,
        addr: SocketAddr,
        unauthenticated: UnauthenticatedGuard,
    ) {
        // This task ends with the handshake (whose large state is boxed, so
        // the task itself is small to spawn): the connection is served by a
        // task of its own, sized for serving alone (for as long as the agent
        // stays).
        let evicted = unauthenticated.evicted();
        let tls = tokio::select! {
            tls = Box::pin(self.handshake(tcp, addr)) => tls,
            _ = evicted => None,
        };
        let Some(tls) = tls else {
            return;
        };
        // Shared by the connection's requests.
        let peer = match peer_of(tls.get_ref().1.peer_certificates()) {
            Ok(peer) => peer.map(Arc::new),
            Err(reason) => {
                if let Some(skipped) = self.log_connections.admit() {
                    tracing::info!(peer = %addr, %reason, skipped, "client certificate refused");
                }
                return;
            }
        };
        // An agent's connections close when its credentials are revoked: its
        // `Notify` now, so a revocation from now on (which removes it) closes
        // the connection. Authenticated, it no longer counts against its
        // source; it counts among its agent's connections instead.
        let revocation = peer.as_ref().map(|p| {
            let (notify, evicted) = self.connected(&p.workspace);
            Revocation {
                notified: notify.clone().notified_owned(),
                notify,
                peer: p.clone(),
                evicted,
                armed: false,
            }
        });
        let (unauthenticated, idle) = match peer {
            Some(_) => {
                drop(unauthenticated);
                (None, self.config.authenticated_idle_timeout)
            }
            None => (
                Some(unauthenticated),
                jittered(self.config.unauthenticated_idle_timeout),
            ),
        };
        let shared = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            // Routed here: the future hyper keeps (for the connection's whole
            // life, in an allocation of its size) holds the body, not the head.
            let head = Head::of(&req);
            shared
                .clone()
                .handle(peer.clone(), addr.ip(), head, req.into_body())
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(idle)
            // The protocol's heads are a few hundred bytes: hyper's smallest
            // buffer (8 KiB) answers `431` past it, and a body streams through.
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            .serve_connection(TokioIo::new(tls), service);
        self.handshakes_done.fetch_add(1, Ordering::Relaxed);
        let serving = Serving {
            connection,
            revocation,
            addr,
            open: OpenGuard::new(self.clone(), unauthenticated.is_none()),
        };
        match unauthenticated {
            None => {
                tokio::spawn(serving);
            }
            // Until it ends or a newer connection from its source takes its
            // place.
            Some(guard) => {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serving => {}
                        _ = guard.evicted() => {}
                    }
                });
            }
        }
    }

    /// The TLS handshake: its ClientHello within its own deadline (holding
    /// no handshake slot), then a slot while the server computes its answer,
    /// all within the handshake timeout.
    async fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
        addr: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<Metered<tokio::net::TcpStream>>> {
        let deadline = tokio::time::Instant::now() + self.config.handshake_timeout;
        // Jittered: connections an intruder opened together are not all
        // closed together, so their reconnects do not come back as one wave.
        let hello_by =
            deadline.min(tokio::time::Instant::now() + jittered(self.config.client_hello_timeout));
        // Nothing is made for a connection that says nothing: no TLS state,
        // no socket options, until its first bytes arrive.
        match tokio::time::timeout_at(hello_by, tcp.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %addr, error = %e, "connection failed before its ClientHello");
                return None;
            }
            Err(_) => {
                if let Some(skipped) = self.log_connections.admit() {
                    tracing::info!(peer = %addr, skipped, "TLS handshake timed out waiting for the ClientHello");
                }
                return None;
            }
        }
        // Small messages both ways: no waiting on Nagle for a delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(peer = %addr, error = %e, "TCP_NODELAY refused");
        }
        // A held poll on a connection whose agent vanished is found out.
        if let Err(e) = super::keepalive(&tcp) {
            tracing::debug!(peer = %addr, error = %e, "TCP keepalive refused");
        }
        let hello = tokio_rustls::LazyConfigAcceptor::new(
            rustls::server::Acceptor::default(),
            Metered::new(tcp),
        );
        let failed = |what: &str, error: Option<&dyn std::fmt::Display>| {
            if let Some(skipped) = self.log_connections.admit() {
                let error = error.map(ToString::to_string);
                tracing::info!(peer = %addr, error, skipped, "TLS handshake {what}");
            }
            None
        };
        let start = match tokio::time::timeout_at(hello_by, hello).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => return failed("refused", Some(&e)),
            Err(_) => return failed("timed out waiting for the ClientHello", None),
        };
        let Ok(Ok(slot)) =
            tokio::time::timeout_at(deadline, self.handshakes.clone().acquire_owned()).await
        else {
            return failed("timed out waiting for a handshake slot", None);
        };
        let mut accept = start.into_stream(self.tls.config().clone());
        if let Some(io) = accept.get_mut() {
            io.slot = Some(slot);
        }
        match tokio::time::timeout_at(deadline, accept).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => failed("refused", Some(&e)),
            Err(_) => failed("timed out", None),
        }
    }

    /// The `Notify` of `workspace`'s agent, made if needed.
    fn slot(&self, workspace: &WorkspaceId) -> Arc<Notify> {
        crate::lock_or_recover(&self.agents)
            .entry(workspace.clone())
            .or_default()
            .notify
            .clone()
    }

    /// Counts a new authenticated connection of `workspace`'s agent: its
    /// agent's `Notify`, and its flag, set when a newer connection takes its
    /// place (beyond `max_connections_per_agent`, the oldest goes).
    fn connected(&self, workspace: &WorkspaceId) -> (Arc<Notify>, Arc<AtomicBool>) {
        let mut agents = crate::lock_or_recover(&self.agents);
        let agent = agents.entry(workspace.clone()).or_default();
        // Connections that ended hold their flags no more.
        agent.connections.retain(|c| Arc::strong_count(c) > 1);
        let flag = Arc::new(AtomicBool::new(false));
        agent.connections.push_back(flag.clone());
        let mut evicted = false;
        while agent.connections.len() > self.config.max_connections_per_agent.max(1) {
            if let Some(oldest) = agent.connections.pop_front() {
                oldest.store(true, Ordering::Relaxed);
                evicted = true;
            }
        }
        if evicted {
            // The evicted connection's wait looks at its flag when woken.
            agent.notify.notify_waiters();
        }
        (agent.notify.clone(), flag)
    }

    /// Records a poll of `peer` answered at `at`, unless the agent was
    /// revoked since `notify` was its (a revocation is not undone by a poll
    /// that was already past its checks).
    fn seen(&self, peer: &Arc<Peer>, notify: &Arc<Notify>, at: Timestamp) {
        if let Some(agent) = crate::lock_or_recover(&self.agents).get_mut(&peer.workspace)
            && Arc::ptr_eq(&agent.notify, notify)
        {
            agent.seen = Some((at, peer.clone()));
        }
    }

    /// Whether `notify` is still `workspace`'s: not revoked since.
    fn is_current(&self, workspace: &WorkspaceId, notify: &Arc<Notify>) -> bool {
        crate::lock_or_recover(&self.agents)
            .get(workspace)
            .is_some_and(|agent| Arc::ptr_eq(&agent.notify, notify))
    }

    /// Closes every open connection of `workspace`'s agent; its held polls
    /// wake, and look at its credentials again.
    fn close_connections(&self, workspace: &WorkspaceId) {
        let agent = crate::lock_or_recover(&self.agents).remove(workspace);
        if let Some(agent) = agent {
            agent.notify.notify_waiters();
        }
    }

    /// A slot for a bootstrap or renewal exchange, or `overloaded` with a
    /// jittered `Retry-After`.
    fn exchange_slot(&self) -> std::result::Result<tokio::sync::SemaphorePermit<'_>, Refusal> {
        self.exchanges.try_acquire().map_err(|_| {
            let max = self.config.max_retry_after_secs.max(1);
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Overloaded,
                "too many bootstraps and renewals in progress",
            )
            .retry_after(Duration::from_secs(u64::from(
                1 + rand::random::<u32>() % max,
            )))
        })
    }

    // Not `async fn`s: an `async fn` keeps each argument twice in its state
    // (as passed, and as bound), and the state of a held poll is what hyper
    // keeps for every connection's whole life. An `async move` block keeps
    // them once.
    #[allow(clippy::manual_async_fn)]
    fn handle(
        self: Arc<Self>,
        peer: Option<Arc<Peer>>,
        remote: IpAddr,
        head: Head,
        req: Incoming,
    ) -> impl std::future::Future<Output = std::result::Result<Response<Full<Bytes>>, Infallible>>
    {
        async move {
            let declared = head.declared;
            let timeout = self.config.body_timeout;
            // The other endpoints' work is boxed, so the future is sized for a poll.
            let outcome = match head.route {
                Route::WrongMethod => Err(Refusal::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ErrorCode::BadRequest,
                    "only POST",
                )),
                Route::Unknown => Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::BadRequest,
                    "no such endpoint",
                )),
                Route::Bootstrap => {
                    Box::pin(async {
                        self.bootstrap(body(req, declared, timeout).await?, remote)
                            .await
                    })
                    .await
                }
                // Not boxed: a held poll is what a connection's future spends its
                // life on, so the poll's state is the one it is sized for.
                Route::Poll => {
                    let cancel = head.cancel;
                    // The body is read even for a refusal, so the connection
                    // stays usable.
                    let m = body(req, declared, timeout).await;
                    match authenticated(peer.as_ref(), m) {
                        Ok((peer, m)) => self.poll(peer, m, cancel).await,
                        Err(refusal) => Err(refusal),
                    }
                }
                Route::Result => {
                    Box::pin(async {
                        let (peer, m) =
                            authenticated(peer.as_ref(), body(req, declared, timeout).await)?;
                        self.result(peer, m).await
                    })
                    .await
                }
                Route::Renew => {
                    Box::pin(async {
                        let (peer, m) =
                            authenticated(peer.as_ref(), body(req, declared, timeout).await)?;
                        self.renew(peer, m).await
                    })
                    .await
                }
            };
            Ok(match outcome {
                Ok(response) => response,
                Err(refusal) => {
                    if let Some(skipped) = self.log_refused.admit() {
                        tracing::info!(
                            path = head.route.path(),
                            %remote,
                            workspace = peer.as_ref().map(|p| p.workspace.to_string()),
                            code = ?refusal.code,
                            reason = refusal.detail.as_deref().unwrap_or(&refusal.message),
                            skipped,
                            "request refused"
                        );
                    }
                    refusal.response()
                }
            })
        }
    }

    /// Counts a renewal asked by `peer`'s certificate; refuses beyond its
    /// share per window, and logs a storm once.
    fn check_renewals(&self, peer: &Peer) -> std::result::Result<(), Refusal> {
        let Some(over) = self
            .renewals
            .count(&peer.serial, self.config.renewals_per_certificate)
        else {
            return Ok(());
        };
        if over.first {
            tracing::warn!(
                workspace = %peer.workspace,
                serial = %peer.serial,
                allowed = self.config.renewals_per_certificate,
                window = ?self.config.renewal_limit_window,
                "renewal storm: this certificate's renewals are refused until its window ends"
            );
        }
        Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "this certificate asked for too many renewals; wait",
        )
        .retry_after(over.left))
    }

    async fn bootstrap(
        &self,
        m: BootstrapRequest,
        remote: IpAddr,
    ) -> std::result::Result<Response<Full<Bytes>>, Refusal> {
        let started = tokio::time::Instant::now();
        let slot = self.exchange_slot()?;
        // The CSR first: a token is consumed only for a request that can succeed.
        let csr = self.check_csr(&m.csr_pem)?;
        let token = BootstrapToken::parse(m.token.expose()).map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                e.to_string(),
            )
        })?;
        let refusal = match self
            .gateway
            .bootstrap(&m.workspace, &token, csr.key_digest())
            .await
        {
            Ok(credential) => {
                drop(slot);
                return self.bootstrapped(&m, &csr, credential);
            }
            // The presenter holds the genuine token: it may know what became
            // of it.
            Err(e @ Error::TokenRefused(TokenRefusal::Reused { .. })) => {
                Refusal::new(StatusCode::FORBIDDEN, ErrorCode::TokenUsed, e.to_string())
            }
            Err(e @ Error::TokenRefused(TokenRefusal::Expired { .. })) => Refusal::new(
                StatusCode::FORBIDDEN,
                ErrorCode::TokenExpired,
                e.to_string(),
            ),
            Err(e @ (Error::TokenRefused(_) | Error::NotFound(_))) => Refusal::token_invalid(e),
            Err(e) => return Err(Refusal::internal(e)),
        };
        drop(slot);
        // A source past its refusals for the window is told to wait instead;
        // a token that verifies was never held back above.
        let counted = self.failures.count(
            &super::admission::source_of(remote),
            self.config.failed_bootstraps,
        );
        let refusal = match counted {
            None => refusal,
            Some(Over { left, .. }) => Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many refused bootstraps from this address; wait",
            )
            .retry_after(left)
            .detail(refusal.detail.unwrap_or(refusal.message)),
        };
        // Every token refusal takes the same time, whichever way the token
        // failed (a workspace that exists or not, a store that answered fast
        // or slow), up to the floor.
        tokio::time::sleep_until(started + self.config.token_refusal_time).await;
        Err(refusal)
    }

    /// The answer to a bootstrap that issued `credential`.
    fn bootstrapped(
        &self,
        m: &BootstrapRequest,
        csr: &cogrion_core::ca::CheckedCsr,
        credential: cogrion_core::store::AgentCredential,
    ) -> std::result::Result<Response<Full<Bytes>>, Refusal> {
        // A re-bootstrap revoked the workspace's earlier credentials: their
        // connections close (a replay revoked nothing; its agent has none).
        self.close_connections(&m.workspace);
        // Signed as of the credential's issue: a replayed exchange gets the
        // certificate it was issued (same serial, key and validity).
        let issued = self
            .ca
            .sign_checked(csr, &m.workspace, &credential.serial, credential.issued_at)
            .map_err(Refusal::internal)?;
        Ok(ok(&BootstrapResponse {
            version: PROTOCOL_VERSION,
            certificate_chain_pem: issued.pem,
            ca_bundle_pem: self.ca.certificate_pem().to_owned(),
            not_after_ms: issued.not_after.as_millis(),
            poll: self.config.poll,
            renewal: self.config.renewal,
        }))
    }

    fn check_csr(
        &self,
        csr_pem: &str,
    ) -> std::result::Result<cogrion_core::ca::CheckedCsr, Refusal> {
        self.ca.check_csr(csr_pem).map_err(|e| match e {
            e @ (CaError::CsrUnreadable(_)
            | CaError::CsrBadSignature
            | CaError::CsrKeyType { .. }) => Refusal::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::CsrRejected,
                e.to_string(),
            ),
            other => Refusal::internal(other),
        })
    }

    /// A new certificate for a new key, for an agent whose current certificate
    /// is still good; the old one stays valid until it expires.
    async fn renew(
        &self,
        peer: &Peer,
        m: RenewalRequest,
    ) -> std::result::Result<Response<Full<Bytes>>, Refusal> {
        self.check_renewals(peer)?;
        let _slot = self.exchange_slot()?;
        let csr = self.check_csr(&m.csr_pem)?;
        let credential = self
            .gateway
            .renew(&peer.serial, csr.key_digest())
            .await
            .map_err(|e| match e {
                Error::RenewalTooEarly { serial, from } => Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::RateLimited,
                    format!("certificate {serial} may be renewed from {from} on"),
                )
                .retry_after(Duration::from_millis(
                    from.as_millis()
                        .saturating_sub(self.clock.now().as_millis()),
                )),
                other => Refusal::gateway(other),
            })?;
        let issued = self
            .ca
            .sign_checked(&csr, &peer.workspace, &credential.serial, self.clock.now())
            .map_err(Refusal::internal)?;
        Ok(ok(&RenewalResponse {
            version: PROTOCOL_VERSION,
            certificate_chain_pem: issued.pem,
            not_after_ms: issued.not_after.as_millis(),
        }))
    }

    #[allow(clippy::manual_async_fn)] // See `handle`.
    fn poll<'a>(
        &'a self,
        peer: &'a Arc<Peer>,
        m: PollRequest,
        accepts_cancel: bool,
    ) -> impl std::future::Future<Output = std::result::Result<Response<Full<Bytes>>, Refusal>> + 'a
    {
        async move {
            let wait = Duration::from_secs(u64::from(m.wait_secs)).min(self.config.max_poll_wait);
            let deadline = tokio::time::Instant::now() + wait;
            let slot = self.slot(&peer.workspace);
            loop {
                // Registered before looking, so a command queued in between wakes us.
                let notified = slot.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    // Boxed: its state lives only while it runs, not while the
                    // poll waits.
                    let (_, at, delivery) = Box::pin(self.gateway.poll_untracked(&peer.serial))
                        .await
                        .map_err(Refusal::gateway)?;
                    self.seen(peer, &slot, at);
                    let (mut commands, mut cancel) = (delivery.commands, delivery.cancel);
                    // What the agent says it finished is neither delivered nor
                    // cancelled again, even while its result is still on the way.
                    commands.retain(|c| !m.finished.contains(&c.id));
                    cancel.retain(|id| !m.finished.contains(id));
                    if !accepts_cancel {
                        // An agent that predates cancel requests would refuse
                        // the whole answer: it gets none (its late result
                        // still settles the command).
                        cancel.clear();
                    }
                    let something = !commands.is_empty() || !cancel.is_empty();
                    if something || tokio::time::Instant::now() >= deadline {
                        return Ok(ok_encoded(poll_answer(commands, cancel)));
                    }
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }

    async fn result(
        &self,
        peer: &Peer,
        m: ResultRequest,
    ) -> std::result::Result<Response<Full<Bytes>>, Refusal> {
        let id = m.result.id.clone();
        self.gateway
            .post_result(&peer.serial, m.result)
            .await
            .map_err(Refusal::gateway)?;
        Ok(ok(&ResultAck {
            version: PROTOCOL_VERSION,
            id,
        }))
    }
}

#[async_trait]
impl AgentTransport for AgentServer {
    async fn notify(&self, workspace: &WorkspaceId) -> Result<()> {
        let notify = crate::lock_or_recover(&self.shared.agents)
            .get(workspace)
            .map(|agent| agent.notify.clone());
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
        Ok(())
    }

    async fn disconnect(&self, workspace: &WorkspaceId, reason: &str) -> Result<()> {
        tracing::info!(%workspace, reason, "agent disconnected");
        self.shared.gateway.forget(workspace);
        // The agent is gone: its connections close, and polls waiting on
        // connections not yet closed wake, find the credential revoked, and
        // are refused.
        self.shared.close_connections(workspace);
        Ok(())
    }

    async fn presence(&self, workspace: &WorkspaceId) -> Result<Option<AgentPresence>> {
        // Kept here, with the rest of what the server holds per agent (its
        // polls go through `AgentGateway::poll_untracked`).
        Ok(crate::lock_or_recover(&self.shared.agents)
            .get(workspace)
            .and_then(|agent| agent.seen.as_ref())
            .map(|(at, peer)| AgentPresence {
                last_seen: *at,
                serial: Some(peer.serial.clone()),
                connected: true,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_jittered_by_up_to_a_quarter() {
        let limit = Duration::from_secs(8);
        let picks: Vec<Duration> = (0..200).map(|_| jittered(limit)).collect();
        assert!(picks.iter().all(|d| *d <= limit && *d >= limit * 3 / 4));
        let spread = picks
            .iter()
            .max()
            .unwrap()
            .saturating_sub(*picks.iter().min().unwrap());
        assert!(spread > Duration::from_secs(1), "spread {spread:?}");
    }
}
