//! [`PostgresStore`]: the [`WorkspaceStore`](cogrion_core::store::WorkspaceStore) on
//! PostgreSQL, for control planes with several replicas.
//!
//! # Concurrency
//! Every write is one transaction that first locks the workspace's row
//! (`SELECT … FOR UPDATE`): writes to one workspace — its record, history,
//! queue, checkpoints, lease, tokens and credentials — are serialised across all
//! replicas, while writes to different workspaces proceed in parallel. Creates race
//! on the primary key (`INSERT … ON CONFLICT DO NOTHING`): exactly one wins.
//! [`claim_due`](cogrion_core::store::LeaseStore::claim_due) locks the due rows it takes
//! with `FOR UPDATE SKIP LOCKED`, so replicas claiming at once take different
//! workspaces instead of waiting on each other.
//!
//! # Durability
//! Whatever the server is configured for (`synchronous_commit`); with the default
//! (`on`) every commit is flushed before it returns, which is why
//! [`RecordStore::write_batch`](cogrion_core::store::RecordStore::write_batch) shares one transaction among many writes (a
//! savepoint for each commit). [`GroupCommit::with_lanes`](cogrion_core::store::GroupCommit::with_lanes)
//! keeps several such transactions in flight.
//!
//! # Schema
//! Versioned migrations are applied when the store connects, under an advisory
//! lock so that replicas starting together migrate once. A database written by a
//! newer schema is refused with [`Error::Rejected`](cogrion_core::Error::Rejected) and left untouched. Rows that
//! cannot be read back are [`Error::Corrupt`](cogrion_core::Error::Corrupt) naming the workspace.
//!
//! # TLS
//! Optional: put `sslmode=require` (or `verify-full`) in the connection URL;
//! rustls with the aws-lc-rs provider does the TLS.

//!
//! The statements and everything they decide are shared with the SQLite
//! store ([`crate::sql`]); this module is only how they reach PostgreSQL:
//! pooled connections, one transaction per call.

mod schema;

use std::future::Future;
use std::time::Duration;

use cogrion_core::{Result, Timestamp};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row as _, Transaction, TypeInfo, ValueRef};

use crate::sql::{Arg, Backend, Call, Conn, Dialect, Row, Sql, SqlStore, Val, migrate, timestamp};
use schema::{MIGRATIONS, RECORDS_REWRITTEN_AT};

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

/// A [`WorkspaceStore`](cogrion_core::store::WorkspaceStore) on a PostgreSQL database.
pub type PostgresStore = SqlStore<PgBackend>;

/// How a [`PostgresStore`] reaches its server: a pool of connections.
#[derive(Debug, Clone)]
pub struct PgBackend {
    pool: PgPool,
}

impl SqlStore<PgBackend> {
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
            .map_err(pg_error)?;
        let backend = PgBackend { pool };
        backend
            .write(Box::new(|c| {
                Box::pin(migrate(c, MIGRATIONS, RECORDS_REWRITTEN_AT, "the database"))
            }))
            .await?;
        Ok(SqlStore::new(backend))
    }
}

fn pg_error(e: sqlx::Error) -> cogrion_core::Error {
    cogrion_core::Error::unavailable(Dialect::Postgres.service(), e)
}

/// A pooled connection: inside a transaction for a write, bare for a read.
#[derive(Debug)]
pub struct PgConn {
    conn: Held,
    /// The transaction's `now()`, once read.
    now: Option<Timestamp>,
}

