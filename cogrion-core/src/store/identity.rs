//! Bootstrap tokens and agent credentials as stored.

use super::*;

/// A stored bootstrap token (its hash, never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BootstrapTokenRecord {
    /// The workspace it is bound to.
    pub workspace: WorkspaceId,
    /// The token's hash.
    pub hash: TokenHash,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it stops being accepted.
    pub expires_at: Timestamp,
    /// When it was exchanged, if it was.
    pub consumed_at: Option<Timestamp>,
    /// The credential the exchange issued (so that the same agent, replaying
    /// the exchange after losing its answer, gets that one again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<CertSerial>,
}

impl BootstrapTokenRecord {
    /// An unconsumed token's record.
    pub fn new(
        workspace: WorkspaceId,
        hash: TokenHash,
        issued_at: Timestamp,
        expires_at: Timestamp,
    ) -> Self {
        Self {
            workspace,
            hash,
            issued_at,
            expires_at,
            consumed_at: None,
            issued: None,
        }
    }
}

impl BootstrapTokenRecord {
    /// Marks the token consumed by `workspace` at `now`, if the rules allow:
    /// bound to that workspace, not consumed yet, not expired. Each refusal is
    /// its own [`TokenRefusal`](crate::TokenRefusal) and changes nothing. Every
    /// store's [`consume`](TokenStore::consume) applies exactly this rule.
    pub fn consume(&mut self, workspace: &WorkspaceId, now: Timestamp) -> Result<()> {
        use crate::{Error, TokenRefusal};
        if &self.workspace != workspace {
            return Err(Error::TokenRefused(TokenRefusal::WrongWorkspace));
        }
        if let Some(consumed_at) = self.consumed_at {
            return Err(Error::TokenRefused(TokenRefusal::Reused { consumed_at }));
        }
        if now >= self.expires_at {
            return Err(Error::TokenRefused(TokenRefusal::Expired {
                expired_at: self.expires_at,
            }));
        }
        self.consumed_at = Some(now);
        Ok(())
    }

    /// The bootstrap rule of [`TokenStore::exchange`]: consumes the token for
    /// `credential`'s workspace and records `credential` as the one issued.
    pub fn exchange_for(&mut self, credential: &AgentCredential, now: Timestamp) -> Result<()> {
        self.consume(&credential.workspace, now)?;
        self.issued = Some(credential.serial.clone());
        Ok(())
    }

    /// Whether presenting this token again, with `presented`'s workspace and
    /// key at `now`, replays the exchange that issued `issued` (the credential
    /// stored under [`issued`](Self::issued)): the token was consumed by that
    /// exchange, its lifetime has not ended, the credential is unrevoked, and
    /// both name the same key. Every store's [`exchange`](TokenStore::exchange)
    /// applies exactly this rule.
    pub fn replays(
        &self,
        issued: &AgentCredential,
        presented: &AgentCredential,
        now: Timestamp,
    ) -> bool {
        self.consumed_at.is_some()
            && self.issued.as_ref() == Some(&issued.serial)
            && self.workspace == presented.workspace
            && issued.workspace == presented.workspace
            && now < self.expires_at
            && issued.revoked.is_none()
            && presented.key.is_some()
            && issued.key == presented.key
    }
}

/// The rule of [`CredentialStore::renew_credential`]: `old` must be current
/// at `now`; returns `renewed` as it is stored, with the identity's token and
/// the credential it renews taken from `old`. Every store applies exactly
/// this rule.
pub fn check_renewal(
    old: &AgentCredential,
    mut renewed: AgentCredential,
    now: Timestamp,
) -> Result<AgentCredential> {
    old.check_current(now)?;
    if renewed.workspace != old.workspace {
        return Err(crate::Error::InvalidValue(InvalidValue::Malformed {
            what: "renewal",
            reason: format!(
                "renews a credential of {} for {}",
                old.workspace, renewed.workspace
            ),
        }));
    }
    renewed.token = old.token;
    renewed.renewed_from = Some(old.serial.clone());
    renewed.revoked = None;
    Ok(renewed)
}

/// Why a renewal revokes the workspace's other live credentials.
pub const SUPERSEDED_BY_RENEWAL: &str = "superseded by a renewal";

/// A revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// When.
    pub at: Timestamp,
    /// Why (`workspace destroyed`, `re-bootstrapped`).
    pub reason: String,
}

/// An agent certificate the control plane issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentCredential {
    /// The workspace whose agent holds it.
    pub workspace: WorkspaceId,
    /// Its serial.
    pub serial: CertSerial,
    /// Start of validity.
    pub issued_at: Timestamp,
    /// End of validity.
    pub expires_at: Timestamp,
    /// Set once revoked.
    pub revoked: Option<Revocation>,
    /// When the agent first made an authenticated poll with this certificate.
    #[serde(default)]
    pub first_poll_at: Option<Timestamp>,
    /// The digest of the public key it certifies (absent in records written
    /// before keys were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyDigest>,
    /// The bootstrap token this identity descends from: the one exchanged for
    /// it, or for the credential it renews.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenHash>,
    /// The credential it renews, if it is a renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_from: Option<CertSerial>,
    /// When an authenticated poll last came with it, coarsely: written at
    /// most once per [`GatewayConfig::seen_interval`](crate::agent::GatewayConfig::seen_interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<Timestamp>,
}

impl AgentCredential {
    /// A fresh, unrevoked, never used credential of `workspace`.
    pub fn new(
        workspace: WorkspaceId,
        serial: CertSerial,
        issued_at: Timestamp,
        expires_at: Timestamp,
    ) -> Self {
        Self {
            workspace,
            serial,
            issued_at,
            expires_at,
            revoked: None,
            first_poll_at: None,
            key: None,
            token: None,
            renewed_from: None,
            last_seen_at: None,
        }
    }

    /// Neither revoked nor expired at `now`; else
    /// [`CredentialRevoked`](crate::Error::CredentialRevoked) or
    /// [`CredentialExpired`](crate::Error::CredentialExpired).
    pub fn check_current(&self, now: Timestamp) -> Result<()> {
        if let Some(r) = &self.revoked {
            return Err(crate::Error::CredentialRevoked {
                serial: self.serial.clone(),
                at: r.at,
            });
        }
        if now >= self.expires_at {
            return Err(crate::Error::CredentialExpired {
                serial: self.serial.clone(),
                at: self.expires_at,
            });
        }
        Ok(())
    }

    /// Neither revoked nor expired at `now`.
    pub fn is_current(&self, now: Timestamp) -> bool {
        self.check_current(now).is_ok()
    }

    /// Whether an agent has used it: polled with it at least once.
    pub fn was_used(&self) -> bool {
        self.first_poll_at.is_some()
    }
}
