//! The durable stores' measurements: engine steps against the store's raw write
//! rate (one workspace at a time, and batched through group commit), and the
//! time to resume 10,000 in-flight workspaces after a crash. Each line compares
//! numbers measured in the same run on the same store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cogrion::providers::sqlite::{Durability, SqliteOptions, SqliteStore};
use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedWorld};
use cogrion::*;
use cogrion::{provider::*, store::*};
use tokio::runtime::Runtime;

use super::{actor, lifecycles, raw_target, raw_writes, setup_on, spec};

/// A store to measure on.
pub(crate) enum Target {
    /// The in-memory store: the engine's own ceiling in the same harness.
    Memory,
    /// A fresh SQLite file (in the temporary folder, on disk) per measurement.
    Sqlite(Durability),
    /// The PostgreSQL server at this URL; every measurement gets a database
    /// of its own on it.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

/// Where one measurement's data lives, so it can be opened again after a crash.
#[derive(Clone)]
enum Location {
    Memory,
    Sqlite(std::path::PathBuf, Durability),
    /// The server's URL and the measurement's database on it.
    #[cfg(feature = "postgres")]
    Postgres(String, String),
}

/// A store opened for a measurement, as its own type (for its counters).
enum Opened {
    Memory(Arc<InMemoryStore>),
    Sqlite(Arc<SqliteStore>),
    #[cfg(feature = "postgres")]
    Postgres(Arc<cogrion::providers::postgres::PostgresStore>),
}

impl Opened {
    fn engine_store(&self) -> EngineStore {
        match self {
            Self::Memory(s) => EngineStore::Plain(s.clone()),
            Self::Sqlite(s) => EngineStore::Plain(s.clone()),
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => {
                EngineStore::Grouped(Arc::new(GroupCommit::with_lanes(s.clone(), 256, lanes())))
            }
        }
    }

    /// The workspace writes the engine made, by kind.
    fn write_counts(&self, engine: &EngineStore) -> WriteCounts {
        match (self, engine) {
            (_, EngineStore::Grouped(g)) => g.write_counts(),
            (Self::Sqlite(s), _) => s.write_counts(),
            #[cfg(feature = "postgres")]
            (Self::Postgres(s), _) => s.write_counts(),
            (Self::Memory(_), _) => WriteCounts::default(),
        }
    }

    /// (write transactions, store calls in them) so far.
    fn transactions(&self, engine: &EngineStore) -> (u64, u64) {
        match (self, engine) {
            (_, EngineStore::Grouped(g)) => g.stats(),
            (Self::Sqlite(s), _) => {
                let stats = s.stats();
                (stats.transactions, stats.writes)
            }
            _ => (0, 0),
        }
    }
}

impl Location {
    #[cfg(feature = "postgres")]
    fn url(&self) -> String {
        match self {
            Self::Postgres(server, db) => {
                let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
                format!("{base}/{db}")
            }
            _ => unreachable!("not a PostgreSQL location"),
        }
    }

    async fn open(&self) -> Arc<dyn WorkspaceStore> {
        match self.open_concrete().await {
            Opened::Memory(s) => s,
            Opened::Sqlite(s) => s,
            #[cfg(feature = "postgres")]
            Opened::Postgres(s) => s,
        }
    }

