//! Conformance suites: one per trait, as plain async functions that take the
//! implementation under test as `&dyn Trait` and panic, with a message naming
//! the broken guarantee, on the first violation.
//!
//! Every implementation in this repository runs its trait's suite in the test
//! command — the in-memory and simulated ones included, since a fake that does not
//! pass the real suite makes simulation results worthless. Plugin authors run the
//! same suites against theirs:
//!
//! ```toml
//! [dev-dependencies]
//! cogrion-core = { version = "0.1", features = ["conformance"] }
//! ```
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use cogrion_core::{ManualClock, Timestamp, store::{InMemoryStore}};
//! // The suite moves the clock the store judges leases by.
//! let clock = ManualClock::new(Timestamp::from_millis(1_800_000_000_000));
//! let store = InMemoryStore::with_clock(Arc::new(clock.clone()));
//! cogrion_core::conformance::store_suite(&store, &clock).await;
//! # }
//! ```
//!
//! The suites create their own workspaces with random ids, so they can run against
//! a shared, non-empty database.

/// Panics naming the guarantee that was broken; `WHO` (the trait's name) must be
/// in scope.
macro_rules! broken {
    ($guarantee:expr, $($arg:tt)+) => {
        panic!(
            "{WHO} conformance: guarantee \"{}\" broken: {}",
            $guarantee,
            format_args!($($arg)+)
        )
    };
}

/// Asserts that `$result` is an error matching `$pattern`.
macro_rules! expect_err {
    ($result:expr, $pattern:pat, $why:expr) => {
        match $result {
            Err($pattern) => {}
            other => panic!(
                "{}: expected {}, got {:?}",
                $why,
                stringify!($pattern),
                other
            ),
        }
    };
}

mod executor;
mod identity;
mod options;
mod provisioner;
mod store;

pub use executor::executor_suite;
pub use options::{AgentStandIn, SleepFn, SuiteOptions};
pub use provisioner::provisioner_suite;
pub use store::{leases_run_on_the_stores_clock, poll_reads_are_exact, store_suite};

/// A valid workspace spec on the simulated cloud, for suites and tests.
pub fn sample_workspace_spec() -> crate::WorkspaceSpec {
    serde_json::from_value(serde_json::json!({
        "tenant": "conformance",
        "cloud": { "provider": "simulated" },
        "region": "local-1",
        "kubernetes_version": "1.34",
        "network": { "cidr": "10.42.0.0/16" },
        "node_pools": [
            { "name": "general", "instance_type": "sim-small", "size": { "min": 1, "desired": 2, "max": 3 } }
        ]
    }))
    .expect("the sample spec is valid")
}

/// A fresh, random workspace id with the given prefix (at most 20 bytes).
pub fn random_workspace_id(prefix: &str) -> crate::WorkspaceId {
    use rand::Rng;
    let suffix: u64 = rand::rng().random();
    crate::WorkspaceId::new(
        format!("{prefix}-{suffix:011x}")
            .chars()
            .take(32)
            .collect::<String>(),
    )
    .expect("prefix must be a valid workspace id start")
}
