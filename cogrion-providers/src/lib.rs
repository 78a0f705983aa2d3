//! Implementations of the [`cogrion_core`] traits that talk to real systems, one
//! module per feature:
//!
//! | feature | trait | status |
//! |---|---|---|
//! | `aws`, `gcp`, `azure` | `CloudProvisioner` | not implemented yet |
//! | `helm`, `manifest`, `terraform` | `Executor` | not implemented yet |
//! | `sqlite` | `WorkspaceStore` | [`sqlite::SqliteStore`] — passes the store conformance suite |
//! | `postgres` | `WorkspaceStore` | [`postgres::PostgresStore`] — passes the store conformance suite against a real server |
//! | `https` | `AgentTransport` | not implemented yet |
//!
//! The features exist so that the facade's feature names are stable; a feature
//! whose module has not landed adds nothing yet.
//!
//! Provider modules never import each other, so any of them can move into its own
//! crate without changing the public API.

pub use cogrion_core as core;

#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "postgres")]
pub mod postgres;
