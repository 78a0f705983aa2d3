//! What providers get to make their work resumable ([`Checkpoint`]) and what they
//! return to say where it stands ([`Progress`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ids::WorkspaceId;
use crate::store::{CheckpointKey, FencingToken, NewCommand, RecordStore};

/// Durable scratch space for one step of one operation.
///
/// A provider saves what it learned part-way through a step (the id of the VPC it
/// created, the cloud operation it is waiting on) so that the step, re-run after a
/// crash, adopts that work instead of starting again.
///
/// # Guarantees
/// A value returned by [`load`](Self::load) is the last one
/// [`save`](Self::save)d for this step, by any process. A save made after the
/// engine lost the workspace's lease fails with
/// [`LeaseLost`](crate::Error::LeaseLost): the provider must stop.
#[async_trait]
pub trait Checkpoint: fmt::Debug + Send + Sync {
    /// The last saved value, if any.
    async fn load(&self) -> Result<Option<serde_json::Value>>;
    /// Replaces the saved value.
    async fn save(&self, value: serde_json::Value) -> Result<()>;
}

/// A [`Checkpoint`] kept in a [`RecordStore`], fenced by the engine's lease.
///
/// It remembers whether the store failed one of its calls
/// ([`store_failed`](Self::store_failed)): whatever error the provider then
/// returns, the step did not fail — the engine's store did (an outage, a lost
/// lease), and the engine does not count that against the step.
#[derive(Debug, Clone)]
pub struct StoreCheckpoint {
    store: Arc<dyn RecordStore>,
    workspace: WorkspaceId,
    key: CheckpointKey,
    fence: FencingToken,
    failed: Arc<AtomicBool>,
}

impl StoreCheckpoint {
    /// The checkpoint `key` of `workspace`, written under the lease `fence`.
    pub fn new(
        store: Arc<dyn RecordStore>,
        workspace: WorkspaceId,
        key: CheckpointKey,
        fence: FencingToken,
    ) -> Self {
        Self {
            store,
            workspace,
            key,
            fence,
            failed: Arc::default(),
        }
    }

    /// Whether the store failed a call made through this checkpoint (or
    /// [`watch`](Self::watch)ed with it).
    pub fn store_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Passes `result` — of a call to the same store for the same step —
    /// through, remembering a failure as [`store_failed`](Self::store_failed).
    pub fn watch<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.failed.store(true, Ordering::SeqCst);
        }
        result
    }
}

#[async_trait]
impl Checkpoint for StoreCheckpoint {
    async fn load(&self) -> Result<Option<serde_json::Value>> {
        self.watch(self.store.get_checkpoint(&self.workspace, &self.key).await)
    }

    async fn save(&self, value: serde_json::Value) -> Result<()> {
        self.watch(
            self.store
                .put_checkpoint(&self.workspace, &self.key, value, self.fence)
                .await,
        )
    }
}

/// A [`Checkpoint`] in memory, for tests and conformance runs. Clones share the
/// value.
#[derive(Debug, Clone, Default)]
pub struct MemoryCheckpoint {
    value: Arc<Mutex<Option<serde_json::Value>>>,
}

impl MemoryCheckpoint {
    /// An empty checkpoint.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Checkpoint for MemoryCheckpoint {
    async fn load(&self) -> Result<Option<serde_json::Value>> {
        Ok(self.value.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    async fn save(&self, value: serde_json::Value) -> Result<()> {
        *self.value.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
        Ok(())
    }
}

/// Where a provider's or executor's call stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress<T> {
    /// Finished, with its result.
    Ready(T),
    /// Started and still running on the provider's side: call again with the same
    /// request after the delay. The engine sleeps meanwhile, holding nothing.
    /// Build it with [`Progress::in_progress`] or [`Progress::in_progress_with`].
    InProgress {
        /// When to ask again.
        poll_after: Duration,
        /// What the provider sees, in a few words ("EKS cluster CREATING, 6
        /// min elapsed"): it shows in the workspace's status at once and in its
        /// history at intervals ([`EngineConfig::progress_flush`](crate::EngineConfig::progress_flush)),
        /// so reporting it on every poll costs no write.
        message: Option<ProgressMessage>,
    },
    /// The work must run inside the cluster: queue this command for the agent, then
    /// call again with the same request plus the command's result. Cloud
    /// provisioners never return this.
    AwaitCommand(NewCommand),
}

impl<T> Progress<T> {
    /// The result, if ready.
    pub fn ready(self) -> Option<T> {
        match self {
            Self::Ready(t) => Some(t),
            _ => None,
        }
    }

    /// Still running, without a message: ask again after `poll_after`.
    pub fn in_progress(poll_after: Duration) -> Self {
        Self::InProgress {
            poll_after,
            message: None,
        }
    }

    /// Still running, and what the provider sees: ask again after `poll_after`.
    pub fn in_progress_with(poll_after: Duration, message: impl Into<ProgressMessage>) -> Self {
        Self::InProgress {
            poll_after,
            message: Some(message.into()),
        }
    }
}

/// A short, one-line message about work in progress, as a provider or an agent
/// command reports it. Made from any text: control characters become spaces,
/// and text longer than [`MAX_CHARS`](Self::MAX_CHARS) is cut there and ends
/// in `…`, so a message is always safe to show and to store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct ProgressMessage(String);

impl ProgressMessage {
    /// The longest message kept, in characters.
    pub const MAX_CHARS: usize = 200;

    /// The message for `text`, made safe as described above.
    pub fn new(text: &str) -> Self {
        let mut out = String::with_capacity(text.len().min(Self::MAX_CHARS * 4));
        let mut chars = text
            .trim()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c });
        for c in chars.by_ref().take(Self::MAX_CHARS) {
            out.push(c);
        }
        if chars.next().is_some() {
            out.pop();
            out.push('…');
        }
        Self(out)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProgressMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ProgressMessage {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for ProgressMessage {
    fn from(text: String) -> Self {
        Self::new(&text)
    }
}

impl From<ProgressMessage> for String {
    fn from(message: ProgressMessage) -> Self {
        message.0
    }
}

#[cfg(test)]
mod tests {
    use super::ProgressMessage;

    #[test]
    fn a_message_is_one_bounded_line() {
        assert_eq!(
            ProgressMessage::new("  cluster CREATING\n").as_str(),
            "cluster CREATING"
        );
        assert_eq!(ProgressMessage::new("a\tb\rc").as_str(), "a b c");
        let long = "é".repeat(ProgressMessage::MAX_CHARS + 1);
        let cut = ProgressMessage::new(&long);
        assert_eq!(cut.as_str().chars().count(), ProgressMessage::MAX_CHARS);
        assert!(cut.as_str().ends_with('…'));
        let exact = "x".repeat(ProgressMessage::MAX_CHARS);
        assert_eq!(ProgressMessage::new(&exact).as_str(), exact);
        // What is read back from a store is made safe the same way.
        let read: ProgressMessage = serde_json::from_str("\"a\\u0000b\"").unwrap();
        assert_eq!(read.as_str(), "a b");
    }
}
