//! [`GroupCommit`]: many workspaces' writes in one durable transaction.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::store::{BatchOutcome, BatchWrite, WorkspaceStore};

type Pending = (BatchWrite, oneshot::Sender<Result<BatchOutcome>>);

/// A [`WorkspaceStore`] wrapper that gathers concurrent writes — the
/// [`commit`](crate::store::RecordStore::commit)s, checkpoints, lease acquisitions and
/// releases of many workspaces' steps that run together — and writes them with
/// one [`write_batch`](crate::store::RecordStore::write_batch) of the inner store: one
/// transaction, one flush to disk.
///
/// # Guarantees
/// Each write keeps its own compare-and-swap and fence, exactly as when made
/// alone (that is `write_batch`'s contract); one write's refusal does not
/// affect the others. A caller's write returns only once it is durable.
/// Nothing waits on purpose: while one batch is being written, the next gathers,
/// so a lone writer pays nothing and a crowd shares the cost of a flush.
///
/// Every other method goes straight to the inner store
/// ([`delegate_store!`](crate::delegate_store)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use cogrion_core::{store::{GroupCommit, InMemoryStore, WorkspaceStore}};
/// let store: Arc<dyn WorkspaceStore> = Arc::new(GroupCommit::new(Arc::new(InMemoryStore::new()), 256));
/// # let _ = store;
/// # }
/// ```
#[derive(Clone)]
pub struct GroupCommit {
    inner: Arc<dyn WorkspaceStore>,
    /// One queue per lane; a workspace always uses the same lane.
    lanes: Arc<[mpsc::UnboundedSender<Pending>]>,
    batches: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    /// Writes by kind.
    kinds: Arc<WriteCounter>,
}

/// How many writes of each kind went through a [`GroupCommit`] (or a store
/// that counts them, [`WriteCounter`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Commits.
    pub commits: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Leases acquired.
    pub acquires: u64,
    /// Leases released.
    pub releases: u64,
}

/// The kinds of workspace write [`WriteCounts`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteKind {
    /// A commit.
    Commit,
    /// A provider checkpoint.
    Checkpoint,
    /// A lease acquisition.
    Acquire,
    /// A lease release.
    Release,
}

impl WriteKind {
    /// The kind of a batched write.
    pub fn of(write: &BatchWrite) -> Self {
        match write {
            BatchWrite::Commit(_) => Self::Commit,
            BatchWrite::PutCheckpoint { .. } => Self::Checkpoint,
            BatchWrite::Acquire { .. } => Self::Acquire,
            BatchWrite::Release(_) => Self::Release,
        }
    }
}

/// Counts workspace writes by kind, from any number of tasks: what a
/// [`GroupCommit`] — or a store that reports its write mix — keeps.
#[derive(Debug, Default)]
pub struct WriteCounter([AtomicU64; 4]);

impl WriteCounter {
    /// Counts one write of `kind`.
    pub fn add(&self, kind: WriteKind) {
        let i = match kind {
            WriteKind::Commit => 0,
            WriteKind::Checkpoint => 1,
            WriteKind::Acquire => 2,
            WriteKind::Release => 3,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The writes counted so far.
    pub fn counts(&self) -> WriteCounts {
        let [c, k, a, r] = &self.0;
        WriteCounts {
            commits: c.load(Ordering::Relaxed),
            checkpoints: k.load(Ordering::Relaxed),
            acquires: a.load(Ordering::Relaxed),
            releases: r.load(Ordering::Relaxed),
        }
    }
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
    /// Wraps `inner`, writing at most `max_batch` writes per transaction, one
    /// transaction at a time — for a store with a single writer that does not
    /// batch concurrent calls by itself (cogrion's SQLite store does, since
    /// issue 15, and is faster without this wrapper). Starts the writing task
    /// on the current tokio runtime; it ends when every clone of the wrapper
    /// is dropped.
    pub fn new(inner: Arc<dyn WorkspaceStore>, max_batch: usize) -> Self {
        Self::with_lanes(inner, max_batch, 1)
    }

    /// Like [`new`](Self::new), with `lanes` transactions in flight at once, for
    /// stores that write concurrently (PostgreSQL): each workspace's writes
    /// always take the same lane, so they stay in order, and no two lanes' open
    /// transactions ever wait on each other's rows.
    pub fn with_lanes(inner: Arc<dyn WorkspaceStore>, max_batch: usize, lanes: usize) -> Self {
        let (batches, writes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let max_batch = max_batch.max(1);
        let senders: Vec<_> = (0..lanes.max(1))
            .map(|_| {
                let (queue, mut receiver) = mpsc::unbounded_channel::<Pending>();
                let (store, b, w) = (inner.clone(), batches.clone(), writes.clone());
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
                        metrics::histogram!(crate::metrics::STORE_BATCH_WRITES, "store" => "group")
                            .record(writes.len() as f64);
                        let results = store.write_batch(writes).await;
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                    }
                });
                queue
            })
            .collect();
        Self {
            inner,
            lanes: senders.into(),
            batches,
            writes,
            kinds: Arc::default(),
        }
    }

    /// How many transactions the wrapper wrote, and how many writes they held.
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
        source: None,
    }
}

impl GroupCommit {
    /// How many writes of each kind went through the wrapper.
    pub fn write_counts(&self) -> WriteCounts {
        self.kinds.counts()
    }

    /// Queues `write` for the next batch and waits for its outcome.
    async fn write(&self, write: BatchWrite) -> Result<BatchOutcome> {
        self.kinds.add(WriteKind::of(&write));
        let lane = if self.lanes.len() == 1 {
            0
        } else {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(write.workspace());
            (hash % self.lanes.len() as u64) as usize
        };
        let (reply, answer) = oneshot::channel();
        self.lanes[lane].send((write, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

crate::delegate_store!(GroupCommit, inner);
