//! [`SqliteStore`]: the [`WorkspaceStore`](cogrion_core::store::WorkspaceStore) in one SQLite file — Cogrion's
//! embedded default.
//!
//! # Durability
//! The database runs in WAL mode. With [`Durability::Normal`] (the default) a
//! commit is durable against a crash of the process, and survives a power loss
//! unless it was among the last few commits before it (SQLite's
//! `synchronous=NORMAL` syncs the WAL at checkpoints, not on every commit); with
//! [`Durability::Full`] every commit is synced before it returns
//! (`synchronous=FULL`), at the cost of one fsync per transaction — which is
//! why writes share transactions (below), and why
//! [`RecordStore::write_batch`](cogrion_core::store::RecordStore::write_batch) puts
//! many writes in one (commits, checkpoints, lease acquisitions and releases of
//! any workspaces). The engine needs no
//! [`GroupCommit`](cogrion_core::store::GroupCommit) in front of this store: its
//! concurrent writes share transactions anyway, with one hand-off fewer.
//!
//! # Execution
//! One connection, on a thread of its own, does every write; a few more, each
//! on its own thread, do the reads (WAL: a read never waits for the writer).
//! A call crosses to a connection's thread once, and runs there whole: all its
//! statements (prepared once per connection) without another hand-off. The
//! writer runs every call that queued while it was busy in one transaction
//! (`BEGIN IMMEDIATE`, so another process on the same file waits on the lock
//! instead of failing mid-transaction), each under its own savepoint: one
//! call's refusal undoes only its own writes, and every answer waits for the
//! commit. What a fleet of agents does all at once after a restart — token
//! exchanges, first polls — therefore shares transactions by itself
//! ([`SqliteStore::stats`]).
//!
//! # Schema
//! Versioned migrations are applied when the store is opened. A database written
//! by a newer schema is refused with [`Error::Rejected`] and left untouched.
//! Rows that cannot be read back (unknown states, invalid JSON, a record under the
//! wrong id, gaps in a history) are [`Error::Corrupt`] naming the workspace —
//! never repaired silently.
//!
//! The statements and everything they decide are shared with the PostgreSQL
//! store ([`crate::sql`]); this module is only how they reach SQLite.

mod schema;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cogrion_core::{Error, Result, Timestamp};
use futures::FutureExt;
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::sql::{Arg, Backend, Call, Conn, Dialect, Row, Sql, SqlStore, Val, migrate, timestamp};
use schema::{MIGRATIONS, RECORDS_REWRITTEN_AT};

/// Most calls in one write transaction.
const MAX_CALLS: usize = 256;

/// Prepared statements kept per connection (the layer has about sixty).
const STATEMENT_CACHE: usize = 128;

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL`: durable against process crashes; the last commits
    /// before a power loss may be lost. The default.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is on disk before it returns.
    Full,
}

/// Settings of a [`SqliteStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How hard commits wait for the disk.
    pub durability: Durability,
    /// Read connections, each on its own thread (default 1: a read is one
    /// hand-off and a few statements; on a 2-core machine a second reader
    /// measured no faster).
    pub readers: u32,
    /// How long to wait for another process's write lock (default 5 s).
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Normal,
            readers: 1,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl SqliteOptions {
    /// With this durability.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }
}

/// A [`WorkspaceStore`](cogrion_core::store::WorkspaceStore) in a SQLite file.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cogrion_core::Result<()> {
/// use cogrion_core::{store::{RecordStore, WorkspaceStore}};
/// use cogrion_providers::sqlite::SqliteStore;
/// let dir = std::env::temp_dir().join(format!("cogrion-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let store = SqliteStore::open(dir.join("cogrion.db")).await?;
/// assert!(store.get_workspace(&"acme-prod".parse()?).await.is_err());
/// # std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
pub type SqliteStore = SqlStore<SqliteBackend>;

/// How a [`SqliteStore`] reaches its file: a writer thread and reader threads,
/// each with its own connection (see the [module](self)).
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    shared: Arc<Shared>,
}

