//! The crate's one error type.

use std::fmt;
use std::time::Duration;

use cogrion_agent_proto::CommandId;

use crate::clock::Timestamp;
use crate::ids::{HolderId, InvalidValue, StackName, WorkspaceId};
use crate::spec::SpecErrors;
use crate::stack::GraphError;
use crate::state::TransitionError;
use crate::store::{CertSerial, Revision};

/// What a caller should do about an [`Error`], answered by [`Error::retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Repeating the same request cannot succeed: fix the input, reload the
    /// record, or give up.
    Never,
    /// The condition is temporary: repeat the request, after the given delay when
    /// the error carries one (else after the caller's own backoff).
    After(Option<Duration>),
    /// The request was retried as often as its policy allows and still failed.
    Exhausted,
}

/// The thing an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resource {
    /// A workspace record.
    Workspace(WorkspaceId),
    /// A stack of a workspace.
    Stack(WorkspaceId, StackName),
    /// A command in a workspace's queue.
    Command(WorkspaceId, CommandId),
    /// An operation checkpoint of a workspace.
    Checkpoint(WorkspaceId, String),
    /// A workspace's lease.
    Lease(WorkspaceId),
    /// A bootstrap token (never named: only its hash is known).
    BootstrapToken,
    /// An agent certificate.
    Credential(CertSerial),
    /// Something a provider manages, named in its own terms.
    Provider(String),
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Workspace(w) => write!(f, "workspace {w}"),
            Self::Stack(w, s) => write!(f, "stack {s} of workspace {w}"),
            Self::Command(w, c) => write!(f, "command {c} of workspace {w}"),
            Self::Checkpoint(w, k) => write!(f, "checkpoint {k} of workspace {w}"),
            Self::Lease(w) => write!(f, "lease of workspace {w}"),
            Self::BootstrapToken => f.write_str("bootstrap token"),
            Self::Credential(s) => write!(f, "agent certificate {s}"),
            Self::Provider(what) => f.write_str(what),
        }
    }
}

/// Why a bootstrap token was refused. Each reason is distinct so the refusal can be
/// logged precisely; what the agent is told is up to the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRefusal {
    /// No token with this hash was ever issued (or it was replaced by a newer one).
    Unknown,
    /// The token was already exchanged.
    Reused {
        /// When it was consumed.
        consumed_at: Timestamp,
    },
    /// The token's time to live has passed.
    Expired {
        /// When it expired.
        expired_at: Timestamp,
    },
    /// The token is bound to a different workspace than the one presenting it.
    WrongWorkspace,
    /// The workspace is being destroyed (or is destroyed): no agent may join it.
    WorkspaceRetired {
        /// The workspace's state.
        state: crate::state::StateName,
    },
}

impl fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => f.write_str("unknown token"),
            Self::Reused { consumed_at } => write!(f, "token already used at {consumed_at}"),
            Self::Expired { expired_at } => write!(f, "token expired at {expired_at}"),
            Self::WrongWorkspace => f.write_str("token belongs to another workspace"),
            Self::WorkspaceRetired { state } => write!(f, "the workspace is {state}"),
        }
    }
}

