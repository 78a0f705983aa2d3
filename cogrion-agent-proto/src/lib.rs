//! Wire types shared by the Cogrion control plane and its Cluster Agent.
//!
//! This crate holds only data: identifiers and messages with their size limits and
//! their strict validation. It performs no I/O, so both sides (and any alternative
//! transport a host writes) agree on exactly one definition.
//!
//! The identifiers and command types ([`CommandId`], [`CommandKind`],
//! [`Command`], [`CommandResult`], [`WorkspaceId`]), the agent identity format
//! ([`AgentIdentity`]), and the messages of protocol v1 — bootstrap, long-poll,
//! result, renewal and refusal — in [`v1`], with [`v1::decode`], the one strict
//! decoder both sides use.
//!
//! # Compatibility
//! [`PROTOCOL_VERSION`] names the protocol generation, and every v1 message
//! carries it. Decoding is strict (unknown fields are refused), so any change to
//! a message makes a new version; a message of a version a peer does not speak is
//! refused as such ([`v1::DecodeError::UnsupportedVersion`]). See [`v1`].

#[macro_use]
mod macros;
mod command;
mod identity;
mod inline;
pub mod v1;
mod workspace;

pub use command::{
    Command, CommandId, CommandKind, CommandOutcome, CommandResult, CommandSeq, MAX_COMMAND_ID_LEN,
    MAX_COMMAND_KIND_LEN, MAX_MESSAGE_LEN, MAX_PAYLOAD_LEN,
};
pub use identity::{AgentIdentity, DEFAULT_TRUST_DOMAIN};
#[doc(hidden)]
pub use inline::InlineAscii;
pub use workspace::WorkspaceId;
#[doc(hidden)]
pub use workspace::check_dns_label;

/// The protocol generation spoken by this crate.
pub const PROTOCOL_VERSION: u32 = 1;

/// Why a value was refused by its rule.
///
/// Every checked constructor in this crate and in `cogrion-core` returns this error
/// rather than panicking; the variant tells which rule was broken and `what` names
/// the kind of value (`"workspace id"`, `"network CIDR"`, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidValue {
    /// The value is longer than the protocol allows.
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Which value.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The value is empty where something is required.
    #[error("{what} must not be empty")]
    Empty {
        /// Which value.
        what: &'static str,
    },
    /// The value contains a character its rule does not allow.
    #[error("{what} contains {found:?} at byte {at}; allowed: {allowed}")]
    BadCharacter {
        /// Which value.
        what: &'static str,
        /// The offending character.
        found: char,
        /// Its byte offset.
        at: usize,
        /// The rule, in words.
        allowed: &'static str,
    },
    /// The value is outside its allowed range.
    #[error("{what} is {value}; allowed: {allowed}")]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value, printed.
        value: String,
        /// The allowed range, in words.
        allowed: String,
    },
    /// The value does not have the required shape.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// Which value.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Checks `value` against a character rule shared by several identifiers.
#[doc(hidden)]
pub fn check_chars(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(usize, char) -> bool,
) -> Result<(), InvalidValue> {
    if value.is_empty() {
        return Err(InvalidValue::Empty { what });
    }
    if value.len() > max {
        return Err(InvalidValue::TooLong {
            what,
            len: value.len(),
            max,
        });
    }
    match value.char_indices().find(|&(i, c)| !ok(i, c)) {
        Some((at, found)) => Err(InvalidValue::BadCharacter {
            what,
            found,
            at,
            allowed,
        }),
        None => Ok(()),
    }
}