/// Where writes queue for the writer's thread.
type WriteQueue = Sender<Box<dyn WriteCall>>;

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    /// `None` only while the store closes.
    writes: Option<WriteQueue>,
    reads: Sender<ReadCall>,
    stats: Arc<Counters>,
    /// The writer's and the checkpointer's threads.
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Shared {
    /// Closes the store completely: the writer ends once its queue is empty,
    /// then the checkpointer with a last checkpoint; the file is not touched
    /// after the store is dropped.
    fn drop(&mut self) {
        self.writes = None;
        for thread in self.threads.drain(..) {
            // Never on one of its own threads (a call that held the last
            // handle of the store): that thread ends by itself.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    writes: AtomicU64,
    reads: AtomicU64,
}

/// What a [`SqliteStore`] has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteStats {
    /// Write transactions committed or rolled back.
    pub transactions: u64,
    /// Write calls run in them: `writes / transactions` is how many calls
    /// shared a transaction on average.
    pub writes: u64,
    /// Read calls.
    pub reads: u64,
}

impl SqlStore<SqliteBackend> {
    /// Opens (creating if needed) the database at `path` with the default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens (creating if needed) the database at `path`, applying pending
    /// migrations. A database from a newer schema is refused and not modified.
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let stats = Arc::new(Counters::default());
        let (writes, threads) = {
            let (path, options, stats) = (path.clone(), options.clone(), stats.clone());
            tokio::task::spawn_blocking(move || start_writer(&path, &options, stats))
                .await
                .map_err(|e| lost(e.to_string()))??
        };
        let (reads, queue) = std::sync::mpsc::channel();
        let backend = SqliteBackend {
            shared: Arc::new(Shared {
                path: path.clone(),
                writes: Some(writes),
                reads,
                stats: stats.clone(),
                threads,
            }),
        };
        let described = path.display().to_string();
        backend
            .write(Box::new(move |c| {
                Box::pin(
                    async move { migrate(c, MIGRATIONS, RECORDS_REWRITTEN_AT, &described).await },
                )
            }))
            .await?;
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..options.readers.max(1) {
            let conn = connect(
                &path,
                &options,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            let (queue, stats) = (queue.clone(), stats.clone());
            std::thread::Builder::new()
                .name(format!("cogrion-sqlite-read-{i}"))
                .spawn(move || read_loop(conn, &queue, &stats))
                .map_err(|e| lost(e.to_string()))?;
        }
        Ok(SqlStore::new(backend))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.backend.shared.path
    }

    /// What the store has done so far: write transactions, the write calls
    /// in them, and reads. Calls arriving together share a transaction; the
    /// ratio is the batching a reconnect storm (or any burst) gets.
    pub fn stats(&self) -> SqliteStats {
        let c = &self.backend.shared.stats;
        SqliteStats {
            transactions: c.transactions.load(Relaxed),
            writes: c.writes.load(Relaxed),
            reads: c.reads.load(Relaxed),
        }
    }
}

fn lost(detail: impl std::fmt::Display) -> Error {
    crate::sql::unavailable(Dialect::Sqlite, detail)
}

fn sqlite_error(e: rusqlite::Error) -> Error {
    Error::unavailable(Dialect::Sqlite.service(), e)
}

/// Opens a connection to `path` with the store's settings.
fn connect(path: &Path, options: &SqliteOptions, flags: OpenFlags) -> Result<SqliteConn> {
    let conn = Connection::open_with_flags(path, flags).map_err(sqlite_error)?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(sqlite_error)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Plans that do not depend on bound values: otherwise SQLite prepares a
    // statement again whenever a value it planned with (a `LIMIT ?`, a
    // `? IS NULL`) changes, and a prepared statement saves nothing.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(sqlite_error)?;
    if !flags.contains(OpenFlags::SQLITE_OPEN_READ_ONLY) {
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sqlite_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(lost(format!(
                "{} cannot use a write-ahead log (journal mode {mode})",
                path.display()
            )));
        }
    }
    let synchronous = match options.durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON;"
    ))
    .map_err(sqlite_error)?;
    Ok(SqliteConn { conn, now: None })
}

