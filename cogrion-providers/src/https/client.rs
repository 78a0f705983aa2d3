//! The agent's side of the protocol: bootstrap with a one-time token and a CSR
//! for a key generated here (which never leaves), then long-poll and post
//! results over mutual TLS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cogrion_core::proto::v1::{
    self, AgentVersion, BootstrapRequest, BootstrapResponse, DecodeError, ErrorResponse, Message,
    PollRequest, PollResponse, RenewalRequest, RenewalResponse, ResultAck, ResultRequest,
    TokenText,
};
use cogrion_core::proto::{CommandId, CommandResult, PROTOCOL_VERSION, WorkspaceId};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Why a request did not get its answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused it, saying why.
    #[error("refused with {status}: {error:?}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's reason.
        error: ErrorResponse,
    },
    /// No TLS connection (the handshake failed — an untrusted or expired
    /// certificate, for instance — or the server is unreachable).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The answer is not a valid message.
    #[error("unreadable answer: {0}")]
    Protocol(String),
}

/// A client of one control plane's agent endpoint; see the [module](super)
/// documentation.
pub struct AgentClient {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    roots: Arc<rustls::RootCertStore>,
    /// The TLS settings in use, rebuilt only when the identity changes.
    config: Mutex<Arc<rustls::ClientConfig>>,
    /// The client identity as PEM (chain, key), for an agent that keeps it on disk.
    identity_pem: Mutex<Option<(String, String)>>,
    /// Bumped whenever the identity changes: a kept connection opened under an
    /// older identity is not reused.
    generation: AtomicU64,
    /// The kept connection (HTTP/1.1 keep-alive) and the identity generation
    /// it was opened under. Requests take turns on it; one that finds it busy
    /// (a result posted while a poll is held) opens a connection of its own.
    kept: tokio::sync::Mutex<Option<(u64, SendRequest<Full<Bytes>>)>>,
    /// How long a new connection (TCP and TLS) may take.
    connect_timeout: Duration,
    /// How long an answer may take, beyond a poll's own wait.
    request_timeout: Duration,
}

