//! The metrics Cogrion reports, through the [`metrics`](https://docs.rs/metrics)
//! facade: install any recorder (Prometheus, StatsD, OpenTelemetry) in the
//! host and they appear; with none installed, reporting costs next to
//! nothing. `examples/metrics.rs` shows the Prometheus exporter.
//!
//! Every label takes a bounded set of values (a step's kind, an error's
//! class, a state): no workspace ids, which would grow without bound.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `cogrion_steps_total` | counter | `kind`, `outcome` | step calls by their outcome (`done`, `skipped`, `in_progress`, `await_command`, `await_agent`, `failed`, `unreachable`) |
//! | `cogrion_step_duration_seconds` | histogram | `kind` | how long a step's call took (the provider's, the executor's, the installer's) |
//! | `cogrion_step_retries_total` | counter | `kind`, `class` | failed attempts that will be retried, by the error's class ([`Error::class`](crate::Error::class)) |
//! | `cogrion_step_failures_total` | counter | `kind`, `class` | steps failed for good (the operation failed) |
//! | `cogrion_operations_started_total` | counter | `kind` | operations planned (provision, update, destroy, stack deploy, …) |
//! | `cogrion_workspaces` | gauge | `state` | workspaces by state, read by the driver at most every 15 s: those in `provisioning`, `updating` and `destroying` are the operations in flight |
//! | `cogrion_commands_queued_total` | counter | | agent commands queued |
//! | `cogrion_commands_answered_total` | counter | `outcome` | agent answers recorded (`succeeded`, `failed`); queued minus answered across replicas is the queue's depth |
//! | `cogrion_agent_connections` | gauge | | agents' authenticated connections open on this replica's endpoint |
//! | `cogrion_store_batch_writes` | histogram | `store` | writes per durable transaction (group commit) |

/// Step calls by outcome.
pub const STEPS: &str = "cogrion_steps_total";
/// How long a step's call took, in seconds.
pub const STEP_SECONDS: &str = "cogrion_step_duration_seconds";
/// Failed attempts that will be retried.
pub const STEP_RETRIES: &str = "cogrion_step_retries_total";
/// Steps failed for good.
pub const STEP_FAILURES: &str = "cogrion_step_failures_total";
/// Operations planned.
pub const OPERATIONS_STARTED: &str = "cogrion_operations_started_total";
/// Workspaces by state.
pub const WORKSPACES: &str = "cogrion_workspaces";
/// Agent commands queued.
pub const COMMANDS_QUEUED: &str = "cogrion_commands_queued_total";
/// Agent answers recorded.
pub const COMMANDS_ANSWERED: &str = "cogrion_commands_answered_total";
/// Agents' authenticated connections open on this replica.
pub const AGENT_CONNECTIONS: &str = "cogrion_agent_connections";
/// Writes per durable transaction.
pub const STORE_BATCH_WRITES: &str = "cogrion_store_batch_writes";

/// Describes every metric to the installed recorder (units, help texts).
/// The engine calls it when it is built; calling it again does no harm.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(STEPS, "Step calls by their outcome.");
    describe_histogram!(STEP_SECONDS, Unit::Seconds, "How long a step's call took.");
    describe_counter!(STEP_RETRIES, "Failed step attempts that will be retried.");
    describe_counter!(STEP_FAILURES, "Steps failed for good.");
    describe_counter!(OPERATIONS_STARTED, "Operations planned.");
    describe_gauge!(WORKSPACES, "Workspaces by state.");
    describe_counter!(COMMANDS_QUEUED, "Agent commands queued.");
    describe_counter!(COMMANDS_ANSWERED, "Agent answers recorded.");
    describe_gauge!(
        AGENT_CONNECTIONS,
        "Agents' authenticated connections open on this replica."
    );
    describe_histogram!(STORE_BATCH_WRITES, "Writes per durable transaction.");
}
