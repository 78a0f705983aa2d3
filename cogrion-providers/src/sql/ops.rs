//! What the store does inside a call, on either database: each function runs
//! in the transaction (or read) its backend opened, and spells its statements
//! once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cogrion_core::proto::{CommandId, CommandResult};
use cogrion_core::store::{FeedCursor, FeedEvent, WorkspaceSummary};
use cogrion_core::{
    Clock, Error, EventRecord, EventSeq, HistoryRetention, HolderId, Resource, Result, StateName,
    Timestamp, TokenRefusal, WorkspaceId,
    store::{
        AgentCredential, BatchOutcome, BatchWrite, BootstrapTokenRecord, CertSerial, CheckpointKey,
        CommandStatus, Committed, FencingToken, Lease, ListQuery, NewEvent, Purged, PutMode,
        QueuedCommand, Revision, Revocation, TokenHash, WorkspaceRecord, WorkspaceWrite,
        check_lease_ttl, check_preconditions, check_purge, check_write,
    },
};
use cogrion_core::{CloudKind, Labels};

use super::{
    Arg, Conn, Current, Dialect, Row, corrupt, from_json, millis, now_of, page, read_credential,
    read_queued, sql, timestamp, to_json, ws_resource,
};

const DEFAULT_PAGE: i64 = 1000;

type TestClock = Option<Arc<dyn Clock>>;

// ---- schema ----------------------------------------------------------------

/// Brings the schema up to `migrations.len()`, or refuses a newer one
/// untouched, inside the backend's transaction (`where_` names the database
/// in the refusal). Migration `n` (from 1) takes the schema from `n - 1` to
/// `n`; passing a version of `records_rewritten_at` rewrites every workspace
/// record in the current format, once, after the last migration.
pub(crate) async fn migrate<C: Conn>(
    conn: &mut C,
    migrations: &'static [&'static str],
    records_rewritten_at: &[i64],
    where_: &str,
) -> Result<()> {
    let dialect = conn.dialect();
    if dialect == Dialect::Postgres {
        // Replicas starting together migrate once.
        conn.exec(sql!("SELECT pg_advisory_xact_lock(727274635)"), &[])
            .await?;
    }
    let exists = match dialect {
        Dialect::Sqlite => {
            sql!("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cogrion_schema'")
        }
        Dialect::Postgres => sql!(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'cogrion_schema'"
        ),
    };
    let current = match conn.row(exists, &[]).await? {
        None => 0,
        Some(_) => conn
            .row(
                sql!("SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM cogrion_schema"),
                &[],
            )
            .await?
            .map_or(Ok(0), |r| r.int(0))?,
    };
    let latest = migrations.len() as i64;
    if current > latest {
        return Err(Error::Rejected {
            service: dialect.service().into(),
            detail: format!(
                "{where_} was written by a newer Cogrion (schema version {current}; this build knows up to {latest}); it was not modified"
            ),
            source: None,
        });
    }
    if current == latest {
        return Ok(());
    }
    conn.script("CREATE TABLE IF NOT EXISTS cogrion_schema (version BIGINT NOT NULL)")
        .await?;
    let mut rewrite = false;
    for (i, migration) in migrations
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        conn.script(migration).await?;
        let version = i as i64 + 1;
        conn.exec(
            sql!("INSERT INTO cogrion_schema (version) VALUES (?1)"),
            &[Arg::Int(version)],
        )
        .await?;
        rewrite |= records_rewritten_at.contains(&version);
    }
    if rewrite {
        rewrite_records(conn).await?;
    }
    Ok(())
}

/// Rewrites every workspace record in the current format (see
/// [`cogrion_core::store::upgrade`]), with its derived columns, one revision later
/// (so that a writer still holding the old revision meets a conflict). A row
/// that cannot be read is left as it was: it stays [`Error::Corrupt`] on read.
async fn rewrite_records<C: Conn>(conn: &mut C) -> Result<()> {
    let rows = conn
        .rows(sql!("SELECT id, record FROM workspaces"), &[])
        .await?;
    for row in rows {
        let id = row.text(0)?;
        let record: WorkspaceRecord = match serde_json::from_str(row.text(1)?) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(workspace = %id, error = %e, "a record that cannot be read was not migrated");
                continue;
            }
        };
        let body = to_json(conn.dialect(), &record)?;
        let labels = labels_json(conn.dialect(), &record.labels)?;
        conn.exec(
            sql!("UPDATE workspaces SET revision = revision + 1, state = ?1, wake_at = ?2, record = ?3, cloud = ?4, labels = ?5 WHERE id = ?6"),
            &[
                Arg::Text(record.state.name().as_str()),
                Arg::OptInt(record.wake_at.map(millis)),
                Arg::Text(&body),
                Arg::Text(CloudKind::of(&record.spec.cloud).as_str()),
                Arg::Text(&labels),
                Arg::Text(id),
            ],
        )
        .await?;
    }
    Ok(())
}

// ---- workspaces --------------------------------------------------------------

/// A workspace's labels as their column holds them (`{}` for none).
fn labels_json(dialect: Dialect, labels: &Labels) -> Result<String> {
    if labels.is_empty() {
        Ok("{}".to_owned())
    } else {
        to_json(dialect, labels)
    }
}

/// Whether the workspace exists; with `lock`, its row is locked (where the
/// database locks rows) so that the write is ordered with every other on
/// the workspace. A read takes no lock: it must not wait for, or hold up,
/// the workspace's writers.
async fn has_workspace<C: Conn>(conn: &mut C, id: &WorkspaceId, lock: bool) -> Result<bool> {
    let sql = if lock {
        sql!("SELECT 1 FROM workspaces WHERE id = ?1 FOR UPDATE")
    } else {
        sql!("SELECT 1 FROM workspaces WHERE id = ?1")
    };
    Ok(conn.row(sql, &[Arg::Text(id.as_str())]).await?.is_some())
}

/// Refuses an unknown workspace, for a read (no lock).
async fn workspace_exists<C: Conn>(conn: &mut C, id: &WorkspaceId) -> Result<()> {
    found(has_workspace(conn, id, false).await?, id)
}

/// Refuses an unknown workspace, for a write (its row locked).
async fn require_workspace<C: Conn>(conn: &mut C, id: &WorkspaceId) -> Result<()> {
    found(has_workspace(conn, id, true).await?, id)
}

fn found(exists: bool, id: &WorkspaceId) -> Result<()> {
    if exists {
        Ok(())
    } else {
        Err(Error::NotFound(Resource::Workspace(id.clone())))
    }
}

