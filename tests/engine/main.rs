//! The lifecycle engine against the simulated world: whole lifecycles, bad input,
//! failures and retries, and the crash harness.
//!
//! The simulated cloud, cluster, executors and agents stand in for clouds,
//! Kubernetes and the network, which do not exist here; the engine, the store,
//! the gateway and the state machines are the real ones.

#![allow(unreachable_pub)]

mod commands;
mod correction;
mod crash;
mod drive;
mod driver;
mod host;
mod identity;
mod lifecycle;
#[cfg(all(feature = "sqlite", feature = "postgres"))]
mod migration;
mod outage;
mod replicas;
mod robustness;
mod teardown;
mod world;
