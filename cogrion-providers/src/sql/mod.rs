//! The SQL stores' one shared layer: what a [`WorkspaceStore`] on a SQL
//! database does — its statements, row decoding, `Corrupt` classification,
//! group commit and migrations — written once, over two seams:
//!
//! - a **dialect**: how a statement is spelled for one database
//!   (placeholders, boolean literals, row locks), and the few statements that
//!   truly differ (the claim of due workspaces, the database's clock, the
//!   schema check);
//! - a **backend** ([`Backend`]): how statements reach the database — on
//!   SQLite a dedicated connection thread that runs a whole batch of calls per
//!   hand-off, on PostgreSQL pooled connections driven by the async runtime.
//!
//! [`SqlStore`] is the store itself; `SqliteStore` and `PostgresStore` are it
//! on each backend.
//!
//! [`WorkspaceStore`]: cogrion_core::store::WorkspaceStore

mod ops;
mod stores;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use cogrion_core::{
    Clock, Error, Resource, Result, Timestamp, WorkspaceId,
    store::{
        AgentCredential, CertSerial, FencingToken, QueuedCommand, Revision, Versioned,
        WorkspaceRecord, WriteCounter, WriteCounts,
    },
};
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use ops::migrate;

/// The databases the layer speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The name errors carry (`Error::Unavailable { service, source: None}`).
    pub(crate) fn service(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// Whether every change to a workspace first locks its row. PostgreSQL
    /// does (many writers, row locks); SQLite has one writer, whose
    /// transaction holds the whole database.
    pub(crate) fn locks_rows(self) -> bool {
        self == Self::Postgres
    }

    /// `text` spelled for this database. Statements are written once, in the
    /// shared spelling: `?N` placeholders, `TRUE`/`FALSE`, `FOR UPDATE` where
    /// a row is locked. PostgreSQL takes `$N`; SQLite stores booleans as 0/1
    /// (its partial indexes say `= 0`) and has no row locks.
    fn render(self, text: &str) -> String {
        match self {
            Self::Postgres => text.replace('?', "$"),
            Self::Sqlite => {
                // Whole words only, wherever they stand (`FALSE)`, `(TRUE`).
                let mut out = String::with_capacity(text.len());
                let mut rest = text;
                while let Some(start) = rest.find(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                    out.push_str(&rest[..start]);
                    rest = &rest[start..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    out.push_str(match &rest[..end] {
                        "TRUE" => "1",
                        "FALSE" => "0",
                        word => word,
                    });
                    rest = &rest[end..];
                }
                out.push_str(rest);
                out.replace(" FOR UPDATE", "")
            }
        }
    }
}

/// One statement, written once in the shared spelling and rendered for each
/// dialect on first use. Made by [`sql!`].
#[derive(Debug)]
pub(crate) struct Sql {
    text: &'static str,
    sqlite: OnceLock<String>,
    postgres: OnceLock<String>,
}

impl Sql {
    pub(crate) const fn new(text: &'static str) -> Self {
        Self {
            text,
            sqlite: OnceLock::new(),
            postgres: OnceLock::new(),
        }
    }

    /// The statement as `dialect` spells it.
    pub(crate) fn text(&'static self, dialect: Dialect) -> &'static str {
        let cell = match dialect {
            Dialect::Sqlite => &self.sqlite,
            Dialect::Postgres => &self.postgres,
        };
        cell.get_or_init(|| dialect.render(self.text))
    }
}

/// A `&'static Sql` for a statement in the shared spelling.
macro_rules! sql {
    ($text:expr) => {{
        static STATEMENT: $crate::sql::Sql = $crate::sql::Sql::new($text);
        &STATEMENT
    }};
}
pub(crate) use sql;

/// A value bound to a statement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bool(bool),
    /// A list of strings (PostgreSQL's `text[]`; SQLite has none).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Texts(&'a [String]),
}

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Int(i64),
    Text(String),
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Bool(bool),
}

/// One row of a result, its columns in the statement's order.
#[derive(Debug)]
pub(crate) struct Row(pub(crate) Vec<Val>);

