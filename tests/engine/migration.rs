//! Stored data outlives code: databases written by earlier mains with
//! operations in flight, opened by today's stores and driven on to the end of
//! every workspace's life — mid-provision, mid-update, mid-destroy, failed,
//! waiting for its agent, deploying a stack, destroyed.
//!
//! - Version 1 (record format 1, schema version 1 — `tests/fixtures/v1`, made
//!   by `tests/fixtures/generate.sh 1 b06a333`): the schema migrates and every
//!   record is rewritten in format 2 with what format 1 implied.
//! - Version 2 (`tests/fixtures/v2`, `generate.sh 2 31373a6`: the main before
//!   issue 14, whose commands were never withdrawn and whose stores judged
//!   leases by the caller's clock): its stored operations, commands, tokens
//!   and credentials — without the fields issue 14 added — are carried on,
//!   among them a deploy whose command an agent received and then held
//!   silently, which today's engine cancels before its retry.
//! - Version 3 (`tests/fixtures/v3`, `generate.sh 3 cb819ff`: the main before
//!   issue 17, schema version 2, record format 2): the schema migrates to
//!   version 3 — the cloud and labels as columns, every stored event given
//!   its place in the feed of all events — and every record is rewritten in
//!   format 3, a destroy's step for one stack naming its stack.
//!
//! Versions 1 and 2 are migrated the same way on their way to today's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cogrion::*;
use cogrion::{provider::*, store::*};
use sqlx::Connection;

use crate::drive::{check_destroyed, check_history, check_no_duplicates, drive};
use crate::world::{World, api, ws};

fn fixtures(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v{version}"))
}

/// The fixture's clock, when the database was written.
fn fixture_clock(version: u32, store: &str) -> Timestamp {
    let text =
        std::fs::read_to_string(fixtures(version).join(format!("{store}.clock.txt"))).unwrap();
    Timestamp::from_millis(text.trim().parse().unwrap())
}

/// Checks what the upgrade derived for each fixture workspace, then drives
/// every one of them on: each in-flight operation finishes, each failure is
/// corrected, retried or reverted, then everything is destroyed and purged.
/// `store` judges leases by `clock`, which starts when the fixture was written.
async fn drive_the_fixture(
    version: u32,
    store: Arc<dyn WorkspaceStore>,
    cloud: &Path,
    clock: ManualClock,
) {
    let all = store.list_workspaces(&ListQuery::new()).await.unwrap();
    let records: BTreeMap<String, WorkspaceRecord> = all
        .into_iter()
        .map(|v| (v.value.id.to_string(), v.value))
        .collect();
    match version {
        1 => derived_from_format_1(&records),
        _ => assert_eq!(records.len(), 10, "{:?}", records.keys()),
    }
    derived_from_format_2(&records);
    the_feed_holds_every_stored_event(store.as_ref()).await;
    // The cloud column was filled from the records: listing by it finds them all.
    let listed = store
        .list_summaries(&ListQuery::new().cloud(CloudKind::Simulated))
        .await
        .unwrap();
    assert_eq!(
        listed.len(),
        records.len(),
        "every workspace listed by its cloud"
    );
    drive_every_workspace(store, cloud, clock, &records).await;
}

/// What the upgrade to format 3 derived: a destroy's step for one stack
/// names its stack (format 2 left it to the step's name).
fn derived_from_format_2(records: &BTreeMap<String, WorkspaceRecord>) {
    for (name, rec) in records {
        assert_eq!(rec.format, RECORD_FORMAT, "{name}");
        assert!(rec.labels.is_empty(), "{name}: no labels before format 3");
        for op in &rec.operations {
            for step in &op.steps {
                let from_name = step.name.strip_prefix("stack/");
                if op.kind == OperationKind::Destroy {
                    assert_eq!(
                        step.stack.as_ref().map(|s| s.as_str()),
                        from_name,
                        "{name}: step {}",
                        step.name
                    );
                } else {
                    assert_eq!(step.stack, None, "{name}: step {}", step.name);
                }
            }
        }
    }
    let destroying = &records["w-destroying"].operations[0];
    assert!(
        destroying.steps.iter().any(|s| s.stack.is_some()),
        "the fixture's destroy has a stack's step"
    );
}

