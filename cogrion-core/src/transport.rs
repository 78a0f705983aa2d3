//! The [`AgentTransport`] trait: how commands reach agents, and how agents' polls
//! and results come back.

use std::fmt;

use async_trait::async_trait;
use cogrion_agent_proto::CommandId;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::Result;
use crate::ids::WorkspaceId;
use crate::store::CertSerial;

/// Something an agent did that the engine must hear about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentEvent {
    /// The agent exchanged its bootstrap token for a certificate.
    Bootstrapped {
        /// Its workspace.
        workspace: WorkspaceId,
        /// The certificate issued.
        serial: CertSerial,
        /// When.
        at: Timestamp,
    },
    /// The agent made an authenticated poll. The first one after bootstrap moves a
    /// provisioning workspace to `Active`.
    Polled {
        /// Its workspace (from its certificate, never from the request).
        workspace: WorkspaceId,
        /// The certificate it presented.
        serial: CertSerial,
        /// When.
        at: Timestamp,
    },
    /// The agent's result for a command was stored.
    CommandAnswered {
        /// Its workspace.
        workspace: WorkspaceId,
        /// The command.
        id: CommandId,
        /// When.
        at: Timestamp,
    },
}

/// Where the transport delivers [`AgentEvent`]s; the engine implements it.
#[async_trait]
pub trait AgentEventSink: fmt::Debug + Send + Sync + 'static {
    /// Handles one event. The transport has already made the event's facts durable
    /// (a stored result, a consumed token) before calling.
    async fn on_agent_event(&self, event: AgentEvent) -> Result<()>;
}

/// An [`AgentEventSink`] that forwards to one set later. A transport's gateway
/// reports to the engine while the engine uses the transport, so one of the two
/// exists first: give the gateway this, build the engine, then
/// [`set`](Self::set) it. An event before that is refused
/// ([`Unavailable`](crate::Error::Unavailable)), so the agent's request fails
/// and is retried.
///
/// ```
/// use std::sync::Arc;
/// use cogrion_core::agent::LateSink;
/// let sink = Arc::new(LateSink::new());
/// // … hand `sink.clone()` to the gateway, build the engine, then:
/// // sink.set(Arc::new(engine.clone()));
/// # let _ = sink;
/// ```
#[derive(Debug, Default)]
pub struct LateSink(std::sync::OnceLock<std::sync::Arc<dyn AgentEventSink>>);

impl LateSink {
    /// A sink with nothing behind it yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forwards to `sink` from now on; `false` if one was set already (it stays).
    pub fn set(&self, sink: std::sync::Arc<dyn AgentEventSink>) -> bool {
        self.0.set(sink).is_ok()
    }
}

#[async_trait]
impl AgentEventSink for LateSink {
    async fn on_agent_event(&self, event: AgentEvent) -> Result<()> {
        match self.0.get() {
            Some(sink) => sink.on_agent_event(event).await,
            None => Err(crate::Error::Unavailable {
                service: "agent events".into(),
                detail: "the engine is not started yet".into(),
                source: None,
            }),
        }
    }
}

/// What a transport knows, in memory, about a workspace's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPresence {
    /// When the agent was last heard from.
    pub last_seen: Timestamp,
    /// The certificate it last presented.
    pub serial: Option<CertSerial>,
    /// Whether it holds a connection open now.
    pub connected: bool,
}

/// How commands reach agents and how their polls and results come back.
///
/// # Contract
/// Commands themselves travel through the store's durable
/// [`CommandQueue`](crate::store::CommandQueue); the transport only carries them. It
/// authenticates each agent, hands it its own workspace's pending commands,
/// stores results before acknowledging them, and reports what happened to its
/// [`AgentEventSink`]. An idle poll costs no durable write: liveness is kept in
/// memory ([`presence`](Self::presence)).
///
/// The shipped implementation is HTTPS long-poll over rustls mTLS; a host may put
/// gRPC or a message broker behind the same trait.
#[async_trait]
pub trait AgentTransport: fmt::Debug + Send + Sync + 'static {
    /// New commands were queued for `workspace`: wake its agent's waiting poll, if
    /// any. Never fails because no agent is connected.
    async fn notify(&self, workspace: &WorkspaceId) -> Result<()>;

    /// Closes every connection of `workspace`'s agent (after its credentials were
    /// revoked).
    async fn disconnect(&self, workspace: &WorkspaceId, reason: &str) -> Result<()>;

    /// What this transport last saw of `workspace`'s agent; `None` if never seen.
    async fn presence(&self, workspace: &WorkspaceId) -> Result<Option<AgentPresence>>;
}
