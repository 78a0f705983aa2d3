//! [`GroupCommit`]: many workspaces' commits in one durable transaction.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cogrion_agent_proto::{CommandId, CommandResult};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::ids::{HolderId, WorkspaceId};
use crate::store::{
    AgentCredential, BootstrapTokenRecord, CertSerial, CheckpointKey, CommandQueue, Committed,
    CredentialStore, EventRecord, EventSeq, FencingToken, Lease, LeaseStore, ListQuery,
    QueuedCommand, RecordStore, TokenHash, TokenStore, Versioned, WorkspaceRecord, WorkspaceStore,
    WorkspaceWrite,
};

type Pending = (WorkspaceWrite, oneshot::Sender<Result<Committed>>);

/// A [`WorkspaceStore`] wrapper that gathers concurrent [`commit`](RecordStore::commit)s
/// — typically the steps of many workspaces that finish together — and writes
/// them with one [`commit_batch`](RecordStore::commit_batch) of the inner store:
/// one transaction, one flush to disk.
///
/// # Guarantees
/// Each write keeps its own compare-and-swap and fence, exactly as a single
/// `commit` (that is `commit_batch`'s contract); one write's refusal does not
/// affect the others. A caller's `commit` returns only once its write is durable.
/// Nothing waits on purpose: while one batch is being written, the next gathers,
/// so a lone writer pays nothing and a crowd shares the cost of a flush.
///
/// Every other method goes straight to the inner store.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use cogrion_core::{GroupCommit, InMemoryStore, WorkspaceStore};
/// let store: Arc<dyn WorkspaceStore> = Arc::new(GroupCommit::new(Arc::new(InMemoryStore::new()), 256));
/// # let _ = store;
/// # }
/// ```
#[derive(Clone)]
pub struct GroupCommit {
    inner: Arc<dyn WorkspaceStore>,
    queue: mpsc::UnboundedSender<Pending>,
    batches: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

impl fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommit")
            .field("inner", &self.inner)
            .field("batches", &self.batches.load(Ordering::Relaxed))
            .field("writes", &self.writes.load(Ordering::Relaxed))
            .finish()
    }
}

impl GroupCommit {
    /// Wraps `inner`, writing at most `max_batch` commits per transaction. Starts
    /// the writing task on the current tokio runtime; it ends when every clone of
    /// the wrapper is dropped.
    pub fn new(inner: Arc<dyn WorkspaceStore>, max_batch: usize) -> Self {
        let (queue, mut receiver) = mpsc::unbounded_channel::<Pending>();
        let (batches, writes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (store, b, w) = (inner.clone(), batches.clone(), writes.clone());
        let max_batch = max_batch.max(1);
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match receiver.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (writes, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                b.fetch_add(1, Ordering::Relaxed);
                w.fetch_add(writes.len() as u64, Ordering::Relaxed);
                let results = store.commit_batch(writes).await;
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
        });
        Self {
            inner,
            queue,
            batches,
            writes,
        }
    }

    /// How many transactions the wrapper wrote, and how many commits they held.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }
}

fn gone() -> Error {
    Error::Unavailable {
        service: "group commit".into(),
        detail: "the writing task stopped".into(),
    }
}

#[async_trait]
impl RecordStore for GroupCommit {
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Versioned<WorkspaceRecord>> {
        self.inner.get_workspace(id).await
    }
    async fn list_workspaces(&self, query: &ListQuery) -> Result<Vec<Versioned<WorkspaceRecord>>> {
        self.inner.list_workspaces(query).await
    }
    async fn commit(&self, write: WorkspaceWrite) -> Result<Committed> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((write, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
    async fn commit_batch(&self, writes: Vec<WorkspaceWrite>) -> Vec<Result<Committed>> {
        self.inner.commit_batch(writes).await
    }
    async fn read_events(
        &self,
        id: &WorkspaceId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        self.inner.read_events(id, after, limit).await
    }
    async fn get_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
    ) -> Result<Option<serde_json::Value>> {
        self.inner.get_checkpoint(id, key).await
    }
    async fn put_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
        value: serde_json::Value,
        fence: FencingToken,
    ) -> Result<()> {
        self.inner.put_checkpoint(id, key, value, fence).await
    }
}

#[async_trait]
impl LeaseStore for GroupCommit {
    async fn acquire(
        &self,
        w: &WorkspaceId,
        h: &HolderId,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Lease> {
        self.inner.acquire(w, h, ttl, now).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        self.inner.renew(lease, ttl, now).await
    }
    async fn release(&self, lease: &Lease) -> Result<()> {
        self.inner.release(lease).await
    }
}

#[async_trait]
impl CommandQueue for GroupCommit {
    async fn deliver(
        &self,
        w: &WorkspaceId,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<QueuedCommand>> {
        self.inner.deliver(w, limit, now).await
    }
    async fn answer(&self, w: &WorkspaceId, result: CommandResult, now: Timestamp) -> Result<bool> {
        self.inner.answer(w, result, now).await
    }
    async fn get_command(&self, w: &WorkspaceId, id: &CommandId) -> Result<QueuedCommand> {
        self.inner.get_command(w, id).await
    }
}

#[async_trait]
impl TokenStore for GroupCommit {
    async fn put_token(&self, token: BootstrapTokenRecord) -> Result<()> {
        self.inner.put_token(token).await
    }
    async fn consume(
        &self,
        hash: &TokenHash,
        w: &WorkspaceId,
        now: Timestamp,
    ) -> Result<BootstrapTokenRecord> {
        self.inner.consume(hash, w, now).await
    }
}

#[async_trait]
impl CredentialStore for GroupCommit {
    async fn put_credential(&self, c: AgentCredential) -> Result<()> {
        self.inner.put_credential(c).await
    }
    async fn get_credential(&self, s: &CertSerial) -> Result<AgentCredential> {
        self.inner.get_credential(s).await
    }
    async fn list_credentials(&self, w: &WorkspaceId) -> Result<Vec<AgentCredential>> {
        self.inner.list_credentials(w).await
    }
    async fn mark_polled(&self, s: &CertSerial, now: Timestamp) -> Result<bool> {
        self.inner.mark_polled(s, now).await
    }
    async fn revoke_all(
        &self,
        w: &WorkspaceId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Vec<CertSerial>> {
        self.inner.revoke_all(w, reason, now).await
    }
}
