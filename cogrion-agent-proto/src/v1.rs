//! Protocol v1: the messages of the agent's exchanges with the control plane.
//!
//! | exchange | request | response |
//! |---|---|---|
//! | bootstrap (server-authenticated TLS + one-time token) | [`BootstrapRequest`] | [`BootstrapResponse`] |
//! | long-poll for commands (mutual TLS) | [`PollRequest`] | [`PollResponse`] |
//! | post a command's result (mutual TLS) | [`ResultRequest`] | [`ResultAck`] |
//! | renew the certificate (mutual TLS) | [`RenewalRequest`] | [`RenewalResponse`] |
//! | any refusal | — | [`ErrorResponse`] |
//!
//! Every message is JSON, carries [`version`](Message::version) and has a size
//! limit ([`Message::MAX_LEN`]); [`decode`] enforces the limit before parsing,
//! refuses unknown fields, refuses a version it does not speak with a distinct
//! error, and then checks every field's rule. Nothing here does I/O.
//!
//! # Compatibility rule
//! A peer speaks exactly the versions it lists; a message of another version is
//! refused as [`DecodeError::UnsupportedVersion`] (on the wire:
//! [`ErrorCode::UnsupportedVersion`]). Within a version, decoding is strict —
//! unknown fields are refused — so *any* change to a message, even an added
//! optional field, makes a new version. A control plane may speak several
//! versions at once while its agents are upgraded; an agent speaks one.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{
    Command, CommandId, CommandResult, InvalidValue, MAX_MESSAGE_LEN, PROTOCOL_VERSION,
    WorkspaceId, check_chars,
};

/// The longest PEM document a request may carry (a CSR).
pub const MAX_CSR_PEM_LEN: usize = 8 * 1024;
/// The longest certificate chain or CA bundle a response may carry (PEM).
pub const MAX_CHAIN_PEM_LEN: usize = 32 * 1024;
/// The most finished command ids one poll may report.
pub const MAX_FINISHED_PER_POLL: usize = 256;
/// The most commands one poll response may carry.
pub const MAX_COMMANDS_PER_POLL: usize = 64;
/// The longest a poll may ask the server to hold it, in seconds.
pub const MAX_POLL_WAIT_SECS: u32 = 60;
/// The longest human-readable message in an [`ErrorResponse`].
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;
/// The length of a bootstrap token: 256 bits as lowercase hex.
pub const BOOTSTRAP_TOKEN_LEN: usize = 64;

/// A message of protocol v1.
pub trait Message: Serialize + DeserializeOwned {
    /// The message's name, for errors and logs.
    const NAME: &'static str;
    /// The largest encoding accepted, in bytes.
    const MAX_LEN: usize;
    /// The protocol version the message says it speaks.
    fn version(&self) -> u32;
    /// Checks every field's rule (after decoding; constructors check too).
    fn check(&self) -> Result<(), InvalidValue>;
}

/// Implements [`Message`] for a v1 message with a `version` field: its name,
/// its size limit, and the check of its fields' rules (with the message as `m`).
macro_rules! message {
    ($ty:ty, $name:literal, $max:expr, |$m:ident| $check:block) => {
        impl Message for $ty {
            const NAME: &'static str = $name;
            const MAX_LEN: usize = $max;
            fn version(&self) -> u32 {
                self.version
            }
            #[allow(unused_variables)]
            fn check(&self) -> Result<(), InvalidValue> {
                let $m = self;
                $check
            }
        }
    };
}

/// Why bytes were not accepted as a message. Each variant is a distinct refusal
/// on the wire (see [`DecodeError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Longer than the message's limit; nothing was parsed.
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLarge {
        /// Which message.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not the message's JSON: a syntax error, a missing or unknown field, a
    /// wrong type.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// A version this side does not speak.
    #[error("{what} speaks protocol version {version}; this side speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion {
        /// Which message.
        what: &'static str,
        /// The version it carried.
        version: u32,
    },
    /// Well-formed, but a field breaks its rule.
    #[error("{what}: {source}")]
    Invalid {
        /// Which message.
        what: &'static str,
        /// The rule broken.
        source: InvalidValue,
    },
}