/// Opens the writer's connection (creating the file) and starts its thread
/// and the checkpointer's.
fn start_writer(
    path: &Path,
    options: &SqliteOptions,
    stats: Arc<Counters>,
) -> Result<(WriteQueue, Vec<std::thread::JoinHandle<()>>)> {
    let conn = connect(
        path,
        options,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The writer never copies the log into the database itself (a commit
    // that does stalls every call queued behind it): a thread of its own
    // does, beside it (below).
    conn.conn
        .execute_batch("PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;")
        .map_err(sqlite_error)?;
    let checkpoints = connect(
        path,
        options,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let (writes, queue) = std::sync::mpsc::channel();
    // "The log grew": one pending signal at most, however many commits.
    let (grew, growth) = std::sync::mpsc::sync_channel::<()>(1);
    let writer = std::thread::Builder::new()
        .name("cogrion-sqlite-write".into())
        .spawn(move || write_loop(conn, &queue, &stats, &grew))
        .map_err(|e| lost(e.to_string()))?;
    let checkpointer = std::thread::Builder::new()
        .name("cogrion-sqlite-checkpoint".into())
        .spawn(move || checkpoint_loop(checkpoints, &growth))
        .map_err(|e| lost(e.to_string()))?;
    Ok((writes, vec![writer, checkpointer]))
}

/// The shortest time between two checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The checkpointer: when the writer has committed since its last turn,
/// copies what the log holds into the database without waiting for (or
/// blocking) the writer or any reader (`PASSIVE`; what a reader still needs
/// is copied on a later turn), at most every [`CHECKPOINT_EVERY`]. An idle
/// store costs it nothing. Ends, with a last checkpoint, when the writer does.
fn checkpoint_loop(conn: SqliteConn, growth: &Receiver<()>) {
    loop {
        let done = growth.recv().is_err();
        if let Err(e) = conn
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "a checkpoint of the SQLite log failed");
        }
        if done {
            return;
        }
        std::thread::sleep(CHECKPOINT_EVERY);
    }
}

/// A connection on its own thread. Its calls do their work before they are
/// polled: the futures they return are ready at once.
#[derive(Debug)]
pub struct SqliteConn {
    conn: Connection,
    /// SQLite's time, read once in the open transaction.
    now: Option<Timestamp>,
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Arg::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(v)),
            Arg::Bool(v) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(v))),
            Arg::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Arg::OptInt(v) => v.map_or(ToSqlOutput::Borrowed(ValueRef::Null), |v| {
                ToSqlOutput::Borrowed(ValueRef::Integer(v))
            }),
            Arg::OptText(v) => v.map_or(ToSqlOutput::Borrowed(ValueRef::Null), |v| {
                ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes()))
            }),
            Arg::Texts(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "SQLite has no list values".into(),
                ));
            }
        })
    }
}

