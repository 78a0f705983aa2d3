//! Every implementation in this repository runs its trait's conformance suite, and
//! the suites themselves are shown to catch broken implementations.

mod suites_catch_broken_fakes;

use cogrion::InMemoryStore;
use cogrion::conformance::{poll_reads_are_exact, store_suite};

/// The in-memory store passes the full `WorkspaceStore` suite, on a multi-threaded
/// runtime so the suite's concurrent writers really race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_passes_the_store_suite() {
    let store = InMemoryStore::new();
    store_suite(&store).await;
    // And again on the same (now non-empty) store: the suite isolates itself.
    store_suite(&store).await;
    poll_reads_are_exact(&store).await;
}

/// The group-commit wrapper keeps every guarantee of the store it wraps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_over_the_in_memory_store_passes_the_store_suite() {
    let store = cogrion::GroupCommit::new(std::sync::Arc::new(InMemoryStore::new()), 64);
    store_suite(&store).await;
    // It passes the wrapped store's exact poll reads through.
    poll_reads_are_exact(&store).await;
    let (batches, writes) = store.stats();
    assert!(batches > 0 && writes >= batches);
}

/// With several lanes (transactions in flight at once), too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_with_lanes_passes_the_store_suite() {
    let store = cogrion::GroupCommit::with_lanes(std::sync::Arc::new(InMemoryStore::new()), 64, 4);
    store_suite(&store).await;
    let counts = store.write_counts();
    assert!(
        counts.commits > 0 && counts.checkpoints > 0 && counts.acquires > 0 && counts.releases > 0
    );
}