impl DecodeError {
    /// The code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::Malformed { .. } | Self::Invalid { .. } => ErrorCode::BadRequest,
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        }
    }
}

/// Decodes one message strictly: size limit first, then JSON with no unknown
/// fields, then the version, then every field's rule.
///
/// ```
/// use cogrion_agent_proto::v1::{decode, DecodeError, PollRequest};
/// let poll: PollRequest = decode(br#"{"version":1,"finished":["c1"],"wait_secs":30}"#).unwrap();
/// assert_eq!(poll.finished.len(), 1);
/// assert!(matches!(
///     decode::<PollRequest>(br#"{"version":2,"finished":[],"wait_secs":30}"#),
///     Err(DecodeError::UnsupportedVersion { version: 2, .. })
/// ));
/// assert!(matches!(
///     decode::<PollRequest>(br#"{"version":1,"finished":[],"wait_secs":30,"extra":0}"#),
///     Err(DecodeError::Malformed { .. })
/// ));
/// ```
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, DecodeError> {
    if bytes.len() > M::MAX_LEN {
        return Err(DecodeError::TooLarge {
            what: M::NAME,
            len: bytes.len(),
            max: M::MAX_LEN,
        });
    }
    let message: M = match serde_json::from_slice(bytes) {
        Ok(m) => m,
        Err(e) => {
            // A message of another version may have other fields: say so,
            // rather than naming the first field this version does not know.
            #[derive(Deserialize)]
            struct Versioned {
                version: u32,
            }
            if let Ok(Versioned { version }) = serde_json::from_slice(bytes)
                && version != PROTOCOL_VERSION
            {
                return Err(DecodeError::UnsupportedVersion {
                    what: M::NAME,
                    version,
                });
            }
            return Err(DecodeError::Malformed {
                what: M::NAME,
                reason: e.to_string(),
            });
        }
    };
    if message.version() != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            what: M::NAME,
            version: message.version(),
        });
    }
    message.check().map_err(|source| DecodeError::Invalid {
        what: M::NAME,
        source,
    })?;
    Ok(message)
}

/// Encodes a message (JSON).
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    serde_json::to_vec(message).expect("protocol messages always serialise")
}

/// A bootstrap token as the agent presents it: 256 bits as 64 lowercase hex
/// digits. Its `Debug` and `Display` never show it.
///
/// ```
/// use cogrion_agent_proto::v1::TokenText;
/// let token = TokenText::new("ab".repeat(32)).unwrap();
/// assert!(!format!("{token:?}").contains("abab"));
/// assert!(TokenText::new("AB".repeat(32)).is_err()); // uppercase
/// assert!(TokenText::new("ab".repeat(31)).is_err()); // 248 bits
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenText(String);

impl TokenText {
    /// Checks a token's form.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_chars(
            "bootstrap token",
            &value,
            BOOTSTRAP_TOKEN_LEN,
            "lowercase hex digits",
            |_, c| c.is_ascii_digit() || ('a'..='f').contains(&c),
        )?;
        if value.len() != BOOTSTRAP_TOKEN_LEN {
            return Err(InvalidValue::Malformed {
                what: "bootstrap token",
                reason: format!("{} hex digits, expected {BOOTSTRAP_TOKEN_LEN}", value.len()),
            });
        }
        Ok(Self(value))
    }

    /// The secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TokenText {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<TokenText> for String {
    fn from(t: TokenText) -> Self {
        t.0
    }
}

impl std::fmt::Debug for TokenText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenText(<redacted>)")
    }
}

/// The agent's version, as it reports it (`0.4.1`, `1.2.0-rc.1+abc`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentVersion(String);

impl AgentVersion {
    /// Checks a version's form: 1 to 64 of `A-Z a-z 0-9 . + - _`.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_chars(
            "agent version",
            &value,
            64,
            "A-Z a-z 0-9 . + - _",
            |_, c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_'),
        )?;
        Ok(Self(value))
    }
}

