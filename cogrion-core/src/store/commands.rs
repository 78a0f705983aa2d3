//! Commands queued for a workspace's agent, and where each stands.

use super::*;

/// A command to queue for a workspace's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCommand {
    /// Its id: derive it from the operation and step so a replay names the same
    /// command.
    pub id: CommandId,
    /// What to do.
    pub kind: CommandKind,
    /// The arguments.
    pub payload: serde_json::Value,
}

/// Where a queued command stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CommandStatus {
    /// Not yet answered; delivered again on every poll until it is.
    Pending,
    /// Answered; the result is stored.
    Answered {
        /// The agent's result.
        result: CommandResult,
        /// When it was stored.
        at: Timestamp,
    },
    /// Delivered, and not answered by the time its step gave up on it
    /// ([`CommandQueue::withdraw`]): every poll asks the agent to cancel it until
    /// the agent answers (the answer is stored; the step's retry ignores it).
    Cancelling {
        /// When its step gave up on it.
        at: Timestamp,
    },
    /// Withdrawn before any agent saw it ([`CommandQueue::withdraw`]): never
    /// delivered, never answered.
    Withdrawn {
        /// When it was withdrawn.
        at: Timestamp,
    },
}

impl CommandStatus {
    /// Whether the command is still outstanding: pending, or being cancelled.
    /// Polls hand out outstanding commands (the cancelling ones as cancel
    /// requests), and only those take an answer.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Pending | Self::Cancelling { .. })
    }
}

/// A command in a workspace's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedCommand {
    /// The command as the agent sees it.
    pub command: Command,
    /// When it was queued.
    pub enqueued_at: Timestamp,
    /// How many times it was handed to an agent.
    pub deliveries: u32,
    /// Where it stands.
    pub status: CommandStatus,
}

impl QueuedCommand {
    /// What [`CommandQueue::withdraw`] makes of it at `now`: withdrawn if no
    /// agent was handed it yet, cancelling if one was; `None` when it is no
    /// longer pending (answered, or already withdrawn or cancelling). Every
    /// store applies this one rule.
    pub fn withdrawal(&self, now: Timestamp) -> Option<CommandStatus> {
        match self.status {
            CommandStatus::Pending if self.deliveries == 0 => {
                Some(CommandStatus::Withdrawn { at: now })
            }
            CommandStatus::Pending => Some(CommandStatus::Cancelling { at: now }),
            _ => None,
        }
    }
}