/// Every event stored before the migration is in the feed once, each
/// workspace's history in order.
async fn the_feed_holds_every_stored_event(store: &dyn WorkspaceStore) {
    let mut fed: BTreeMap<WorkspaceId, Vec<EventRecord>> = BTreeMap::new();
    let mut cursor = FeedCursor::START;
    loop {
        let page = store.read_feed(cursor, 100).await.unwrap();
        let Some(last) = page.last() else { break };
        cursor = last.cursor;
        for e in page {
            fed.entry(e.workspace).or_default().push(e.event);
        }
    }
    let all = store.list_workspaces(&ListQuery::new()).await.unwrap();
    assert!(!all.is_empty());
    for w in all {
        let id = w.value.id;
        let history = store.read_events(&id, EventSeq(0), 0).await.unwrap();
        assert_eq!(
            fed.remove(&id).unwrap_or_default(),
            history,
            "{id}: its whole history in the feed, in order"
        );
    }
    assert!(fed.is_empty(), "no event of an unknown workspace: {fed:?}");
}

/// What the upgrade derived from format 1's nine workspaces.
fn derived_from_format_1(records: &BTreeMap<String, WorkspaceRecord>) {
    assert_eq!(records.len(), 9, "{:?}", records.keys());
    let layers = |name: &str| records[name].layers.keys().copied().collect::<Vec<_>>();
    for (name, rec) in records {
        assert_eq!(rec.format, RECORD_FORMAT, "{name}");
    }
    // What format 1 implied, made explicit.
    use InfraLayer::{Cluster, Network, NodePools};
    assert_eq!(
        records["w-active"].applied.as_ref(),
        Some(&records["w-active"].spec)
    );
    assert_eq!(layers("w-active"), [Network, Cluster, NodePools]);
    assert_eq!(records["w-prov-mid"].applied, None);
    assert_eq!(layers("w-prov-mid"), [Network]);
    assert_eq!(layers("w-prov-failed"), [Network, Cluster]);
    let updating = &records["w-updating"];
    let before_update = updating
        .applied
        .clone()
        .expect("the spec before the update");
    assert_ne!(
        before_update, updating.spec,
        "applied is the update's previous spec"
    );
    assert_eq!(
        updating.layers[&NodePools].spec, before_update,
        "not yet updated"
    );
    assert_eq!(
        records["w-update-failed"].applied.as_ref(),
        Some(&before_update),
        "the failed update's previous spec"
    );
    assert_eq!(layers("w-destroying"), [Network, Cluster, NodePools]);
    let destroyed = &records["w-destroyed"];
    assert_eq!(destroyed.layers.len(), 0);
    assert_eq!(
        destroyed
            .operations
            .iter()
            .map(|o| o.kind)
            .collect::<Vec<_>>(),
        [OperationKind::Purge],
        "a purge is planned for what was destroyed before purges existed"
    );
}