/// Every error `cogrion-core` returns, and the one implementers of its traits convert
/// their own errors into.
///
/// Variants are named for the caller's next move; [`Error::retry`] answers whether
/// repeating the request can help. Provider implementations keep their detailed
/// errors private and classify them once, in their `From` impl (a throttling reply
/// becomes [`Error::Throttled`], a refused permission [`Error::Rejected`]).
/// Messages never contain secrets: tokens are never formatted, and providers must
/// scrub credentials from `detail` before building an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value broke its rule. Fix the input.
    #[error(transparent)]
    InvalidValue(#[from] InvalidValue),
    /// A spec has problems; all of them are listed. Fix the spec.
    #[error(transparent)]
    InvalidSpec(#[from] SpecErrors),
    /// The request is not allowed in the current state; the error names both.
    #[error(transparent)]
    WrongState(#[from] TransitionError),
    /// The change would break the stack graph (unknown dependency, cycle, dependents).
    #[error(transparent)]
    StackGraph(#[from] GraphError),
    /// The thing does not exist.
    #[error("{0} not found")]
    NotFound(Resource),
    /// A create found the thing already there.
    #[error("{0} already exists")]
    AlreadyExists(Resource),
    /// A compare-and-swap write found a different revision: someone else wrote
    /// first. Reload, decide again, write again.
    #[error("{what} was changed concurrently (expected revision {expected}, found {found})")]
    Conflict {
        /// What was written.
        what: Resource,
        /// The revision the writer based its change on.
        expected: Revision,
        /// The revision stored now.
        found: Revision,
    },
    /// Another replica holds the workspace's lease. Try again after it expires.
    #[error("the lease of workspace {workspace} is held by {holder} until {expires_at}")]
    LeaseHeld {
        /// The workspace.
        workspace: WorkspaceId,
        /// Who holds it.
        holder: HolderId,
        /// When it expires unless renewed.
        expires_at: Timestamp,
        /// How long until then, measured when the error was made.
        retry_after: Duration,
    },
    /// The caller's lease is gone (expired and taken over, or released): another
    /// replica may be driving the workspace. Stop working on it; change nothing.
    #[error("the lease of workspace {workspace} was lost (fencing token {fence} is stale)")]
    LeaseLost {
        /// The workspace.
        workspace: WorkspaceId,
        /// The stale fencing token the caller presented.
        fence: u64,
    },
    /// A bootstrap token was refused.
    #[error("bootstrap token refused: {0}")]
    TokenRefused(TokenRefusal),
    /// An agent certificate was revoked; the agent must re-bootstrap.
    #[error("agent certificate {serial} was revoked at {at}")]
    CredentialRevoked {
        /// The certificate's serial.
        serial: CertSerial,
        /// When it was revoked.
        at: Timestamp,
    },
    /// An agent certificate expired; the agent must renew before it does, or
    /// re-bootstrap with a fresh token after.
    #[error("agent certificate {serial} expired at {at}")]
    CredentialExpired {
        /// The certificate's serial.
        serial: CertSerial,
        /// When it expired.
        at: Timestamp,
    },
    /// An agent certificate was presented for renewal before its renewal
    /// window opened ([`GatewayConfig::renew_from_percent`](crate::agent::GatewayConfig::renew_from_percent)
    /// of its life): nothing was issued. Renew from `from` on.
    #[error("agent certificate {serial} may be renewed from {from} on")]
    RenewalTooEarly {
        /// The certificate's serial.
        serial: CertSerial,
        /// When its renewal window opens.
        from: Timestamp,
    },
    /// The provider asked to slow down. Retry after the delay.
    #[error("throttled by {service}{}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    Throttled {
        /// Which service throttled.
        service: String,
        /// How long it asked to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// A dependency is temporarily unavailable (network, timeout, 5xx). Retry with
    /// backoff.
    #[error("{service} is unavailable: {detail}")]
    Unavailable {
        /// Which service.
        service: String,
        /// What happened (scrubbed of secrets).
        detail: String,
        /// The error it came from, if any (a database driver's, an I/O
        /// error): [`std::error::Error::source`] returns it.
        #[source]
        source: Option<Source>,
    },
    /// A provider refused the request for a reason retrying cannot change
    /// (permission denied, quota exceeded, invalid for this cloud).
    #[error("{service} rejected the request: {detail}")]
    Rejected {
        /// Which service.
        service: String,
        /// Why (scrubbed of secrets).
        detail: String,
        /// The error it came from, if any.
        #[source]
        source: Option<Source>,
    },
    /// The engine has no implementation registered for what the request or
    /// step needs (a cloud's provisioner, a stack kind's executor): the
    /// host's configuration, not the cloud's answer. Refused at the request;
    /// a step meeting it leaves the workspace as it was and is tried again
    /// by an engine that has it.
    #[error("not configured: {what}")]
    NotConfigured {
        /// What is missing.
        what: String,
    },
    /// A step of a failed destroy cannot be abandoned: unknown, already
    /// finished, or one that must run (revoking the agent's credentials).
    #[error("step {step} cannot be abandoned: {reason}")]
    NotAbandonable {
        /// The step asked for.
        step: String,
        /// Why not.
        reason: String,
    },
    /// A revert found no spec to go back to: the workspace was never fully
    /// provisioned. Correct the spec instead, or destroy.
    #[error("workspace {0} has no applied spec to revert to (it was never provisioned)")]
    NothingApplied(WorkspaceId),
    /// A transient error persisted through every retry the policy allows.
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<Error>,
    },
    /// Stored data cannot be read back (unknown state name, invalid JSON, a
    /// revision gap). Nothing was repaired; an operator must look.
    #[error("stored data for {what} is corrupt: {detail}")]
    Corrupt {
        /// What was being read.
        what: Resource,
        /// What is wrong with it.
        detail: String,
        /// The error it came from, if any (a JSON parser's).
        #[source]
        source: Option<Source>,
    },
}

impl Error {
    /// Whether, and when, repeating the same request can help.
    pub fn retry(&self) -> Retry {
        match self {
            Self::LeaseHeld { retry_after, .. } => Retry::After(Some(*retry_after)),
            Self::Throttled { retry_after, .. } => Retry::After(*retry_after),
            Self::Unavailable { .. } => Retry::After(None),
            Self::Exhausted { .. } => Retry::Exhausted,
            Self::InvalidValue(_)
            | Self::InvalidSpec(_)
            | Self::WrongState(_)
            | Self::StackGraph(_)
            | Self::NotFound(_)
            | Self::AlreadyExists(_)
            | Self::Conflict { .. }
            | Self::LeaseLost { .. }
            | Self::TokenRefused(_)
            | Self::CredentialRevoked { .. }
            | Self::CredentialExpired { .. }
            | Self::RenewalTooEarly { .. }
            | Self::Rejected { .. }
            | Self::NotConfigured { .. }
            | Self::NotAbandonable { .. }
            | Self::NothingApplied(_)
            | Self::Corrupt { .. } => Retry::Never,
        }
    }

    /// The error's class, a short fixed name for counting errors by kind
    /// (metrics, logs): `invalid`, `wrong_state`, `not_found`, `conflict`,
    /// `lease`, `token`, `credential`, `throttled`, `unavailable`,
    /// `rejected`, `not_configured`, `exhausted`, `corrupt`.
    pub fn class(&self) -> &'static str {
        match self {
            Self::InvalidValue(_) | Self::InvalidSpec(_) | Self::StackGraph(_) => "invalid",
            Self::WrongState(_) | Self::NotAbandonable { .. } | Self::NothingApplied(_) => {
                "wrong_state"
            }
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) | Self::Conflict { .. } => "conflict",
            Self::LeaseHeld { .. } | Self::LeaseLost { .. } => "lease",
            Self::TokenRefused(_) => "token",
            Self::CredentialRevoked { .. }
            | Self::CredentialExpired { .. }
            | Self::RenewalTooEarly { .. } => "credential",
            Self::Throttled { .. } => "throttled",
            Self::Unavailable { .. } => "unavailable",
            Self::Rejected { .. } => "rejected",
            Self::NotConfigured { .. } => "not_configured",
            Self::Exhausted { .. } => "exhausted",
            Self::Corrupt { .. } => "corrupt",
        }
    }

    /// Whether the error is temporary ([`Retry::After`]).
    pub fn is_transient(&self) -> bool {
        matches!(self.retry(), Retry::After(_))
    }
}

