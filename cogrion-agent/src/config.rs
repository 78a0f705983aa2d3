//! The agent's settings, from its environment and mounted files.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use cogrion_agent_proto::WorkspaceId;

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable is missing.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A variable or file is not usable.
    #[error("{what}: {detail}")]
    Invalid {
        /// Which variable or file.
        what: String,
        /// What is wrong.
        detail: String,
    },
}

/// Where the control plane is and what the agent is.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The control plane's agent endpoint.
    pub endpoint: SocketAddr,
    /// The name its certificate carries.
    pub server_name: String,
    /// The CA certificate(s) to trust, PEM.
    pub ca_pem: String,
    /// The workspace this agent serves.
    pub workspace: WorkspaceId,
    /// The file holding the bootstrap token (a mounted secret); read again
    /// whenever the agent needs to bootstrap.
    pub token_file: PathBuf,
    /// Where the agent keeps its identity and results (a persistent volume).
    pub state_dir: PathBuf,
    /// How long each poll may be held, in seconds (default 30).
    pub poll_wait_secs: u32,
}

impl AgentConfig {
    /// The settings from the environment:
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `COGRION_ENDPOINT` | `host:port` of the control plane's agent endpoint |
    /// | `COGRION_SERVER_NAME` | the name in its certificate (default: the host) |
    /// | `COGRION_CA_FILE` | the CA bundle to trust (PEM) |
    /// | `COGRION_WORKSPACE` | the workspace id |
    /// | `COGRION_TOKEN_FILE` | the bootstrap token file |
    /// | `COGRION_STATE_DIR` | the state directory |
    /// | `COGRION_POLL_WAIT_SECS` | optional, default 30 |
    pub fn from_env() -> Result<Self, ConfigError> {
        let var = |name: &'static str| std::env::var(name).map_err(|_| ConfigError::Missing(name));
        let invalid = |what: &str, detail: &dyn std::fmt::Display| ConfigError::Invalid {
            what: what.into(),
            detail: detail.to_string(),
        };
        let endpoint_text = var("COGRION_ENDPOINT")?;
        let endpoint = endpoint_text
            .to_socket_addrs()
            .map_err(|e| invalid("COGRION_ENDPOINT", &e))?
            .next()
            .ok_or_else(|| invalid("COGRION_ENDPOINT", &"resolves to no address"))?;
        let host = endpoint_text
            .rsplit_once(':')
            .map_or(endpoint_text.as_str(), |(h, _)| h);
        let server_name = std::env::var("COGRION_SERVER_NAME").unwrap_or_else(|_| host.to_owned());
        let ca_file = var("COGRION_CA_FILE")?;
        let ca_pem = std::fs::read_to_string(&ca_file).map_err(|e| invalid(&ca_file, &e))?;
        let workspace = var("COGRION_WORKSPACE")?
            .parse()
            .map_err(|e| invalid("COGRION_WORKSPACE", &e))?;
        let poll_wait_secs = match std::env::var("COGRION_POLL_WAIT_SECS") {
            Ok(v) => v
                .parse()
                .map_err(|e| invalid("COGRION_POLL_WAIT_SECS", &e))?,
            Err(_) => 30,
        };
        Ok(Self {
            endpoint,
            server_name,
            ca_pem,
            workspace,
            token_file: var("COGRION_TOKEN_FILE")?.into(),
            state_dir: var("COGRION_STATE_DIR")?.into(),
            poll_wait_secs,
        })
    }

    /// Settings given directly (tests, embedding).
    pub fn new(
        endpoint: SocketAddr,
        server_name: impl Into<String>,
        ca_pem: impl Into<String>,
        workspace: WorkspaceId,
        token_file: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            endpoint,
            server_name: server_name.into(),
            ca_pem: ca_pem.into(),
            workspace,
            token_file: token_file.into(),
            state_dir: state_dir.into(),
            poll_wait_secs: 30,
        }
    }

    /// With this poll wait.
    pub fn with_poll_wait(mut self, secs: u32) -> Self {
        self.poll_wait_secs = secs;
        self
    }
}
