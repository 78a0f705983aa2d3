//! [`PostgresStore`]: the [`WorkspaceStore`](cogrion_core::WorkspaceStore) on
//! PostgreSQL, for control planes with several replicas.
//!
//! # Concurrency
//! Every write is one transaction that first locks the workspace's row
//! (`SELECT … FOR UPDATE`): writes to one workspace — its record, history,
//! queue, checkpoints, lease, tokens and credentials — are serialised across all
//! replicas, while writes to different workspaces proceed in parallel. Creates race
//! on the primary key (`INSERT … ON CONFLICT DO NOTHING`): exactly one wins.
//! [`claim_due`](cogrion_core::LeaseStore::claim_due) locks the due rows it takes
//! with `FOR UPDATE SKIP LOCKED`, so replicas claiming at once take different
//! workspaces instead of waiting on each other.
//!
//! # Durability
//! Whatever the server is configured for (`synchronous_commit`); with the default
//! (`on`) every commit is flushed before it returns, which is why
//! [`RecordStore::write_batch`] shares one transaction among many writes (a
//! savepoint for each commit). [`GroupCommit::with_lanes`](cogrion_core::GroupCommit::with_lanes)
//! keeps several such transactions in flight.
//!
//! # Schema
//! Versioned migrations are applied when the store connects, under an advisory
//! lock so that replicas starting together migrate once. A database written by a
//! newer schema is refused with [`Error::Rejected`] and left untouched. Rows that
//! cannot be read back are [`Error::Corrupt`] naming the workspace.
//!
//! # TLS
//! Optional: put `sslmode=require` (or `verify-full`) in the connection URL;
//! rustls with the aws-lc-rs provider does the TLS.

mod schema;

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
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

use schema::{MIGRATIONS, RECORDS_REWRITTEN_AT, SCHEMA_VERSION};

const DEFAULT_PAGE: i64 = 1000;

/// Settings of a [`PostgresStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Connections in the pool (default 8).
    pub max_connections: u32,
    /// How long to wait for a free connection (default 10 s).
    pub acquire_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl PostgresOptions {
    /// With this many pooled connections.
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }
}

/// A [`WorkspaceStore`](cogrion_core::WorkspaceStore) on a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Where lease time comes from.
    clock: StoreClock,
}

/// Where a store's lease time comes from: PostgreSQL's `now()` (the writing transaction's time), or — in tests — a given clock.
#[derive(Debug, Clone, Default)]
struct StoreClock(Option<std::sync::Arc<dyn cogrion_core::Clock>>);

impl StoreClock {
    /// The store's now, inside the open transaction on `conn`.
    async fn now(&self, conn: &mut PgConnection) -> Result<Timestamp> {
        match &self.0 {
            Some(clock) => Ok(clock.now()),
            None => {
                sqlx::query_scalar::<_, i64>("SELECT (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT")
                    .fetch_one(&mut *conn)
                    .await
                    .map(timestamp)
                    .map_err(unavailable)
            }
        }
    }
}

impl PostgresStore {
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
        service: "postgres".into(),
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
        service: "postgres".into(),
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

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`, with `sslmode=…` for TLS)
    /// with the default options, applying pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects to `url`, applying pending migrations; a database from a newer
    /// schema is refused and not modified.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect(url)
            .await
            .map_err(unavailable)?;
        migrate(&pool).await?;
        Ok(Self {
            pool,
            clock: StoreClock::default(),
        })
    }

    /// Runs `f` in one transaction, committing if it succeeds and rolling back
    /// if it fails (or if the connection is lost: nothing is half-written).
    async fn write_tx<T, F>(&self, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> futures::future::BoxFuture<'c, Result<T>>,
    {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        match f(&mut tx).await {
            Ok(value) => {
                tx.commit().await.map_err(unavailable)?;
                Ok(value)
            }
            Err(e) => {
                // Dropping the transaction rolls it back too; roll back explicitly
                // so the connection returns to the pool clean.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`] under an advisory lock, or refuses