/// How long a new connection may take by default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may take by default, beyond a poll's own wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// A client for the endpoint at `addr`, whose certificate must name
    /// `server_name` and chain to `ca_pem`.
    pub fn new(addr: SocketAddr, server_name: &str, ca_pem: &str) -> Result<Self, ClientError> {
        let roots = Arc::new(super::roots(ca_pem).map_err(ClientError::Connect)?);
        Ok(Self {
            addr,
            server_name: ServerName::try_from(server_name.to_owned())
                .map_err(|e| ClientError::Connect(e.to_string()))?,
            config: Mutex::new(tls_config(&roots, None)?),
            roots,
            identity_pem: Mutex::new(None),
            generation: AtomicU64::new(0),
            kept: tokio::sync::Mutex::new(None),
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        })
    }

    /// With these deadlines: for a new connection (TCP and TLS, default 10 s),
    /// and for an answer beyond a poll's own wait (default 30 s). A request
    /// past its deadline fails with [`ClientError::Connect`] and its
    /// connection is dropped. Every connection also has TCP keepalive (probes
    /// after 30 s idle, every 10 s), so a dead peer is found while a poll is
    /// held.
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    /// Uses this client certificate (PEM chain) and key (PKCS#8 PEM) from now on.
    pub fn set_identity(&self, chain_pem: &str, key_pem: &str) -> Result<(), ClientError> {
        let key = super::private_key(key_pem).map_err(ClientError::Connect)?;
        self.use_identity(chain_pem, key, key_pem.to_owned())
    }

    /// Uses the certificate chain `chain_pem` with `key` (also as `key_pem`).
    fn use_identity(
        &self,
        chain_pem: &str,
        key: PrivateKeyDer<'static>,
        key_pem: String,
    ) -> Result<(), ClientError> {
        let chain = super::certificates(chain_pem).map_err(ClientError::Connect)?;
        *crate::lock_or_recover(&self.config) = tls_config(&self.roots, Some((chain, key)))?;
        *crate::lock_or_recover(&self.identity_pem) = Some((chain_pem.to_owned(), key_pem));
        self.forget_connection();
        Ok(())
    }

    /// Uses a certificate chain just issued for `key`, a key of this process.
    fn use_new_identity(&self, chain_pem: &str, key: &rcgen::KeyPair) -> Result<(), ClientError> {
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        self.use_identity(chain_pem, der, key.serialize_pem())
    }

    /// The client identity in use, as PEM (certificate chain, private key) —
    /// for an agent that keeps it on disk across restarts. `None` before a
    /// bootstrap.
    pub fn identity_pem(&self) -> Option<(String, String)> {
        crate::lock_or_recover(&self.identity_pem).clone()
    }

    /// Forgets the client identity (after it was revoked or expired): the next
    /// requests are unauthenticated until a bootstrap.
    pub fn clear_identity(&self) {
        if let Ok(config) = tls_config(&self.roots, None) {
            *crate::lock_or_recover(&self.config) = config;
        }
        *crate::lock_or_recover(&self.identity_pem) = None;
        self.forget_connection();
    }

    /// After an identity change: the kept connection is not used again, and is
    /// closed now if no request is on it (else when that request ends).
    fn forget_connection(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut kept) = self.kept.try_lock() {
            kept.take();
        }
    }

    /// Exchanges `token` for a certificate: generates an ECDSA P-256 key, sends
    /// a CSR for it, and from then on authenticates with the certificate.
    /// An agent that must survive losing the answer keeps its key first and
    /// calls [`bootstrap_with_key`](Self::bootstrap_with_key).
    pub async fn bootstrap(
        &self,
        workspace: &WorkspaceId,
        token: &str,
        agent_version: &str,
    ) -> Result<BootstrapResponse, ClientError> {
        self.bootstrap_with_key(workspace, token, agent_version, &new_key_pem()?)
            .await
    }

    /// [`bootstrap`](Self::bootstrap) with a key the caller generated
    /// ([`new_key_pem`]) and stored before the call: if the answer is lost,
    /// the same token sent again with the same key, within the token's
    /// lifetime, gets the certificate already issued.
    pub async fn bootstrap_with_key(
        &self,
        workspace: &WorkspaceId,
        token: &str,
        agent_version: &str,
        key_pem: &str,
    ) -> Result<BootstrapResponse, ClientError> {
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| ClientError::Protocol(format!("the agent's key: {e}")))?;
        let csr = csr_for(&key)?;
        let request = BootstrapRequest {
            version: PROTOCOL_VERSION,
            workspace: workspace.clone(),
            token: TokenText::new(token).map_err(|e| ClientError::Protocol(e.to_string()))?,
            csr_pem: csr,
            agent_version: AgentVersion::new(agent_version)
                .map_err(|e| ClientError::Protocol(e.to_string()))?,
        };
        let response: BootstrapResponse = self
            .exchange("/v1/bootstrap", v1::encode(&request), true)
            .await?;
        self.use_new_identity(&response.certificate_chain_pem, &key)?;
        Ok(response)
    }

    /// Renews the certificate: a new key, a CSR for it over the current mutual
    /// TLS identity, and the new certificate used from the next request on (the
    /// old one stays valid until it expires).
    pub async fn renew(&self) -> Result<RenewalResponse, ClientError> {
        let (key, csr) = new_key_and_csr()?;
        let request = RenewalRequest {
            version: PROTOCOL_VERSION,
            csr_pem: csr,
        };
        let response: RenewalResponse = self
            .exchange("/v1/renew", v1::encode(&request), true)
            .await?;
        self.use_new_identity(&response.certificate_chain_pem, &key)?;
        Ok(response)
    }

    /// One long-poll.
    pub async fn poll(
        &self,
        finished: Vec<CommandId>,
        wait_secs: u32,
    ) -> Result<PollResponse, ClientError> {
        let request = PollRequest::new(finished, wait_secs)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.exchange_within(
            "/v1/poll",
            v1::encode(&request),
            false,
            Duration::from_secs(u64::from(wait_secs)),
        )
        .await
    }

    /// Posts one result; the acknowledgement means it is stored.
    pub async fn post_result(&self, result: CommandResult) -> Result<ResultAck, ClientError> {
        let request = ResultRequest {
            version: PROTOCOL_VERSION,
            result,
        };
        self.exchange("/v1/result", v1::encode(&request), false)
            .await
    }

    /// One request and its decoded answer. `last`: the identity changes with
    /// the answer (bootstrap, renewal), so the connection closes after it.
    async fn exchange<M: Message>(
        &self,
        path: &str,
        body: Vec<u8>,
        last: bool,
    ) -> Result<M, ClientError> {
        self.exchange_within(path, body, last, Duration::ZERO).await
    }

    /// [`exchange`](Self::exchange), the server holding the request for up to
    /// `held` before it answers.
    async fn exchange_within<M: Message>(
        &self,
        path: &str,
        body: Vec<u8>,
        last: bool,
        held: Duration,
    ) -> Result<M, ClientError> {
        let (status, bytes) = self.send(path, body, last, true, held).await?;
        if status == 200 {
            v1::decode::<M>(&bytes).map_err(|e: DecodeError| ClientError::Protocol(e.to_string()))
        } else {
            let error = v1::decode::<ErrorResponse>(&bytes)
                .map_err(|e| ClientError::Protocol(format!("status {status}: {e}")))?;
            Err(ClientError::Refused { status, error })
        }
    }

    /// Sends `body` as-is to `path`; returns the status and the body of the
    /// answer. For tests of what the server refuses.
    ///
    /// The request goes over the kept connection when it is free and was
    /// opened under the current identity — one connection per agent, so a
    /// long-polling agent costs one TLS handshake, not one per poll. A kept
    /// connection the server closed in the meantime is replaced before the
    /// request is sent; a request is never sent twice.
    pub async fn send_raw(&self, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), ClientError> {
        self.send(path, body, false, false, Duration::ZERO).await
    }

    /// [`send_raw`](Self::send_raw); with `last`, the request asks the server
    /// to close the connection after answering, and it is not kept.
    /// With `features`, it says what this client understands
    /// ([`v1::FEATURES_HEADER`]); a raw request says nothing.
    /// Within the answer deadline, beyond `held` (a poll's own wait).
    async fn send(
        &self,
        path: &str,
        body: Vec<u8>,
        last: bool,
        features: bool,
        held: Duration,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let deadline = self.request_timeout + held;
        tokio::time::timeout(deadline, self.send_now(path, body, last, features))
            .await
            .map_err(|_| ClientError::Connect(format!("no answer within {deadline:?}")))?
    }

    async fn send_now(
        &self,
        path: &str,
        body: Vec<u8>,
        last: bool,
        features: bool,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut request = hyper::Request::post(path)
            .header("host", self.server_name.to_str().as_ref())
            .header("content-type", "application/json");
        if last {
            request = request.header("connection", "close");
        }
        if features {
            request = request.header(v1::FEATURES_HEADER, v1::FEATURE_CANCEL);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let generation = self.generation.load(Ordering::SeqCst);
        let Ok(mut kept) = self.kept.try_lock() else {
            // The kept connection is busy: this request gets its own.
            let mut sender = self.connect().await?;
            return read_answer(sender.send_request(request).await).await;
        };
        let reusable = match kept.take() {
            Some((opened, mut sender)) if opened == generation && !sender.is_closed() => {
                sender.ready().await.ok().map(|()| sender)
            }
            _ => None,
        };
        let mut sender = match reusable {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        let answer = match sender.try_send_request(request).await {
            Ok(response) => read_answer(Ok(response)).await,
            Err(mut unsent) => match unsent.take_message() {
                // The connection closed before the request went out: send it
                // on a fresh one.
                Some(request) => {
                    sender = self.connect().await?;
                    read_answer(sender.send_request(request).await).await
                }
                None => Err(ClientError::Connect(unsent.into_error().to_string())),
            },
        };
        if answer.is_ok() && !last && !sender.is_closed() {
            *kept = Some((generation, sender));
        }
        answer
    }

    /// A new TLS connection under the current identity, speaking HTTP/1.1.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let within = self.connect_timeout;
        tokio::time::timeout(within, self.connect_now())
            .await
            .map_err(|_| ClientError::Connect(format!("no connection within {within:?}")))?
    }

    async fn connect_now(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let connect = |e: &dyn std::fmt::Display| ClientError::Connect(e.to_string());
        let config = crate::lock_or_recover(&self.config).clone();
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| connect(&e))?;
        // Small messages both ways: no waiting on Nagle for a delayed ACK.
        tcp.set_nodelay(true).map_err(|e| connect(&e))?;
        super::keepalive(&tcp).map_err(|e| connect(&e))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| connect(&e))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| connect(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// The status and the whole body of an answer.
async fn read_answer(
    response: hyper::Result<hyper::Response<hyper::body::Incoming>>,
) -> Result<(u16, Vec<u8>), ClientError> {
    let response = response.map_err(|e| ClientError::Connect(e.to_string()))?;
    let status = response.status().as_u16();
    let bytes = Limited::new(response.into_body(), 8 * 1024 * 1024)
        .collect()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .to_bytes();
    Ok((status, bytes.to_vec()))
}

/// A fresh ECDSA P-256 key (it never leaves this process) and a CSR for it,
/// as [`AgentClient::bootstrap`] and [`AgentClient::renew`] make them.
pub fn new_key_and_csr() -> Result<(rcgen::KeyPair, String), ClientError> {
    let key = new_key()?;
    let csr = csr_for(&key)?;
    Ok((key, csr))
}

/// A fresh ECDSA P-256 key for an agent's certificate, as PKCS#8 PEM.
pub fn new_key_pem() -> Result<String, ClientError> {
    Ok(new_key()?.serialize_pem())
}

fn new_key() -> Result<rcgen::KeyPair, ClientError> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

/// A certificate signing request for `key`.
fn csr_for(key: &rcgen::KeyPair) -> Result<String, ClientError> {
    rcgen::CertificateParams::default()
        .serialize_request(key)
        .and_then(|c| c.pem())
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

/// TLS settings trusting `roots`, with a client identity or without.
fn tls_config(
    roots: &Arc<rustls::RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let connect = |e: &dyn std::fmt::Display| ClientError::Connect(e.to_string());
    let builder = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| connect(&e))?
        .with_root_certificates(roots.clone());
    let mut config = match identity {
        Some((chain, key)) => {
            // ECDSA first (the agent makes P-256 keys), then any other type.
            let signing = match rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&key) {
                Ok(signing) => signing,
                Err(_) => super::provider()
                    .key_provider
                    .load_private_key(key)
                    .map_err(|e| connect(&e))?,
            };
            let certified = rustls::sign::CertifiedKey::new(chain, signing);
            match certified.keys_match() {
                Ok(())
                | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
                Err(e) => return Err(connect(&e)),
            }
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                certified,
            )))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
