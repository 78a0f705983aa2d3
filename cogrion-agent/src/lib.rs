//! The Cogrion Cluster Agent.
//!
//! The agent runs inside a workspace's cluster. It exchanges a one-time bootstrap
//! token for mTLS credentials, long-polls the control plane for commands and runs
//! them through a registry of local handlers (see `DESIGN.md`, "Agent protocol and
//! security").
//!
//! **Status:** this package holds only the wire types it will speak
//! ([`cogrion_agent_proto`], re-exported as [`proto`]). The runtime and the
//! `cogrion-agent` binary are not implemented yet; until then the control plane's
//! command queue (`cogrion_core::CommandQueue`) is exercised by the core's
//! conformance suite.

pub use cogrion_agent_proto as proto;