fn bad_column(i: usize, wanted: &str, got: &Val) -> Error {
    Error::Corrupt {
        source: None,
        what: Resource::Provider(format!("column {i}")),
        detail: format!("expected {wanted}, found {got:?}"),
    }
}

impl Row {
    fn col(&self, i: usize) -> &Val {
        self.0.get(i).unwrap_or(&Val::Null)
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64> {
        match self.col(i) {
            Val::Int(v) => Ok(*v),
            other => Err(bad_column(i, "an integer", other)),
        }
    }

    /// A boolean: PostgreSQL's `BOOLEAN`, SQLite's 0/1.
    pub(crate) fn bool(&self, i: usize) -> Result<bool> {
        match self.col(i) {
            Val::Bool(v) => Ok(*v),
            Val::Int(v) => Ok(*v != 0),
            other => Err(bad_column(i, "a boolean", other)),
        }
    }

    pub(crate) fn text(&self, i: usize) -> Result<&str> {
        match self.col(i) {
            Val::Text(v) => Ok(v),
            other => Err(bad_column(i, "text", other)),
        }
    }

    /// A text column, moved out of the row.
    pub(crate) fn take_text(&mut self, i: usize) -> Result<String> {
        match self.0.get_mut(i) {
            Some(Val::Text(v)) => Ok(std::mem::take(v)),
            other => Err(bad_column(i, "text", other.map_or(&Val::Null, |v| &*v))),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<&str>> {
        match self.col(i) {
            Val::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
}

/// A connection, inside whatever its backend opened around the call (a
/// transaction for a write). Its calls are async so that one body of code
/// serves both backends: PostgreSQL's go over the network; SQLite's run on
/// the connection's own thread and are ready at once.
pub(crate) trait Conn: Send {
    /// The database this connection speaks to.
    fn dialect(&self) -> Dialect;

    /// Runs a statement; returns the rows it changed.
    fn exec(
        &mut self,
        sql: &'static Sql,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Runs a query; returns all its rows.
    fn rows(
        &mut self,
        sql: &'static Sql,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<Row>>> + Send;

    /// Runs a script of statements without arguments (migrations).
    fn script(&mut self, sql: &'static str) -> impl Future<Output = Result<()>> + Send;

    /// The database's own time, read once per transaction (a transaction is
    /// short; every lease decision in it uses the same instant).
    fn db_now(&mut self) -> impl Future<Output = Result<Timestamp>> + Send;

    /// Runs a query; returns its first row, if any.
    fn row(
        &mut self,
        sql: &'static Sql,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Option<Row>>> + Send {
        let rows = self.rows(sql, args);
        async move { Ok(rows.await?.into_iter().next()) }
    }
}

/// A call to run on a backend's connection.
pub(crate) type Call<C, T> =
    Box<dyn for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<T>> + Send + 'static>;

/// How calls reach a database: the execution strategy of one store.
pub trait Backend: std::fmt::Debug + Clone + Send + Sync + 'static {
    /// The backend's connection type.
    #[doc(hidden)]
    #[allow(private_bounds)]
    type Conn: Conn;

    /// Runs `call` in a write transaction; its effects are durable (as the
    /// database is configured) when the answer comes, and undone if it fails.
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn write<T: Send + 'static>(
        &self,
        call: Call<Self::Conn, T>,
    ) -> impl Future<Output = Result<T>> + Send;

    /// The database the backend speaks to.
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn dialect(&self) -> Dialect;

    /// Runs `call` as a read, outside any write transaction.
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn read<T: Send + 'static>(
        &self,
        call: Call<Self::Conn, T>,
    ) -> impl Future<Output = Result<T>> + Send;
}

/// A [`WorkspaceStore`](cogrion_core::store::WorkspaceStore) on a SQL database:
/// every trait of the store, implemented once over its [`Backend`].
#[derive(Debug, Clone)]
pub struct SqlStore<B> {
    pub(crate) backend: B,
    /// Where lease time comes from: the database's own (`None`), or — in
    /// tests — a given clock.
    pub(crate) clock: Option<Arc<dyn Clock>>,
    /// Writes made so far, by kind.
    pub(crate) counts: Arc<WriteCounter>,
}

impl<B: Backend> SqlStore<B> {
    pub(crate) fn new(backend: B) -> Self {
        Self {
            backend,
            clock: None,
            counts: Arc::default(),
        }
    }

    /// The workspace writes this store made so far, by kind — alone or in
    /// batches: commits, provider checkpoints, lease acquisitions and
    /// releases.
    pub fn write_counts(&self) -> WriteCounts {
        self.counts.counts()
    }

    /// This store with leases judged by `clock` instead of the database's
    /// time: for tests, which move a manual clock rather than sleep.
    /// Production stores keep the database's time, which every replica
    /// shares whatever its own clock says.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut B::Conn) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.backend.write(Box::new(f)).await
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut B::Conn) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.backend.read(Box::new(f)).await
    }
}

/// The lease clock of a call: the test clock if one is set, else the
/// database's time inside the call's transaction.
async fn now_of<C: Conn>(conn: &mut C, clock: &Option<Arc<dyn Clock>>) -> Result<Timestamp> {
    match clock {
        Some(clock) => Ok(clock.now()),
        None => conn.db_now().await,
    }
}

pub(crate) fn unavailable(dialect: Dialect, detail: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        service: dialect.service().into(),
        detail: detail.to_string(),
        source: None,
    }
}

fn corrupt(what: Resource, detail: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        what,
        detail: detail.to_string(),
        source: None,
    }
}

fn ws_resource(id: &str) -> Resource {
    match WorkspaceId::new(id) {
        Ok(id) => Resource::Workspace(id),
        Err(_) => Resource::Provider(format!("workspace row {id:?}")),
    }
}

fn to_json<T: Serialize>(dialect: Dialect, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Rejected {
        service: dialect.service().into(),
        detail: e.to_string(),
        source: None,
    })
}

