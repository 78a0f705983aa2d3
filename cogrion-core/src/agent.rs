//! The control plane's side of the Cluster Agent, independent of any
//! transport: bootstrap tokens, the [`AgentInstaller`] seam (how phase 2 puts
//! the agent into a cluster), the [`AgentGateway`] that a transport
//! (in-process, HTTPS) calls for every agent request, and the
//! [`AgentTransport`] seam through which the engine reaches agents.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cogrion_agent_proto::{Command, CommandId, CommandResult};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::checkpoint::Progress;
use crate::clock::{Clock, Timestamp};
use crate::error::{Error, Result};
use crate::ids::{IdempotencyKey, WorkspaceId};
use crate::provisioner::ClusterAccess;
use crate::store::{
    AgentCredential, BootstrapTokenRecord, CertSerial, CommandStatus, KeyDigest, TokenHash,
    WorkspaceStore,
};
pub use crate::transport::{AgentEvent, AgentEventSink, AgentPresence, AgentTransport, LateSink};

/// A one-time bootstrap token: 256 bits from a CSPRNG (rand's thread RNG, ChaCha
/// seeded and periodically reseeded from the operating system), shown
/// once (to the agent installer), stored only as its SHA-256 [`TokenHash`].
///
/// Its `Debug` and `Display` never print the secret.
///
/// ```
/// use cogrion_core::agent::BootstrapToken;
/// let token = BootstrapToken::generate();
/// assert_eq!(token.expose().len(), 64);
/// assert!(!format!("{token:?}").contains(token.expose()));
/// assert_eq!(BootstrapToken::parse(token.expose()).unwrap().hash(), token.hash());
/// assert!(BootstrapToken::parse("too-short").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken(String);

impl BootstrapToken {
    /// A fresh token.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Reads a token presented by an agent: exactly 64 lowercase hex digits (the
    /// wire's rule, [`TokenText`](cogrion_agent_proto::v1::TokenText)).
    pub fn parse(text: &str) -> Result<Self, crate::ids::InvalidValue> {
        let text = cogrion_agent_proto::v1::TokenText::new(text.trim())?;
        Ok(Self(text.expose().to_owned()))
    }

    /// The secret itself — hand it only to the agent's installer.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash the store keeps.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BootstrapToken(sha256:{})",
            &self.hash().to_string()[..12]
        )
    }
}

/// What the agent installer needs to install a workspace's Cluster Agent.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentInstall {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// How to reach its cluster.
    pub cluster: ClusterAccess,
    /// The one-time token the agent exchanges for its certificate.
    pub token: BootstrapToken,
    /// The step's idempotency key.
    pub idempotency_key: IdempotencyKey,
}

impl AgentInstall {
    /// An install request.
    pub fn new(
        workspace: WorkspaceId,
        cluster: ClusterAccess,
        token: BootstrapToken,
        idempotency_key: IdempotencyKey,
    ) -> Self {
        Self {
            workspace,
            cluster,
            token,
            idempotency_key,
        }
    }
}

/// Installs the Cluster Agent into a workspace's cluster (namespace, service
/// account, RBAC, the token's secret, the deployment) and removes it again.
///
/// # Contract
/// Both methods are idempotent: installing again replaces the token's secret and
/// leaves one agent; uninstalling what is gone is success. They run from the
/// control plane against the cluster's API (`ClusterAccess`).
#[async_trait]
pub trait AgentInstaller: fmt::Debug + Send + Sync + 'static {
    /// Installs (or re-installs with a new token) the agent.
    async fn install(&self, request: AgentInstall) -> Result<Progress<()>>;
    /// Removes the agent and everything installed with it.
    async fn uninstall(
        &self,
        workspace: &WorkspaceId,
        cluster: &ClusterAccess,
    ) -> Result<Progress<()>>;
}

/// Settings of the [`AgentGateway`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// How long an agent certificate is valid (default 24 h).
    pub credential_ttl: Duration,
    /// The most commands handed out on one poll (default 32).
    pub max_commands_per_poll: usize,
    /// How stale a credential's durable
    /// [`last_seen_at`](AgentCredential::last_seen_at) may grow before a poll
    /// writes it again (default 5 min): polls stay write-free in between, and
    /// every replica can tell when an agent was last seen to within this.
    pub seen_interval: Duration,
    /// The share of a certificate's life, in percent, that must have passed
    /// before it may be renewed (default 50; agents are told to renew at 66,
    /// [`RenewalSettings`](crate::proto::v1::RenewalSettings)). Earlier, a
    /// renewal is refused ([`Error::RenewalTooEarly`]) and nothing is
    /// written: a certificate cannot be renewed over and over.
    pub renew_from_percent: u8,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            credential_ttl: Duration::from_secs(24 * 3600),
            max_commands_per_poll: 32,
            seen_interval: Duration::from_secs(300),
            renew_from_percent: 50,
        }
    }
}