fn value(v: ValueRef<'_>) -> Val {
    match v {
        ValueRef::Null => Val::Null,
        ValueRef::Integer(i) => Val::Int(i),
        // The schema stores no floating-point numbers: a real is a wrong
        // value, reported as text so that its reader names it.
        ValueRef::Real(f) => Val::Text(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Val::Text(match std::str::from_utf8(t) {
            Ok(text) => text.to_owned(),
            // Not UTF-8: kept readable, and refused as JSON by its reader.
            Err(_) => String::from_utf8_lossy(t).into_owned(),
        }),
    }
}

impl SqliteConn {
    fn exec_now(&mut self, sql: &'static Sql, args: &[Arg<'_>]) -> Result<u64> {
        let mut stmt = self
            .conn
            .prepare_cached(sql.text(Dialect::Sqlite))
            .map_err(sqlite_error)?;
        stmt.execute(rusqlite::params_from_iter(args))
            .map(|n| n as u64)
            .map_err(sqlite_error)
    }

    fn rows_now(&mut self, sql: &'static Sql, args: &[Arg<'_>]) -> Result<Vec<Row>> {
        let mut stmt = self
            .conn
            .prepare_cached(sql.text(Dialect::Sqlite))
            .map_err(sqlite_error)?;
        let columns = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args))
            .map_err(sqlite_error)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(sqlite_error)? {
            let mut row = Vec::with_capacity(columns);
            for i in 0..columns {
                row.push(value(r.get_ref(i).map_err(sqlite_error)?));
            }
            out.push(Row(row));
        }
        Ok(out)
    }

    fn now_now(&mut self) -> Result<Timestamp> {
        if let Some(now) = self.now {
            return Ok(now);
        }
        let ms: i64 = self
            .conn
            .prepare_cached("SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sqlite_error)?;
        let now = timestamp(ms);
        self.now = Some(now);
        Ok(now)
    }

    /// A statement of the transaction's own (BEGIN, SAVEPOINT, …).
    fn control(&mut self, sql: &str) -> std::result::Result<(), String> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Runs `calls` in one transaction. One call alone runs bare, its failure
    /// rolling the transaction back; several each run under a savepoint, so
    /// that a failed one's writes are undone and the others commit. `Err`:
    /// the transaction itself failed, and nothing was written.
    fn transaction(&mut self, calls: &mut [Box<dyn WriteCall>]) -> std::result::Result<(), String> {
        self.now = None;
        self.control("BEGIN IMMEDIATE")?;
        let outcome = if let [call] = calls {
            if call.run(self) {
                self.control("COMMIT")
            } else {
                self.control("ROLLBACK")
            }
        } else {
            (|| {
                for call in calls.iter_mut() {
                    self.control("SAVEPOINT c")?;
                    if !call.run(self) {
                        self.control("ROLLBACK TO SAVEPOINT c")?;
                    }
                    self.control("RELEASE SAVEPOINT c")?;
                }
                self.control("COMMIT")
            })()
        };
        if outcome.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        outcome
    }
}

impl Conn for SqliteConn {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn exec(
        &mut self,
        sql: &'static Sql,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64>> + Send {
        std::future::ready(self.exec_now(sql, args))
    }

    fn rows(
        &mut self,
        sql: &'static Sql,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<Row>>> + Send {
        std::future::ready(self.rows_now(sql, args))
    }

    fn script(&mut self, sql: &'static str) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(self.conn.execute_batch(sql).map_err(sqlite_error))
    }

    fn db_now(&mut self) -> impl Future<Output = Result<Timestamp>> + Send {
        std::future::ready(self.now_now())
    }
}

/// Runs a call on this thread's connection: its future is ready at once (a
/// panic in it is that call's error, not the thread's end).
fn run_here<T>(call: Call<SqliteConn, T>, conn: &mut SqliteConn) -> Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| call(conn).now_or_never())) {
        Ok(Some(result)) => result,
        Ok(None) => Err(lost("a call waited on the connection's thread")),
        Err(_) => Err(lost("a call panicked on the connection's thread")),
    }
}

/// A write call queued for the writer thread.
trait WriteCall: Send {
    /// Runs the call in the open transaction; `false` if it failed (its
    /// writes are to be undone).
    fn run(&mut self, conn: &mut SqliteConn) -> bool;
    /// Answers the caller: with the call's own result, or — when the
    /// transaction failed — with that failure.
    fn answer(self: Box<Self>, failed: Option<&str>);
}

struct Queued<T> {
    call: Option<Call<SqliteConn, T>>,
    result: Option<Result<T>>,
    answer: oneshot::Sender<Result<T>>,
}