fn from_json<T: DeserializeOwned>(text: &str, what: impl FnOnce() -> Resource) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt {
        what: what(),
        detail: format!("unreadable JSON: {e}"),
        source: Some(Box::new(e)),
    })
}

pub(crate) fn millis(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A page size for the API's "0 = the default page".
fn page(limit: usize, default: i64) -> i64 {
    if limit == 0 {
        default
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX)
    }
}

pub(crate) fn read_record(
    id: &str,
    revision: i64,
    body: &str,
) -> Result<Versioned<WorkspaceRecord>> {
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

fn read_credential(body: &str, serial: &str) -> Result<AgentCredential> {
    from_json(body, || match serial.parse::<CertSerial>() {
        Ok(s) => Resource::Credential(s),
        Err(_) => Resource::Provider(format!("credential row {serial:?}")),
    })
}

fn read_queued(body: &str, ws: &WorkspaceId) -> Result<QueuedCommand> {
    from_json(body, || Resource::Workspace(ws.clone()))
}

/// What a write needs to know about a workspace, read in one statement: its
/// revision, its lease row (holder, fence, expires_at, released), and — for
/// commits — the last event and command sequence numbers.
struct Current {
    revision: i64,
    lease: Option<(String, i64, i64, bool)>,
    last_event: i64,
    last_command: i64,
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

#[cfg(test)]
mod tests {
    use super::Dialect;

    #[test]
    fn statements_are_spelled_for_each_dialect() {
        let text = "UPDATE leases SET released = TRUE WHERE workspace = ?1 AND released = FALSE";
        assert_eq!(
            Dialect::Postgres.render(text),
            "UPDATE leases SET released = TRUE WHERE workspace = $1 AND released = FALSE"
        );
        assert_eq!(
            Dialect::Sqlite.render(text),
            "UPDATE leases SET released = 1 WHERE workspace = ?1 AND released = 0"
        );
        assert_eq!(
            Dialect::Sqlite.render("SELECT revision FROM workspaces WHERE id = ?1 FOR UPDATE"),
            "SELECT revision FROM workspaces WHERE id = ?1"
        );
        // Next to punctuation too, and never inside a name.
        assert_eq!(
            Dialect::Sqlite.render("VALUES (?1, FALSE) ON CONFLICT DO UPDATE SET is_TRUE = (TRUE)"),
            "VALUES (?1, 0) ON CONFLICT DO UPDATE SET is_TRUE = (1)"
        );
    }
}
