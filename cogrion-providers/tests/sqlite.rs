//! The SQLite store against a real SQLite database (files in a temporary folder).

#![cfg(feature = "sqlite")]

use std::path::PathBuf;

use cogrion_core::conformance::{
    leases_run_on_the_stores_clock, poll_reads_are_exact, random_workspace_id,
    sample_workspace_spec, store_suite,
};
use cogrion_core::{
    Error, EventSeq, ManualClock, Resource, Timestamp, WorkspaceId,
    store::{NewEvent, RecordStore, WorkspaceRecord, WorkspaceWrite},
};
use cogrion_providers::sqlite::{Durability, SqliteOptions, SqliteStore};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "cogrion-{name}-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn db(&self) -> PathBuf {
        self.0.join("cogrion.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

/// A connection of the test's own, beside the store's, for what the store
/// would never write.
fn raw(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

async fn create(store: &SqliteStore) -> WorkspaceId {
    let id = random_workspace_id("sql");
    let write = WorkspaceWrite::create(
        WorkspaceRecord::new(id.clone(), sample_workspace_spec(), T0),
        T0,
    )
    .event(NewEvent {
        at: T0,
        actor: cogrion_core::Actor::Api {
            principal: "test".into(),
        },
        kind: cogrion_core::EventKind::Created,
        message: "created".into(),
    });
    store.commit(write).await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_store_suite_in_both_durabilities() {
    for durability in [Durability::Normal, Durability::Full] {
        let dir = TempDir::new("suite");
        let store = SqliteStore::open_with(
            dir.db(),
            SqliteOptions::default().with_durability(durability),
        )
        .await
        .unwrap();
        let clock = ManualClock::new(T0);
        let store = store.with_clock(std::sync::Arc::new(clock.clone()));
        store_suite(&store, &clock).await;
        poll_reads_are_exact(&store).await;
    }
}

/// Without a test clock, leases are judged by SQLite's own time, read inside
/// the writing transaction.
#[tokio::test]
async fn sqlite_leases_run_on_sqlites_clock() {
    let dir = TempDir::new("ownclock");
    let store = SqliteStore::open(dir.db()).await.unwrap();
    leases_run_on_the_stores_clock(&store).await;
}

#[tokio::test]
async fn data_survives_reopening_and_a_newer_schema_is_refused_untouched() {
    let dir = TempDir::new("reopen");
    let id = {
        let store = SqliteStore::open(dir.db()).await.unwrap();
        create(&store).await
    };
    let store = SqliteStore::open(dir.db()).await.unwrap();
    assert_eq!(store.get_workspace(&id).await.unwrap().value.id, id);
    assert_eq!(
        store.read_events(&id, EventSeq(0), 0).await.unwrap().len(),
        1
    );
    drop(store);

    // A database from a future schema: refused, and not modified.
    let conn = raw(&dir.db());
    conn.execute("INSERT INTO cogrion_schema (version) VALUES (99)", [])
        .unwrap();
    drop(conn);
    let before = std::fs::read(dir.db()).unwrap();
    match SqliteStore::open(dir.db()).await {
        Err(Error::Rejected { detail, .. }) => {
            assert!(detail.contains("schema version 99"), "{detail}")
        }
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(dir.db()).unwrap(),
        before,
        "the refused database was modified"
    );
}

#[tokio::test]
async fn corrupt_rows_are_typed_errors_naming_the_workspace() {
    let dir = TempDir::new("corrupt");
    let store = SqliteStore::open(dir.db()).await.unwrap();
    let (bad_json, bad_state, wrong_id, gap) = (
        create(&store).await,
        create(&store).await,
        create(&store).await,
        create(&store).await,
    );
    let other = create(&store).await;
    let conn = raw(&dir.db());
    conn.execute(
        "UPDATE workspaces SET record = '{not json' WHERE id = ?",
        [bad_json.as_str()],
    )
    .unwrap();
    let record: String = conn
        .query_row(
            "SELECT record FROM workspaces WHERE id = ?",
            [bad_state.as_str()],
            |r| r.get(0),
        )
        .unwrap();
    let edited = record.replace("\"state\":\"provisioning\"", "\"state\":\"exploded\"");
    assert_ne!(edited, record);
    conn.execute(
        "UPDATE workspaces SET record = ? WHERE id = ?",
        [edited.as_str(), bad_state.as_str()],
    )
    .unwrap();
    let foreign: String = conn
        .query_row(
            "SELECT record FROM workspaces WHERE id = ?",
            [other.as_str()],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE workspaces SET record = ? WHERE id = ?",
        [foreign.as_str(), wrong_id.as_str()],
    )
    .unwrap();
    conn.execute(
        "UPDATE events SET seq = 5 WHERE workspace = ?",
        [gap.as_str()],
    )
    .unwrap();
    drop(conn);

    for id in [&bad_json, &bad_state, &wrong_id] {
        match store.get_workspace(id).await {
            Err(Error::Corrupt {
                what: Resource::Workspace(w),
                detail,
                source,
            }) => {
                assert_eq!(&w, id);
                assert!(!detail.is_empty());
                if id == &bad_json {
                    let cause = source.expect("the parser's error is kept as the cause");
                    assert!(
                        cause.downcast_ref::<serde_json::Error>().is_some(),
                        "{cause:?}"
                    );
                }
            }
            other => panic!("a corrupt row of {id} must be Corrupt, got {other:?}"),
        }
    }
    match store.read_events(&gap, EventSeq(0), 0).await {
        Err(Error::Corrupt {
            what: Resource::Workspace(w),
            detail,
            ..
        }) => {
            assert_eq!(w, gap);
            assert!(detail.contains("jumps"), "{detail}");
        }
        other => panic!("a gap in the history must be Corrupt, got {other:?}"),
    }
    // Listing refuses too, rather than skipping rows silently.
    assert!(matches!(
        store
            .list_workspaces(&cogrion_core::store::ListQuery::new())
            .await,
        Err(Error::Corrupt { .. })
    ));
    // The healthy workspace still reads.
    assert_eq!(store.get_workspace(&other).await.unwrap().value.id, other);
}

/// Group commit on SQLite at FULL durability: the suite passes through the
/// wrapper, and 200 concurrent commits share far fewer transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_on_sqlite_keeps_the_guarantees_and_shares_transactions() {
    let dir = TempDir::new("group");
    let inner = SqliteStore::open_with(
        dir.db(),
        SqliteOptions::default().with_durability(Durability::Full),
    )
    .await
    .unwrap();
    let clock = ManualClock::new(T0);
    let inner = inner.with_clock(std::sync::Arc::new(clock.clone()));
    let store = cogrion_core::store::GroupCommit::new(std::sync::Arc::new(inner), 256);
    store_suite(&store, &clock).await;
    let before = store.stats();
    let writes = (0..200).map(|_| {
        let id = random_workspace_id("grp");
        store.commit(WorkspaceWrite::create(
            WorkspaceRecord::new(id, sample_workspace_spec(), T0),
            T0,
        ))
    });
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    let (batches, total) = store.stats();
    let (batches, total) = (batches - before.0, total - before.1);
    assert_eq!(total, 200);
    assert!(
        batches < 100,
        "200 concurrent commits took {batches} transactions"
    );
}

/// A fleet's polls at once on SQLite: each read answers for its own serial,
/// the first-poll marks share transactions, and a corrupt credential among
/// them is refused alone (its read and its mark, whose savepoint is undone
/// while the others commit), naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_at_once_share_transactions_and_a_corrupt_row_is_refused_alone() {
    use cogrion_core::store::{AgentCredential, CertSerial, CredentialStore};
    let dir = TempDir::new("polls");
    let store = SqliteStore::open(dir.db()).await.unwrap();
    let mut fleet = Vec::new();
    for i in 0..40u32 {
        let ws = create(&store).await;
        let credential = AgentCredential::new(
            ws,
            CertSerial::new(format!("{:032x}", 0xc0de_0000 + i)).unwrap(),
            T0,
            T0 + std::time::Duration::from_secs(86_400),
        );
        store.put_credential(credential.clone()).await.unwrap();
        fleet.push(credential);
    }
    let bad = fleet[17].serial.clone();
    let conn = raw(&dir.db());
    conn.execute(
        "UPDATE credentials SET body = '{not json' WHERE serial = ?",
        [bad.as_str()],
    )
    .unwrap();
    drop(conn);

    let before = store.stats();
    let reads = futures::future::join_all(
        fleet
            .iter()
            .map(|c| store.get_credential_for_poll(&c.serial)),
    )
    .await;
    assert_eq!(store.stats().reads - before.reads, 40);
    for (credential, result) in fleet.iter().zip(&reads) {
        match result {
            Err(Error::Corrupt {
                what: Resource::Credential(s),
                ..
            }) if credential.serial == bad => assert_eq!(s, &bad),
            Ok((c, pending)) if credential.serial != bad => {
                assert_eq!(c, credential);
                assert!(!pending, "nothing queued for {}", c.workspace);
            }
            other => panic!("the read of {}: {other:?}", credential.serial),
        }
    }

    let before = store.stats();
    let marks = futures::future::join_all(
        fleet
            .iter()
            .map(|c| store.mark_polled(&c.serial, T0 + std::time::Duration::from_secs(5))),
    )
    .await;
    let after = store.stats();
    let (transactions, writes) = (
        after.transactions - before.transactions,
        after.writes - before.writes,
    );
    assert_eq!(writes, 40);
    assert!(
        transactions < 20,
        "40 first polls at once took {transactions} transactions"
    );
    for (credential, result) in fleet.iter().zip(&marks) {
        match result {
            Err(Error::Corrupt { .. }) if credential.serial == bad => {}
            Ok(true) if credential.serial != bad => {}
            other => panic!("the first poll of {}: {other:?}", credential.serial),
        }
    }
    // The corrupt row was left as it was: still refused, not rewritten.
    assert!(matches!(
        store.get_credential(&bad).await,
        Err(Error::Corrupt { .. })
    ));
}

/// A store that cannot be opened says why, and keeps SQLite's own error as
/// the cause.
#[tokio::test]
async fn an_unopenable_database_keeps_sqlites_error_as_its_cause() {
    let err = SqliteStore::open("/nonexistent-directory-of-cogrion/x.db")
        .await
        .expect_err("a database in a directory that does not exist");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let cause = std::error::Error::source(&err).expect("a cause");
    assert!(
        cause.downcast_ref::<rusqlite::Error>().is_some(),
        "{cause:?}"
    );
}