#[derive(Debug)]
enum Held {
    Tx(Transaction<'static, Postgres>),
    Bare(PoolConnection<Postgres>),
}

impl PgConn {
    fn raw(&mut self) -> &mut PgConnection {
        match &mut self.conn {
            Held::Tx(tx) => tx,
            Held::Bare(conn) => conn,
        }
    }
}

fn query<'a>(sql: &'static Sql, args: &[Arg<'_>]) -> sqlx::query::Query<'a, Postgres, PgArguments> {
    let mut q = sqlx::query(sql.text(Dialect::Postgres));
    for arg in args {
        q = match *arg {
            Arg::Int(v) => q.bind(v),
            Arg::OptInt(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::OptText(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Texts(v) => q.bind(v),
        };
    }
    q
}

fn decode(row: &PgRow) -> Result<Row> {
    let mut out = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let raw = row.try_get_raw(i).map_err(pg_error)?;
        if raw.is_null() {
            out.push(Val::Null);
            continue;
        }
        let info = raw.type_info();
        out.push(match info.name() {
            "INT8" => Val::Int(row.try_get::<i64, _>(i).map_err(pg_error)?),
            "INT4" => Val::Int(row.try_get::<i32, _>(i).map_err(pg_error)?.into()),
            "INT2" => Val::Int(row.try_get::<i16, _>(i).map_err(pg_error)?.into()),
            "BOOL" => Val::Bool(row.try_get::<bool, _>(i).map_err(pg_error)?),
            "TEXT" | "VARCHAR" | "NAME" | "BPCHAR" => {
                Val::Text(row.try_get::<String, _>(i).map_err(pg_error)?)
            }
            other => {
                return Err(crate::sql::unavailable(
                    Dialect::Postgres,
                    format!("column {i} has type {other}, which the store does not read"),
                ));
            }
        });
    }
    Ok(Row(out))
}

impl Conn for PgConn {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(
        &mut self,
        sql: &'static Sql,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64>> + Send {
        let q = query(sql, args);
        async move {
            q.execute(self.raw())
                .await
                .map(|r| r.rows_affected())
                .map_err(pg_error)
        }
    }

    fn rows(
        &mut self,
        sql: &'static Sql,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<Row>>> + Send {
        let q = query(sql, args);
        async move {
            q.fetch_all(self.raw())
                .await
                .map_err(pg_error)?
                .iter()
                .map(decode)
                .collect()
        }
    }

    async fn script(&mut self, sql: &'static str) -> Result<()> {
        sqlx::raw_sql(sql)
            .execute(self.raw())
            .await
            .map(|_| ())
            .map_err(pg_error)
    }

    async fn db_now(&mut self) -> Result<Timestamp> {
        if let Some(now) = self.now {
            return Ok(now);
        }
        let ms: i64 = sqlx::query_scalar("SELECT (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT")
            .fetch_one(self.raw())
            .await
            .map_err(pg_error)?;
        let now = timestamp(ms);
        // `now()` is the transaction's start: the same for all of it.
        if matches!(self.conn, Held::Tx(_)) {
            self.now = Some(now);
        }
        Ok(now)
    }
}

impl Backend for PgBackend {
    type Conn = PgConn;

    #[allow(private_interfaces)]
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    /// One transaction per call: committed if the call succeeds, rolled back
    /// if it fails (or if the connection is lost: nothing is half-written).
    #[allow(private_interfaces)]
    fn write<T: Send + 'static>(
        &self,
        call: Call<PgConn, T>,
    ) -> impl Future<Output = Result<T>> + Send {
        let pool = self.pool.clone();
        async move {
            let tx = pool.begin().await.map_err(pg_error)?;
            let mut conn = PgConn {
                conn: Held::Tx(tx),
                now: None,
            };
            let result = call(&mut conn).await;
            let Held::Tx(tx) = conn.conn else {
                return Err(crate::sql::unavailable(
                    Dialect::Postgres,
                    "a write lost its transaction",
                ));
            };
            match result {
                Ok(value) => {
                    tx.commit().await.map_err(pg_error)?;
                    Ok(value)
                }
                Err(e) => {
                    // Dropping the transaction rolls it back too; roll back
                    // explicitly so the connection returns to the pool clean.
                    let _ = tx.rollback().await;
                    Err(e)
                }
            }
        }
    }

    #[allow(private_interfaces)]
    fn read<T: Send + 'static>(
        &self,
        call: Call<PgConn, T>,
    ) -> impl Future<Output = Result<T>> + Send {
        let pool = self.pool.clone();
        async move {
            let conn = pool.acquire().await.map_err(pg_error)?;
            let mut conn = PgConn {
                conn: Held::Bare(conn),
                now: None,
            };
            call(&mut conn).await
        }
    }
}