checked_string!(AgentVersion);

/// Checks a PEM document's size and its (first) label.
/// An issued certificate chain (bootstrap and renewal answers).
fn check_chain(pem: &str) -> Result<(), InvalidValue> {
    check_pem("certificate chain", pem, "CERTIFICATE", MAX_CHAIN_PEM_LEN)
}

fn check_pem(what: &'static str, pem: &str, label: &str, max: usize) -> Result<(), InvalidValue> {
    if pem.is_empty() {
        return Err(InvalidValue::Empty { what });
    }
    if pem.len() > max {
        return Err(InvalidValue::TooLong {
            what,
            len: pem.len(),
            max,
        });
    }
    let begin = format!("-----BEGIN {label}-----");
    if !pem.trim_start().starts_with(&begin) {
        return Err(InvalidValue::Malformed {
            what,
            reason: format!("does not start with {begin}"),
        });
    }
    Ok(())
}

fn check_range(what: &'static str, value: u32, min: u32, max: u32) -> Result<(), InvalidValue> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(InvalidValue::OutOfRange {
            what,
            value: value.to_string(),
            allowed: format!("{min} to {max}"),
        })
    }
}

/// The first request of an agent: its workspace, the one-time token it was
/// installed with, and a certificate signing request for the key it generated
/// (which never leaves it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapRequest {
    /// The protocol version ([`PROTOCOL_VERSION`]).
    pub version: u32,
    /// The workspace the agent was installed for.
    pub workspace: WorkspaceId,
    /// The one-time token.
    pub token: TokenText,
    /// A PKCS#10 CSR, PEM (`CERTIFICATE REQUEST`), at most
    /// [`MAX_CSR_PEM_LEN`] bytes. The control plane chooses the certificate's
    /// subject itself; what the CSR asks for is ignored.
    pub csr_pem: String,
    /// The agent's version.
    pub agent_version: AgentVersion,
}

message!(BootstrapRequest, "bootstrap request", 16 * 1024, |m| {
    check_pem("CSR", &m.csr_pem, "CERTIFICATE REQUEST", MAX_CSR_PEM_LEN)
});

/// How an agent should long-poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollSettings {
    /// How long a poll is held when there is nothing to deliver, in seconds
    /// (1 to [`MAX_POLL_WAIT_SECS`]).
    pub wait_secs: u32,
    /// The most commands one poll delivers (1 to [`MAX_COMMANDS_PER_POLL`]).
    pub max_commands: u32,
}

/// When an agent should renew its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalSettings {
    /// Renew once this share of the certificate's life has passed, in percent
    /// (10 to 90; the default is 66).
    pub renew_at_percent: u32,
}

/// The control plane's answer to a bootstrap: the agent's certificate, the CA
/// that signed it (which the agent then also trusts for the server), and how to
/// poll and renew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapResponse {
    /// The protocol version.
    pub version: u32,
    /// The certificate, then any intermediates, PEM.
    pub certificate_chain_pem: String,
    /// The CA certificates to trust, PEM.
    pub ca_bundle_pem: String,
    /// When the certificate expires, in milliseconds since the Unix epoch.
    pub not_after_ms: u64,
    /// How to poll.
    pub poll: PollSettings,
    /// When to renew.
    pub renewal: RenewalSettings,
}

fn check_settings(poll: &PollSettings, renewal: &RenewalSettings) -> Result<(), InvalidValue> {
    check_range("poll wait", poll.wait_secs, 1, MAX_POLL_WAIT_SECS)?;
    check_range(
        "commands per poll",
        poll.max_commands,
        1,
        MAX_COMMANDS_PER_POLL as u32,
    )?;
    check_range("renewal point", renewal.renew_at_percent, 10, 90)
}

message!(
    BootstrapResponse,
    "bootstrap response",
    2 * MAX_CHAIN_PEM_LEN + 4 * 1024,
    |m| {
        check_chain(&m.certificate_chain_pem)?;
        check_pem(
            "CA bundle",
            &m.ca_bundle_pem,
            "CERTIFICATE",
            MAX_CHAIN_PEM_LEN,
        )?;
        check_settings(&m.poll, &m.renewal)
    }
);