    async fn open_concrete(&self) -> Opened {
        match self {
            Self::Memory => Opened::Memory(Arc::new(InMemoryStore::new())),
            Self::Sqlite(path, durability) => Opened::Sqlite(Arc::new(
                SqliteStore::open_with(path, SqliteOptions::default().with_durability(*durability))
                    .await
                    .unwrap(),
            )),
            #[cfg(feature = "postgres")]
            Self::Postgres(server, db) => {
                use cogrion::providers::postgres::{PostgresOptions, PostgresStore};
                use sqlx::Connection;
                // A database of its own, made at the first opening: a shared
                // one fills up with earlier runs' workspaces, which the
                // driver's first sweep (everything pending, whenever due)
                // then claims along with this run's.
                let mut admin = sqlx::PgConnection::connect(server).await.unwrap();
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                        .bind(db)
                        .fetch_optional(&mut admin)
                        .await
                        .unwrap();
                if exists.is_none() {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                        .execute(&mut admin)
                        .await
                        .unwrap();
                }
                admin.close().await.unwrap();
                Opened::Postgres(Arc::new(
                    PostgresStore::connect_with(
                        &self.url(),
                        PostgresOptions::default().with_max_connections(32),
                    )
                    .await
                    .unwrap(),
                ))
            }
        }
    }
}

impl Target {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqlite(Durability::Normal) => "sqlite NORMAL",
            Self::Sqlite(_) => "sqlite FULL",
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
        }
    }

    /// The driver's concurrency after the restart: PostgreSQL serves many
    /// transactions at once and gains from more in flight.
    fn concurrency(&self) -> usize {
        match self {
            Self::Memory | Self::Sqlite(_) => 64,
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => 128,
        }
    }

    fn fresh(&self) -> Location {
        match self {
            Self::Memory => Location::Memory,
            Self::Sqlite(durability) => {
                let dir =
                    std::env::temp_dir().join(format!("cogrion-bench-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                Location::Sqlite(dir.join(format!("{}.db", unique("db"))), *durability)
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(url) => Location::Postgres(url.clone(), unique("cogrion_bench_")),
        }
    }
}

/// A name no earlier run used.
fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// Engine steps (`StepDone` events written by the engine) in the workspaces'
/// histories.
async fn engine_steps(store: &dyn WorkspaceStore, ids: &[WorkspaceId]) -> u64 {
    let mut steps = 0;
    for id in ids {
        steps += store
            .read_events(id, EventSeq(0), 0)
            .await
            .unwrap()
            .iter()
            .filter(|e| {
                matches!(e.event.kind, EventKind::StepDone { .. })
                    && matches!(e.event.actor, Actor::Engine { .. })
            })
            .count() as u64;
    }
    steps
}

/// One workspace at a time: raw step-sized writes (one transaction each) against
/// whole lifecycles through `advance`.
pub(crate) fn report_single(rt: &Runtime, target: &Target, writes: u64, workspaces: usize) {
    let b = setup_on(rt.block_on(target.fresh().open()), false);
    let (id, lease) = rt.block_on(raw_target(b.store.as_ref(), &unique("raw")));
    let start = Instant::now();
    rt.block_on(raw_writes(b.store.as_ref(), &id, &lease, writes));
    let raw = writes as f64 / start.elapsed().as_secs_f64();
    let b = setup_on(rt.block_on(target.fresh().open()), false);
    let start = Instant::now();
    let steps = rt.block_on(lifecycles(&b, &unique("one"), workspaces));
    let engine = steps as f64 / start.elapsed().as_secs_f64();
    println!(
        "REPORT {} one at a time: raw writes/s {raw:>8.0}, engine steps/s {engine:>8.0}, ratio {:.3}",
        target.name(),
        engine / raw
    );
}

/// The store the engine runs on, for a measurement: SQLite's store batches
/// concurrent writes into its transactions by itself (its one writer takes
/// every call queued while it was busy); PostgreSQL's goes through
/// `GroupCommit` with four transactions in flight; the in-memory store needs
/// neither.
enum EngineStore {
    Plain(Arc<dyn WorkspaceStore>),
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Grouped(Arc<GroupCommit>),
}

impl EngineStore {
    fn store(&self) -> Arc<dyn WorkspaceStore> {
        match self {
            Self::Plain(s) => s.clone(),
            Self::Grouped(g) => g.clone(),
        }
    }
}

/// Engine steps through the built-in driver against the raw rate of writing
/// the same rows with the same database: `n` workspaces created at once and
/// taken create -> `Active` -> `Destroyed` (driver concurrency
/// `concurrency`), then — on a database of its own — the rows those steps
/// wrote, written the fastest plain way (see [`raw_same_rows`]).
pub(crate) fn report_batched(rt: &Runtime, target: &Target, n: usize, concurrency: usize) {
    let location = target.fresh();
    let opened = rt.block_on(location.open_concrete());
    let engine_store = {
        let _runtime = rt.enter(); // a wrapper starts its writing task here
        opened.engine_store()
    };
    let b = setup_on(engine_store.store(), true);
    let prefix = unique("g");
    let ids: Vec<WorkspaceId> = (0..n)
        .map(|i| format!("{prefix}-{i}").parse().unwrap())
        .collect();
    let agents = {
        let _runtime = rt.enter();
        b.agents
            .spawn_renewing(Duration::from_millis(5), Duration::from_secs(30))
    };
    let before = opened.transactions(&engine_store);
    let cpu_before = super::proc::cpu_seconds("self");
    let start = Instant::now();
    let (stats, samples, active_at) = rt.block_on(async {
        let driver = Driver::spawn(
            b.engine.clone(),
            DriverConfig::default().with_concurrency(concurrency),
        );
        // Requests come in together, as to an API: the creates (and below
        // the destroys) 256 at a time, not one after another's commit.
        let events = b.engine.subscribe();
        for chunk in ids.chunks(256) {
            for r in futures::future::join_all(
                chunk
                    .iter()
                    .map(|id| b.engine.create(id.clone(), spec(), actor())),
            )
            .await
            {
                r.unwrap();
            }
        }
        wait_transitions(events, b.store.as_ref(), &ids, StateName::Active).await;
        let active_at = start.elapsed();
        // The records as they stand mid-lifecycle: what the raw side writes.
        let mut samples = Vec::new();
        for id in ids.iter().take(100) {
            samples.push(b.store.get_workspace(id).await.unwrap().value);
        }
        let events = b.engine.subscribe();
        for chunk in ids.chunks(256) {
            for r in futures::future::join_all(chunk.iter().map(|id| b.engine.destroy(id, actor())))
                .await
            {
                r.unwrap();
            }
        }
        wait_transitions(events, b.store.as_ref(), &ids, StateName::Destroyed).await;
        (driver.shutdown().await, samples, active_at)
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = super::proc::cpu_seconds("self") - cpu_before;
    rt.block_on(agents.stop());
    let steps = rt.block_on(engine_steps(b.store.as_ref(), &ids));
    let mix = opened.write_counts(&engine_store);
    let after = opened.transactions(&engine_store);
    let (transactions, writes) = (after.0 - before.0, after.1 - before.1);
    let engine = steps as f64 / elapsed;
    let (same_rows, raw_cpu) = raw_same_rows(rt, target, mix, steps, &samples, 20);
    println!(
        "REPORT {} batched: engine steps/s {engine:>8.0} ({steps} steps, {} advances, {:.0} advances/s, {} commits, {} checkpoints, \
         {} acquires, {} releases; {writes} store calls in {transactions} transactions; {n} workspaces create -> Active -> Destroyed \
         in {elapsed:.2}s, Active after {:.2}s, driver concurrency {concurrency}; the process's CPU {cpu:.2}s, {:.0} µs per step)",
        target.name(),
        stats.advances,
        stats.advances as f64 / elapsed,
        mix.commits,
        mix.checkpoints,
        mix.acquires,
        mix.releases,
        active_at.as_secs_f64(),
        cpu * 1e6 / steps as f64,
    );
    println!(
        "REPORT {} batched: raw, the same rows written the plain way (100 steps per transaction, prepared statements): \
         {same_rows:>8.0} steps/s -> ratio {:.3} (the process's CPU {raw_cpu:.0} µs per step)",
        target.name(),
        engine / same_rows,
    );
}

/// One step's worth of the rows the engine wrote, in its proportions: per
/// 100 steps, this many of each.
struct PerHundred {
    commits: usize,
    checkpoints: usize,
    releases: usize,
    acquires: usize,
}

impl PerHundred {
    fn of(mix: WriteCounts, steps: u64) -> Self {
        let per_100 = |n: u64| ((n as f64) * 100.0 / steps as f64).round() as usize;
        let releases = per_100(mix.releases);
        Self {
            commits: per_100(mix.commits),
            checkpoints: per_100(mix.checkpoints),
            releases,
            // Every released lease is taken again before its next fenced
            // write (the counts differ by a few: leases held at the end).
            acquires: per_100(mix.acquires).max(releases),
        }
    }

    /// Commits of target `i` in a round of 100: the first ones write twice.
    fn commits_of(&self, i: usize) -> usize {
        if i < self.commits.saturating_sub(100) {
            2
        } else {
            1
        }
    }
}

/// The rows the engine's steps wrote — per step, in the engine's proportions:
/// the record (compare-and-swap's new revision; serialised from a record as
/// it stood mid-lifecycle) with one history event per commit, provider
/// checkpoints, lease releases and acquisitions — written with no engine, no
/// reads and no checks: plain prepared statements, 100 steps' worth per
/// transaction, for 100 workspaces, on a database of its own. Returns steps'
/// worth per second.
fn raw_same_rows(
    rt: &Runtime,
    target: &Target,
    mix: WriteCounts,
    steps: u64,
    samples: &[WorkspaceRecord],
    rounds: usize,
) -> (f64, f64) {
    let per = PerHundred::of(mix, steps);
    let location = target.fresh();
    // The schema and the 100 workspaces, each with a lease, made by the store.
    let prefix = unique("rows");
    let targets: Vec<(WorkspaceId, Lease)> = rt.block_on(async {
        let store = location.open().await;
        let mut targets = Vec::new();
        for i in 0..100 {
            targets.push(super::raw_target(store.as_ref(), &format!("{prefix}-{i}")).await);
        }
        targets
    });
    let event = serde_json::to_string(&NewEvent {
        at: Timestamp::EPOCH,
        actor: Actor::Engine {
            holder: "bench".parse().unwrap(),
        },
        kind: EventKind::StepDone {
            operation: 1,
            step: "network".into(),
        },
        message: "network done".into(),
    })
    .unwrap();
    let mut plan = RawPlan {
        per,
        ids: targets.iter().map(|(id, _)| id.clone()).collect(),
        records: samples.to_vec(),
        seq: vec![1; targets.len()],
        fence: targets.iter().map(|(_, l)| l.fence.0 as i64).collect(),
        checkpoint: serde_json::json!({ "vpc": "vpc-0", "subnets": ["subnet-a", "subnet-b"] })
            .to_string(),
        event,
    };
    match &location {
        Location::Memory => (f64::NAN, f64::NAN),
        Location::Sqlite(path, durability) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            conn.execute_batch(match durability {
                Durability::Normal => "PRAGMA synchronous = NORMAL",
                Durability::Full => "PRAGMA synchronous = FULL",
            })
            .unwrap();
            let run = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
                conn.prepare_cached(sql).unwrap().execute(params).unwrap();
            };
            let cpu = super::proc::cpu_seconds("self");
            let start = Instant::now();
            for _ in 0..rounds {
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                for row in plan.round() {
                    match &row {
                        RawRow::Checkpoint { ws, value } => run(RAW_CHECKPOINT, &[ws, value]),
                        RawRow::Record {
                            ws,
                            seq,
                            tenant,
                            state,
                            wake_at,
                            body,
                            event,
                        } => {
                            run(RAW_RECORD, &[seq, tenant, state, wake_at, body, ws]);
                            run(RAW_EVENT, &[ws, seq, event]);
                        }
                        RawRow::Release { ws, fence } => run(RAW_RELEASE, &[ws, fence, &true]),
                        RawRow::Acquire { ws, fence } => {
                            run(RAW_ACQUIRE, &[ws, &"bench", fence, &i64::MAX, &false])
                        }
                    }
                }
                conn.execute_batch("COMMIT").unwrap();
            }
            let steps = (100 * rounds) as f64;
            (
                steps / start.elapsed().as_secs_f64(),
                (super::proc::cpu_seconds("self") - cpu) * 1e6 / steps,
            )
        }
        #[cfg(feature = "postgres")]
        Location::Postgres(..) => rt.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&location.url()).await.unwrap();
            // The same statements, with PostgreSQL's placeholders (made once;
            // the connection prepares each once).
            let pg =
                |sql: &str| -> &'static str { Box::leak(sql.replace('?', "$").into_boxed_str()) };
            let [
                checkpoint_sql,
                record_sql,
                event_sql,
                release_sql,
                acquire_sql,
            ] = [
                RAW_CHECKPOINT,
                RAW_RECORD,
                RAW_EVENT,
                RAW_RELEASE,
                RAW_ACQUIRE,
            ]
            .map(pg);
            let start = Instant::now();
            for _ in 0..rounds {
                let mut tx = conn.begin().await.unwrap();
                for row in plan.round() {
                    let q = match row {
                        RawRow::Checkpoint { ws, value } => {
                            sqlx::query(checkpoint_sql).bind(ws).bind(value)
                        }
                        RawRow::Record {
                            ws,
                            seq,
                            tenant,
                            state,
                            wake_at,
                            body,
                            event,
                        } => {
                            sqlx::query(record_sql)
                                .bind(seq)
                                .bind(tenant)
                                .bind(state)
                                .bind(wake_at)
                                .bind(body)
                                .bind(ws.clone())
                                .execute(&mut *tx)
                                .await
                                .unwrap();
                            sqlx::query(event_sql).bind(ws).bind(seq).bind(event)
                        }
                        RawRow::Release { ws, fence } => {
                            sqlx::query(release_sql).bind(ws).bind(fence).bind(true)
                        }
                        RawRow::Acquire { ws, fence } => sqlx::query(acquire_sql)
                            .bind(ws)
                            .bind("bench")
                            .bind(fence)
                            .bind(i64::MAX)
                            .bind(false),
                    };
                    q.execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
            // The server's CPU is not this process's.
            (
                (100 * rounds) as f64 / start.elapsed().as_secs_f64(),
                f64::NAN,
            )
        }),
    }
}

// The raw side's statements: plain SQL both databases take (booleans bound,
// not written), `?N` placeholders (PostgreSQL's `$N` made from them).
const RAW_CHECKPOINT: &str = "INSERT INTO checkpoints (workspace, key, value) VALUES (?1, 'op1/network', ?2) \
     ON CONFLICT (workspace, key) DO UPDATE SET value = excluded.value";
const RAW_RECORD: &str = "UPDATE workspaces SET revision = ?1, tenant = ?2, state = ?3, wake_at = ?4, record = ?5 WHERE id = ?6";
const RAW_EVENT: &str = "INSERT INTO events (workspace, seq, body) VALUES (?1, ?2, ?3)";
const RAW_RELEASE: &str = "UPDATE leases SET released = ?3 WHERE workspace = ?1 AND fence = ?2";
const RAW_ACQUIRE: &str = "INSERT INTO leases (workspace, holder, fence, expires_at, released) VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (workspace) DO UPDATE SET holder = excluded.holder, fence = excluded.fence, \
     expires_at = excluded.expires_at, released = excluded.released";

/// One write of the raw side.
enum RawRow {
    Checkpoint {
        ws: String,
        value: String,
    },
    /// A record (compare-and-swap's next revision) and its history event.
    Record {
        ws: String,
        seq: i64,
        tenant: String,
        state: String,
        wake_at: Option<i64>,
        body: String,
        event: String,
    },
    Release {
        ws: String,
        fence: i64,
    },
    Acquire {
        ws: String,
        fence: i64,
    },
}

/// What the raw side writes, round after round: what each database then
/// executes in its own way.
struct RawPlan {
    per: PerHundred,
    ids: Vec<WorkspaceId>,
    /// Records as they stood mid-lifecycle, serialised again for each write.
    records: Vec<WorkspaceRecord>,
    seq: Vec<i64>,
    fence: Vec<i64>,
    checkpoint: String,
    event: String,
}

impl RawPlan {
    /// One round: 100 steps' worth of rows, for the 100 workspaces.
    fn round(&mut self) -> Vec<RawRow> {
        let mut rows = Vec::new();
        for i in 0..self.ids.len() {
            let ws = self.ids[i].as_str().to_owned();
            if i < self.per.checkpoints {
                rows.push(RawRow::Checkpoint {
                    ws: ws.clone(),
                    value: self.checkpoint.clone(),
                });
            }
            for _ in 0..self.per.commits_of(i) {
                let n = self.records.len();
                let rec = &mut self.records[i % n];
                rec.next_operation += 1;
                self.seq[i] += 1;
                rows.push(RawRow::Record {
                    ws: ws.clone(),
                    seq: self.seq[i],
                    tenant: rec.spec.tenant.as_str().to_owned(),
                    state: rec.state.name().as_str().to_owned(),
                    wake_at: rec.wake_at.map(|t| t.as_millis() as i64),
                    body: serde_json::to_string(rec).unwrap(),
                    event: self.event.clone(),
                });
            }
            if i < self.per.releases {
                rows.push(RawRow::Release {
                    ws: ws.clone(),
                    fence: self.fence[i],
                });
            }
            if i < self.per.acquires {
                self.fence[i] += 1;
                rows.push(RawRow::Acquire {
                    ws,
                    fence: self.fence[i],
                });
            }
        }
        rows
    }
}

/// Waits until every workspace of `ids` satisfies `done`.
async fn wait_all(
    store: &dyn WorkspaceStore,
    ids: &[WorkspaceId],
    done: impl Fn(&WorkspaceRecord) -> bool,
) {
    let wanted: HashSet<&WorkspaceId> = ids.iter().collect();
    loop {
        let all = list_all(store).await;
        if all
            .iter()
            .filter(|r| wanted.contains(&r.id) && done(r))
            .count()
            == ids.len()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every one of `ids` has made its transition to `to`, watching
/// the engine's events (published after each commit, at no cost to the
/// engine) rather than scanning the store, whose decoding of every record
/// every 100 ms would be charged to the engine's rate. Events missed (the
/// channel lagged) or a second without any send it to the store instead; the
/// store has the last word either way.
async fn wait_transitions(
    mut events: tokio::sync::broadcast::Receiver<EngineEvent>,
    store: &dyn WorkspaceStore,
    ids: &[WorkspaceId],
    to: StateName,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut left: HashSet<&WorkspaceId> = ids.iter().collect();
    while !left.is_empty() {
        match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Ok(Ok(e)) => {
                if matches!(e.kind, EngineEventKind::Transition { to: t, .. } if t == to) {
                    left.remove(&e.workspace);
                }
            }
            Ok(Err(RecvError::Closed)) => panic!("engine gone"),
            Ok(Err(RecvError::Lagged(_))) | Err(_) => {
                for r in list_all(store).await {
                    if r.state.name() == to {
                        left.remove(&r.id);
                    }
                }
            }
        }
    }
    let all = list_all(store).await;
    let wanted: HashSet<&WorkspaceId> = ids.iter().collect();
    assert_eq!(
        all.iter()
            .filter(|r| wanted.contains(&r.id) && r.state.name() == to)
            .count(),
        ids.len(),
        "the store agrees: all {to:?}"
    );
}

async fn list_all(store: &dyn WorkspaceStore) -> Vec<WorkspaceRecord> {
    let mut out = Vec::new();
    let mut query = ListQuery::new().limit(5000);
    loop {
        let page = store.list_workspaces(&query).await.unwrap();
        let Some(last) = page.last().map(|r| r.value.id.clone()) else {
            return out;
        };
        out.extend(page.into_iter().map(|r| r.value));
        query.after = Some(last);
    }
}

/// Steps finished in the workspace's provisioning (or all of them, once Active).
fn progress(r: &WorkspaceRecord) -> usize {
    match r
        .operations
        .iter()
        .find(|o| o.kind == OperationKind::Provision)
    {
        Some(op) => op.steps.iter().filter(|s| s.is_finished()).count(),
        None => usize::MAX,
    }
}

/// 10,000 workspaces are taken part-way through provisioning by one process,
/// which then crashes (its runtime is dropped mid-step, its leases stay in the
/// store); a new engine with the same replica name, on a new connection to the
/// same store, resumes them. The cloud, the clusters and the agents outlive the
/// control plane, as they would. Reports the time until every workspace has made
/// durable progress past where the crash left it, and until all are `Active`,
/// and checks that no cloud resource was created twice and no step finished twice.
pub(crate) fn report_resume(target: &Target, n: usize) {
    let location = target.fresh();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let cloud = SimulatedCloud::builder()
        .clock(clock.clone())
        .latency(InfraLayer::Cluster, Duration::from_millis(1500))
        .build();
    let world = SimulatedWorld::new(cloud.clone(), FaultPlan::none());
    let config = EngineConfig::new("replica-a".parse().unwrap())
        .with_lease_ttl(Duration::from_secs(60))
        // The lifecycles measured end at `Destroyed`, not a retention later.
        .with_purge(None);
    let prefix = unique("r");
    let ids: Vec<WorkspaceId> = (0..n)
        .map(|i| format!("{prefix}-{i}").parse().unwrap())
        .collect();

    // Before the crash: its own runtime, so that dropping it stops everything
    // at whatever await point each task is at.
    let before = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    before.block_on(async {
        let opened = location.open_concrete().await;
        let store = opened.engine_store().store();
        let engine = world
            .engine(store.clone(), clock.clone(), config.clone())
            .unwrap();
        let driver = Driver::spawn(engine.clone(), DriverConfig::default().with_concurrency(64));
        for chunk in ids.chunks(256) {
            futures::future::join_all(
                chunk
                    .iter()
                    .map(|id| engine.create(id.clone(), spec(), actor())),
            )
            .await
            .into_iter()
            .for_each(|r| {
                r.unwrap();
            });
        }
        // Until every workspace has its network built: then they are spread over
        // the cluster, node-pool and agent steps.
        wait_all(store.as_ref(), &ids, |r| progress(r) >= 1).await;
        std::mem::forget(driver); // a crash does not shut down gracefully
    });
    let before_secs = started.elapsed().as_secs_f64();
    before.shutdown_background();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opened = location.open_concrete().await;
        let engine_store = opened.engine_store();
        let store = engine_store.store();
        let at_crash: HashMap<WorkspaceId, usize> =
            list_all(store.as_ref()).await.into_iter().filter(|r| r.id.as_str().starts_with(&prefix)).map(|r| (r.id.clone(), progress(&r))).collect();
        assert_eq!(at_crash.len(), n);
        let mut spread: Vec<(usize, usize)> = {
            let mut m: HashMap<usize, usize> = HashMap::new();
            for p in at_crash.values() {
                *m.entry(*p).or_default() += 1;
            }
            m.into_iter().collect()
        };
        spread.sort();
        let creates_before = cloud.api_calls().total_creates();

        // The restart: a new engine (same replica name) on a new connection.
        let restarted = Instant::now();
        let engine = world.engine(store.clone(), clock.clone(), config.clone()).unwrap();
        let driver = Driver::spawn(engine.clone(), DriverConfig::default().with_concurrency(target.concurrency()));
        let agents = world.agents.spawn_renewing(Duration::from_millis(20), Duration::from_secs(30));
        // Progress is watched through the engine's events (published after each
        // commit), which costs the engine nothing; a store scan checks the end.
        let mut events = engine.subscribe();
        let mut progressed = HashSet::new();
        let mut active = HashSet::new();
        let mut resumed_at = None;
        let mut lagged = 0;
        let active_at = loop {
            let event = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
            match event {
                Ok(Ok(e)) if at_crash.contains_key(&e.workspace) => match e.kind {
                    EngineEventKind::StepDone { .. } => {
                        progressed.insert(e.workspace);
                    }
                    EngineEventKind::Transition { to: StateName::Active, .. } => {
                        progressed.insert(e.workspace.clone());
                        active.insert(e.workspace);
                    }
                    _ => {}
                },
                Ok(Ok(_)) => {}
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => lagged += n,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => panic!("engine gone"),
                Err(_) if lagged > 0 => {
                    // Events were missed: fall back to the store.
                    let all = list_all(store.as_ref()).await;
                    for r in all.iter().filter(|r| at_crash.contains_key(&r.id)) {
                        if progress(r) > at_crash[&r.id] {
                            progressed.insert(r.id.clone());
                        }
                        if r.state == WorkspaceState::Active {
                            active.insert(r.id.clone());
                        }
                    }
                }
                Err(_) => {}
            }
            if resumed_at.is_none() && progressed.len() == n {
                resumed_at = Some(restarted.elapsed());
            }
            if active.len() == n {
                break restarted.elapsed();
            }
        };
        let all = list_all(store.as_ref()).await;
        assert!(
            all.iter()
                .filter(|r| at_crash.contains_key(&r.id))
                .all(|r| r.state == WorkspaceState::Active),
            "the store agrees: all Active"
        );
        let stats = driver.shutdown().await;
        agents.stop().await;

        // None ran twice: no cloud resource was created twice, and no step of any
        // workspace's provisioning finished twice in its history.
        assert!(cloud.duplicates().is_empty(), "{:?}", cloud.duplicates());
        let mut twice = 0;
        for id in &ids {
            let mut seen = HashSet::new();
            for e in store.read_events(id, EventSeq(0), 0).await.unwrap() {
                if let EventKind::StepDone { operation, step } = &e.event.kind
                    && !seen.insert((*operation, step.clone()))
                {
                    twice += 1;
                }
            }
        }
        assert_eq!(twice, 0, "steps finished twice");
        let clusters = cloud.api_calls().creates_of("cluster");
        assert_eq!(clusters as usize, n, "one cluster created per workspace");
        let (batches, writes) = opened.transactions(&engine_store);
        println!(
            "REPORT {} resume: {n} in-flight workspaces (finished provisioning steps at the crash -> workspaces: {spread:?}; \
             {before_secs:.1}s to get there); after the restart every one made durable progress in {:.2}s and all were Active \
             in {:.2}s ({} advances, {writes} commits in {batches} transactions); cloud creates before/after the crash {creates_before}/{}, \
             duplicates 0, steps finished twice 0{}",
            target.name(),
            resumed_at.expect("resumed").as_secs_f64(),
            active_at.as_secs_f64(),
            stats.advances,
            cloud.api_calls().total_creates() - creates_before,
            if lagged > 0 { format!(" ({lagged} events missed; the store was scanned instead)") } else { String::new() },
        );
    });
}

/// Group-commit lanes on PostgreSQL (`COGRION_BENCH_LANES`, default 4).
#[cfg(feature = "postgres")]
fn lanes() -> usize {
    std::env::var("COGRION_BENCH_LANES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}