/// The control plane's side of every agent request, whatever carries it.
///
/// A transport authenticates the connection, then calls
/// [`bootstrap`](Self::bootstrap) (with a token), [`poll`](Self::poll) and
/// [`post_result`](Self::post_result) (with the certificate serial it verified).
/// The gateway checks tokens and credentials against the store, makes every fact
/// durable before reporting it ([`AgentEventSink`]), and keeps liveness in memory:
/// an idle poll costs no durable write.
#[derive(Debug, Clone)]
pub struct AgentGateway {
    store: Arc<dyn WorkspaceStore>,
    clock: Arc<dyn Clock>,
    sink: Arc<dyn AgentEventSink>,
    config: GatewayConfig,
    presence: Arc<Mutex<HashMap<WorkspaceId, AgentPresence>>>,
}

impl AgentGateway {
    /// A gateway over `store`, reporting to `sink`.
    pub fn new(
        store: Arc<dyn WorkspaceStore>,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn AgentEventSink>,
        config: GatewayConfig,
    ) -> Self {
        Self {
            store,
            clock,
            sink,
            config,
            presence: Arc::default(),
        }
    }

    /// Exchanges a bootstrap token for a credential for the key whose digest
    /// is `key`. The token is consumed atomically; the workspace's earlier
    /// credentials are revoked (a re-bootstrap replaces the agent's identity).
    /// Refusals are [`Error::TokenRefused`] with a distinct reason, and change
    /// nothing.
    ///
    /// An agent that lost the answer sends the same token with the same key
    /// again: within the token's lifetime it gets the credential already
    /// issued (same serial, same validity; see [`TokenStore::exchange`]); with
    /// any other key, the token is used.
    ///
    /// [`TokenStore::exchange`]: crate::store::TokenStore::exchange
    pub async fn bootstrap(
        &self,
        workspace: &WorkspaceId,
        token: &BootstrapToken,
        key: KeyDigest,
    ) -> Result<AgentCredential> {
        let now = self.clock.now();
        let mut credential = AgentCredential::new(
            workspace.clone(),
            new_serial()?,
            now,
            now + self.config.credential_ttl,
        );
        credential.key = Some(key);
        credential.token = Some(token.hash());
        // One transaction: the workspace not being destroyed, the token
        // consumed, the older credentials revoked, the new one stored — or
        // nothing at all; or the earlier answer, replayed.
        let stored = self
            .store
            .exchange(&token.hash(), credential.clone(), now)
            .await
            .inspect_err(|e| {
                tracing::warn!(workspace = %workspace, error = %e, "bootstrap refused");
            })?;
        if stored.serial != credential.serial {
            tracing::info!(workspace = %workspace, serial = %stored.serial, "bootstrap replayed: the agent lost the first answer");
            return Ok(stored);
        }
        tracing::info!(workspace = %workspace, serial = %stored.serial, "agent bootstrapped");
        self.sink
            .on_agent_event(AgentEvent::Bootstrapped {
                workspace: workspace.clone(),
                serial: stored.serial.clone(),
                at: now,
            })
            .await?;
        Ok(stored)
    }

    /// Renews the credential `serial` (which must be current: not revoked, not
    /// expired, and in its renewal window,
    /// [`GatewayConfig::renew_from_percent`]) for the key whose digest is `key`: a new credential for the
    /// same workspace, valid for [`GatewayConfig::credential_ttl`] from now.
    /// The old one stays valid until it expires, so the agent switches over
    /// without a gap; any other live credential of the workspace (an earlier
    /// renewal whose answer was lost) is revoked, so at most two stay live.
    /// The check and the write are one store operation
    /// ([`CredentialStore::renew_credential`](crate::store::CredentialStore::renew_credential)):
    /// a revocation landing meanwhile either refuses the renewal or revokes it.
    pub async fn renew(&self, serial: &CertSerial, key: KeyDigest) -> Result<AgentCredential> {
        let now = self.clock.now();
        // The workspace is the old credential's: read it for the new record
        // (the store checks the old one again, in the transaction).
        let old = self.check_current(self.store.get_credential(serial).await?)?;
        let life = old
            .expires_at
            .as_millis()
            .saturating_sub(old.issued_at.as_millis());
        let from = Timestamp::from_millis(
            old.issued_at.as_millis()
                + life * u64::from(self.config.renew_from_percent.min(100)) / 100,
        );
        if now < from {
            return Err(Error::RenewalTooEarly {
                serial: serial.clone(),
                from,
            });
        }
        let mut renewed = AgentCredential::new(
            old.workspace.clone(),
            new_serial()?,
            now,
            now + self.config.credential_ttl,
        );
        renewed.key = Some(key);
        let renewed = self.store.renew_credential(serial, renewed, now).await?;
        tracing::info!(workspace = %renewed.workspace, old = %serial, new = %renewed.serial, "agent certificate renewed");
        Ok(renewed)
    }

    /// Checks that `serial` is a current credential and returns it.
    pub async fn authenticate(&self, serial: &CertSerial) -> Result<AgentCredential> {
        let credential = self.store.get_credential(serial).await?;
        self.check_current(credential)
    }

    /// `credential` if it is neither revoked nor expired.
    fn check_current(&self, credential: AgentCredential) -> Result<AgentCredential> {
        credential.check_current(self.clock.now())?;
        Ok(credential)
    }