/// a newer one untouched.
async fn migrate(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    sqlx::query("SELECT pg_advisory_xact_lock(727274635)")
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    let has_table: Option<i64> = sqlx::query_scalar(
        "SELECT 1::BIGINT FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'cogrion_schema'",
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(unavailable)?;
    let current: i64 = match has_table {
        None => 0,
        Some(_) => {
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0)::BIGINT FROM cogrion_schema")
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?
        }
    };
    if current > SCHEMA_VERSION {
        let _ = tx.rollback().await;
        return Err(Error::Rejected {
            service: "postgres".into(),
            detail: format!(
                "the database was written by a newer Cogrion (schema version {current}; this build knows up to {SCHEMA_VERSION}); it was not modified"
            ),
        });
    }
    if current < SCHEMA_VERSION {
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS cogrion_schema (version BIGINT NOT NULL)")
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
            sqlx::query("INSERT INTO cogrion_schema (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            if i as i64 + 1 == RECORDS_REWRITTEN_AT {
                rewrite_records(&mut tx).await?;
            }
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(())
}

/// Rewrites every workspace record in the current format (see
/// [`cogrion_core::upgrade`]), with its derived columns, one revision later
/// (so that a writer still holding the old revision meets a conflict). A row
/// that cannot be read is left as it was: it stays [`Error::Corrupt`] on read.
async fn rewrite_records(conn: &mut PgConnection) -> Result<()> {
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
            "UPDATE workspaces SET revision = revision + 1, state = $1, wake_at = $2, record = $3 WHERE id = $4",
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

/// [`RecordStore::purge`] inside an open transaction.
async fn purge_in(
    conn: &mut PgConnection,
    write: WorkspaceWrite,
    history: HistoryRetention,
) -> Result<Purged> {
    let id = write.workspace.clone();
    let now = current(conn, &id, false).await?;
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM workspaces WHERE id = $1")
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
        commands: delete_rows(conn, "DELETE FROM commands WHERE workspace = $1", &id).await?,
        checkpoints: delete_rows(conn, "DELETE FROM checkpoints WHERE workspace = $1", &id).await?,
        tokens: delete_rows(conn, "DELETE FROM tokens WHERE workspace = $1", &id).await?,
        credentials: delete_rows(conn, "DELETE FROM credentials WHERE workspace = $1", &id).await?,
        events: 0,
    };
    match history {
        HistoryRetention::Keep => {
            apply(conn, write).await?;
        }
        HistoryRetention::Delete => {
            purged.events =
                delete_rows(conn, "DELETE FROM events WHERE workspace = $1", &id).await?;
            delete_rows(conn, "DELETE FROM leases WHERE workspace = $1", &id).await?;
            delete_rows(conn, "DELETE FROM workspaces WHERE id = $1", &id).await?;
        }
    }
    Ok(purged)
}

/// Runs a `DELETE` bound to the workspace's id; returns how many rows went.
async fn delete_rows(conn: &mut PgConnection, sql: &'static str, id: &WorkspaceId) -> Result<u64> {
    sqlx::query(sql)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected())
        .map_err(unavailable)
}

async fn revision_of(conn: &mut PgConnection, id: &WorkspaceId) -> Result<Option<i64>> {
    sqlx::query_scalar("SELECT revision FROM workspaces WHERE id = $1 FOR UPDATE")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)
}

async fn require_workspace(conn: &mut PgConnection, id: &WorkspaceId) -> Result<()> {
    match revision_of(conn, id).await? {
        Some(_) => Ok(()),
        None => Err(Error::NotFound(Resource::Workspace(id.clone()))),
    }
}

/// What a write needs to know about a workspace: its revision, its lease row
/// (holder, fence, expires_at, released), and — for commits — the last event and
/// command sequence numbers. `None`: no such workspace.
struct Current {
    revision: i64,
    lease: Option<(String, i64, i64, bool)>,
    last_event: i64,
    last_command: i64,
}

