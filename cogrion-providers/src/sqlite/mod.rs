//! [`SqliteStore`]: the [`WorkspaceStore`](cogrion_core::WorkspaceStore) in one SQLite file — Cogrion's
//! embedded default.
//!
//! # Durability
//! The database runs in WAL mode. With [`Durability::Normal`] (the default) a
//! commit is durable against a crash of the process, and survives a power loss
//! unless it was among the last few commits before it (SQLite's
//! `synchronous=NORMAL` syncs the WAL at checkpoints, not on every commit); with
//! [`Durability::Full`] every commit is synced before it returns
//! (`synchronous=FULL`), at the cost of one fsync per transaction — which is why
//! [`RecordStore::write_batch`] shares one transaction among many writes
//! (commits, checkpoints, lease acquisitions and releases of any workspaces, each
//! commit under its own savepoint). Wrap the store in
//! [`GroupCommit`](cogrion_core::GroupCommit) to have the engine's concurrent
//! writes batched that way.
//!
//! # Concurrency
//! One writer connection serialises writes (`BEGIN IMMEDIATE`, so another process
//! on the same file waits on the lock instead of failing mid-transaction); reads
//! use a separate pool and never wait for the writer (WAL). A bulk
//! [`claim_due`](cogrion_core::LeaseStore::claim_due) is one `INSERT … SELECT`
//! in the writer's transaction. What a fleet of agents does all at once after
//! a restart is batched: concurrent token exchanges share a transaction, and
//! concurrent polls share one credential read and one first-poll `UPDATE`
//! ([`SqliteStore::exchange_stats`], [`SqliteStore::poll_read_stats`]); every
//! call still gets its own answer.
//!
//! # Schema
//! Versioned migrations are applied when the store is opened. A database written
//! by a newer schema is refused with [`Error::Rejected`] and left untouched.
//! Rows that cannot be read back (unknown states, invalid JSON, a record under the
//! wrong id, gaps in a history) are [`Error::Corrupt`] naming the workspace —
//! never repaired silently.

mod batch;
mod exchange;
mod polls;
mod schema;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use cogrion_core::proto::{CommandId, CommandResult};
use cogrion_core::{
    AgentCredential, BatchOutcome, BatchWrite, BootstrapTokenRecord, CertSerial, CheckpointKey,
    CommandQueue, CommandStatus, Committed, CredentialStore, Error, EventRecord, EventSeq,
    FencingToken, HistoryRetention, HolderId, Lease, LeaseStore, ListQuery, NewEvent, Purged,
    PutMode, QueuedCommand, RecordStore, Resource, Result, Revision, Revocation, StateName,
    Timestamp, TokenHash, TokenRefusal, TokenStore, Versioned, WorkspaceId, WorkspaceRecord,
    WorkspaceWrite, check_lease_ttl, check_preconditions, check_purge, check_write,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};

use schema::{MIGRATIONS, RECORDS_REWRITTEN_AT, SCHEMA_VERSION};

const DEFAULT_PAGE: i64 = 1000;

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
    /// Read connections (default 4).
    pub readers: u32,
    /// How long to wait for another process's write lock (default 5 s).
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Normal,
            readers: 4,
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

/// A [`WorkspaceStore`](cogrion_core::WorkspaceStore) in a SQLite file.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cogrion_core::Result<()> {
/// use cogrion_core::{RecordStore, WorkspaceStore};
/// use cogrion_providers::sqlite::SqliteStore;
/// let dir = std::env::temp_dir().join(format!("cogrion-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let store = SqliteStore::open(dir.join("cogrion.db")).await?;
/// assert!(store.get_workspace(&"acme-prod".parse()?).await.is_err());
/// # std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    path: PathBuf,
    /// Token exchanges waiting to share a transaction.
    exchanges: std::sync::Arc<exchange::Exchanges>,
    /// Polls' reads and first-poll marks waiting to share a statement.
    polls: std::sync::Arc<polls::Polls>,
    /// Where lease time comes from.
    clock: StoreClock,
}

/// Where a store's lease time comes from: SQLite's own time, read inside the writing transaction, or — in tests — a given clock.
#[derive(Debug, Clone, Default)]
struct StoreClock(Option<std::sync::Arc<dyn cogrion_core::Clock>>);

impl StoreClock {
    /// The store's now, inside the open transaction on `conn`.
    async fn now(&self, conn: &mut SqliteConnection) -> Result<Timestamp> {
        match &self.0 {
            Some(clock) => Ok(clock.now()),
            None => sqlx::query_scalar::<_, i64>(
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            )
            .fetch_one(&mut *conn)
            .await
            .map(timestamp)
            .map_err(unavailable),
        }
    }
}

impl SqliteStore {
    /// This store with leases judged by `clock` instead of the database's
    /// time: for tests, which move a manual clock rather than sleep.
    /// Production stores keep the database's time, which every replica
    /// shares whatever its own clock says.
    pub fn with_clock(mut self, clock: std::sync::Arc<dyn cogrion_core::Clock>) -> Self {
        self.clock = StoreClock(Some(clock));
        self
    }
}

fn unavailable(e: sqlx::Error) -> Error {
    Error::Unavailable {
        service: "sqlite".into(),
        detail: e.to_string(),
    }
}

fn corrupt(what: Resource, detail: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

fn ws_resource(id: &str) -> Resource {
    match WorkspaceId::new(id) {
        Ok(id) => Resource::Workspace(id),
        Err(_) => Resource::Provider(format!("workspace row {id:?}")),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Rejected {
        service: "sqlite".into(),
        detail: e.to_string(),
    })
}

fn from_json<T: DeserializeOwned>(text: &str, what: impl FnOnce() -> Resource) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(what(), format!("unreadable JSON: {e}")))
}

