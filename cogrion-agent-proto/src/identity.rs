use std::fmt;

use crate::{InvalidValue, WorkspaceId, check_chars};

/// The trust domain used when the host configures none.
pub const DEFAULT_TRUST_DOMAIN: &str = "cogrion";

/// The identity the control plane's CA writes into an agent's certificate, as a
/// SPIFFE-style URI SAN: `spiffe://<trust-domain>/workspace/<workspace-id>/agent`.
///
/// The control plane derives an agent's workspace from this identity only — never
/// from a request body.
///
/// ```
/// use cogrion_agent_proto::{AgentIdentity, WorkspaceId};
/// let id = AgentIdentity::new("cogrion", "acme-prod".parse().unwrap()).unwrap();
/// assert_eq!(id.to_uri(), "spiffe://cogrion/workspace/acme-prod/agent");
/// assert_eq!(AgentIdentity::parse_uri(&id.to_uri()).unwrap(), id);
/// assert!(AgentIdentity::parse_uri("spiffe://cogrion/workspace/acme-prod/admin").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentIdentity {
    trust_domain: String,
    workspace: WorkspaceId,
}

impl AgentIdentity {
    /// An identity in `trust_domain` (1 to 255 bytes of lowercase letters, digits,
    /// `.`, `-`, `_`, as SPIFFE requires) for `workspace`'s agent.
    pub fn new(trust_domain: &str, workspace: WorkspaceId) -> Result<Self, InvalidValue> {
        check_chars(
            "trust domain",
            trust_domain,
            255,
            "lowercase letters, digits, '.', '-', '_'",
            |_, c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'),
        )?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            workspace,
        })
    }

    /// Parses the URI form; anything but exactly that shape is refused.
    pub fn parse_uri(uri: &str) -> Result<Self, InvalidValue> {
        let malformed = |reason: &str| InvalidValue::Malformed {
            what: "agent identity",
            reason: reason.to_owned(),
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| malformed("not a spiffe:// URI"))?;
        let mut parts = rest.split('/');
        let (Some(domain), Some("workspace"), Some(ws), Some("agent"), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed(
                "expected spiffe://<trust-domain>/workspace/<id>/agent",
            ));
        };
        Self::new(domain, WorkspaceId::new(ws)?)
    }

    /// The URI form written into certificates.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The workspace whose agent this is.
    pub fn workspace(&self) -> &WorkspaceId {
        &self.workspace
    }
}

impl fmt::Display for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/workspace/{}/agent",
            self.trust_domain, self.workspace
        )
    }
}