/// What a write needs to know about a workspace (`None`: no such workspace).
/// Where rows are locked, the workspace's row is locked first and the rest
/// read in a second statement: under READ COMMITTED a statement that waited
/// for the lock would still see the lease as it was before the wait.
async fn current<C: Conn>(conn: &mut C, id: &WorkspaceId, seqs: bool) -> Result<Option<Current>> {
    if conn.dialect().locks_rows() && !has_workspace(conn, id, true).await? {
        return Ok(None);
    }
    let sql = if seqs {
        sql!(
            "SELECT w.revision, l.holder, l.fence, l.expires_at, l.released, \
               (SELECT COALESCE(MAX(seq), 0) FROM events WHERE workspace = w.id), \
               (SELECT COALESCE(MAX(seq), 0) FROM commands WHERE workspace = w.id) \
             FROM workspaces w LEFT JOIN leases l ON l.workspace = w.id WHERE w.id = ?1"
        )
    } else {
        sql!(
            "SELECT w.revision, l.holder, l.fence, l.expires_at, l.released, \
               CAST(0 AS BIGINT), CAST(0 AS BIGINT) \
             FROM workspaces w LEFT JOIN leases l ON l.workspace = w.id WHERE w.id = ?1"
        )
    };
    let Some(r) = conn.row(sql, &[Arg::Text(id.as_str())]).await? else {
        return Ok(None);
    };
    let lease = match r.opt_text(1)? {
        Some(holder) => Some((holder.to_owned(), r.int(2)?, r.int(3)?, r.bool(4)?)),
        None => None,
    };
    Ok(Some(Current {
        revision: r.int(0)?,
        lease,
        last_event: r.int(5)?,
        last_command: r.int(6)?,
    }))
}

/// A commit with its record and events already in JSON: made by the caller,
/// so that the connection's own thread (SQLite's one writer) spends its time
/// on the database, not on serialising.
pub(crate) struct Prepared {
    write: WorkspaceWrite,
    /// The record's JSON, if the write has a record.
    record: Option<String>,
    events: Vec<String>,
}

impl Prepared {
    pub(crate) fn new(dialect: Dialect, write: WorkspaceWrite) -> Result<Self> {
        let record = write
            .record
            .as_ref()
            .map(|(record, _)| to_json(dialect, record))
            .transpose()?;
        let events = write
            .events
            .iter()
            .map(|e| to_json(dialect, e))
            .collect::<Result<_>>()?;
        Ok(Self {
            write,
            record,
            events,
        })
    }
}

/// A write of a batch, its JSON made by the caller (see [`Prepared`]).
pub(crate) enum Item {
    Commit(Prepared),
    Checkpoint {
        workspace: WorkspaceId,
        key: CheckpointKey,
        value: String,
        fence: FencingToken,
    },
    Other(BatchWrite),
    /// Refused before it reached the database.
    Refused(Error),
}

impl Item {
    pub(crate) fn new(dialect: Dialect, write: BatchWrite) -> Self {
        let made = match write {
            BatchWrite::Commit(w) => Prepared::new(dialect, w).map(Self::Commit),
            BatchWrite::PutCheckpoint {
                workspace,
                key,
                value,
                fence,
            } => to_json(dialect, &value).map(|value| Self::Checkpoint {
                workspace,
                key,
                value,
                fence,
            }),
            other => Ok(Self::Other(other)),
        };
        made.unwrap_or_else(Self::Refused)
    }
}

/// One write; see [`RecordStore::commit`](cogrion_core::store::RecordStore::commit).
pub(crate) async fn apply<C: Conn>(conn: &mut C, prepared: Prepared) -> Result<Committed> {
    let dialect = conn.dialect();
    let Prepared {
        write,
        record: record_json,
        events: event_json,
    } = prepared;
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
            let taken = conn
                .row(
                    sql!("SELECT 1 FROM commands WHERE workspace = ?1 AND id = ?2"),
                    &[Arg::Text(id.as_str()), Arg::Text(c.id.as_str())],
                )
                .await?;
            if taken.is_some() {
                return Err(Error::AlreadyExists(Resource::Command(id, c.id.clone())));
            }
        }
    }

    let mut revision = None;
    // On PostgreSQL an update writes its events in the same statement.
    let mut events_written = false;
    if let (Some((record, mode)), Some(body)) = (&write.record, &record_json) {
        let next = match mode {
            PutMode::Create => 1,
            PutMode::Update(r) => r.0 as i64 + 1,
        };
        let labels = labels_json(dialect, &record.labels)?;
        let mut args = vec![
            Arg::Int(next),
            Arg::Text(record.spec.tenant.as_str()),
            Arg::Text(record.state.name().as_str()),
            Arg::OptInt(record.wake_at.map(millis)),
            Arg::Text(body),
            Arg::Text(id.as_str()),
            Arg::Text(CloudKind::of(&record.spec.cloud).as_str()),
            Arg::Text(&labels),
        ];
        let update = matches!(mode, PutMode::Update(_));
        if dialect == Dialect::Postgres && update && !event_json.is_empty() {
            // One round trip for the record and its events (the row is
            // locked and exists: the update cannot miss it).
            args.extend([Arg::Int(last_event), Arg::Texts(&event_json)]);
            conn.exec(
                sql!(
                    "WITH u AS (UPDATE workspaces SET revision = ?1, tenant = ?2, state = ?3, wake_at = ?4, record = ?5, cloud = ?7, labels = ?8 \
                       WHERE id = ?6 RETURNING id) \
                     INSERT INTO events (workspace, seq, body) \
                     SELECT u.id, ?9 + e.n, e.body FROM u, unnest(?10::text[]) WITH ORDINALITY AS e(body, n)"
                ),
                &args,
            )
            .await?;
            events_written = true;
        } else {
            let sql = if update {
                sql!(
                    "UPDATE workspaces SET revision = ?1, tenant = ?2, state = ?3, wake_at = ?4, record = ?5, cloud = ?7, labels = ?8 WHERE id = ?6"
                )
            } else {
                sql!(
                    "INSERT INTO workspaces (revision, tenant, state, wake_at, record, id, cloud, labels) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                     ON CONFLICT (id) DO NOTHING"
                )
            };
            if conn.exec(sql, &args).await? == 0 {
                // Another replica created it between our check and our insert.
                return Err(Error::AlreadyExists(Resource::Workspace(id)));
            }
        }
        revision = Some(Revision(next as u64));
    }
    if !events_written {
        insert_events(conn, &id, last_event, &event_json).await?;
    }
    let mut committed = Committed {
        revision,
        events: (1..=event_json.len() as u64)
            .map(|i| EventSeq(last_event as u64 + i))
            .collect(),
        commands: Vec::new(),
    };
    for command in commands {
        let seq = command.seq;
        let queued = QueuedCommand {
            command,
            enqueued_at: write.now,
            deliveries: 0,
            status: CommandStatus::Pending,
        };
        let body = to_json(dialect, &queued)?;
        conn.exec(
            sql!("INSERT INTO commands (workspace, seq, id, answered, body) VALUES (?1, ?2, ?3, FALSE, ?4)"),
            &[
                Arg::Text(id.as_str()),
                Arg::Int(seq.0 as i64),
                Arg::Text(queued.command.id.as_str()),
                Arg::Text(&body),
            ],
        )
        .await?;
        committed.commands.push(seq);
    }
    Ok(committed)
}

