//! [`AgentServer`]: the agents' HTTPS endpoint (rustls on aws-lc-rs, HTTP/1.1,
//! JSON messages of protocol v1), and [`AgentClient`], the protocol's client.
//!
//! # Endpoints
//! | path | TLS | body |
//! |---|---|---|
//! | `POST /v1/bootstrap` | server-authenticated; no client certificate needed | [`BootstrapRequest`](cogrion_core::proto::v1::BootstrapRequest) → [`BootstrapResponse`](cogrion_core::proto::v1::BootstrapResponse) |
//! | `POST /v1/poll` | mutual: a certificate from the control plane's CA | [`PollRequest`](cogrion_core::proto::v1::PollRequest) → [`PollResponse`](cogrion_core::proto::v1::PollResponse), held up to `wait_secs`; cancel requests only when the request carries `cogrion-features: cancel` ([`FEATURES_HEADER`](cogrion_core::proto::v1::FEATURES_HEADER)), which [`AgentClient`] sends |
//! | `POST /v1/result` | mutual | [`ResultRequest`](cogrion_core::proto::v1::ResultRequest) → [`ResultAck`](cogrion_core::proto::v1::ResultAck), after the result is stored |
//! | `POST /v1/renew` | mutual, with a certificate still good | [`RenewalRequest`](cogrion_core::proto::v1::RenewalRequest) → [`RenewalResponse`](cogrion_core::proto::v1::RenewalResponse) |
//!
//! Every refusal is an [`ErrorResponse`](cogrion_core::proto::v1::ErrorResponse)
//! with its own [`ErrorCode`](cogrion_core::proto::v1::ErrorCode) and is logged
//! with its reason; a refused request changes nothing stored.
//!
//! # Security
//! Every byte before authentication is treated as hostile; what it may hold is
//! bounded (the numbers are [`AgentServerConfig`]'s defaults):
//! - **Time.** A new connection sends its ClientHello within 5 s and finishes
//!   its handshake within 10 s; a connection without a client certificate
//!   sends each request's head within 10 s of being idle (an agent's, 120 s);
//!   a body arrives within 10 s (`408`).
//! - **Memory.** A request's head fits in 8 KiB and 32 headers (`431` past
//!   them); bodies are limited before they are read (`too_large`); decoding
//!   is strict.
//! - **Count.** Connections not yet authenticated (in their handshake, or
//!   without a client certificate): at most 128 per source — an IPv4 address
//!   or an IPv6 /64; a new one closes the source's oldest, so a client
//!   behind an attacker's NAT still gets in — and half the process's
//!   open-files limit in all (up to 8,192; the rest wait in the listen
//!   backlog). Authenticated connections are counted per agent (4; a new one
//!   closes the oldest), never per address. The TLS handshakes the server
//!   computes at once are bounded (256): a connection takes a slot only once
//!   its ClientHello is in and gives it back when the server's answer is
//!   written, so silent clients hold none. Bootstrap and renewal exchanges
//!   beyond their bound (64) are answered `503 overloaded` with a jittered
//!   `Retry-After`.
//! - **Identity.** The agent's identity comes from its client certificate —
//!   the workspace in its URI SAN and its serial — never from the request
//!   body. The credential behind the serial is checked (revocation, expiry) on
//!   every request.
//! - **Bootstrap** checks the CSR (readable, signature, the key's type read
//!   from the key and matching the signature's algorithm) *before* consuming
//!   the one-time token; the certificate's subject is the CA's choice. A
//!   token that does not verify for the workspace named (unknown, another
//!   workspace's, a workspace that does not exist) gets one answer —
//!   `403 token_invalid`, one message — no sooner than 50 ms after the
//!   request, whatever the path; no store or internal detail reaches the
//!   client (it is logged). Refusals beyond 5 a minute from one source are
//!   answered `rate_limited`; a token that verifies is never held back.
//! - **Renewal** only from half the certificate's life on
//!   ([`GatewayConfig::renew_from_percent`](cogrion_core::agent::GatewayConfig::renew_from_percent))
//!   and at most 3 times an hour per certificate (`rate_limited`); a storm is
//!   logged once.
//! - Refusals are logged at most once a second, with the count skipped.
//! - Revoking an agent's credentials (destroy, re-bootstrap) closes its open
//!   connections, besides the per-request check.
//!
//! # Connections
//! HTTP/1.1 with keep-alive: an [`AgentClient`] keeps one connection and sends
//! its requests over it in turn (a request that finds it busy opens its own),
//! so a long-polling agent holds one connection and pays one TLS handshake per
//! identity, not one per poll.

mod admission;
mod client;
mod server;

pub use client::{AgentClient, ClientError, new_key_and_csr, new_key_pem};
pub use server::{AgentServer, AgentServerConfig, AgentServerStats, ServerHandle};

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The one crypto provider of the tree (made once: every TLS configuration,
/// one per agent identity, shares it).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// TCP keepalive on `tcp`: probes after 30 s without traffic, every 10 s, so
/// a peer that vanished (a NAT that forgot the flow, a host that died) is
/// found while a poll is held rather than never.
fn keepalive(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10));
    socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive)
}

/// Certificates from PEM.
fn certificates(pem: &str) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    Ok(certs)
}

/// A private key from PEM.
fn private_key(pem: &str) -> Result<rustls_pki_types::PrivateKeyDer<'static>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("unreadable private key: {e}"))
}

/// A root store holding the certificates of `pem`.
fn roots(pem: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(pem)? {
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    Ok(roots)
}