/// A long-poll: the ids of the commands the agent has finished since its last
/// poll — so delivery resumes from where it stopped, even across restarts of
/// either side — and how long to hold the poll when there is nothing new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// The protocol version.
    pub version: u32,
    /// Commands finished (their results posted, or on the way), at most
    /// [`MAX_FINISHED_PER_POLL`]: the server does not deliver them again, so
    /// delivery resumes after them.
    pub finished: Vec<CommandId>,
    /// How long to hold the poll, in seconds (0 to [`MAX_POLL_WAIT_SECS`]; 0
    /// answers at once).
    pub wait_secs: u32,
}

impl PollRequest {
    /// A v1 poll.
    pub fn new(finished: Vec<CommandId>, wait_secs: u32) -> Result<Self, InvalidValue> {
        let poll = Self {
            version: PROTOCOL_VERSION,
            finished,
            wait_secs,
        };
        poll.check()?;
        Ok(poll)
    }
}

message!(PollRequest, "poll request", 64 * 1024, |m| {
    if m.finished.len() > MAX_FINISHED_PER_POLL {
        return Err(InvalidValue::OutOfRange {
            what: "finished command ids",
            value: m.finished.len().to_string(),
            allowed: format!("at most {MAX_FINISHED_PER_POLL}"),
        });
    }
    check_range("poll wait", m.wait_secs, 0, MAX_POLL_WAIT_SECS)
});

/// The HTTP header in which an agent names the protocol features it
/// understands, comma-separated. Features live in a header, not in the JSON
/// messages, so that agents and control planes of different releases still
/// read each other's messages (which refuse unknown fields).
pub const FEATURES_HEADER: &str = "cogrion-features";

/// The feature of an agent that understands [`PollResponse::cancel`]: a
/// control plane sends cancel requests only to agents whose polls name it
/// (an agent that predates them would refuse the whole response).
pub const FEATURE_CANCEL: &str = "cancel";

/// The commands to run, in queue order (empty when the wait ran out), and the
/// commands to cancel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollResponse {
    /// The protocol version.
    pub version: u32,
    /// At most [`MAX_COMMANDS_PER_POLL`] commands.
    pub commands: Vec<Command>,
    /// Commands delivered earlier that the control plane gave up waiting for
    /// (together with `commands`, at most [`MAX_COMMANDS_PER_POLL`]). The agent
    /// stops each if it is running it and answers it: with its result if it
    /// finished, otherwise as failed. They come on every poll until answered.
    /// Absent when empty, so a poll with nothing to cancel is the same message
    /// as before cancel requests existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel: Vec<CommandId>,
}

message!(PollResponse, "poll response", 4 * MAX_MESSAGE_LEN, |m| {
    if m.commands.len() + m.cancel.len() > MAX_COMMANDS_PER_POLL {
        return Err(InvalidValue::OutOfRange {
            what: "commands per poll",
            value: (m.commands.len() + m.cancel.len()).to_string(),
            allowed: format!("at most {MAX_COMMANDS_PER_POLL}"),
        });
    }
    for c in &m.commands {
        Command::new(c.id.clone(), c.seq, c.kind.clone(), c.payload.clone())?;
    }
    Ok(())
});

/// One command's result, posted by the agent. The control plane stores it
/// before it acknowledges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultRequest {
    /// The protocol version.
    pub version: u32,
    /// The result.
    pub result: CommandResult,
}

message!(ResultRequest, "result", MAX_MESSAGE_LEN, |m| {
    m.result.check()
});

/// The acknowledgement of a stored result: the agent may forget the command
/// once it has reported it as finished on its next poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultAck {
    /// The protocol version.
    pub version: u32,
    /// The command whose result was stored.
    pub id: CommandId,
}

message!(ResultAck, "result acknowledgement", 1024, |m| { Ok(()) });

