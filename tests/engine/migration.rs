//! Stored data outlives code: databases written by the previous main (record
//! format 1, schema version 1 — `tests/fixtures/v1`, made by
//! `tests/fixtures/v1/generate.sh` from commit b06a333) with operations in
//! flight, opened by today's stores: the schema migrates, every record is
//! rewritten in format 2 with what format 1 implied, and every workspace —
//! mid-provision, mid-update, mid-destroy, failed, waiting for its agent,
//! deploying a stack, destroyed — is driven on to the end of its life.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cogrion::*;
use sqlx::Connection;

use crate::drive::{check_destroyed, check_history, check_no_duplicates, drive};
use crate::world::{World, api, ws};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// The fixture's clock, when the database was written.
fn fixture_clock(store: &str) -> Timestamp {
    let text = std::fs::read_to_string(fixtures().join(format!("{store}.clock.txt"))).unwrap();
    Timestamp::from_millis(text.trim().parse().unwrap())
}

/// Checks what the upgrade derived for each fixture workspace, then drives
/// every one of them on: each in-flight operation finishes, each failure is
/// corrected, retried or reverted, then everything is destroyed and purged.
/// `store` judges leases by `clock`, which starts when the fixture was written.
async fn drive_the_fixture(store: Arc<dyn WorkspaceStore>, cloud: &Path, clock: ManualClock) {
    let all = store.list_workspaces(&ListQuery::new()).await.unwrap();
    let records: BTreeMap<String, WorkspaceRecord> = all
        .into_iter()
        .map(|v| (v.value.id.to_string(), v.value))
        .collect();
    assert_eq!(records.len(), 9, "{:?}", records.keys());
    let layers = |name: &str| records[name].layers.keys().copied().collect::<Vec<_>>();
    for (name, rec) in &records {
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
            w.agents.resume(id, c.serial);
        }
    }
    let mut engines = vec![w.engine("upgraded")];
    let e = engines[0].clone();
    for name in records.keys() {
        let id = ws(name);
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

/// A copy of a fixture file in `dir`.
fn copy(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(fixtures().join(name), &to).unwrap();
    to
}

/// (id, revision, record) of every workspace row.
async fn rows_sqlite(path: &Path) -> Vec<(String, i64, String)> {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let rows = sqlx::query_as("SELECT id, revision, record FROM workspaces ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_of_the_previous_main_migrates_with_operations_in_flight() {
    let dir = crate::world::TempDir::new("migrate-sqlite");
    let db = copy("v1.db", dir.path());
    let cloud = copy("sqlite.cloud.json", dir.path());
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
        assert!(record.contains("\"format\":2"), "{id}: stored in format 2");
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
    let clock = ManualClock::new(fixture_clock("sqlite"));
    let store = store.with_clock(Arc::new(clock.clone()));
    drive_the_fixture(Arc::new(store), &cloud, clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_of_the_previous_main_migrates_with_operations_in_flight() {
    let Some(server) = crate::replicas::server() else {
        return;
    };
    let _turn = crate::replicas::SERVER.lock().await;
    let dir = crate::world::TempDir::new("migrate-pg");
    let cloud = copy("postgres.cloud.json", dir.path());
    // A database of its own, loaded from the dump of the previous main's.
    let db = format!("cogrion_migrate_{:x}", rand::random::<u64>());
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    let url = format!("{base}/{db}");
    let dump = std::fs::read_to_string(fixtures().join("v1.postgres.sql")).unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(dump))
        .execute(&mut conn)
        .await
        .unwrap();
    let rows = async |conn: &mut sqlx::PgConnection| -> Vec<(String, i64, String)> {
        sqlx::query_as("SELECT id, revision, record FROM workspaces ORDER BY id")
            .fetch_all(conn)
            .await
            .unwrap()
    };
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
        assert!(record.contains("\"format\":2"), "{id}: stored in format 2");
    }
    let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM cogrion_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 2);
    conn.close().await.unwrap();
    let clock = ManualClock::new(fixture_clock("postgres"));
    let store = store.with_clock(Arc::new(clock.clone()));
    drive_the_fixture(Arc::new(store), &cloud, clock).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}