/// Drives every workspace of `records` on to its end on today's engine.
async fn drive_every_workspace(
    store: Arc<dyn WorkspaceStore>,
    cloud: &Path,
    clock: ManualClock,
    records: &BTreeMap<String, WorkspaceRecord>,
) {
    let before_update = records["w-update-failed"]
        .applied
        .clone()
        .expect("the failed update's previous spec");
    // Drive everything on, on today's engine. The agents kept running in their
    // clusters while the control plane was replaced: they resume with the
    // certificates they hold.
    let w = World::resumed(store.clone(), cloud, Duration::from_secs(5), clock);
    for name in records.keys() {
        let id = ws(name);
        if let Some(c) = store
            .list_credentials(&id)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.revoked.is_none())
        {
            w.agents.resume(id.clone(), c.serial);
        }
        if name == "w-delivered" {
            w.agents.set_unreachable(&id, true);
        }
    }
    let mut engines = vec![w.engine("upgraded")];
    let e = engines[0].clone();
    for name in records.keys() {
        let id = ws(name);
        if name == "w-delivered" {
            // The agent that took the command stays silent (from the start,
            // above): today's engine gives up on the command at its deadline
            // and asks for its cancel.
            let cancelling = async || {
                e.history(&id).await.unwrap().iter().any(|ev| {
                    matches!(
                        ev.event.kind,
                        EventKind::CommandWithdrawn {
                            delivered: true,
                            ..
                        }
                    )
                })
            };
            for _ in 0..1_000 {
                if cancelling().await {
                    break;
                }
                e.advance(&id).await.unwrap();
                w.clock.advance(Duration::from_secs(1));
            }
            assert!(cancelling().await, "{name}: the held command was cancelled");
            w.agents.set_unreachable(&id, false);
            // Its certificate expired meanwhile (the clock went on for weeks
            // through the workspaces before it): as the driver's periodic
            // check would, the operator re-bootstraps it; the new agent's
            // connection (or its answer to the cancel) lets the retry go.
            let now = w.clock.now();
            if !store
                .list_credentials(&id)
                .await
                .unwrap()
                .iter()
                .any(|c| c.is_current(now))
            {
                e.rebootstrap_agent(&id, api()).await.unwrap();
            }
        }
        drive(&w, &mut engines, &id).await.unwrap();
        let rec = e.workspace(&id).await.unwrap();
        match name.as_str() {
            // Failed before the upgrade on a fault that is gone: a retry, a
            // revert.
            "w-prov-failed" => {
                assert!(
                    matches!(rec.state, WorkspaceState::Failed(_)),
                    "{name}: {:?}",
                    rec.state
                );
                e.retry(&id, api()).await.unwrap();
            }
            "w-update-failed" => {
                assert!(
                    matches!(rec.state, WorkspaceState::Failed(_)),
                    "{name}: {:?}",
                    rec.state
                );
                e.revert(&id, api()).await.unwrap();
            }
            // Its agent never came; the token died with the old process: the
            // wait fails at its deadline, and a retry issues a new token.
            "w-awaiting-agent" if rec.state != WorkspaceState::Active => {
                assert!(
                    matches!(rec.state, WorkspaceState::Failed(_)),
                    "{name}: {:?}",
                    rec.state
                );
                e.retry(&id, api()).await.unwrap();
            }
            _ => {}
        }
        drive(&w, &mut engines, &id).await.unwrap();
        let rec = e.workspace(&id).await.unwrap();
        let expected = match name.as_str() {
            "w-destroying" | "w-destroyed" => WorkspaceState::Destroyed,
            _ => WorkspaceState::Active,
        };
        assert_eq!(rec.state, expected, "{name}");
        match name.as_str() {
            "w-updating" => assert_eq!(
                rec.applied.as_ref(),
                Some(&rec.spec),
                "{name}: the update finished"
            ),
            "w-update-failed" => assert_eq!(rec.spec, before_update, "{name}: reverted"),
            "w-delivered" => {
                assert_eq!(
                    rec.stacks
                        .get(&"api".parse().unwrap())
                        .map(|s| s.state.clone()),
                    Some(StackState::Deployed),
                    "{name}: the deploy finished on its retry"
                );
                assert!(
                    e.history(&id).await.unwrap().iter().any(|ev| matches!(
                        ev.event.kind,
                        EventKind::CommandSuperseded {
                            succeeded: None | Some(false),
                            ..
                        }
                    )),
                    "{name}: the cancelled command was let go before the retry"
                );
                assert!(w.agents.overlaps().is_empty());
            }
            "w-deploying" => assert_eq!(
                rec.stacks
                    .get(&"api".parse().unwrap())
                    .map(|s| s.state.clone()),
                Some(StackState::Deployed),
                "{name}: the deploy in flight finished"
            ),
            _ => {}
        }
        if expected == WorkspaceState::Active {
            e.destroy(&id, api()).await.unwrap();
            drive(&w, &mut engines, &id).await.unwrap();
        }
        check_destroyed(&w, &e, &id)
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let history = e.history(&id).await.unwrap();
        assert_eq!(
            check_history(&history).unwrap(),
            StateName::Destroyed,
            "{name}"
        );
    }
    check_no_duplicates(&w).unwrap();
}

