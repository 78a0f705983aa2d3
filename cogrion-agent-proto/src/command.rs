use serde::{Deserialize, Serialize};

use crate::{InvalidValue, check_chars};

/// Longest [`CommandId`], in bytes.
pub const MAX_COMMAND_ID_LEN: usize = 128;
/// Longest [`CommandKind`], in bytes.
pub const MAX_COMMAND_KIND_LEN: usize = 64;
/// Largest command payload or result output, serialised as JSON, in bytes.
pub const MAX_PAYLOAD_LEN: usize = 1024 * 1024;
/// Largest message on the wire (a payload plus its envelope), in bytes.
pub const MAX_MESSAGE_LEN: usize = MAX_PAYLOAD_LEN + 64 * 1024;
/// Longest failure message in a [`CommandResult`], in bytes.
const MAX_FAILURE_MESSAGE_LEN: usize = 4096;

/// The identifier of one command, chosen by the control plane.
///
/// Command ids are derived deterministically from the operation and step that
/// issue them, so a step replayed after a crash names the same command instead of
/// queueing a second one. The agent de-duplicates by id.
///
/// **Rule:** 1 to 128 bytes of lowercase ASCII letters, digits, `-`, `.` and `_`,
/// starting with a letter or digit.
///
/// ```
/// use cogrion_agent_proto::CommandId;
/// assert!("acme-prod.op3.deploy.web".parse::<CommandId>().is_ok());
/// assert!("../etc/passwd".parse::<CommandId>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommandId(String);

impl CommandId {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_chars(
            "command id",
            &value,
            MAX_COMMAND_ID_LEN,
            "lowercase letters, digits, '-', '.', '_', starting with a letter or digit",
            |i, c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || (i > 0 && matches!(c, '-' | '.' | '_'))
            },
        )?;
        Ok(Self(value))
    }
}
crate::checked_string!(CommandId);

/// What a command asks the agent to do, e.g. `health`, `describe`, `helm.apply`.
///
/// A kind is a name, not a closed enum, so an older agent can answer a newer kind
/// with "unsupported" instead of failing to decode the whole poll response.
///
/// **Rule:** 1 to 64 bytes; lowercase ASCII letters, digits, `.` and `-`; starts
/// with a letter.
///
/// ```
/// use cogrion_agent_proto::CommandKind;
/// assert!("helm.apply".parse::<CommandKind>().is_ok());
/// assert!("Helm Apply".parse::<CommandKind>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommandKind(String);

impl CommandKind {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_chars(
            "command kind",
            &value,
            MAX_COMMAND_KIND_LEN,
            "lowercase letters, digits, '.', '-', starting with a letter",
            |i, c| {
                c.is_ascii_lowercase() || (i > 0 && (c.is_ascii_digit() || matches!(c, '.' | '-')))
            },
        )?;
        Ok(Self(value))
    }
}
crate::checked_string!(CommandKind);

/// The position of a command in its workspace's queue: strictly increasing, gapless,
/// starting at 1. Delivery is in sequence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandSeq(pub u64);

impl std::fmt::Display for CommandSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

fn check_json_len(what: &'static str, value: &serde_json::Value) -> Result<(), InvalidValue> {
    let len = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if len > MAX_PAYLOAD_LEN {
        return Err(InvalidValue::TooLong {
            what,
            len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    Ok(())
}

/// One command for an agent, as delivered on a poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// The command's id; the agent de-duplicates by it.
    pub id: CommandId,
    /// Its position in the workspace's queue.
    pub seq: CommandSeq,
    /// What to do.
    pub kind: CommandKind,
    /// The kind's arguments (at most [`MAX_PAYLOAD_LEN`] bytes as JSON).
    pub payload: serde_json::Value,
}

impl Command {
    /// Builds a command, checking the payload's size.
    pub fn new(
        id: CommandId,
        seq: CommandSeq,
        kind: CommandKind,
        payload: serde_json::Value,
    ) -> Result<Self, InvalidValue> {
        check_json_len("command payload", &payload)?;
        Ok(Self {
            id,
            seq,
            kind,
            payload,
        })
    }
}

/// How a command ended on the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandOutcome {
    /// The command did what it asked.
    Succeeded,
    /// The command failed.
    Failed {
        /// What went wrong, for people (at most 4096 bytes).
        message: String,
        /// Whether running the same command again may succeed.
        retryable: bool,
    },
}

/// The agent's answer to one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    /// Which command this answers.
    pub id: CommandId,
    /// How it ended.
    pub outcome: CommandOutcome,
    /// Whatever the command reports (at most [`MAX_PAYLOAD_LEN`] bytes as JSON).
    #[serde(default)]
    pub output: serde_json::Value,
}

impl CommandResult {
    /// Builds a result, checking the output's size and the failure message's length.
    pub fn new(
        id: CommandId,
        outcome: CommandOutcome,
        output: serde_json::Value,
    ) -> Result<Self, InvalidValue> {
        let result = Self {
            id,
            outcome,
            output,
        };
        result.check()?;
        Ok(result)
    }

    /// Checks the limits of a result that was decoded from the wire.
    pub fn check(&self) -> Result<(), InvalidValue> {
        check_json_len("command output", &self.output)?;
        if let CommandOutcome::Failed { message, .. } = &self.outcome
            && message.len() > MAX_FAILURE_MESSAGE_LEN
        {
            return Err(InvalidValue::TooLong {
                what: "failure message",
                len: message.len(),
                max: MAX_FAILURE_MESSAGE_LEN,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oversized_payload_is_refused() {
        let big = serde_json::Value::String("x".repeat(MAX_PAYLOAD_LEN));
        let err = Command::new(
            CommandId::new("c1").unwrap(),
            CommandSeq(1),
            CommandKind::new("health").unwrap(),
            big,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            InvalidValue::TooLong {
                what: "command payload",
                ..
            }
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"id":"c1","seq":1,"kind":"health","payload":{},"extra":1}"#;
        assert!(serde_json::from_str::<Command>(json).is_err());
        let json = r#"{"id":"c1","seq":1,"kind":"health","payload":{}}"#;
        assert!(serde_json::from_str::<Command>(json).is_ok());
    }

    #[test]
    fn long_failure_message_is_refused() {
        let r = CommandResult::new(
            CommandId::new("c1").unwrap(),
            CommandOutcome::Failed {
                message: "m".repeat(5000),
                retryable: false,
            },
            serde_json::Value::Null,
        );
        assert!(matches!(
            r,
            Err(InvalidValue::TooLong {
                what: "failure message",
                ..
            })
        ));
    }

    proptest! {
        /// Decoding arbitrary text never panics, and whatever decodes re-encodes to
        /// something that decodes to the same command.
        #[test]
        fn command_decoder_is_total(s in ".{0,200}") {
            if let Ok(c) = serde_json::from_str::<Command>(&s) {
                let again: Command = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
                prop_assert_eq!(c, again);
            }
        }

        #[test]
        fn command_id_accepts_exactly_its_rule(s in "[a-z0-9._-]{0,130}") {
            let ok = !s.is_empty() && s.len() <= MAX_COMMAND_ID_LEN
                && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
            prop_assert_eq!(CommandId::new(s.clone()).is_ok(), ok);
        }
    }
}
