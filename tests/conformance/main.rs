//! Every implementation in this repository runs its trait's conformance suite, and
//! the suites themselves are shown to catch broken implementations.

mod suites_catch_broken_fakes;

use std::sync::Arc;

use cogrion::conformance::{poll_reads_are_exact, store_suite};
use cogrion::{ManualClock, Timestamp, store::InMemoryStore};

/// A manual clock for a store's leases, and the store built on it.
fn clocked() -> (ManualClock, InMemoryStore) {
    let clock = ManualClock::new(Timestamp::from_millis(1_800_000_000_000));
    let store = InMemoryStore::with_clock(Arc::new(clock.clone()));
    (clock, store)
}

/// The in-memory store passes the full `WorkspaceStore` suite, on a multi-threaded
/// runtime so the suite's concurrent writers really race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_passes_the_store_suite() {
    let (clock, store) = clocked();
    store_suite(&store, &clock).await;
    // And again on the same (now non-empty) store: the suite isolates itself.
    store_suite(&store, &clock).await;
    poll_reads_are_exact(&store).await;
}

/// The group-commit wrapper keeps every guarantee of the store it wraps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_over_the_in_memory_store_passes_the_store_suite() {
    let (clock, inner) = clocked();
    let store = cogrion::store::GroupCommit::new(Arc::new(inner), 64);
    store_suite(&store, &clock).await;
    // It passes the wrapped store's exact poll reads through.
    poll_reads_are_exact(&store).await;
    let (batches, writes) = store.stats();
    assert!(batches > 0 && writes >= batches);
}

/// With several lanes (transactions in flight at once), too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_with_lanes_passes_the_store_suite() {
    let (clock, inner) = clocked();
    let store = cogrion::store::GroupCommit::with_lanes(Arc::new(inner), 64, 4);
    store_suite(&store, &clock).await;
    let counts = store.write_counts();
    assert!(
        counts.commits > 0 && counts.checkpoints > 0 && counts.acquires > 0 && counts.releases > 0
    );
}
