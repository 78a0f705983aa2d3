//! The PostgreSQL store against a real PostgreSQL server: the one
//! `scripts/test.sh` installs and starts (`scripts/peers/postgres.sh`), named by
//! `COGRION_TEST_POSTGRES_URL`. Each test works in a database of its own.

#![cfg(feature = "postgres")]

use cogrion_core::conformance::{
    leases_run_on_the_stores_clock, poll_reads_are_exact, random_workspace_id,
    sample_workspace_spec, store_suite,
};
use cogrion_core::{
    Error, EventSeq, ManualClock, Resource, Timestamp,
    store::{RecordStore, WorkspaceRecord, WorkspaceWrite},
};
use cogrion_providers::postgres::{PostgresOptions, PostgresStore};
use sqlx::Connection;

/// The server's URL. Under CI (or when `COGRION_REQUIRE_POSTGRES` is set) a
/// missing server fails the test; elsewhere the test says it was skipped.
fn server() -> Option<String> {
    match std::env::var("COGRION_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_)
            if std::env::var("CI").is_ok() || std::env::var("COGRION_REQUIRE_POSTGRES").is_ok() =>
        {
            panic!(
                "COGRION_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh, which starts PostgreSQL"
            )
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: COGRION_TEST_POSTGRES_URL is not set (scripts/test.sh starts PostgreSQL)"
            );
            None
        }
    }
}

/// A fresh database on the server; returns its URL.
async fn fresh_database(server: &str, name: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let db = format!(
        "cogrion_{name}_{:x}",
        RandomState::new().hash_one(std::time::SystemTime::now())
    );
    let mut admin = sqlx::PgConnection::connect(server)
        .await
        .expect("connect to the test server");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
    format!("{base}/{db}")
}

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

/// Without a test clock, leases are judged by the server's `now()` (the
/// server runs on this machine, so its clock is this machine's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leases_run_on_the_servers_clock() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server, "ownclock").await;
    let store = PostgresStore::connect(&url).await.unwrap();
    leases_run_on_the_stores_clock(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_store_suite() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server, "suite").await;
    let store =
        PostgresStore::connect_with(&url, PostgresOptions::default().with_max_connections(16))
            .await
            .unwrap();
    let clock = ManualClock::new(T0);
    let store = store.with_clock(std::sync::Arc::new(clock.clone()));
    store_suite(&store, &clock).await;
    // Twice on one database, as replicas sharing it would see.
    store_suite(&store, &clock).await;
    poll_reads_are_exact(&store).await;
    // And through group commit with four transactions in flight at once.
    let grouped = cogrion_core::store::GroupCommit::with_lanes(std::sync::Arc::new(store), 64, 4);
    store_suite(&grouped, &clock).await;
    let (batches, writes) = grouped.stats();
    assert!(batches > 0 && writes >= batches);
}

#[tokio::test]
async fn replicas_migrate_once_and_a_newer_schema_is_refused_untouched() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server, "schema").await;
    // Three replicas connecting at once migrate exactly once.
    let (a, b, c) = tokio::join!(
        PostgresStore::connect(&url),
        PostgresStore::connect(&url),
        PostgresStore::connect(&url)
    );
    let store = a.unwrap();
    b.unwrap();
    c.unwrap();
    let id = random_workspace_id("pg");
    store
        .commit(WorkspaceWrite::create(
            WorkspaceRecord::new(id.clone(), sample_workspace_spec(), T0),
            T0,
        ))
        .await
        .unwrap();

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cogrion_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        versions, 3,
        "one row per migration (versions 1 to 3), each applied once, after concurrent connects"
    );
    sqlx::query("INSERT INTO cogrion_schema (version) VALUES (99)")
        .execute(&mut conn)
        .await
        .unwrap();
    match PostgresStore::connect(&url).await {
        Err(Error::Rejected { detail, .. }) => {
            assert!(detail.contains("schema version 99"), "{detail}")
        }
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
    let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cogrion_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, 4, "the refused database was not modified");
    assert_eq!(
        store.get_workspace(&id).await.unwrap().value.id,
        id,
        "its data is intact"
    );
}

#[tokio::test]
async fn corrupt_rows_are_typed_errors_naming_the_workspace() {
    let Some(server) = server() else { return };
    let url = fresh_database(&server, "corrupt").await;
    let store = PostgresStore::connect(&url).await.unwrap();
    let (bad, gap) = (random_workspace_id("pg"), random_workspace_id("pg"));
    for id in [&bad, &gap] {
        let write = WorkspaceWrite::create(
            WorkspaceRecord::new(id.clone(), sample_workspace_spec(), T0),
            T0,
        )
        .event(cogrion_core::store::NewEvent {
            at: T0,
            actor: cogrion_core::Actor::Api {
                principal: "test".into(),
            },
            kind: cogrion_core::EventKind::Created,
            message: "created".into(),
        });
        store.commit(write).await.unwrap();
    }
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE workspaces SET record = '{\"state\":' WHERE id = $1")
        .bind(bad.as_str())
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET seq = 7 WHERE workspace = $1")
        .bind(gap.as_str())
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(
        matches!(store.get_workspace(&bad).await, Err(Error::Corrupt { what: Resource::Workspace(w), .. }) if w == bad)
    );
    assert!(
        matches!(store.read_events(&gap, EventSeq(0), 0).await, Err(Error::Corrupt { what: Resource::Workspace(w), .. }) if w == gap)
    );
}