/// A copy of a fixture file of `version` in `dir`.
fn copy(version: u32, name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(fixtures(version).join(name), &to).unwrap();
    to
}

/// (id, revision, record) of every workspace row.
async fn rows_sqlite(path: &Path) -> Vec<(String, i64, String)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut query = conn
        .prepare("SELECT id, revision, record FROM workspaces ORDER BY id")
        .unwrap();
    query
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_of_the_previous_main_migrates_with_operations_in_flight() {
    let dir = crate::world::TempDir::new("migrate-sqlite");
    let db = copy(1, "v1.db", dir.path());
    let cloud = copy(1, "sqlite.cloud.json", dir.path());
    let before = rows_sqlite(&db).await;
    assert!(
        before.iter().all(|(_, _, r)| !r.contains("\"format\"")),
        "the fixture is format 1"
    );

    let store = cogrion::providers::sqlite::SqliteStore::open(&db)
        .await
        .unwrap();
    let after = rows_sqlite(&db).await;
    assert_eq!(after.len(), before.len());
    for ((id, rev, _), (id2, rev2, record)) in before.iter().zip(&after) {
        assert_eq!(id, id2);
        assert_eq!(*rev2, rev + 1, "{id}: rewritten one revision later");
        assert!(record.contains("\"format\":3"), "{id}: stored in format 3");
    }
    // Opening again changes nothing more.
    drop(store);
    let store = cogrion::providers::sqlite::SqliteStore::open(&db)
        .await
        .unwrap();
    assert_eq!(
        rows_sqlite(&db).await,
        after,
        "a migrated database is not migrated twice"
    );
    let clock = ManualClock::new(fixture_clock(1, "sqlite"));
    let store = store.with_clock(Arc::new(clock.clone()));
    drive_the_fixture(1, Arc::new(store), &cloud, clock).await;
}

/// Versions 2 and 3 on SQLite: every record rewritten once in format 3, then
/// driven on.
async fn sqlite_format_2(version: u32) {
    let dir = crate::world::TempDir::new(&format!("v{version}-sqlite"));
    let db = copy(version, &format!("v{version}.db"), dir.path());
    let cloud = copy(version, "sqlite.cloud.json", dir.path());
    let before = rows_sqlite(&db).await;
    let store = cogrion::providers::sqlite::SqliteStore::open(&db)
        .await
        .unwrap();
    rewritten_in_format_3(&before, &rows_sqlite(&db).await);
    let clock = ManualClock::new(fixture_clock(version, "sqlite"));
    let store = store.with_clock(Arc::new(clock.clone()));
    drive_the_fixture(version, Arc::new(store), &cloud, clock).await;
}