fn millis(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with the default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens (creating if needed) the database at `path`, applying pending
    /// migrations. A database from a newer schema is refused and not modified.
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let connect = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        // A connection to a local file does not go stale: no ping before each
        // use (it would cost a round trip to the connection's thread).
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await
            .map_err(unavailable)?;
        {
            let mut conn = write.acquire().await.map_err(unavailable)?;
            migrate(&mut conn, &path).await?;
        }
        let read = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .test_before_acquire(false)
            .connect_with(connect.read_only(true))
            .await
            .map_err(unavailable)?;
        Ok(Self {
            read,
            write,
            path,
            exchanges: std::sync::Arc::new(exchange::exchanges()),
            polls: Default::default(),
            clock: StoreClock::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token exchanges so far: (transactions, exchanges in them). Exchanges
    /// arriving together share a transaction; the ratio is the batching a
    /// reconnect storm gets.
    pub fn exchange_stats(&self) -> (u64, u64) {
        self.exchanges.stats()
    }

    /// Polls' credential reads so far: (statements, reads in them). Polls
    /// arriving together share a statement.
    pub fn poll_read_stats(&self) -> (u64, u64) {
        self.polls.read_stats()
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`), committing if it
    /// succeeds and rolling back if it fails.
    async fn write_tx<T, F>(&self, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> futures::future::BoxFuture<'c, Result<T>>,
    {
        let mut conn = self.write.acquire().await.map_err(unavailable)?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        match f(&mut conn).await {
            Ok(value) => {
                if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    return Err(unavailable(e));
                }
                Ok(value)
            }
            Err(e) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                Err(e)
            }
        }
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`], or refuses a newer one untouched.
async fn migrate(conn: &mut SqliteConnection, path: &Path) -> Result<()> {
    let has_table: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cogrion_schema'",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(unavailable)?;
    let current: i64 = match has_table {
        None => 0,
        Some(_) => sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM cogrion_schema")
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?,
    };
    if current > SCHEMA_VERSION {
        return Err(Error::Rejected {
            service: "sqlite".into(),
            detail: format!(
                "{} was written by a newer Cogrion (schema version {current}; this build knows up to {SCHEMA_VERSION}); it was not modified",
                path.display()
            ),
        });
    }
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    let mut tx = conn.begin().await.map_err(unavailable)?;
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS cogrion_schema (version INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    for (i, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        sqlx::raw_sql(*migration)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query("INSERT INTO cogrion_schema (version) VALUES (?)")
            .bind(i as i64 + 1)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        if i as i64 + 1 == RECORDS_REWRITTEN_AT {
            rewrite_records(&mut tx).await?;
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(())
}

/// Rewrites every workspace record in the current format (see
/// [`cogrion_core::upgrade`]), with its derived columns, one revision later
/// (so that a writer still holding the old revision meets a conflict). A row
/// that cannot be read is left as it was: it stays [`Error::Corrupt`] on read.
async fn rewrite_records(conn: &mut SqliteConnection) -> Result<()> {
    let rows = sqlx::query("SELECT id, record FROM workspaces")
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
    for row in rows {
        let id: String = row.get("id");
        let record: WorkspaceRecord = match serde_json::from_str(row.get("record")) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(workspace = %id, error = %e, "a record that cannot be read was not migrated");
                continue;
            }
        };
        sqlx::query(
            "UPDATE workspaces SET revision = revision + 1, state = ?, wake_at = ?, record = ? WHERE id = ?",
        )
        .bind(record.state.name().as_str())
        .bind(record.wake_at.map(millis))
        .bind(to_json(&record)?)
        .bind(&id)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    Ok(())
}

async fn revision_of(conn: &mut SqliteConnection, id: &WorkspaceId) -> Result<Option<i64>> {
    sqlx::query_scalar("SELECT revision FROM workspaces WHERE id = ?")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)
}

async fn require_workspace(conn: &mut SqliteConnection, id: &WorkspaceId) -> Result<()> {
    match revision_of(conn, id).await? {
        Some(_) => Ok(()),
        None => Err(Error::NotFound(Resource::Workspace(id.clone()))),
    }
}

/// What a write needs to know about a workspace, read in one statement: its
/// revision, its lease row (holder, fence, expires_at, released), and — for
/// commits — the last event and command sequence numbers. `None`: no such
/// workspace.
struct Current {
    revision: i64,
    lease: Option<(String, i64, i64, bool)>,
    last_event: i64,
    last_command: i64,
}

async fn current(
    conn: &mut SqliteConnection,
    id: &WorkspaceId,
    seqs: bool,
) -> Result<Option<Current>> {
    let sql = if seqs {
        "SELECT w.revision, l.holder, l.fence, l.expires_at, l.released, \
           (SELECT COALESCE(MAX(seq), 0) FROM events WHERE workspace = w.id) AS last_event, \
           (SELECT COALESCE(MAX(seq), 0) FROM commands WHERE workspace = w.id) AS last_command \
         FROM workspaces w LEFT JOIN leases l ON l.workspace = w.id WHERE w.id = ?"
    } else {
        "SELECT w.revision, l.holder, l.fence, l.expires_at, l.released, 0 AS last_event, 0 AS last_command \
         FROM workspaces w LEFT JOIN leases l ON l.workspace = w.id WHERE w.id = ?"
    };
    let row = sqlx::query(sql)
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(row.map(|r| Current {
        revision: r.get("revision"),
        lease: r.get::<Option<String>, _>("holder").map(|holder| {
            (
                holder,
                r.get("fence"),
                r.get("expires_at"),
                r.get::<bool, _>("released"),
            )
        }),
        last_event: r.get("last_event"),
        last_command: r.get("last_command"),
    }))
}

impl Current {
    fn found(value: Option<Self>, id: &WorkspaceId) -> Result<Self> {
        value.ok_or_else(|| Error::NotFound(Resource::Workspace(id.clone())))
    }

    /// The fencing token of the live (unreleased) lease, if any.
    fn live_fence(&self) -> Option<FencingToken> {
        self.lease
            .as_ref()
            .filter(|(_, _, _, released)| !released)
            .map(|(_, fence, _, _)| FencingToken(*fence as u64))
    }

    fn check_fence(&self, id: &WorkspaceId, fence: FencingToken) -> Result<()> {
        if self.live_fence() == Some(fence) {
            Ok(())
        } else {
            Err(Error::LeaseLost {
                workspace: id.clone(),
                fence: fence.0,
            })
        }
    }
}

/// The workspace's lease row: (holder, fence, expires_at, released).
async fn lease_row(
    conn: &mut SqliteConnection,
    id: &WorkspaceId,
) -> Result<Option<(String, i64, i64, bool)>> {
    let row =
        sqlx::query("SELECT holder, fence, expires_at, released FROM leases WHERE workspace = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
    Ok(row.map(|r| {
        (
            r.get("holder"),
            r.get("fence"),
            r.get("expires_at"),
            r.get::<i64, _>("released") != 0,
        )
    }))
}

async fn check_fence(
    conn: &mut SqliteConnection,
    id: &WorkspaceId,
    fence: FencingToken,
) -> Result<()> {
    match lease_row(conn, id).await? {
        Some((_, f, _, released)) if f as u64 == fence.0 && !released => Ok(()),
        _ => Err(Error::LeaseLost {
            workspace: id.clone(),
            fence: fence.0,
        }),
    }
}

/// [`LeaseStore::acquire`] inside an open transaction.
async fn acquire_in(
    conn: &mut SqliteConnection,
    ws: WorkspaceId,
    holder: HolderId,
    ttl: Duration,
    clock: &StoreClock,
) -> Result<Lease> {
    check_lease_ttl(ttl)?;
    let now = clock.now(conn).await?;
    let row = Current::found(current(conn, &ws, false).await?, &ws)?.lease;
    let live = row
        .as_ref()
        .filter(|(_, _, expires, released)| !released && *expires > millis(now));
    let fence = match (live, &row) {
        (Some((h, _, expires, _)), _) if h != holder.as_str() => {
            let expires_at = timestamp(*expires);
            return Err(Error::LeaseHeld {
                workspace: ws.clone(),
                holder: HolderId::new(h.clone())
                    .map_err(|e| corrupt(Resource::Lease(ws.clone()), e))?,
                expires_at,
                retry_after: expires_at.since(now),
            });
        }
        (Some((_, f, _, _)), _) => *f,
        (None, Some((_, f, _, _))) => f + 1,
        (None, None) => 1,
    };
    let expires_at = now + ttl;
    sqlx::query(
            "INSERT INTO leases (workspace, holder, fence, expires_at, released) VALUES (?, ?, ?, ?, 0) \
             ON CONFLICT (workspace) DO UPDATE SET holder = excluded.holder, fence = excluded.fence, \
             expires_at = excluded.expires_at, released = 0",
        )
        .bind(ws.as_str())
        .bind(holder.as_str())
        .bind(fence)
        .bind(millis(expires_at))
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(Lease {
        workspace: ws,
        holder,
        fence: FencingToken(fence as u64),
        expires_at,
    })
}

/// [`LeaseStore::release`] inside an open transaction.
async fn release_in(conn: &mut SqliteConnection, lease: &Lease) -> Result<()> {
    let done = sqlx::query("UPDATE leases SET released = 1 WHERE workspace = ? AND fence = ?")
        .bind(lease.workspace.as_str())
        .bind(lease.fence.0 as i64)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    if done.rows_affected() == 0 {
        // A stale lease is no error; an unknown workspace is.
        require_workspace(conn, &lease.workspace).await?;
    }
    Ok(())
}

/// [`RecordStore::put_checkpoint`] inside an open transaction.
async fn put_checkpoint_in(
    conn: &mut SqliteConnection,
    id: &WorkspaceId,
    key: &CheckpointKey,
    value: String,
    fence: FencingToken,
) -> Result<()> {
    Current::found(current(conn, id, false).await?, id)?.check_fence(id, fence)?;
    sqlx::query(
        "INSERT INTO checkpoints (workspace, key, value) VALUES (?, ?, ?) \
             ON CONFLICT (workspace, key) DO UPDATE SET value = excluded.value",
    )
    .bind(id.as_str())
    .bind(key.as_str())
    .bind(value)
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// One write of a batch inside an open transaction.
async fn write_in(
    conn: &mut SqliteConnection,
    write: BatchWrite,
    clock: &StoreClock,
) -> Result<BatchOutcome> {
    match write {
        BatchWrite::Commit(w) => apply(conn, w).await.map(BatchOutcome::Committed),
        BatchWrite::PutCheckpoint {
            workspace,
            key,
            value,
            fence,
        } => {
            let value = to_json(&value)?;
            put_checkpoint_in(conn, &workspace, &key, value, fence)
                .await
                .map(|()| BatchOutcome::Done)
        }
        BatchWrite::Acquire {
            workspace,
            holder,
            ttl,
        } => acquire_in(conn, workspace, holder, ttl, clock)
            .await
            .map(BatchOutcome::Lease),
        BatchWrite::Release(lease) => release_in(conn, &lease).await.map(|()| BatchOutcome::Done),
        other => Err(Error::Rejected {
            service: "sqlite".into(),
            detail: format!("this store cannot batch {other:?}"),
        }),
    }
}

/// Refuses a bootstrap into a workspace being destroyed (or destroyed); an
/// unknown workspace is `NotFound`.
/// Refuses a workspace that does not exist (`state` is `None`) or is being
/// destroyed.
fn retired(ws: &WorkspaceId, state: Option<String>) -> Result<()> {
    let state = state.ok_or_else(|| Error::NotFound(Resource::Workspace(ws.clone())))?;
    for retired in [StateName::Destroying, StateName::Destroyed] {
        if state == retired.as_str() {
            return Err(Error::TokenRefused(TokenRefusal::WorkspaceRetired {
                state: retired,
            }));
        }
    }
    Ok(())
}

/// [`TokenStore::consume`] inside an open transaction.
async fn consume_in(
    conn: &mut SqliteConnection,
    hash: TokenHash,
    ws: &WorkspaceId,
    now: Timestamp,
) -> Result<BootstrapTokenRecord> {
    let body: String = sqlx::query_scalar("SELECT body FROM tokens WHERE hash = ?")
        .bind(hash.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?
        .ok_or(Error::TokenRefused(TokenRefusal::Unknown))?;
    let mut token: BootstrapTokenRecord = from_json(&body, || Resource::BootstrapToken)?;
    token.consume(ws, now)?;
    sqlx::query("UPDATE tokens SET consumed = 1, body = ? WHERE hash = ?")
        .bind(to_json(&token)?)
        .bind(hash.to_string())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(token)
}

/// [`CredentialStore::put_credential`] inside an open transaction.
async fn put_credential_in(conn: &mut SqliteConnection, credential: AgentCredential) -> Result<()> {
    require_workspace(conn, &credential.workspace).await?;
    insert_credential(conn, credential).await
}

/// Stores a credential for a workspace known to exist (its serial must be new).
async fn insert_credential(conn: &mut SqliteConnection, credential: AgentCredential) -> Result<()> {
    let body = to_json(&credential)?;
    let taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM credentials WHERE serial = ?")
        .bind(credential.serial.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
    if taken.is_some() {
        return Err(Error::AlreadyExists(Resource::Credential(
            credential.serial,
        )));
    }
    sqlx::query("INSERT INTO credentials (serial, workspace, body) VALUES (?, ?, ?)")
        .bind(credential.serial.as_str())
        .bind(credential.workspace.as_str())
        .bind(body)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// [`CredentialStore::revoke_all`] inside an open transaction.
async fn revoke_in(
    conn: &mut SqliteConnection,
    ws: &WorkspaceId,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<CertSerial>> {
    require_workspace(conn, ws).await?;
    revoke_credentials(conn, ws, reason, now).await
}

/// Revokes the live credentials of a workspace known to exist.
async fn revoke_credentials(
    conn: &mut SqliteConnection,
    ws: &WorkspaceId,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<CertSerial>> {
    revoke_credentials_but(conn, ws, None, reason, now).await
}

/// Revokes the live credentials of a workspace known to exist, except `keep`.
async fn revoke_credentials_but(
    conn: &mut SqliteConnection,
    ws: &WorkspaceId,
    keep: Option<&CertSerial>,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<CertSerial>> {
    let rows =
        sqlx::query("SELECT serial, body FROM credentials WHERE workspace = ? ORDER BY serial")
            .bind(ws.as_str())
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?;
    let mut revoked = Vec::new();
    for r in rows {
        let mut c = read_credential(r.get("body"), r.get("serial"))?;
        if c.revoked.is_some() || Some(&c.serial) == keep {
            continue;
        }
        c.revoked = Some(Revocation {
            at: now,
            reason: reason.to_owned(),
        });
        sqlx::query("UPDATE credentials SET body = ? WHERE serial = ?")
            .bind(to_json(&c)?)
            .bind(c.serial.as_str())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        revoked.push(c.serial);
    }
    Ok(revoked)
}

/// One write inside an open transaction; see [`RecordStore::commit`].
async fn apply(conn: &mut SqliteConnection, write: WorkspaceWrite) -> Result<Committed> {
    let id = write.workspace.clone();
    let now = current(conn, &id, true).await?;
    let existing = now.as_ref().map(|c| c.revision);
    let last_command = now.as_ref().map_or(0, |c| c.last_command);
    let last_event = now.as_ref().map_or(0, |c| c.last_event);
    let commands = check_write(&write, last_command as u64 + 1)?;
    let live_fence = now.as_ref().and_then(Current::live_fence);
    check_preconditions(&write, existing.map(|r| Revision(r as u64)), live_fence)?;
    if existing.is_some() {
        for c in &commands {
            let taken: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM commands WHERE workspace = ? AND id = ?")
                    .bind(id.as_str())
                    .bind(c.id.as_str())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(unavailable)?;
            if taken.is_some() {
                return Err(Error::AlreadyExists(Resource::Command(id, c.id.clone())));
            }
        }
    }

    let mut committed = Committed {
        revision: None,
        events: Vec::new(),
        commands: Vec::new(),
    };
    if let Some((record, mode)) = &write.record {
        let revision = match mode {
            PutMode::Create => 1,
            PutMode::Update(r) => r.0 as i64 + 1,
        };
        let body = to_json(record)?;
        let wake_at = record.wake_at.map(millis);
        let sql = match mode {
            PutMode::Create => {
                "INSERT INTO workspaces (revision, tenant, state, wake_at, record, id) VALUES (?, ?, ?, ?, ?, ?)"
            }
            PutMode::Update(_) => {
                "UPDATE workspaces SET revision = ?, tenant = ?, state = ?, wake_at = ?, record = ? WHERE id = ?"
            }
        };
        sqlx::query(sql)
            .bind(revision)
            .bind(record.spec.tenant.as_str())
            .bind(record.state.name().as_str())
            .bind(wake_at)
            .bind(body)
            .bind(id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        committed.revision = Some(Revision(revision as u64));
    }
    if !write.events.is_empty() {
        for (i, event) in write.events.iter().enumerate() {
            let seq = last_event + 1 + i as i64;
            sqlx::query("INSERT INTO events (workspace, seq, body) VALUES (?, ?, ?)")
                .bind(id.as_str())
                .bind(seq)
                .bind(to_json(event)?)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            committed.events.push(EventSeq(seq as u64));
        }
    }
    for command in commands {
        let seq = command.seq;
        let queued = QueuedCommand {
            command,
            enqueued_at: write.now,
            deliveries: 0,
            status: CommandStatus::Pending,
        };
        sqlx::query(
            "INSERT INTO commands (workspace, seq, id, answered, body) VALUES (?, ?, ?, 0, ?)",
        )
        .bind(id.as_str())
        .bind(seq.0 as i64)
        .bind(queued.command.id.as_str())
        .bind(to_json(&queued)?)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
        committed.commands.push(seq);
    }
    Ok(committed)
}

/// [`RecordStore::purge`] inside an open transaction.
async fn purge_in(
    conn: &mut SqliteConnection,
    write: WorkspaceWrite,
    history: HistoryRetention,
) -> Result<Purged> {
    let id = write.workspace.clone();
    let now = current(conn, &id, false).await?;
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM workspaces WHERE id = ?")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
    check_purge(
        &write,
        history,
        state.as_deref(),
        now.as_ref().map(|c| Revision(c.revision as u64)),
        now.as_ref().and_then(Current::live_fence),
    )?;
    let mut purged = Purged {
        commands: delete_rows(conn, "DELETE FROM commands WHERE workspace = ?", &id).await?,
        checkpoints: delete_rows(conn, "DELETE FROM checkpoints WHERE workspace = ?", &id).await?,
        tokens: delete_rows(conn, "DELETE FROM tokens WHERE workspace = ?", &id).await?,
        credentials: delete_rows(conn, "DELETE FROM credentials WHERE workspace = ?", &id).await?,
        events: 0,
    };
    match history {
        HistoryRetention::Keep => {
            apply(conn, write).await?;
        }
        HistoryRetention::Delete => {
            purged.events =
                delete_rows(conn, "DELETE FROM events WHERE workspace = ?", &id).await?;
            delete_rows(conn, "DELETE FROM leases WHERE workspace = ?", &id).await?;
            delete_rows(conn, "DELETE FROM workspaces WHERE id = ?", &id).await?;
        }
    }
    Ok(purged)
}

/// Runs a `DELETE` bound to the workspace's id; returns how many rows went.
async fn delete_rows(
    conn: &mut SqliteConnection,
    sql: &'static str,
    id: &WorkspaceId,
) -> Result<u64> {
    sqlx::query(sql)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected())
        .map_err(unavailable)
}

fn read_record(id: &str, revision: i64, body: &str) -> Result<Versioned<WorkspaceRecord>> {
    let record: WorkspaceRecord = from_json(body, || ws_resource(id))?;
    if record.id.as_str() != id {
        return Err(corrupt(
            ws_resource(id),
            format!("the row holds the record of workspace {}", record.id),
        ));
    }
    if revision < 1 {
        return Err(corrupt(ws_resource(id), format!("revision {revision}")));
    }
    Ok(Versioned {
        value: record,
        revision: Revision(revision as u64),
    })
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Versioned<WorkspaceRecord>> {
        let row = sqlx::query("SELECT revision, record FROM workspaces WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Error::NotFound(Resource::Workspace(id.clone())))?;
        read_record(id.as_str(), row.get("revision"), row.get("record"))
    }

    async fn list_workspaces(&self, query: &ListQuery) -> Result<Vec<Versioned<WorkspaceRecord>>> {
        let limit = if query.limit == 0 {
            DEFAULT_PAGE
        } else {
            i64::try_from(query.limit).unwrap_or(i64::MAX)
        };
        let rows = sqlx::query(
            "SELECT id, revision, record FROM workspaces \
             WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR state = ?2) \
               AND (?3 IS NULL OR (wake_at IS NOT NULL AND wake_at <= ?3)) AND (?4 IS NULL OR id > ?4) \
             ORDER BY id LIMIT ?5",
        )
        .bind(query.tenant.as_ref().map(|t| t.as_str().to_owned()))
        .bind(query.state.map(|s| s.as_str()))
        .bind(query.due_at.map(millis))
        .bind(query.after.as_ref().map(|a| a.as_str().to_owned()))
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| read_record(r.get("id"), r.get("revision"), r.get("record")))
            .collect()
    }

    async fn commit(&self, write: WorkspaceWrite) -> Result<Committed> {
        self.write_tx(move |conn| Box::pin(apply(conn, write)))
            .await
    }

    async fn purge(&self, write: WorkspaceWrite, history: HistoryRetention) -> Result<Purged> {
        self.write_tx(move |conn| Box::pin(purge_in(conn, write, history)))
            .await
    }

    /// Group commit: all writes in one transaction (one fsync with
    /// [`Durability::Full`]), each under its own savepoint so that one write's
    /// refusal undoes only that write.
    async fn write_batch(&self, writes: Vec<BatchWrite>) -> Vec<Result<BatchOutcome>> {
        if writes.is_empty() {
            return Vec::new();
        }
        let n = writes.len();
        let clock = self.clock.clone();
        let outcome = self
            .write_tx(move |conn| {
                Box::pin(async move {
                    let mut results = Vec::with_capacity(writes.len());
                    for write in writes {
                        // Only a commit can fail after it started writing; the
                        // other writes check everything first.
                        if !matches!(write, BatchWrite::Commit(_)) {
                            results.push(write_in(conn, write, &clock).await);
                            continue;
                        }
                        sqlx::query("SAVEPOINT w")
                            .execute(&mut *conn)
                            .await
                            .map_err(unavailable)?;
                        let result = write_in(conn, write, &clock).await;
                        if result.is_err() {
                            sqlx::query("ROLLBACK TO w")
                                .execute(&mut *conn)
                                .await
                                .map_err(unavailable)?;
                        }
                        sqlx::query("RELEASE w")
                            .execute(&mut *conn)
                            .await
                            .map_err(unavailable)?;
                        results.push(result);
                    }
                    Ok(results)
                })
            })
            .await;
        match outcome {
            Ok(results) => results,
            // The transaction itself failed: nothing was written.
            Err(e) => (0..n)
                .map(|_| {
                    Err(Error::Unavailable {
                        service: "sqlite".into(),
                        detail: e.to_string(),
                    })
                })
                .collect(),
        }
    }

    async fn read_events(
        &self,
        id: &WorkspaceId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        let mut conn = self.read.acquire().await.map_err(unavailable)?;
        require_workspace(&mut conn, id).await?;
        let limit = if limit == 0 {
            DEFAULT_PAGE
        } else {
            i64::try_from(limit).unwrap_or(i64::MAX)
        };
        let rows = sqlx::query(
            "SELECT seq, body FROM events WHERE workspace = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id.as_str())
        .bind(after.0 as i64)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.len());
        for (expected, r) in (after.0 + 1..).zip(rows) {
            let seq: i64 = r.get("seq");
            if seq as u64 != expected {
                return Err(corrupt(
                    Resource::Workspace(id.clone()),
                    format!("the history jumps from event {} to {seq}", expected - 1),
                ));
            }
            let event: NewEvent = from_json(r.get("body"), || Resource::Workspace(id.clone()))?;
            out.push(EventRecord {
                seq: EventSeq(seq as u64),
                event,
            });
        }
        Ok(out)
    }

    async fn get_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
    ) -> Result<Option<serde_json::Value>> {
        let mut conn = self.read.acquire().await.map_err(unavailable)?;
        require_workspace(&mut conn, id).await?;
        let value: Option<String> =
            sqlx::query_scalar("SELECT value FROM checkpoints WHERE workspace = ? AND key = ?")
                .bind(id.as_str())
                .bind(key.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?;
        value
            .map(|v| from_json(&v, || Resource::Checkpoint(id.clone(), key.to_string())))
            .transpose()
    }

    async fn put_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
        value: serde_json::Value,
        fence: FencingToken,
    ) -> Result<()> {
        let (id, key) = (id.clone(), key.clone());
        let value = to_json(&value)?;
        self.write_tx(move |conn| {
            Box::pin(async move { put_checkpoint_in(conn, &id, &key, value, fence).await })
        })
        .await
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire(
        &self,
        workspace: &WorkspaceId,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Lease> {
        let (ws, holder) = (workspace.clone(), holder.clone());
        let clock = self.clock.clone();
        self.write_tx(move |conn| {
            Box::pin(async move { acquire_in(conn, ws, holder, ttl, &clock).await })
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        check_lease_ttl(ttl)?;
        let lease = lease.clone();
        let clock = self.clock.clone();
        self.write_tx(move |conn| {
            Box::pin(async move {
                require_workspace(conn, &lease.workspace).await?;
                check_fence(conn, &lease.workspace, lease.fence).await?;
                let expires_at = clock.now(conn).await? + ttl;
                sqlx::query("UPDATE leases SET expires_at = ? WHERE workspace = ?")
                    .bind(millis(expires_at))
                    .bind(lease.workspace.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                Ok(Lease {
                    expires_at,
                    ..lease
                })
            })
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.write_tx(move |conn| Box::pin(async move { release_in(conn, &lease).await }))
            .await
    }

    async fn claim_due(
        &self,
        holder: &HolderId,
        ttl: Duration,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<Lease>> {
        check_lease_ttl(ttl)?;
        let owner = holder.clone();
        let holder = holder.clone();
        let clock = self.clock.clone();
        // One writer: the statement that picks the due workspaces also grants
        // their leases, inside the writer's transaction.
        let rows = self
            .write_tx(move |conn| {
                let (holder, clock) = (holder.clone(), clock.clone());
                Box::pin(async move {
                    let now = clock.now(conn).await?;
                    let expires_at = now + ttl;
                    sqlx::query(
                        "INSERT INTO leases (workspace, holder, fence, expires_at, released) \
                         SELECT w.id, ?1, COALESCE(l.fence + 1, 1), ?3, 0 \
                         FROM workspaces w LEFT JOIN leases l ON l.workspace = w.id \
                         WHERE w.wake_at IS NOT NULL AND w.wake_at <= ?4 \
                           AND (l.workspace IS NULL OR l.released <> 0 OR l.expires_at <= ?2) \
                         ORDER BY w.wake_at, w.id LIMIT ?5 \
                         ON CONFLICT (workspace) DO UPDATE SET holder = excluded.holder, fence = excluded.fence, \
                         expires_at = excluded.expires_at, released = 0 \
                         RETURNING workspace, fence",
                    )
                    .bind(holder.as_str())
                    .bind(millis(now))
                    .bind(millis(expires_at))
                    .bind(millis(until))
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(unavailable)
                    .map(|rows| (rows, expires_at))
                })
            })
            .await?;
        let (rows, expires_at) = rows;
        rows.into_iter()
            .map(|r| {
                let ws: String = r.get("workspace");
                let workspace =
                    WorkspaceId::new(ws.clone()).map_err(|e| corrupt(ws_resource(&ws), e))?;
                Ok(Lease {
                    workspace,
                    holder: owner.clone(),
                    fence: FencingToken(r.get::<i64, _>("fence") as u64),
                    expires_at,
                })
            })
            .collect()
    }

    async fn release_all(&self, holder: &HolderId) -> Result<u64> {
        let holder = holder.clone();
        self.write_tx(move |conn| {
            Box::pin(async move {
                let done =
                    sqlx::query("UPDATE leases SET released = 1 WHERE holder = ? AND released = 0")
                        .bind(holder.as_str())
                        .execute(&mut *conn)
                        .await
                        .map_err(unavailable)?;
                Ok(done.rows_affected())
            })
        })
        .await
    }
}

fn read_queued(body: &str, ws: &WorkspaceId) -> Result<QueuedCommand> {
    from_json(body, || Resource::Workspace(ws.clone()))
}

/// A command's queue position and what is stored of it, in the open
/// transaction on `conn`; an unknown id is not found.
async fn command_row(
    conn: &mut SqliteConnection,
    ws: &WorkspaceId,
    id: &CommandId,
) -> Result<(i64, QueuedCommand)> {
    let row = sqlx::query("SELECT seq, body FROM commands WHERE workspace = ? AND id = ?")
        .bind(ws.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Error::NotFound(Resource::Command(ws.clone(), id.clone())))?;
    Ok((row.get("seq"), read_queued(row.get("body"), ws)?))
}

/// Stores `q` at queue position `seq`; `answered` marks the commands no poll
/// hands out any more (answered or withdrawn).
async fn write_command(
    conn: &mut SqliteConnection,
    ws: &WorkspaceId,
    seq: i64,
    q: &QueuedCommand,
) -> Result<()> {
    sqlx::query("UPDATE commands SET answered = ?, body = ? WHERE workspace = ? AND seq = ?")
        .bind(i64::from(!q.status.is_open()))
        .bind(to_json(q)?)
        .bind(ws.as_str())
        .bind(seq)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

#[async_trait]
impl CommandQueue for SqliteStore {
    async fn deliver(
        &self,
        workspace: &WorkspaceId,
        limit: usize,
        _now: Timestamp,
    ) -> Result<Vec<QueuedCommand>> {
        // An idle poll reads and writes nothing else.
        let mut conn = self.read.acquire().await.map_err(unavailable)?;
        require_workspace(&mut conn, workspace).await?;
        let pending: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM commands WHERE workspace = ? AND answered = 0 LIMIT 1",
        )
        .bind(workspace.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
        drop(conn);
        if pending.is_none() {
            return Ok(Vec::new());
        }
        let ws = workspace.clone();
        let limit = if limit == 0 {
            i64::MAX
        } else {
            i64::try_from(limit).unwrap_or(i64::MAX)
        };
        self.write_tx(move |conn| {
            Box::pin(async move {
                let rows = sqlx::query(
                    "SELECT seq, body FROM commands WHERE workspace = ? AND answered = 0 ORDER BY seq LIMIT ?",
                )
                .bind(ws.as_str())
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
                .map_err(unavailable)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let mut q = read_queued(r.get("body"), &ws)?;
                    if q.status != CommandStatus::Pending {
                        // Cancelling: handed out as a cancel request, not counted.
                        out.push(q);
                        continue;
                    }
                    q.deliveries += 1;
                    write_command(conn, &ws, r.get("seq"), &q).await?;
                    out.push(q);
                }
                Ok(out)
            })
        })
        .await
    }

    async fn answer(
        &self,
        workspace: &WorkspaceId,
        result: CommandResult,
        now: Timestamp,
    ) -> Result<bool> {
        result.check()?;
        let ws = workspace.clone();
        self.write_tx(move |conn| {
            Box::pin(async move {
                require_workspace(conn, &ws).await?;
                let (seq, mut q) = command_row(conn, &ws, &result.id).await?;
                if !q.status.is_open() {
                    return Ok(false);
                }
                q.status = CommandStatus::Answered { result, at: now };
                write_command(conn, &ws, seq, &q).await?;
                Ok(true)
            })
        })
        .await
    }

    async fn get_command(&self, workspace: &WorkspaceId, id: &CommandId) -> Result<QueuedCommand> {
        let mut conn = self.read.acquire().await.map_err(unavailable)?;
        require_workspace(&mut conn, workspace).await?;
        let body: String =
            sqlx::query_scalar("SELECT body FROM commands WHERE workspace = ? AND id = ?")
                .bind(workspace.as_str())
                .bind(id.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| Error::NotFound(Resource::Command(workspace.clone(), id.clone())))?;
        read_queued(&body, workspace)
    }

    async fn withdraw(
        &self,
        workspace: &WorkspaceId,
        id: &CommandId,
        now: Timestamp,
    ) -> Result<CommandStatus> {
        let (ws, id) = (workspace.clone(), id.clone());
        self.write_tx(move |conn| {
            Box::pin(async move {
                require_workspace(conn, &ws).await?;
                let (seq, mut q) = command_row(conn, &ws, &id).await?;
                if let Some(status) = q.withdrawal(now) {
                    q.status = status;
                    write_command(conn, &ws, seq, &q).await?;
                }
                Ok(q.status)
            })
        })
        .await
    }
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn put_token(&self, token: BootstrapTokenRecord) -> Result<()> {
        let body = to_json(&token)?;
        self.write_tx(move |conn| {
            Box::pin(async move {
                require_workspace(conn, &token.workspace).await?;
                let hash = token.hash.to_string();
                let taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM tokens WHERE hash = ?")
                    .bind(&hash)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                if taken.is_some() {
                    return Err(Error::AlreadyExists(Resource::BootstrapToken));
                }
                sqlx::query("DELETE FROM tokens WHERE workspace = ? AND consumed = 0")
                    .bind(token.workspace.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                sqlx::query(
                    "INSERT INTO tokens (hash, workspace, consumed, body) VALUES (?, ?, 0, ?)",
                )
                .bind(&hash)
                .bind(token.workspace.as_str())
                .bind(body)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
                Ok(())
            })
        })
        .await
    }

    async fn consume(
        &self,
        hash: &TokenHash,
        workspace: &WorkspaceId,
        now: Timestamp,
    ) -> Result<BootstrapTokenRecord> {
        let (hash, ws) = (*hash, workspace.clone());
        self.write_tx(move |conn| Box::pin(async move { consume_in(conn, hash, &ws, now).await }))
            .await
    }

    async fn exchange(
        &self,
        hash: &TokenHash,
        credential: AgentCredential,
        now: Timestamp,
    ) -> Result<AgentCredential> {
        // Batched with the exchanges arriving at the same time (see `exchange`).
        exchange::exchange(
            &self.exchanges,
            &self.write,
            hash.to_string(),
            credential,
            now,
        )
        .await
    }
}

fn read_credential(body: &str, serial: &str) -> Result<AgentCredential> {
    from_json(body, || match CertSerial::from_str(serial) {
        Ok(s) => Resource::Credential(s),
        Err(_) => Resource::Provider(format!("credential row {serial:?}")),
    })
}

#[async_trait]
impl CredentialStore for SqliteStore {
    async fn put_credential(&self, credential: AgentCredential) -> Result<()> {
        self.write_tx(move |conn| {
            Box::pin(async move { put_credential_in(conn, credential).await })
        })
        .await
    }

    async fn get_credential(&self, serial: &CertSerial) -> Result<AgentCredential> {
        let body: String = sqlx::query_scalar("SELECT body FROM credentials WHERE serial = ?")
            .bind(serial.as_str())
            .fetch_optional(&self.read)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Error::NotFound(Resource::Credential(serial.clone())))?;
        read_credential(&body, serial.as_str())
    }

    async fn get_credential_for_poll(
        &self,
        serial: &CertSerial,
    ) -> Result<(AgentCredential, bool)> {
        // Batched with the polls arriving at the same time (see `polls`).
        self.polls.read(&self.read, serial).await
    }

    async fn list_credentials(&self, workspace: &WorkspaceId) -> Result<Vec<AgentCredential>> {
        let mut conn = self.read.acquire().await.map_err(unavailable)?;
        require_workspace(&mut conn, workspace).await?;
        let rows =
            sqlx::query("SELECT serial, body FROM credentials WHERE workspace = ? ORDER BY serial")
                .bind(workspace.as_str())
                .fetch_all(&mut *conn)
                .await
                .map_err(unavailable)?;
        rows.iter()
            .map(|r| read_credential(r.get("body"), r.get("serial")))
            .collect()
    }

    async fn mark_polled(&self, serial: &CertSerial, now: Timestamp) -> Result<bool> {
        // Batched: a fleet's first polls come together (see `polls`).
        if self.polls.mark(&self.write, serial, now).await? {
            return Ok(true);
        }
        // Marked before, no such credential, or a corrupt row (refused as
        // such by the read).
        self.get_credential(serial).await.map(|_| false)
    }

    async fn renew_credential(
        &self,
        old: &CertSerial,
        renewed: AgentCredential,
        now: Timestamp,
    ) -> Result<AgentCredential> {
        let old = old.clone();
        self.write_tx(move |conn| {
            Box::pin(async move {
                let body: String =
                    sqlx::query_scalar("SELECT body FROM credentials WHERE serial = ?")
                        .bind(old.as_str())
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(unavailable)?
                        .ok_or_else(|| Error::NotFound(Resource::Credential(old.clone())))?;
                let current = read_credential(&body, old.as_str())?;
                let renewed = cogrion_core::check_renewal(&current, renewed, now)?;
                revoke_credentials_but(
                    conn,
                    &current.workspace,
                    Some(&old),
                    cogrion_core::SUPERSEDED_BY_RENEWAL,
                    now,
                )
                .await?;
                insert_credential(conn, renewed.clone()).await?;
                Ok(renewed)
            })
        })
        .await
    }

    async fn revoke_all(
        &self,
        workspace: &WorkspaceId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Vec<CertSerial>> {
        let (ws, reason) = (workspace.clone(), reason.to_owned());
        self.write_tx(move |conn| Box::pin(async move { revoke_in(conn, &ws, &reason, now).await }))
            .await
    }
}
