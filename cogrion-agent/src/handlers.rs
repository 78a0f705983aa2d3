//! The registry of local command handlers.

use std::collections::BTreeMap;
use std::sync::Arc;

use cogrion_agent_proto::{Command, CommandOutcome, CommandResult, WorkspaceId};

/// Runs one command kind. Handlers must be idempotent: a command whose result
/// was lost before it was stored runs again.
pub type Handler = Arc<dyn Fn(&Command) -> CommandResult + Send + Sync>;

/// Command handlers by kind. [`Handlers::builtin`] has `health` and `describe`.
#[derive(Clone)]
pub struct Handlers(BTreeMap<String, Handler>);

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

fn succeeded(command: &Command, output: serde_json::Value) -> CommandResult {
    CommandResult {
        id: command.id.clone(),
        outcome: CommandOutcome::Succeeded,
        output,
    }
}

impl Handlers {
    /// `health` (answers `{"status": "ok"}`) and `describe` (the agent's version
    /// and workspace).
    pub fn builtin(workspace: &WorkspaceId) -> Self {
        let mut handlers = Self(BTreeMap::new());
        handlers.register(
            "health",
            Arc::new(|c| succeeded(c, serde_json::json!({ "status": "ok" }))),
        );
        let ws = workspace.to_string();
        handlers.register(
            "describe",
            Arc::new(move |c| {
                succeeded(
                    c,
                    serde_json::json!({
                        "agent": env!("CARGO_PKG_VERSION"),
                        "workspace": ws,
                        "protocol": cogrion_agent_proto::PROTOCOL_VERSION,
                    }),
                )
            }),
        );
        handlers
    }

    /// Adds (or replaces) the handler of `kind`.
    pub fn register(&mut self, kind: &str, handler: Handler) {
        self.0.insert(kind.to_owned(), handler);
    }

    /// Runs `command`; a kind without a handler fails, not retryable.
    pub fn run(&self, command: &Command) -> CommandResult {
        match self.0.get(command.kind.as_str()) {
            Some(handler) => handler(command),
            None => CommandResult {
                id: command.id.clone(),
                outcome: CommandOutcome::Failed {
                    message: format!("this agent has no handler for {:?}", command.kind.as_str()),
                    retryable: false,
                },
                output: serde_json::Value::Null,
            },
        }
    }
}