/// Locks the workspace's row (every change to a workspace or its lease does,
/// first), then reads the rest in a second statement: under READ COMMITTED a
/// statement that waited for the lock would still see the lease as it was before
/// the wait.
async fn current(conn: &mut PgConnection, id: &WorkspaceId, seqs: bool) -> Result<Option<Current>> {
    if revision_of(conn, id).await?.is_none() {
        return Ok(None);
    }
    let sql = if seqs {
        "SELECT w.revision, l.holder, l.fence, l.expires_at, l.released, \
           (SELECT COALESCE(MAX(seq), 0) FROM events WHERE workspace = w.id) AS last_event, \
           (SELECT COALESCE(MAX(seq), 0) FROM commands WHERE workspace = w.id) AS last_command \
         FROM workspaces w LEFT JOIN leases l ON l.workspace = w.id WHERE w.id = $1"
    } else {
        "SELECT w.revision, l.holder, l.fence, l.expires_at, l.released, \
           0::BIGINT AS last_event, 0::BIGINT AS last_command \
         FROM workspaces w LEFT JOIN leases l ON l.workspace = w.id WHERE w.id = $1"
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
    conn: &mut PgConnection,
    id: &WorkspaceId,
) -> Result<Option<(String, i64, i64, bool)>> {
    let row =
        sqlx::query("SELECT holder, fence, expires_at, released FROM leases WHERE workspace = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
    Ok(row.map(|r| {
        (
            r.get("holder"),
            r.get("fence"),
            r.get("expires_at"),
            r.get::<bool, _>("released"),
        )
    }))
}

async fn check_fence(conn: &mut PgConnection, id: &WorkspaceId, fence: FencingToken) -> Result<()> {
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
    conn: &mut PgConnection,
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
            "INSERT INTO leases (workspace, holder, fence, expires_at, released) VALUES ($1, $2, $3, $4, FALSE) \
             ON CONFLICT (workspace) DO UPDATE SET holder = excluded.holder, fence = excluded.fence, \
             expires_at = excluded.expires_at, released = FALSE",
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
async fn release_in(conn: &mut PgConnection, lease: &Lease) -> Result<()> {
    require_workspace(conn, &lease.workspace).await?;
    sqlx::query("UPDATE leases SET released = TRUE WHERE workspace = $1 AND fence = $2")
        .bind(lease.workspace.as_str())
        .bind(lease.fence.0 as i64)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// [`RecordStore::put_checkpoint`] inside an open transaction.
async fn put_checkpoint_in(
    conn: &mut PgConnection,
    id: &WorkspaceId,
    key: &CheckpointKey,
    value: String,
    fence: FencingToken,
) -> Result<()> {
    Current::found(current(conn, id, false).await?, id)?.check_fence(id, fence)?;
    sqlx::query(
        "INSERT INTO checkpoints (workspace, key, value) VALUES ($1, $2, $3) \
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
    conn: &mut PgConnection,
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
            service: "postgres".into(),
            detail: format!("this store cannot batch {other:?}"),
        }),
    }
}

/// Refuses a bootstrap into a workspace being destroyed (or destroyed); an
/// unknown workspace is `NotFound`.
async fn retired_check(conn: &mut PgConnection, ws: &WorkspaceId) -> Result<()> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM workspaces WHERE id = $1 FOR UPDATE")
            .bind(ws.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
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
    conn: &mut PgConnection,
    hash: TokenHash,
    ws: &WorkspaceId,
    now: Timestamp,
) -> Result<BootstrapTokenRecord> {
    let mut token = token_for_update(conn, hash).await?;
    token.consume(ws, now)?;
    store_consumed(conn, &token).await?;
    Ok(token)
}

/// Reads a token's record and locks its row, or refuses an unknown token.
async fn token_for_update(
    conn: &mut PgConnection,
    hash: TokenHash,
) -> Result<BootstrapTokenRecord> {
    let body: String = sqlx::query_scalar("SELECT body FROM tokens WHERE hash = $1 FOR UPDATE")
        .bind(hash.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?
        .ok_or(Error::TokenRefused(TokenRefusal::Unknown))?;
    from_json(&body, || Resource::BootstrapToken)
}

/// Writes back a token just consumed.
async fn store_consumed(conn: &mut PgConnection, token: &BootstrapTokenRecord) -> Result<()> {
    sqlx::query("UPDATE tokens SET consumed = TRUE, body = $1 WHERE hash = $2")
        .bind(to_json(token)?)
        .bind(token.hash.to_string())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// A credential's record, if it exists.
async fn credential_in(
    conn: &mut PgConnection,
    serial: &CertSerial,
) -> Result<Option<AgentCredential>> {
    let body: Option<String> = sqlx::query_scalar("SELECT body FROM credentials WHERE serial = $1")
        .bind(serial.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
    body.map(|b| read_credential(&b, serial.as_str()))
        .transpose()
}

/// [`CredentialStore::put_credential`] inside an open transaction.
async fn put_credential_in(conn: &mut PgConnection, credential: AgentCredential) -> Result<()> {
    require_workspace(conn, &credential.workspace).await?;
    insert_credential(conn, credential).await
}

/// Stores a credential for a workspace known to exist (its serial must be new).
async fn insert_credential(conn: &mut PgConnection, credential: AgentCredential) -> Result<()> {
    let body = to_json(&credential)?;
    let taken: Option<i64> =
        sqlx::query_scalar("SELECT 1::BIGINT FROM credentials WHERE serial = $1")
            .bind(credential.serial.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
    if taken.is_some() {
        return Err(Error::AlreadyExists(Resource::Credential(
            credential.serial,
        )));
    }
    sqlx::query("INSERT INTO credentials (serial, workspace, body) VALUES ($1, $2, $3)")
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
    conn: &mut PgConnection,
    ws: &WorkspaceId,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<CertSerial>> {
    require_workspace(conn, ws).await?;
    revoke_credentials(conn, ws, reason, now).await
}

/// Revokes the live credentials of a workspace known to exist.
async fn revoke_credentials(
    conn: &mut PgConnection,
    ws: &WorkspaceId,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<CertSerial>> {
    revoke_credentials_but(conn, ws, None, reason, now).await
}

/// Revokes the live credentials of a workspace known to exist, except `keep`.
async fn revoke_credentials_but(
    conn: &mut PgConnection,
    ws: &WorkspaceId,
    keep: Option<&CertSerial>,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<CertSerial>> {
    let rows =
        sqlx::query("SELECT serial, body FROM credentials WHERE workspace = $1 ORDER BY serial")
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
        sqlx::query("UPDATE credentials SET body = $1 WHERE serial = $2")
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
async fn apply(conn: &mut PgConnection, write: WorkspaceWrite) -> Result<Committed> {
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
            let taken: Option<i64> = sqlx::query_scalar(
                "SELECT 1::BIGINT FROM commands WHERE workspace = $1 AND id = $2",
            )
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
                "INSERT INTO workspaces (revision, tenant, state, wake_at, record, id) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (id) DO NOTHING"
            }
            PutMode::Update(_) => {
                "UPDATE workspaces SET revision = $1, tenant = $2, state = $3, wake_at = $4, record = $5 WHERE id = $6"
            }
        };
        let written = sqlx::query(sql)
            .bind(revision)
            .bind(record.spec.tenant.as_str())
            .bind(record.state.name().as_str())
            .bind(wake_at)
            .bind(body)
            .bind(id.as_str())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        if written.rows_affected() == 0 {
            // Another replica created it between our check and our insert.
            return Err(Error::AlreadyExists(Resource::Workspace(id)));
        }
        committed.revision = Some(Revision(revision as u64));
    }
    if !write.events.is_empty() {
        for (i, event) in write.events.iter().enumerate() {
            let seq = last_event + 1 + i as i64;
            sqlx::query("INSERT INTO events (workspace, seq, body) VALUES ($1, $2, $3)")
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
            "INSERT INTO commands (workspace, seq, id, answered, body) VALUES ($1, $2, $3, FALSE, $4)",
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
impl RecordStore for PostgresStore {
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Versioned<WorkspaceRecord>> {
        let row = sqlx::query("SELECT revision, record FROM workspaces WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
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
             WHERE ($1 IS NULL OR tenant = $1) AND ($2 IS NULL OR state = $2) \
               AND ($3 IS NULL OR (wake_at IS NOT NULL AND wake_at <= $3)) AND ($4 IS NULL OR id > $4) \
             ORDER BY id LIMIT $5",
        )
        .bind(query.tenant.as_ref().map(|t| t.as_str().to_owned()))
        .bind(query.state.map(|s| s.as_str()))
        .bind(query.due_at.map(millis))
        .bind(query.after.as_ref().map(|a| a.as_str().to_owned()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| read_record(r.get("id"), r.get("revision"), r.get("record")))
            .collect()
    }

    async fn purge(&self, write: WorkspaceWrite, history: HistoryRetention) -> Result<Purged> {
        self.write_tx(move |conn| Box::pin(purge_in(conn, write, history)))
            .await
    }

    async fn commit(&self, write: WorkspaceWrite) -> Result<Committed> {
        self.write_tx(move |conn| Box::pin(apply(conn, write)))
            .await
    }

    /// Group commit: all writes in one transaction (one flush to disk with
    /// `synchronous_commit=on`), each under its own savepoint so that one write's
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
                        // other writes check everything first (and an SQL error
                        // fails the whole transaction, so every result with it).
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
                        service: "postgres".into(),
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
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        require_workspace(&mut conn, id).await?;
        let limit = if limit == 0 {
            DEFAULT_PAGE
        } else {
            i64::try_from(limit).unwrap_or(i64::MAX)
        };
        let rows = sqlx::query(
            "SELECT seq, body FROM events WHERE workspace = $1 AND seq > $2 ORDER BY seq LIMIT $3",
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
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        require_workspace(&mut conn, id).await?;
        let value: Option<String> =
            sqlx::query_scalar("SELECT value FROM checkpoints WHERE workspace = $1 AND key = $2")
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
impl LeaseStore for PostgresStore {
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
                sqlx::query("UPDATE leases SET expires_at = $1 WHERE workspace = $2")
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
        let rows = self
            .write_tx(move |conn| {
                let (holder, clock) = (holder.clone(), clock.clone());
                Box::pin(async move {
                    let now = clock.now(conn).await?;
                    let expires_at = now + ttl;
                    // First lock the due rows nobody holds, skipping those
                    // another replica is locking right now (every lease change
                    // locks its workspace row first). The filter on leases here
                    // reads this statement's snapshot, so it only narrows the
                    // candidates...
                    let ids: Vec<String> = sqlx::query_scalar(
                        "SELECT w.id FROM workspaces w \
                         WHERE w.wake_at IS NOT NULL AND w.wake_at <= $1 \
                           AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.workspace = w.id \
                               AND NOT l.released AND l.expires_at > $2) \
                         ORDER BY w.wake_at, w.id LIMIT $3 \
                         FOR UPDATE OF w SKIP LOCKED",
                    )
                    .bind(millis(until))
                    .bind(millis(now))
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                    if ids.is_empty() {
                        return Ok((Vec::new(), expires_at));
                    }
                    // ...then, with the rows locked, a new statement (a fresh
                    // snapshot) grants the leases that are still free.
                    sqlx::query(
                        "INSERT INTO leases (workspace, holder, fence, expires_at, released) \
                         SELECT c.id, $2, COALESCE(l.fence + 1, 1), $4, FALSE \
                         FROM unnest($1::text[]) AS c(id) LEFT JOIN leases l ON l.workspace = c.id \
                         WHERE l.workspace IS NULL OR l.released OR l.expires_at <= $3 \
                         ON CONFLICT (workspace) DO UPDATE SET holder = excluded.holder, fence = excluded.fence, \
                         expires_at = excluded.expires_at, released = FALSE \
                         RETURNING workspace, fence",
                    )
                    .bind(&ids)
                    .bind(holder.as_str())
                    .bind(millis(now))
                    .bind(millis(expires_at))
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
                let done = sqlx::query(
                    "UPDATE leases SET released = TRUE WHERE holder = $1 AND NOT released",
                )
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
    conn: &mut PgConnection,
    ws: &WorkspaceId,
    id: &CommandId,
) -> Result<(i64, QueuedCommand)> {
    let row = sqlx::query("SELECT seq, body FROM commands WHERE workspace = $1 AND id = $2")
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
    conn: &mut PgConnection,
    ws: &WorkspaceId,
    seq: i64,
    q: &QueuedCommand,
) -> Result<()> {
    sqlx::query("UPDATE commands SET answered = $1, body = $2 WHERE workspace = $3 AND seq = $4")
        .bind(!q.status.is_open())
        .bind(to_json(q)?)
        .bind(ws.as_str())
        .bind(seq)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

#[async_trait]
impl CommandQueue for PostgresStore {
    async fn deliver(
        &self,
        workspace: &WorkspaceId,
        limit: usize,
        _now: Timestamp,
    ) -> Result<Vec<QueuedCommand>> {
        // An idle poll reads and writes nothing else.
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        require_workspace(&mut conn, workspace).await?;
        let pending: Option<i64> = sqlx::query_scalar(
            "SELECT 1::BIGINT FROM commands WHERE workspace = $1 AND NOT answered LIMIT 1",
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
                // The workspace's row lock orders this with answers and
                // withdrawals: a command is never both handed out and withdrawn.
                require_workspace(conn, &ws).await?;
                let rows = sqlx::query(
                    "SELECT seq, body FROM commands WHERE workspace = $1 AND NOT answered ORDER BY seq LIMIT $2",
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
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        require_workspace(&mut conn, workspace).await?;
        let body: String =
            sqlx::query_scalar("SELECT body FROM commands WHERE workspace = $1 AND id = $2")
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
impl TokenStore for PostgresStore {
    async fn put_token(&self, token: BootstrapTokenRecord) -> Result<()> {
        let body = to_json(&token)?;
        self.write_tx(move |conn| {
            Box::pin(async move {
                require_workspace(conn, &token.workspace).await?;
                let hash = token.hash.to_string();
                let taken: Option<i64> = sqlx::query_scalar("SELECT 1::BIGINT FROM tokens WHERE hash = $1")
                    .bind(&hash)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                if taken.is_some() {
                    return Err(Error::AlreadyExists(Resource::BootstrapToken));
                }
                sqlx::query("DELETE FROM tokens WHERE workspace = $1 AND NOT consumed")
                    .bind(token.workspace.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                sqlx::query(
                    "INSERT INTO tokens (hash, workspace, consumed, body) VALUES ($1, $2, FALSE, $3)",
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
        let hash = *hash;
        self.write_tx(move |conn| {
            Box::pin(async move {
                let ws = credential.workspace.clone();
                // The workspace exists and is not retired: checked once here.
                retired_check(conn, &ws).await?;
                let mut token = token_for_update(conn, hash).await?;
                // The same agent, replaying an exchange whose answer it lost.
                if let Some(serial) = token.issued.clone()
                    && let Some(issued) = credential_in(conn, &serial).await?
                    && token.replays(&issued, &credential, now)
                {
                    return Ok(issued);
                }
                token.exchange_for(&credential, now)?;
                store_consumed(conn, &token).await?;
                revoke_credentials(conn, &ws, "re-bootstrapped", now).await?;
                insert_credential(conn, credential.clone()).await?;
                Ok(credential)
            })
        })
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
impl CredentialStore for PostgresStore {
    async fn put_credential(&self, credential: AgentCredential) -> Result<()> {
        self.write_tx(move |conn| {
            Box::pin(async move { put_credential_in(conn, credential).await })
        })
        .await
    }

    async fn get_credential(&self, serial: &CertSerial) -> Result<AgentCredential> {
        let body: String = sqlx::query_scalar("SELECT body FROM credentials WHERE serial = $1")
            .bind(serial.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Error::NotFound(Resource::Credential(serial.clone())))?;
        read_credential(&body, serial.as_str())
    }

    async fn get_credential_for_poll(
        &self,
        serial: &CertSerial,
    ) -> Result<(AgentCredential, bool)> {
        let (body, pending): (String, bool) = sqlx::query_as(
            "SELECT c.body, EXISTS (SELECT 1 FROM commands \
               WHERE workspace = c.workspace AND NOT answered) \
             FROM credentials c WHERE c.serial = $1",
        )
        .bind(serial.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Error::NotFound(Resource::Credential(serial.clone())))?;
        Ok((read_credential(&body, serial.as_str())?, pending))
    }

    async fn list_credentials(&self, workspace: &WorkspaceId) -> Result<Vec<AgentCredential>> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        require_workspace(&mut conn, workspace).await?;
        let rows = sqlx::query(
            "SELECT serial, body FROM credentials WHERE workspace = $1 ORDER BY serial",
        )
        .bind(workspace.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| read_credential(r.get("body"), r.get("serial")))
            .collect()
    }

    async fn mark_polled(&self, serial: &CertSerial, now: Timestamp) -> Result<bool> {
        let serial = serial.clone();
        self.write_tx(move |conn| {
            Box::pin(async move {
                let body: String =
                    sqlx::query_scalar("SELECT body FROM credentials WHERE serial = $1 FOR UPDATE")
                        .bind(serial.as_str())
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(unavailable)?
                        .ok_or_else(|| Error::NotFound(Resource::Credential(serial.clone())))?;
                let mut c = read_credential(&body, serial.as_str())?;
                let first = c.first_poll_at.is_none();
                c.first_poll_at.get_or_insert(now);
                c.last_seen_at = Some(c.last_seen_at.map_or(now, |t| t.max(now)));
                sqlx::query("UPDATE credentials SET body = $1 WHERE serial = $2")
                    .bind(to_json(&c)?)
                    .bind(serial.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                Ok(first)
            })
        })
        .await
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
                let current = credential_in(conn, &old)
                    .await?
                    .ok_or_else(|| Error::NotFound(Resource::Credential(old.clone())))?;
                // The workspace's row lock serialises whatever changes which
                // of its credentials are live (exchanges and revocations take
                // it too); read again under it: a revocation may have come first.
                require_workspace(conn, &current.workspace).await?;
                let current = credential_in(conn, &old)
                    .await?
                    .ok_or_else(|| Error::NotFound(Resource::Credential(old.clone())))?;
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