/// A renewal: a CSR for a new key, sent over mutual TLS with the current
/// certificate (which names the workspace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalRequest {
    /// The protocol version.
    pub version: u32,
    /// A PKCS#10 CSR, PEM, at most [`MAX_CSR_PEM_LEN`] bytes.
    pub csr_pem: String,
}

message!(RenewalRequest, "renewal request", 16 * 1024, |m| {
    check_pem("CSR", &m.csr_pem, "CERTIFICATE REQUEST", MAX_CSR_PEM_LEN)
});

/// The renewed certificate. The old one stays valid until it expires or is
/// revoked, so the agent can switch over without a gap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalResponse {
    /// The protocol version.
    pub version: u32,
    /// The new certificate, then any intermediates, PEM.
    pub certificate_chain_pem: String,
    /// When it expires, in milliseconds since the Unix epoch.
    pub not_after_ms: u64,
}

message!(
    RenewalResponse,
    "renewal response",
    MAX_CHAIN_PEM_LEN + 1024,
    |m| { check_chain(&m.certificate_chain_pem) }
);

/// Why a request was refused: every refusal has its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The body is not a valid message (syntax, unknown field, a broken rule).
    BadRequest,
    /// The body is larger than the message's limit.
    TooLarge,
    /// A protocol version the server does not speak.
    UnsupportedVersion,
    /// The token does not verify for the workspace named: unknown, another
    /// workspace's, or the workspace does not exist. One answer — status 403,
    /// this code, one message, and no sooner than the server's refusal time —
    /// for all of them, so it tells nothing about which workspaces exist.
    TokenInvalid,
    /// The token expired (the presenter holds the genuine token).
    TokenExpired,
    /// The token was already used with another key (the presenter holds the
    /// genuine token).
    TokenUsed,
    /// Sent by servers before issue 16 for another workspace's token; servers
    /// now answer [`TokenInvalid`](Self::TokenInvalid). Kept so that agents
    /// read either.
    TokenWrongWorkspace,
    /// Too many refused bootstraps from the client's address, or too many
    /// renewals of one certificate, or a renewal before the certificate's
    /// renewal window: wait `retry_after_secs`. A bootstrap whose token
    /// verifies is never answered this.
    RateLimited,
    /// The CSR was refused (unreadable, bad signature, a weak or unsupported key).
    CsrRejected,
    /// No client certificate, or one not signed by the control plane's CA.
    Unauthenticated,
    /// The client certificate expired: bootstrap again with a fresh token.
    CertificateExpired,
    /// The client certificate was revoked (the workspace was destroyed or its
    /// agent re-bootstrapped).
    CertificateRevoked,
    /// The command is not this agent's.
    NotYourCommand,
    /// The server is at its limit; retry after `retry_after_secs`.
    Overloaded,
    /// Something failed on the server; retry later.
    Internal,
}

/// The body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorResponse {
    /// The protocol version.
    pub version: u32,
    /// What went wrong.
    pub code: ErrorCode,
    /// For people, at most [`MAX_ERROR_MESSAGE_LEN`] bytes.
    pub message: String,
    /// When to try again, for `rate_limited` and `overloaded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u32>,
}

impl ErrorResponse {
    /// A v1 refusal; the message is cut to [`MAX_ERROR_MESSAGE_LEN`] bytes.
    pub fn new(code: ErrorCode, message: impl Into<String>, retry_after_secs: Option<u32>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut cut = MAX_ERROR_MESSAGE_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self {
            version: PROTOCOL_VERSION,
            code,
            message,
            retry_after_secs,
        }
    }
}

message!(
    ErrorResponse,
    "error response",
    MAX_ERROR_MESSAGE_LEN + 512,
    |m| {
        if m.message.len() > MAX_ERROR_MESSAGE_LEN {
            return Err(InvalidValue::TooLong {
                what: "error message",
                len: m.message.len(),
                max: MAX_ERROR_MESSAGE_LEN,
            });
        }
        Ok(())
    }
);

#[cfg(test)]
mod tests;