/// `after` is `before` (format 2) rewritten one revision later in format 3.
fn rewritten_in_format_3(before: &[(String, i64, String)], after: &[(String, i64, String)]) {
    assert_eq!(after.len(), before.len());
    for ((id, rev, record), (id2, rev2, record2)) in before.iter().zip(after) {
        assert_eq!(id, id2);
        assert!(
            record.contains("\"format\":2"),
            "{id}: the fixture is format 2"
        );
        assert_eq!(*rev2, rev + 1, "{id}: rewritten one revision later");
        assert!(record2.contains("\"format\":3"), "{id}: stored in format 3");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_of_the_main_before_issue_14_carries_on_with_operations_in_flight() {
    sqlite_format_2(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_of_the_main_before_issue_17_migrates_with_operations_in_flight() {
    sqlite_format_2(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_of_the_previous_main_migrates_with_operations_in_flight() {
    let Some(server) = crate::replicas::server() else {
        return;
    };
    let _turn = crate::replicas::SERVER.lock().await;
    let dir = crate::world::TempDir::new("migrate-pg");
    let cloud = copy(1, "postgres.cloud.json", dir.path());
    let fixture = PostgresFixture::load(&server, 1).await;
    let (url, mut conn) = (fixture.url.clone(), fixture.connect().await);
    let before = rows(&mut conn).await;
    assert_eq!(before.len(), 9);
    let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM cogrion_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 1, "the fixture is schema version 1");

    let store = cogrion::providers::postgres::PostgresStore::connect(&url)
        .await
        .unwrap();
    let after = rows(&mut conn).await;
    for ((id, rev, _), (_, rev2, record)) in before.iter().zip(&after) {
        assert_eq!(*rev2, rev + 1, "{id}: rewritten one revision later");
        assert!(record.contains("\"format\":3"), "{id}: stored in format 3");
    }
    let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM cogrion_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 3);
    conn.close().await.unwrap();
    let clock = ManualClock::new(fixture_clock(1, "postgres"));
    let store = store.with_clock(Arc::new(clock.clone()));
    drive_the_fixture(1, Arc::new(store), &cloud, clock).await;
    fixture.drop().await;
}

/// Versions 2 and 3 on PostgreSQL: schema version 2 migrates to 3, every
/// record rewritten once in format 3, then driven on.
async fn postgres_format_2(version: u32) {
    let Some(server) = crate::replicas::server() else {
        return;
    };
    let _turn = crate::replicas::SERVER.lock().await;
    let dir = crate::world::TempDir::new(&format!("v{version}-pg"));
    let cloud = copy(version, "postgres.cloud.json", dir.path());
    let fixture = PostgresFixture::load(&server, version).await;
    let mut conn = fixture.connect().await;
    let before = rows(&mut conn).await;
    let store = cogrion::providers::postgres::PostgresStore::connect(&fixture.url)
        .await
        .unwrap();
    rewritten_in_format_3(&before, &rows(&mut conn).await);
    let schema: i64 = sqlx::query_scalar("SELECT MAX(version) FROM cogrion_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(schema, 3);
    conn.close().await.unwrap();
    let clock = ManualClock::new(fixture_clock(version, "postgres"));
    let store = store.with_clock(Arc::new(clock.clone()));
    drive_the_fixture(version, Arc::new(store), &cloud, clock).await;
    fixture.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_of_the_main_before_issue_14_carries_on_with_operations_in_flight() {
    postgres_format_2(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_of_the_main_before_issue_17_migrates_with_operations_in_flight() {
    postgres_format_2(3).await;
}

/// (id, revision, record) of every workspace row.
async fn rows(conn: &mut sqlx::PgConnection) -> Vec<(String, i64, String)> {
    sqlx::query_as("SELECT id, revision, record FROM workspaces ORDER BY id")
        .fetch_all(conn)
        .await
        .unwrap()
}

/// A database of its own on the test server, loaded from a fixture's dump.
struct PostgresFixture {
    admin: sqlx::PgConnection,
    db: String,
    url: String,
}

impl PostgresFixture {
    async fn load(server: &str, version: u32) -> Self {
        let db = format!("cogrion_migrate_{:x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(server).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
        let url = format!("{base}/{db}");
        let dump =
            std::fs::read_to_string(fixtures(version).join(format!("v{version}.postgres.sql")))
                .unwrap();
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(dump))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        Self { admin, db, url }
    }

    async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url).await.unwrap()
    }

    async fn drop(mut self) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.db
        )))
        .execute(&mut self.admin)
        .await
        .unwrap();
    }
}