    /// An authenticated poll: records the credential's first poll (once), then
    /// hands out the workspace's pending commands in order. With nothing pending,
    /// nothing is written.
    pub async fn poll(&self, serial: &CertSerial) -> Result<Delivery> {
        let (workspace, at, delivery) = self.poll_untracked(serial).await?;
        self.presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                workspace,
                AgentPresence {
                    last_seen: at,
                    serial: Some(serial.clone()),
                    connected: true,
                },
            );
        Ok(delivery)
    }

    /// [`poll`](Self::poll) for a transport that keeps its agents' presence
    /// itself (the HTTPS server keeps it with the rest of what it holds per
    /// agent): the same checks and writes, nothing in the gateway's presence.
    /// Returns the agent's workspace, the time of the poll and the commands.
    pub async fn poll_untracked(
        &self,
        serial: &CertSerial,
    ) -> Result<(WorkspaceId, Timestamp, Delivery)> {
        // The credential and whether anything is pending, in one read: an idle
        // poll (the common case by far) costs that read alone.
        let (credential, pending) = self.store.get_credential_for_poll(serial).await?;
        let credential = self.check_current(credential)?;
        let now = self.clock.now();
        let workspace = credential.workspace;
        // The first poll, and then one durable "last seen" per interval.
        let stale = credential
            .last_seen_at
            .is_none_or(|t| now >= t + self.config.seen_interval);
        if (credential.first_poll_at.is_none() || stale)
            && self.store.mark_polled(serial, now).await?
            && credential.renewed_from.is_none()
        {
            // A renewal's first poll is not news.
            self.sink
                .on_agent_event(AgentEvent::Polled {
                    workspace: workspace.clone(),
                    serial: serial.clone(),
                    at: now,
                })
                .await?;
        }
        if !pending {
            return Ok((workspace, now, Delivery::default()));
        }
        let queued = self
            .store
            .deliver(&workspace, self.config.max_commands_per_poll, now)
            .await?;
        let mut delivery = Delivery::default();
        for q in queued {
            match q.status {
                CommandStatus::Cancelling { .. } => delivery.cancel.push(q.command.id),
                _ => delivery.commands.push(q.command),
            }
        }
        Ok((workspace, now, delivery))
    }

    /// Stores an agent's result (before acknowledging it) and reports it. A
    /// result for a command of another workspace is [`Error::NotFound`].
    pub async fn post_result(&self, serial: &CertSerial, result: CommandResult) -> Result<bool> {
        let credential = self.authenticate(serial).await?;
        let now = self.clock.now();
        let id: CommandId = result.id.clone();
        let outcome = match result.outcome {
            cogrion_agent_proto::CommandOutcome::Succeeded => "succeeded",
            _ => "failed",
        };
        let first = self
            .store
            .answer(&credential.workspace, result, now)
            .await?;
        if first {
            metrics::counter!(crate::metrics::COMMANDS_ANSWERED, "outcome" => outcome).increment(1);
            self.sink
                .on_agent_event(AgentEvent::CommandAnswered {
                    workspace: credential.workspace.clone(),
                    id,
                    at: now,
                })
                .await?;
        }
        Ok(first)
    }

    /// What the gateway last saw of `workspace`'s agent.
    pub fn presence(&self, workspace: &WorkspaceId) -> Option<AgentPresence> {
        self.presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(workspace)
            .cloned()
    }

    /// Forgets a workspace's presence (after its agent was disconnected).
    pub fn forget(&self, workspace: &WorkspaceId) {
        self.presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(workspace);
    }
}

/// What one poll hands an agent.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Delivery {
    /// Commands to run, in queue order.
    pub commands: Vec<Command>,
    /// Commands the control plane gave up waiting for, which the agent is
    /// asked to cancel and answer: with the result if it has one, a failure
    /// if it cancelled the run or never ran it. Asked on every poll until the
    /// answer is stored.
    pub cancel: Vec<CommandId>,
}

/// A fresh credential serial: 16 random bytes (a positive DER integer), as hex.
fn new_serial() -> Result<CertSerial> {
    let mut serial = [0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    Ok(CertSerial::new(
        serial
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )?)
}

/// Issues a fresh bootstrap token for `workspace`, valid for `ttl`, and stores
/// its hash (replacing the workspace's unconsumed token). The token is returned
/// once and never stored.
pub async fn issue_bootstrap_token(
    store: &dyn WorkspaceStore,
    workspace: &WorkspaceId,
    now: Timestamp,
    ttl: Duration,
) -> Result<BootstrapToken> {
    let token = BootstrapToken::generate();
    store
        .put_token(BootstrapTokenRecord::new(
            workspace.clone(),
            token.hash(),
            now,
            now + ttl,
        ))
        .await
        .map_err(|e| match e {
            Error::AlreadyExists(_) => Error::Unavailable {
                service: "token issuer".into(),
                detail: "token hash collision; issue again".into(),
                source: None,
            },
            other => other,
        })?;
    Ok(token)
}