impl<T: Send> WriteCall for Queued<T> {
    fn run(&mut self, conn: &mut SqliteConn) -> bool {
        let Some(call) = self.call.take() else {
            return false;
        };
        let result = run_here(call, conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, failed: Option<&str>) {
        let result = match (failed, self.result) {
            (Some(detail), _) => Err(lost(format!("the transaction failed: {detail}"))),
            (None, Some(result)) => result,
            (None, None) => Err(lost("the call did not run")),
        };
        // A caller that went away is not waiting any more.
        let _ = self.answer.send(result);
    }
}

/// The writer thread: every call queued while it was busy goes into the next
/// transaction. Ends when the store is dropped.
fn write_loop(
    mut conn: SqliteConn,
    queue: &Receiver<Box<dyn WriteCall>>,
    stats: &Counters,
    grew: &std::sync::mpsc::SyncSender<()>,
) {
    while let Ok(first) = queue.recv() {
        let mut calls = vec![first];
        while calls.len() < MAX_CALLS {
            match queue.try_recv() {
                Ok(call) => calls.push(call),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // Counted before the answers go: a caller that has its answer sees
        // its call counted.
        stats.transactions.fetch_add(1, Relaxed);
        stats.writes.fetch_add(calls.len() as u64, Relaxed);
        metrics::histogram!(cogrion_core::metrics::STORE_BATCH_WRITES, "store" => "sqlite")
            .record(calls.len() as f64);
        let failed = conn.transaction(&mut calls).err();
        // Already signalled (full) or the checkpointer gone: nothing to do.
        let _ = grew.try_send(());
        for call in calls {
            call.answer(failed.as_deref());
        }
    }
}

type ReadCall = Box<dyn FnOnce(&mut SqliteConn) + Send>;

/// A reader thread: takes the next read from the shared queue. Ends when the
/// store is dropped.
fn read_loop(mut conn: SqliteConn, queue: &Mutex<Receiver<ReadCall>>, stats: &Counters) {
    loop {
        let call = match crate::lock_or_recover(queue).recv() {
            Ok(call) => call,
            Err(_) => return,
        };
        stats.reads.fetch_add(1, Relaxed);
        call(&mut conn);
    }
}

fn gone() -> Error {
    lost("the store's connection thread has stopped")
}

impl Backend for SqliteBackend {
    type Conn = SqliteConn;

    #[allow(private_interfaces)]
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    #[allow(private_interfaces)]
    fn write<T: Send + 'static>(
        &self,
        call: Call<SqliteConn, T>,
    ) -> impl Future<Output = Result<T>> + Send {
        let (answer, answered) = oneshot::channel();
        let queued: Box<dyn WriteCall> = Box::new(Queued {
            call: Some(call),
            result: None,
            answer,
        });
        let sent = match &self.shared.writes {
            Some(writes) => writes.send(queued).map_err(|_| ()),
            None => Err(()),
        };
        async move {
            sent.map_err(|_| gone())?;
            answered.await.unwrap_or_else(|_| Err(gone()))
        }
    }

    #[allow(private_interfaces)]
    fn read<T: Send + 'static>(
        &self,
        call: Call<SqliteConn, T>,
    ) -> impl Future<Output = Result<T>> + Send {
        let (answer, answered) = oneshot::channel();
        let sent = self
            .shared
            .reads
            .send(Box::new(move |conn: &mut SqliteConn| {
                let _ = answer.send(run_here(call, conn));
            }));
        async move {
            sent.map_err(|_| gone())?;
            answered.await.unwrap_or_else(|_| Err(gone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cogrion_core::store::RecordStore;

    /// A call that panics on the writer's thread is that call's error: a call
    /// made beside it (in its transaction or the next) commits, and the
    /// thread goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_panics_fails_alone_and_the_writer_goes_on() {
        let dir = std::env::temp_dir().join(format!(
            "cogrion-sqlite-panic-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(dir.join("cogrion.db")).await.unwrap();
        let backend = store.backend.clone();
        let panicking = backend.write::<()>(Box::new(|_c| {
            Box::pin(async { panic!("a bug in one call") })
        }));
        let id: cogrion_core::WorkspaceId = "panic-neighbour".parse().unwrap();
        let beside = store.commit(cogrion_core::store::WorkspaceWrite::create(
            cogrion_core::store::WorkspaceRecord::new(
                id.clone(),
                cogrion_core::conformance::sample_workspace_spec(),
                Timestamp::EPOCH,
            ),
            Timestamp::EPOCH,
        ));
        let (panicked, committed) = futures::join!(panicking, beside);
        match panicked {
            Err(Error::Unavailable { detail, .. }) => {
                assert!(detail.contains("panicked"), "{detail}")
            }
            other => panic!("a panicking call must be its own error, got {other:?}"),
        }
        committed.unwrap();
        assert_eq!(store.get_workspace(&id).await.unwrap().value.id, id);
        // The writer still runs calls.
        backend
            .write(Box::new(|c: &mut SqliteConn| {
                Box::pin(async move { c.db_now().await.map(|_| ()) })
            }))
            .await
            .unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::SystemTime::now())
    }
}
