//! The Cogrion Cluster Agent.
//!
//! The agent runs inside a workspace's cluster. It exchanges a one-time bootstrap
//! token for mutual-TLS credentials (its private key is generated here and never
//! leaves), long-polls the control plane for commands, runs them through a
//! registry of local [`Handlers`], and posts their results — see `DESIGN.md`,
//! "Agent protocol and security".
//!
//! [`AgentRuntime`] is the library; the `cogrion-agent` binary wraps it with
//! [`AgentConfig::from_env`].
//!
//! # Guarantees
//! - **De-duplication.** A command's result is written to the state directory
//!   before it is posted; a command delivered again (a lost acknowledgement, a
//!   restart) gets its stored result, not a second run.
//! - **Restarts.** The identity (certificate and key, the key file 0600) and the
//!   results live in the state directory: a restarted agent carries on without
//!   a new token.
//! - **Renewal.** At [`renew_at_percent`](cogrion_agent_proto::v1::RenewalSettings)
//!   of its certificate's life (two thirds by default) the agent renews it with a
//!   new key and switches over on its next request, without a restart; the old
//!   certificate stays valid until it expires.
//! - **Re-bootstrap.** A certificate that expired while the agent was away, or
//!   was revoked, is dropped; the agent then bootstraps again with the token in
//!   its token file. The control plane writes a fresh token there (the mounted
//!   secret) when it re-installs the agent —
//!   `Engine::rebootstrap_agent` does that for one workspace, and the engine's
//!   driver runs `Engine::rebootstrap_expired_agents` every few minutes, which
//!   does it for every `Active` workspace whose certificates all expired; until
//!   then the agent waits, retrying with backoff. A spent or refused token is
//!   not tried twice.
//! - **Cancel requests.** A poll may ask the agent to cancel commands the
//!   control plane gave up waiting for: each is answered with its stored
//!   result if it ran, otherwise as failed ("cancelled before it ran") and is
//!   never run afterwards. Handlers run one at a time between polls, so none
//!   is running when a cancel arrives; stopping a running handler comes with
//!   asynchronous handlers.
//! - **Back-pressure.** Failures back off exponentially with full jitter;
//!   `Retry-After` from an overloaded or rate-limiting control plane is obeyed.
//!
//! Handlers shipped here: `health` and `describe`. Helm and manifests come with
//! their executors.

mod config;
mod handlers;
mod runtime;

pub use cogrion_agent_proto as proto;
pub use config::{AgentConfig, ConfigError};
pub use handlers::{Handler, Handlers};
pub use runtime::{AgentError, AgentRuntime, write_token_file};
