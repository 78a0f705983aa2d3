//! Implementations of the [`cogrion_core`] traits that talk to real systems, one
//! module per feature:
//!
//! | feature | trait | status |
//! |---|---|---|
//! | `aws`, `gcp`, `azure` | `CloudProvisioner` | not implemented yet |
//! | `helm`, `manifest`, `terraform` | `Executor` | not implemented yet |
//! | `sqlite` | `WorkspaceStore` | [`sqlite::SqliteStore`] — passes the store conformance suite |
//! | `postgres` | `WorkspaceStore` | [`postgres::PostgresStore`] — passes the store conformance suite against a real server |
//!
//! Both stores are [`sql::SqlStore`] on a backend of their own: what they do is
//! written once in [`sql`], and each module keeps only how its statements reach
//! its database.
//! | `https` | `AgentTransport` | [`https::AgentServer`] and [`https::AgentClient`] — bootstrap, long-poll and results over real mTLS (renewal, admission control and the agent runtime still to come) |
//!
//! The features exist so that the facade's feature names are stable; a feature
//! whose module has not landed adds nothing yet.
//!
//! Provider modules never import each other, so any of them can move into its own
//! crate without changing the public API.

pub use cogrion_core as core;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;

#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(feature = "https")]
pub mod https;

/// Locks a mutex, carrying on through poisoning (no critical section here leaves
/// its data half-changed).
#[cfg(any(feature = "https", feature = "sqlite"))]
fn lock_or_recover<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