/// Appends `events` (JSON) to the workspace's history after `last_event`.
async fn insert_events<C: Conn>(
    conn: &mut C,
    id: &WorkspaceId,
    last_event: i64,
    events: &[String],
) -> Result<()> {
    match conn.dialect() {
        // One round trip for all of them.
        Dialect::Postgres if !events.is_empty() => {
            conn.exec(
                sql!(
                    "INSERT INTO events (workspace, seq, body) \
                     SELECT ?1, ?2 + e.n, e.body FROM unnest(?3::text[]) WITH ORDINALITY AS e(body, n)"
                ),
                &[
                    Arg::Text(id.as_str()),
                    Arg::Int(last_event),
                    Arg::Texts(events),
                ],
            )
            .await?;
        }
        // On the connection's own thread: a statement costs no round trip.
        _ => {
            for (i, body) in events.iter().enumerate() {
                conn.exec(
                    sql!("INSERT INTO events (workspace, seq, body) VALUES (?1, ?2, ?3)"),
                    &[
                        Arg::Text(id.as_str()),
                        Arg::Int(last_event + 1 + i as i64),
                        Arg::Text(body),
                    ],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// [`RecordStore::purge`](cogrion_core::store::RecordStore::purge).
pub(crate) async fn purge<C: Conn>(
    conn: &mut C,
    write: WorkspaceWrite,
    history: HistoryRetention,
) -> Result<Purged> {
    let id = write.workspace.clone();
    let now = current(conn, &id, false).await?;
    let state = conn
        .row(
            sql!("SELECT state FROM workspaces WHERE id = ?1"),
            &[Arg::Text(id.as_str())],
        )
        .await?
        .map(|r| r.text(0).map(str::to_owned))
        .transpose()?;
    check_purge(
        &write,
        history,
        state.as_deref(),
        now.as_ref().map(|c| Revision(c.revision as u64)),
        now.as_ref().and_then(Current::live_fence),
    )?;
    let ws = [Arg::Text(id.as_str())];
    let mut purged = Purged {
        commands: conn
            .exec(sql!("DELETE FROM commands WHERE workspace = ?1"), &ws)
            .await?,
        checkpoints: conn
            .exec(sql!("DELETE FROM checkpoints WHERE workspace = ?1"), &ws)
            .await?,
        tokens: conn
            .exec(sql!("DELETE FROM tokens WHERE workspace = ?1"), &ws)
            .await?,
        credentials: conn
            .exec(sql!("DELETE FROM credentials WHERE workspace = ?1"), &ws)
            .await?,
        events: 0,
    };
    match history {
        HistoryRetention::Keep => {
            apply(conn, Prepared::new(conn.dialect(), write)?).await?;
        }
        HistoryRetention::Delete => {
            purged.events = conn
                .exec(sql!("DELETE FROM events WHERE workspace = ?1"), &ws)
                .await?;
            conn.exec(sql!("DELETE FROM leases WHERE workspace = ?1"), &ws)
                .await?;
            conn.exec(sql!("DELETE FROM workspaces WHERE id = ?1"), &ws)
                .await?;
        }
    }
    Ok(purged)
}

/// [`RecordStore::put_checkpoint`](cogrion_core::store::RecordStore::put_checkpoint).
pub(crate) async fn put_checkpoint<C: Conn>(
    conn: &mut C,
    id: &WorkspaceId,
    key: &CheckpointKey,
    value: &str,
    fence: FencingToken,
) -> Result<()> {
    Current::found(current(conn, id, false).await?, id)?.check_fence(id, fence)?;
    conn.exec(
        sql!(
            "INSERT INTO checkpoints (workspace, key, value) VALUES (?1, ?2, ?3) \
             ON CONFLICT (workspace, key) DO UPDATE SET value = excluded.value"
        ),
        &[
            Arg::Text(id.as_str()),
            Arg::Text(key.as_str()),
            Arg::Text(value),
        ],
    )
    .await?;
    Ok(())
}

/// Group commit: all writes in the call's one transaction. A write that is
/// refused is refused before it writes anything — every write makes all its
/// checks first (and a create that loses a race inserts nothing) — so one
/// write's refusal leaves the others alone without a savepoint; an error of
/// the database itself fails the whole transaction.
pub(crate) async fn write_batch<C: Conn>(
    conn: &mut C,
    items: Vec<Item>,
    clock: &TestClock,
) -> Result<Vec<Result<BatchOutcome>>> {
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let result = match item {
            Item::Commit(w) => apply(conn, w).await.map(BatchOutcome::Committed),
            Item::Checkpoint {
                workspace,
                key,
                value,
                fence,
            } => put_checkpoint(conn, &workspace, &key, &value, fence)
                .await
                .map(|()| BatchOutcome::Done),
            Item::Other(BatchWrite::Acquire {
                workspace,
                holder,
                ttl,
            }) => acquire(conn, workspace, holder, ttl, clock)
                .await
                .map(BatchOutcome::Lease),
            Item::Other(BatchWrite::Release(lease)) => {
                release(conn, &lease).await.map(|()| BatchOutcome::Done)
            }
            Item::Other(other) => Err(Error::Rejected {
                service: conn.dialect().service().into(),
                detail: format!("this store cannot batch {other:?}"),
                source: None,
            }),
            Item::Refused(e) => Err(e),
        };
        // An unavailable database fails the whole transaction, so every
        // result with it.
        if let Err(e @ Error::Unavailable { .. }) = result {
            return Err(e);
        }
        results.push(result);
    }
    Ok(results)
}

/// A workspace's row: its revision and record, still in JSON (read on the
/// connection's thread, decoded by the caller with [`read_record`]).
pub(crate) async fn get_workspace<C: Conn>(
    conn: &mut C,
    id: &WorkspaceId,
) -> Result<(i64, String)> {
    let mut row = conn
        .row(
            sql!("SELECT revision, record FROM workspaces WHERE id = ?1"),
            &[Arg::Text(id.as_str())],
        )
        .await?
        .ok_or_else(|| Error::NotFound(Resource::Workspace(id.clone())))?;
    Ok((row.int(0)?, row.take_text(1)?))
}

/// A page of workspace rows: (id, revision, record in JSON).
/// The filters of a [`ListQuery`] on `workspaces w`, bound to `?1`–`?6`
/// (tenant, state, due at, after, cloud, labels), the labels' spelled for
/// each database.
macro_rules! selected {
    (sqlite) => {
        concat!(
            selected!(common),
            " AND (?6 IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(?6) s \
               WHERE json_extract(w.labels, '$.\"' || s.key || '\"') IS NOT s.value))"
        )
    };
    (postgres) => {
        concat!(
            selected!(common),
            " AND (CAST(?6 AS TEXT) IS NULL OR CAST(w.labels AS JSONB) @> CAST(?6 AS JSONB))"
        )
    };
    (common) => {
        "(?1 IS NULL OR w.tenant = ?1) AND (?2 IS NULL OR w.state = ?2) \
         AND (?3 IS NULL OR (w.wake_at IS NOT NULL AND w.wake_at <= ?3)) AND (?4 IS NULL OR w.id > ?4) \
         AND (?5 IS NULL OR w.cloud = ?5)"
    };
}

/// The values of [`selected!`]'s placeholders for `query`; `labels` is the
/// query's labels as JSON (`None` when it has none).
fn selected_args<'a>(query: &'a ListQuery, labels: &'a Option<String>) -> [Arg<'a>; 6] {
    [
        Arg::OptText(query.tenant.as_ref().map(|t| t.as_str())),
        Arg::OptText(query.state.map(|s| s.as_str())),
        Arg::OptInt(query.due_at.map(millis)),
        Arg::OptText(query.after.as_ref().map(|a| a.as_str())),
        Arg::OptText(query.cloud.map(|c| c.as_str())),
        Arg::OptText(labels.as_deref()),
    ]
}

fn labels_selector(dialect: Dialect, query: &ListQuery) -> Result<Option<String>> {
    if query.labels.is_empty() {
        Ok(None)
    } else {
        to_json(dialect, &query.labels).map(Some)
    }
}

/// The statement reading `$columns` of a page of the workspaces a
/// [`ListQuery`] selects, ordered by id, spelled for `$conn`'s database
/// (its arguments: [`page_args`]).
macro_rules! selected_page {
    ($conn:expr, $columns:literal) => {
        match $conn.dialect() {
            Dialect::Sqlite => sql!(concat!(
                "SELECT ",
                $columns,
                " FROM workspaces w WHERE ",
                selected!(sqlite),
                " ORDER BY w.id LIMIT ?7"
            )),
            Dialect::Postgres => sql!(concat!(
                "SELECT ",
                $columns,
                " FROM workspaces w WHERE ",
                selected!(postgres),
                " ORDER BY w.id LIMIT ?7"
            )),
        }
    };
}

/// The rows of `sql`, a [`selected_page!`] statement, for `query`.
async fn page_rows<C: Conn>(
    conn: &mut C,
    query: &ListQuery,
    sql: &'static super::Sql,
) -> Result<Vec<Row>> {
    let labels = labels_selector(conn.dialect(), query)?;
    let mut args = selected_args(query, &labels).to_vec();
    args.push(Arg::Int(page(query.limit, DEFAULT_PAGE)));
    conn.rows(sql, &args).await
}

pub(crate) async fn list_workspaces<C: Conn>(
    conn: &mut C,
    query: &ListQuery,
) -> Result<Vec<(String, i64, String)>> {
    let sql = selected_page!(conn, "w.id, w.revision, w.record");
    page_rows(conn, query, sql)
        .await?
        .into_iter()
        .map(|mut r| Ok((r.take_text(0)?, r.int(1)?, r.take_text(2)?)))
        .collect()
}

/// [`RecordStore::list_summaries`](cogrion_core::store::RecordStore::list_summaries),
/// from the columns alone.
pub(crate) async fn list_summaries<C: Conn>(
    conn: &mut C,
    query: &ListQuery,
) -> Result<Vec<WorkspaceSummary>> {
    let sql = selected_page!(
        conn,
        "w.id, w.tenant, w.cloud, w.state, w.labels, w.revision"
    );
    page_rows(conn, query, sql)
        .await?
        .into_iter()
        .map(|r| {
            let id: WorkspaceId = parse_column(r.text(0)?, "workspace id")?;
            let what = || Resource::Workspace(id.clone());
            let summary = WorkspaceSummary::new(
                id.clone(),
                parse_column(r.text(1)?, "tenant")?,
                parse_column(r.text(2)?, "cloud")?,
                parse_column(r.text(3)?, "state")?,
                from_json(r.text(4)?, what)?,
                Revision(r.int(5)? as u64),
            );
            Ok(summary)
        })
        .collect()
}

/// A column that holds a checked value, read back.
fn parse_column<T: std::str::FromStr>(text: &str, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| {
        corrupt(
            Resource::Provider(format!("workspaces.{what}")),
            format!("{text:?}: {e}"),
        )
    })
}

/// [`RecordStore::count_workspaces`](cogrion_core::store::RecordStore::count_workspaces).
pub(crate) async fn count_workspaces<C: Conn>(
    conn: &mut C,
    query: &ListQuery,
) -> Result<BTreeMap<StateName, u64>> {
    let labels = labels_selector(conn.dialect(), query)?;
    let mut args = selected_args(query, &labels);
    args[3] = Arg::OptText(None);
    let sql = match conn.dialect() {
        Dialect::Sqlite => sql!(concat!(
            "SELECT w.state, COUNT(*) FROM workspaces w WHERE ",
            selected!(sqlite),
            " GROUP BY w.state"
        )),
        Dialect::Postgres => sql!(concat!(
            "SELECT w.state, COUNT(*) FROM workspaces w WHERE ",
            selected!(postgres),
            " GROUP BY w.state"
        )),
    };
    let mut counts = BTreeMap::new();
    for r in conn.rows(sql, &args).await? {
        counts.insert(parse_column(r.text(0)?, "state")?, r.int(1)? as u64);
    }
    Ok(counts)
}

/// On PostgreSQL, the events a feed reader may read now: those of
/// transactions older than the oldest still running, so that one committing
/// late is never passed over (see the schema's version 3).
macro_rules! readable_events {
    () => {
        "tx < CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT)"
    };
}

/// [`RecordStore::feed_head`](cogrion_core::store::RecordStore::feed_head):
/// one probe of the feed's index.
pub(crate) async fn feed_head<C: Conn>(conn: &mut C) -> Result<FeedCursor> {
    let sql = match conn.dialect() {
        Dialect::Sqlite => sql!("SELECT 0, position FROM events ORDER BY position DESC LIMIT 1"),
        Dialect::Postgres => sql!(concat!(
            "SELECT tx, position FROM events WHERE ",
            readable_events!(),
            " ORDER BY tx DESC, position DESC LIMIT 1"
        )),
    };
    Ok(match conn.row(sql, &[]).await? {
        Some(r) => FeedCursor::new(r.int(0)? as u64, r.int(1)? as u64),
        None => FeedCursor::START,
    })
}

/// [`RecordStore::read_feed`](cogrion_core::store::RecordStore::read_feed).
/// SQLite commits in order (one writer): the position alone orders the
/// feed. PostgreSQL does not: the feed is ordered by (transaction, position)
/// and read only below the oldest transaction still running, so an event
/// whose transaction commits late is read after what was read before it
/// committed, never skipped (see the schema's version 3).
pub(crate) async fn read_feed<C: Conn>(
    conn: &mut C,
    after: FeedCursor,
    limit: usize,
) -> Result<Vec<FeedEvent>> {
    let limit = Arg::Int(page(limit, DEFAULT_PAGE));
    let rows = match conn.dialect() {
        Dialect::Sqlite => {
            // One writer: SQLite commits in order.
            let from = i64::try_from(after.in_order_position()).unwrap_or(i64::MAX);
            conn.rows(
                sql!(
                    "SELECT 0, position, workspace, seq, body FROM events \
                     WHERE position > ?1 ORDER BY position LIMIT ?2"
                ),
                &[Arg::Int(from), limit],
            )
            .await?
        }
        Dialect::Postgres => {
            let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            conn.rows(
                sql!(concat!(
                    "SELECT tx, position, workspace, seq, body FROM events \
                     WHERE (tx, position) > (?1, ?2) AND ",
                    readable_events!(),
                    " ORDER BY tx, position LIMIT ?3"
                )),
                &[
                    Arg::Int(int(after.tx())),
                    Arg::Int(int(after.position())),
                    limit,
                ],
            )
            .await?
        }
    };
    rows.into_iter()
        .map(|r| {
            let workspace: WorkspaceId = parse_column(r.text(2)?, "workspace id")?;
            let event: NewEvent = from_json(r.text(4)?, || Resource::Workspace(workspace.clone()))?;
            Ok(FeedEvent {
                cursor: FeedCursor::new(r.int(0)? as u64, r.int(1)? as u64),
                workspace,
                event: EventRecord {
                    seq: EventSeq(r.int(3)? as u64),
                    event,
                },
            })
        })
        .collect()
}

pub(crate) async fn read_events<C: Conn>(
    conn: &mut C,
    id: &WorkspaceId,
    after: EventSeq,
    limit: usize,
) -> Result<Vec<EventRecord>> {
    workspace_exists(conn, id).await?;
    let rows = conn
        .rows(
            sql!("SELECT seq, body FROM events WHERE workspace = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"),
            &[
                Arg::Text(id.as_str()),
                Arg::Int(after.0 as i64),
                Arg::Int(page(limit, DEFAULT_PAGE)),
            ],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (expected, r) in (after.0 + 1..).zip(rows) {
        let seq = r.int(0)?;
        if seq as u64 != expected {
            return Err(corrupt(
                Resource::Workspace(id.clone()),
                format!("the history jumps from event {} to {seq}", expected - 1),
            ));
        }
        let event: NewEvent = from_json(r.text(1)?, || Resource::Workspace(id.clone()))?;
        out.push(EventRecord {
            seq: EventSeq(seq as u64),
            event,
        });
    }
    Ok(out)
}

pub(crate) async fn get_checkpoint<C: Conn>(
    conn: &mut C,
    id: &WorkspaceId,
    key: &CheckpointKey,
) -> Result<Option<serde_json::Value>> {
    // One statement: whether the workspace exists, and the value.
    let row = conn
        .row(
            sql!(
                "SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = ?1), \
                   (SELECT value FROM checkpoints WHERE workspace = ?1 AND key = ?2)"
            ),
            &[Arg::Text(id.as_str()), Arg::Text(key.as_str())],
        )
        .await?
        .ok_or_else(|| Error::NotFound(Resource::Workspace(id.clone())))?;
    if !row.bool(0)? {
        return Err(Error::NotFound(Resource::Workspace(id.clone())));
    }
    row.opt_text(1)?
        .map(|value| from_json(value, || Resource::Checkpoint(id.clone(), key.to_string())))
        .transpose()
}

// ---- leases --------------------------------------------------------------------

/// [`LeaseStore::acquire`](cogrion_core::store::LeaseStore::acquire).
pub(crate) async fn acquire<C: Conn>(
    conn: &mut C,
    ws: WorkspaceId,
    holder: HolderId,
    ttl: Duration,
    clock: &TestClock,
) -> Result<Lease> {
    check_lease_ttl(ttl)?;
    let row = Current::found(current(conn, &ws, false).await?, &ws)?.lease;
    let now = now_of(conn, clock).await?;
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
    conn.exec(
        sql!(
            "INSERT INTO leases (workspace, holder, fence, expires_at, released) VALUES (?1, ?2, ?3, ?4, FALSE) \
             ON CONFLICT (workspace) DO UPDATE SET holder = excluded.holder, fence = excluded.fence, \
             expires_at = excluded.expires_at, released = FALSE"
        ),
        &[
            Arg::Text(ws.as_str()),
            Arg::Text(holder.as_str()),
            Arg::Int(fence),
            Arg::Int(millis(expires_at)),
        ],
    )
    .await?;
    Ok(Lease {
        workspace: ws,
        holder,
        fence: FencingToken(fence as u64),
        expires_at,
    })
}

/// [`LeaseStore::renew`](cogrion_core::store::LeaseStore::renew).
pub(crate) async fn renew<C: Conn>(
    conn: &mut C,
    lease: Lease,
    ttl: Duration,
    clock: &TestClock,
) -> Result<Lease> {
    Current::found(
        current(conn, &lease.workspace, false).await?,
        &lease.workspace,
    )?
    .check_fence(&lease.workspace, lease.fence)?;
    let expires_at = now_of(conn, clock).await? + ttl;
    conn.exec(
        sql!("UPDATE leases SET expires_at = ?1 WHERE workspace = ?2"),
        &[
            Arg::Int(millis(expires_at)),
            Arg::Text(lease.workspace.as_str()),
        ],
    )
    .await?;
    Ok(Lease {
        expires_at,
        ..lease
    })
}

/// [`LeaseStore::release`](cogrion_core::store::LeaseStore::release): a stale lease
/// is no error; an unknown workspace is.
pub(crate) async fn release<C: Conn>(conn: &mut C, lease: &Lease) -> Result<()> {
    let locks = conn.dialect().locks_rows();
    if locks {
        require_workspace(conn, &lease.workspace).await?;
    }
    let done = conn
        .exec(
            sql!("UPDATE leases SET released = TRUE WHERE workspace = ?1 AND fence = ?2"),
            &[
                Arg::Text(lease.workspace.as_str()),
                Arg::Int(lease.fence.0 as i64),
            ],
        )
        .await?;
    if !locks && done == 0 {
        require_workspace(conn, &lease.workspace).await?;
    }
    Ok(())
}

/// [`LeaseStore::claim_due`](cogrion_core::store::LeaseStore::claim_due).
pub(crate) async fn claim_due<C: Conn>(
    conn: &mut C,
    holder: &HolderId,
    ttl: Duration,
    until: Timestamp,
    limit: usize,
    clock: &TestClock,
) -> Result<Vec<Lease>> {
    let now = now_of(conn, clock).await?;
    let expires_at = now + ttl;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match conn.dialect() {
        // One writer: the statement that picks the due workspaces also grants
        // their leases.
        Dialect::Sqlite => {
            conn.rows(
                sql!(
                    "INSERT INTO leases (workspace, holder, fence, expires_at, released) \
                     SELECT w.id, ?1, COALESCE(l.fence + 1, 1), ?3, FALSE \
                     FROM workspaces w LEFT JOIN leases l ON l.workspace = w.id \
                     WHERE w.wake_at IS NOT NULL AND w.wake_at <= ?4 \
                       AND (l.workspace IS NULL OR l.released <> FALSE OR l.expires_at <= ?2) \
                     ORDER BY w.wake_at, w.id LIMIT ?5 \
                     ON CONFLICT (workspace) DO UPDATE SET holder = excluded.holder, fence = excluded.fence, \
                     expires_at = excluded.expires_at, released = FALSE \
                     RETURNING workspace, fence"
                ),
                &[
                    Arg::Text(holder.as_str()),
                    Arg::Int(millis(now)),
                    Arg::Int(millis(expires_at)),
                    Arg::Int(millis(until)),
                    Arg::Int(limit),
                ],
            )
            .await?
        }
        Dialect::Postgres => {
            // First lock the due rows nobody holds, skipping those another
            // replica is locking right now (every lease change locks its
            // workspace row first). The filter on leases here reads this
            // statement's snapshot, so it only narrows the candidates...
            let ids = conn
                .rows(
                    sql!(
                        "SELECT w.id FROM workspaces w \
                         WHERE w.wake_at IS NOT NULL AND w.wake_at <= ?1 \
                           AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.workspace = w.id \
                               AND NOT l.released AND l.expires_at > ?2) \
                         ORDER BY w.wake_at, w.id LIMIT ?3 \
                         FOR UPDATE OF w SKIP LOCKED"
                    ),
                    &[
                        Arg::Int(millis(until)),
                        Arg::Int(millis(now)),
                        Arg::Int(limit),
                    ],
                )
                .await?
                .iter()
                .map(|r| r.text(0).map(str::to_owned))
                .collect::<Result<Vec<String>>>()?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            // ...then, with the rows locked, a new statement (a fresh
            // snapshot) grants the leases that are still free.
            conn.rows(
                sql!(
                    "INSERT INTO leases (workspace, holder, fence, expires_at, released) \
                     SELECT c.id, ?2, COALESCE(l.fence + 1, 1), ?4, FALSE \
                     FROM unnest(?1::text[]) AS c(id) LEFT JOIN leases l ON l.workspace = c.id \
                     WHERE l.workspace IS NULL OR l.released OR l.expires_at <= ?3 \
                     ON CONFLICT (workspace) DO UPDATE SET holder = excluded.holder, fence = excluded.fence, \
                     expires_at = excluded.expires_at, released = FALSE \
                     RETURNING workspace, fence"
                ),
                &[
                    Arg::Texts(&ids),
                    Arg::Text(holder.as_str()),
                    Arg::Int(millis(now)),
                    Arg::Int(millis(expires_at)),
                ],
            )
            .await?
        }
    };
    rows.into_iter()
        .map(|r| {
            let ws = r.text(0)?;
            let workspace =
                WorkspaceId::new(ws.to_owned()).map_err(|e| corrupt(ws_resource(ws), e))?;
            Ok(Lease {
                workspace,
                holder: holder.clone(),
                fence: FencingToken(r.int(1)? as u64),
                expires_at,
            })
        })
        .collect()
}

/// [`LeaseStore::release_all`](cogrion_core::store::LeaseStore::release_all).
pub(crate) async fn release_all<C: Conn>(conn: &mut C, holder: &HolderId) -> Result<u64> {
    conn.exec(
        sql!("UPDATE leases SET released = TRUE WHERE holder = ?1 AND released = FALSE"),
        &[Arg::Text(holder.as_str())],
    )
    .await
}

// ---- commands ------------------------------------------------------------------

/// A command's queue position and what is stored of it; an unknown id is not
/// found.
async fn command_row<C: Conn>(
    conn: &mut C,
    ws: &WorkspaceId,
    id: &CommandId,
) -> Result<(i64, QueuedCommand)> {
    let row = conn
        .row(
            sql!("SELECT seq, body FROM commands WHERE workspace = ?1 AND id = ?2"),
            &[Arg::Text(ws.as_str()), Arg::Text(id.as_str())],
        )
        .await?
        .ok_or_else(|| Error::NotFound(Resource::Command(ws.clone(), id.clone())))?;
    Ok((row.int(0)?, read_queued(row.text(1)?, ws)?))
}

/// Stores `q` at queue position `seq`; `answered` marks the commands no poll
/// hands out any more (answered or withdrawn).
async fn write_command<C: Conn>(
    conn: &mut C,
    ws: &WorkspaceId,
    seq: i64,
    q: &QueuedCommand,
) -> Result<()> {
    let body = to_json(conn.dialect(), q)?;
    conn.exec(
        sql!("UPDATE commands SET answered = ?1, body = ?2 WHERE workspace = ?3 AND seq = ?4"),
        &[
            Arg::Bool(!q.status.is_open()),
            Arg::Text(&body),
            Arg::Text(ws.as_str()),
            Arg::Int(seq),
        ],
    )
    .await?;
    Ok(())
}

/// Whether the workspace has commands a poll would hand out (a read: an idle
/// poll writes nothing).
pub(crate) async fn has_open_commands<C: Conn>(conn: &mut C, ws: &WorkspaceId) -> Result<bool> {
    // One statement: whether the workspace exists, and whether it has any.
    let row = conn
        .row(
            sql!(
                "SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = ?1), \
                   EXISTS (SELECT 1 FROM commands WHERE workspace = ?1 AND answered = FALSE)"
            ),
            &[Arg::Text(ws.as_str())],
        )
        .await?
        .ok_or_else(|| Error::NotFound(Resource::Workspace(ws.clone())))?;
    if !row.bool(0)? {
        return Err(Error::NotFound(Resource::Workspace(ws.clone())));
    }
    row.bool(1)
}

/// [`CommandQueue::deliver`](cogrion_core::store::CommandQueue::deliver), once a
/// read found open commands. The workspace's lock orders it with answers and
/// withdrawals: a command is never both handed out and withdrawn.
pub(crate) async fn deliver<C: Conn>(
    conn: &mut C,
    ws: &WorkspaceId,
    limit: usize,
) -> Result<Vec<QueuedCommand>> {
    require_workspace(conn, ws).await?;
    let rows = conn
        .rows(
            sql!("SELECT seq, body FROM commands WHERE workspace = ?1 AND answered = FALSE ORDER BY seq LIMIT ?2"),
            &[Arg::Text(ws.as_str()), Arg::Int(page(limit, i64::MAX))],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut q = read_queued(r.text(1)?, ws)?;
        if q.status != CommandStatus::Pending {
            // Cancelling: handed out as a cancel request, not counted.
            out.push(q);
            continue;
        }
        q.deliveries += 1;
        write_command(conn, ws, r.int(0)?, &q).await?;
        out.push(q);
    }
    Ok(out)
}

/// [`CommandQueue::answer`](cogrion_core::store::CommandQueue::answer).
pub(crate) async fn answer<C: Conn>(
    conn: &mut C,
    ws: &WorkspaceId,
    result: CommandResult,
    now: Timestamp,
) -> Result<bool> {
    require_workspace(conn, ws).await?;
    let (seq, mut q) = command_row(conn, ws, &result.id).await?;
    if !q.status.is_open() {
        return Ok(false);
    }
    q.status = CommandStatus::Answered { result, at: now };
    write_command(conn, ws, seq, &q).await?;
    Ok(true)
}

/// [`CommandQueue::withdraw`](cogrion_core::store::CommandQueue::withdraw).
pub(crate) async fn withdraw<C: Conn>(
    conn: &mut C,
    ws: &WorkspaceId,
    id: &CommandId,
    now: Timestamp,
) -> Result<CommandStatus> {
    require_workspace(conn, ws).await?;
    let (seq, mut q) = command_row(conn, ws, id).await?;
    if let Some(status) = q.withdrawal(now) {
        q.status = status;
        write_command(conn, ws, seq, &q).await?;
    }
    Ok(q.status)
}

pub(crate) async fn get_command<C: Conn>(
    conn: &mut C,
    ws: &WorkspaceId,
    id: &CommandId,
) -> Result<QueuedCommand> {
    workspace_exists(conn, ws).await?;
    command_row(conn, ws, id).await.map(|(_, q)| q)
}

// ---- tokens and credentials ------------------------------------------------------

/// [`TokenStore::put_token`](cogrion_core::store::TokenStore::put_token).
pub(crate) async fn put_token<C: Conn>(conn: &mut C, token: BootstrapTokenRecord) -> Result<()> {
    let body = to_json(conn.dialect(), &token)?;
    require_workspace(conn, &token.workspace).await?;
    let hash = token.hash.to_string();
    if conn
        .row(
            sql!("SELECT 1 FROM tokens WHERE hash = ?1"),
            &[Arg::Text(&hash)],
        )
        .await?
        .is_some()
    {
        return Err(Error::AlreadyExists(Resource::BootstrapToken));
    }
    conn.exec(
        sql!("DELETE FROM tokens WHERE workspace = ?1 AND consumed = FALSE"),
        &[Arg::Text(token.workspace.as_str())],
    )
    .await?;
    conn.exec(
        sql!("INSERT INTO tokens (hash, workspace, consumed, body) VALUES (?1, ?2, FALSE, ?3)"),
        &[
            Arg::Text(&hash),
            Arg::Text(token.workspace.as_str()),
            Arg::Text(&body),
        ],
    )
    .await?;
    Ok(())
}

/// Reads a token's record (locking its row), or refuses an unknown token.
async fn token_for_update<C: Conn>(conn: &mut C, hash: TokenHash) -> Result<BootstrapTokenRecord> {
    let row = conn
        .row(
            sql!("SELECT body FROM tokens WHERE hash = ?1 FOR UPDATE"),
            &[Arg::Text(&hash.to_string())],
        )
        .await?
        .ok_or(Error::TokenRefused(TokenRefusal::Unknown))?;
    from_json(row.text(0)?, || Resource::BootstrapToken)
}

/// Writes back a token just consumed.
async fn store_consumed<C: Conn>(conn: &mut C, token: &BootstrapTokenRecord) -> Result<()> {
    let body = to_json(conn.dialect(), token)?;
    conn.exec(
        sql!("UPDATE tokens SET consumed = TRUE, body = ?1 WHERE hash = ?2"),
        &[Arg::Text(&body), Arg::Text(&token.hash.to_string())],
    )
    .await?;
    Ok(())
}

/// [`TokenStore::consume`](cogrion_core::store::TokenStore::consume).
pub(crate) async fn consume<C: Conn>(
    conn: &mut C,
    hash: TokenHash,
    ws: &WorkspaceId,
    now: Timestamp,
) -> Result<BootstrapTokenRecord> {
    let mut token = token_for_update(conn, hash).await?;
    token.consume(ws, now)?;
    store_consumed(conn, &token).await?;
    Ok(token)
}

/// Refuses a workspace that does not exist or is being destroyed (locking
/// its row).
async fn not_retired<C: Conn>(conn: &mut C, ws: &WorkspaceId) -> Result<()> {
    let state = conn
        .row(
            sql!("SELECT state FROM workspaces WHERE id = ?1 FOR UPDATE"),
            &[Arg::Text(ws.as_str())],
        )
        .await?
        .ok_or_else(|| Error::NotFound(Resource::Workspace(ws.clone())))?;
    let state = state.text(0)?;
    for retired in [StateName::Destroying, StateName::Destroyed] {
        if state == retired.as_str() {
            return Err(Error::TokenRefused(TokenRefusal::WorkspaceRetired {
                state: retired,
            }));
        }
    }
    Ok(())
}

/// [`TokenStore::exchange`](cogrion_core::store::TokenStore::exchange).
pub(crate) async fn exchange<C: Conn>(
    conn: &mut C,
    hash: TokenHash,
    credential: AgentCredential,
    now: Timestamp,
) -> Result<AgentCredential> {
    let ws = credential.workspace.clone();
    // The workspace exists and is not retired: checked once here.
    not_retired(conn, &ws).await?;
    let mut token = token_for_update(conn, hash).await?;
    // The same agent, replaying an exchange whose answer it lost.
    if let Some(serial) = token.issued.clone()
        && let Some(issued) = credential_of(conn, &serial).await?
        && token.replays(&issued, &credential, now)
    {
        return Ok(issued);
    }
    token.exchange_for(&credential, now)?;
    store_consumed(conn, &token).await?;
    revoke_credentials_but(conn, &ws, None, "re-bootstrapped", now).await?;
    insert_credential(conn, credential.clone()).await?;
    Ok(credential)
}

/// A credential's record, if it exists.
pub(crate) async fn credential_of<C: Conn>(
    conn: &mut C,
    serial: &CertSerial,
) -> Result<Option<AgentCredential>> {
    conn.row(
        sql!("SELECT body FROM credentials WHERE serial = ?1"),
        &[Arg::Text(serial.as_str())],
    )
    .await?
    .map(|r| read_credential(r.text(0)?, serial.as_str()))
    .transpose()
}

/// [`CredentialStore::get_credential_for_poll`](cogrion_core::store::CredentialStore::get_credential_for_poll).
pub(crate) async fn credential_for_poll<C: Conn>(
    conn: &mut C,
    serial: &CertSerial,
) -> Result<(AgentCredential, bool)> {
    let row = conn
        .row(
            sql!(
                "SELECT c.body, EXISTS (SELECT 1 FROM commands \
                   WHERE workspace = c.workspace AND answered = FALSE) \
                 FROM credentials c WHERE c.serial = ?1"
            ),
            &[Arg::Text(serial.as_str())],
        )
        .await?
        .ok_or_else(|| Error::NotFound(Resource::Credential(serial.clone())))?;
    Ok((
        read_credential(row.text(0)?, serial.as_str())?,
        row.bool(1)?,
    ))
}

pub(crate) async fn list_credentials<C: Conn>(
    conn: &mut C,
    ws: &WorkspaceId,
) -> Result<Vec<AgentCredential>> {
    workspace_exists(conn, ws).await?;
    credential_rows(conn, ws)
        .await?
        .iter()
        .map(|r| read_credential(r.text(1)?, r.text(0)?))
        .collect()
}

async fn credential_rows<C: Conn>(conn: &mut C, ws: &WorkspaceId) -> Result<Vec<Row>> {
    conn.rows(
        sql!("SELECT serial, body FROM credentials WHERE workspace = ?1 ORDER BY serial"),
        &[Arg::Text(ws.as_str())],
    )
    .await
}

/// [`CredentialStore::put_credential`](cogrion_core::store::CredentialStore::put_credential).
pub(crate) async fn put_credential<C: Conn>(
    conn: &mut C,
    credential: AgentCredential,
) -> Result<()> {
    require_workspace(conn, &credential.workspace).await?;
    insert_credential(conn, credential).await
}

/// Stores a credential for a workspace known to exist (its serial must be new).
async fn insert_credential<C: Conn>(conn: &mut C, credential: AgentCredential) -> Result<()> {
    let body = to_json(conn.dialect(), &credential)?;
    let inserted = conn
        .exec(
            sql!(
                "INSERT INTO credentials (serial, workspace, body) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (serial) DO NOTHING"
            ),
            &[
                Arg::Text(credential.serial.as_str()),
                Arg::Text(credential.workspace.as_str()),
                Arg::Text(&body),
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(Error::AlreadyExists(Resource::Credential(
            credential.serial,
        )));
    }
    Ok(())
}

/// [`CredentialStore::mark_polled`](cogrion_core::store::CredentialStore::mark_polled).
pub(crate) async fn mark_polled<C: Conn>(
    conn: &mut C,
    serial: &CertSerial,
    now: Timestamp,
) -> Result<bool> {
    let row = conn
        .row(
            sql!("SELECT body FROM credentials WHERE serial = ?1 FOR UPDATE"),
            &[Arg::Text(serial.as_str())],
        )
        .await?
        .ok_or_else(|| Error::NotFound(Resource::Credential(serial.clone())))?;
    let mut c = read_credential(row.text(0)?, serial.as_str())?;
    let first = c.first_poll_at.is_none();
    c.first_poll_at.get_or_insert(now);
    c.last_seen_at = Some(c.last_seen_at.map_or(now, |t| t.max(now)));
    update_credential(conn, &c).await?;
    Ok(first)
}

async fn update_credential<C: Conn>(conn: &mut C, c: &AgentCredential) -> Result<()> {
    let body = to_json(conn.dialect(), c)?;
    conn.exec(
        sql!("UPDATE credentials SET body = ?1 WHERE serial = ?2"),
        &[Arg::Text(&body), Arg::Text(c.serial.as_str())],
    )
    .await?;
    Ok(())
}

/// [`CredentialStore::renew_credential`](cogrion_core::store::CredentialStore::renew_credential).
pub(crate) async fn renew_credential<C: Conn>(
    conn: &mut C,
    old: &CertSerial,
    renewed: AgentCredential,
    now: Timestamp,
) -> Result<AgentCredential> {
    let gone = || Error::NotFound(Resource::Credential(old.clone()));
    let current = credential_of(conn, old).await?.ok_or_else(gone)?;
    let current = if conn.dialect().locks_rows() {
        // The workspace's row lock serialises whatever changes which of its
        // credentials are live (exchanges and revocations take it too); read
        // again under it: a revocation may have come first.
        require_workspace(conn, &current.workspace).await?;
        credential_of(conn, old).await?.ok_or_else(gone)?
    } else {
        current
    };
    let renewed = cogrion_core::store::check_renewal(&current, renewed, now)?;
    revoke_credentials_but(
        conn,
        &current.workspace,
        Some(old),
        cogrion_core::store::SUPERSEDED_BY_RENEWAL,
        now,
    )
    .await?;
    insert_credential(conn, renewed.clone()).await?;
    Ok(renewed)
}

/// [`CredentialStore::revoke_all`](cogrion_core::store::CredentialStore::revoke_all).
pub(crate) async fn revoke_all<C: Conn>(
    conn: &mut C,
    ws: &WorkspaceId,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<CertSerial>> {
    require_workspace(conn, ws).await?;
    revoke_credentials_but(conn, ws, None, reason, now).await
}

/// Revokes the live credentials of a workspace known to exist, except `keep`.
async fn revoke_credentials_but<C: Conn>(
    conn: &mut C,
    ws: &WorkspaceId,
    keep: Option<&CertSerial>,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<CertSerial>> {
    let rows = credential_rows(conn, ws).await?;
    let mut revoked = Vec::new();
    for r in rows {
        let mut c = read_credential(r.text(1)?, r.text(0)?)?;
        if c.revoked.is_some() || Some(&c.serial) == keep {
            continue;
        }
        c.revoked = Some(Revocation {
            at: now,
            reason: reason.to_owned(),
        });
        update_credential(conn, &c).await?;
        revoked.push(c.serial);
    }
    Ok(revoked)
}