/// The cause an [`Error`] keeps: a provider's or a store's own error.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    /// [`Error::Unavailable`] caused by `source`: its text is the detail.
    pub fn unavailable(
        service: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            service: service.into(),
            detail: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// [`Error::Rejected`] caused by `source`: its text is the detail.
    pub fn rejected(
        service: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Rejected {
            service: service.into(),
            detail: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification() {
        let ws: WorkspaceId = "acme-prod".parse().unwrap();
        let held = Error::LeaseHeld {
            workspace: ws.clone(),
            holder: "r1".parse().unwrap(),
            expires_at: Timestamp::from_millis(5000),
            retry_after: Duration::from_secs(5),
        };
        assert_eq!(held.retry(), Retry::After(Some(Duration::from_secs(5))));
        let unavailable = Error::Unavailable {
            service: "eks".into(),
            detail: "timeout".into(),
            source: None,
        };
        assert!(unavailable.is_transient());
        let exhausted = Error::Exhausted {
            attempts: 5,
            last: Box::new(unavailable),
        };
        assert_eq!(exhausted.retry(), Retry::Exhausted);
        assert!(exhausted.to_string().contains("5 attempts"));
        assert_eq!(
            Error::NotFound(Resource::Workspace(ws)).retry(),
            Retry::Never
        );
    }
}
