//! The [`Executor`] conformance suite.

use std::sync::Arc;

use rand::Rng;

use super::options::{SuiteOptions, follow};
use crate::checkpoint::MemoryCheckpoint;
use crate::error::Error;
use crate::executor::{ExecutionTarget, Executor, ExecutorKind, StackRequest, StackStatus};
use crate::ids::{IdempotencyKey, StackName};
use crate::spec::{ExecutorSpec, StackSpec};

const WHO: &str = "Executor";

// The guarantees, named as the trait's documentation names them.
const IDEMPOTENT: &str = "Idempotent";
const TRUTHFUL_STATUS: &str = "Truthful status";
const OWN_KIND_ONLY: &str = "Own kind only";

// Operation numbers the suite derives its idempotency keys from.
const OP_APPLY: u64 = 1;
const OP_DESTROY: u64 = 2;
const OP_DESTROY_AGAIN: u64 = 3;
const OP_OTHER_KIND: u64 = 4;
const OP_STATUS: u64 = 5;

/// The longest stack name ([`StackName`]'s rule).
const MAX_STACK_NAME_LEN: usize = 53;

/// Checks that `executor` gives the guarantees of [`Executor`], and panics with a
/// message naming the broken guarantee on the first violation.
///
/// `stack` must be of the executor's kind ([`Executor::kind`]) and deployable on
/// `target`. The suite deploys a copy of it named after it plus a random suffix,
/// so it can run against a shared cluster, and removes the copy at the end.
/// Executors that return [`Progress::AwaitCommand`](crate::provider::Progress::AwaitCommand)
/// need an agent stand-in ([`SuiteOptions::with_agent`]): the suite runs each
/// command through it and calls again with
/// [`StackRequest::with_command_result`].
///
/// The checks, in order:
/// 1. `status` of the never-applied stack is `Absent`; stacks of every other
///    executor kind, of the same name, are refused with
///    [`Error::InvalidValue`] by `apply`, `destroy` and `status`, and the stack
///    stays `Absent`.
/// 2. `apply` returns `Installed`, without duplicate resources, and `status`
///    then reports `Installed` with the same resources.
/// 3. `apply` again with the same idempotency key and checkpoint, then with the
///    same key and a fresh checkpoint, returns `Installed` with the same resources,
///    and `status` still reports the first apply's resources.
/// 4. Stacks of the other kinds are refused again and change nothing.
/// 5. `destroy` succeeds and `status` is `Absent`; replaying the destroy with the
///    same key and checkpoint, and destroying again in a new operation, succeed,
///    and `status` stays `Absent`.
pub async fn executor_suite(
    executor: &dyn Executor,
    target: &ExecutionTarget,
    stack: &StackSpec,
    options: &SuiteOptions,
) {
    let kind = executor.kind();
    let stack_kind = ExecutorKind::of(&stack.executor);
    assert!(
        stack_kind == kind,
        "executor_suite: the stack {} is a {stack_kind:?} stack but the executor runs \
         {kind:?} stacks; pass a stack of the executor's kind",
        stack.name
    );
    let suite = Suite {
        executor,
        target,
        options,
    };
    let stack = isolated(stack);
    let name = stack.name.as_str();

    // 1. Nothing yet.
    let status = suite.status(&stack, "before any apply").await;
    if status != StackStatus::Absent {
        broken!(
            TRUTHFUL_STATUS,
            "status of stack {name}, never applied, is {status:?}; expected Absent"
        );
    }
    suite
        .refuses_other_kinds(&stack, &status, "while the stack is absent")
        .await;

    // 2. Apply.
    let key = suite.key(OP_APPLY, "apply", &stack);
    let checkpoint = MemoryCheckpoint::new();
    let first = suite
        .apply(&stack, &key, &checkpoint, TRUTHFUL_STATUS, "")
        .await;
    let status = suite.status(&stack, "after apply").await;
    if sorted(&status) != Some(first.clone()) {
        broken!(
            TRUTHFUL_STATUS,
            "after apply of stack {name} returned Installed with resources {first:?}, \
             status is {status:?}"
        );
    }

    // 3. Apply again with the same key.
    for fresh_checkpoint in [false, true] {
        let (how, checkpoint) = if fresh_checkpoint {
            (
                "again with the same idempotency key and a fresh checkpoint",
                MemoryCheckpoint::new(),
            )
        } else {
            (
                "again with the same idempotency key and checkpoint",
                checkpoint.clone(),
            )
        };
        let again = suite
            .apply(&stack, &key, &checkpoint, IDEMPOTENT, how)
            .await;
        if again != first {
            broken!(
                IDEMPOTENT,
                "apply of stack {name} {how} returned resources {again:?}; \
                 the first apply returned {first:?}"
            );
        }
        let now = suite.status(&stack, &format!("after apply {how}")).await;
        if sorted(&now) != Some(first.clone()) {
            broken!(
                IDEMPOTENT,
                "after apply of stack {name} {how}, status is {now:?}; \
                 the first apply installed {first:?}"
            );
        }
    }

    // 4. Other kinds, while installed.
    let status = suite.status(&stack, "after the repeated applies").await;
    suite
        .refuses_other_kinds(&stack, &status, "while the stack is installed")
        .await;

    // 5. Destroy, then destroy what is gone.
    let key = suite.key(OP_DESTROY, "destroy", &stack);
    let checkpoint = MemoryCheckpoint::new();
    suite
        .destroy(&stack, &key, &checkpoint, TRUTHFUL_STATUS, "")
        .await;
    let status = suite.status(&stack, "after destroy").await;
    if status != StackStatus::Absent {
        broken!(
            TRUTHFUL_STATUS,
            "after destroy of stack {name} returned Ready, status is {status:?}; expected Absent"
        );
    }
    let how = "replayed with the same idempotency key and checkpoint after it finished";
    suite
        .destroy(&stack, &key, &checkpoint, IDEMPOTENT, how)
        .await;
    let key = suite.key(OP_DESTROY_AGAIN, "destroy", &stack);
    suite
        .destroy(
            &stack,
            &key,
            &MemoryCheckpoint::new(),
            IDEMPOTENT,
            "of a stack already destroyed",
        )
        .await;
    let status = suite.status(&stack, "after destroying it again").await;
    if status != StackStatus::Absent {
        broken!(
            IDEMPOTENT,
            "after destroying stack {name} again, status is {status:?}; expected Absent"
        );
    }
}

struct Suite<'a> {
    executor: &'a dyn Executor,
    target: &'a ExecutionTarget,
    options: &'a SuiteOptions,
}

impl Suite<'_> {
    fn key(&self, operation: u64, step: &str, stack: &StackSpec) -> IdempotencyKey {
        IdempotencyKey::derive(
            &self.target.workspace,
            operation,
            &format!("{step}-{}", stack.name),
        )
    }

    fn request(
        &self,
        stack: &StackSpec,
        key: &IdempotencyKey,
        checkpoint: &MemoryCheckpoint,
    ) -> StackRequest {
        StackRequest::new(
            self.target.clone(),
            stack.clone(),
            key.clone(),
            Arc::new(checkpoint.clone()),
        )
    }

    /// Applies `stack` to the end and returns the installed resources, sorted;
    /// panics, naming `guarantee`, unless it ends `Installed` without duplicate
    /// resources.
    async fn apply(
        &self,
        stack: &StackSpec,
        key: &IdempotencyKey,
        checkpoint: &MemoryCheckpoint,
        guarantee: &str,
        how: &str,
    ) -> Vec<String> {
        let request = self.request(stack, key, checkpoint);
        let what = format!("apply of stack {}{}", stack.name, spaced(how));
        let executor = self.executor;
        let outcome = follow(self.options, WHO, &what, true, move |result| {
            let request = match result {
                Some(result) => request.clone().with_command_result(result),
                None => request.clone(),
            };
            executor.apply(request)
        })
        .await;
        match outcome {
            Ok(status) => match sorted(&status) {
                Some(resources) => {
                    if let Some(pair) = resources.windows(2).find(|w| w[0] == w[1]) {
                        broken!(
                            guarantee,
                            "{what} returned Installed listing {:?} twice: {status:?}",
                            pair[0]
                        );
                    }
                    resources
                }
                None => broken!(
                    guarantee,
                    "{what} returned {status:?}; a successful apply installs the stack"
                ),
            },
            Err(e) => broken!(guarantee, "{what} failed: {e}"),
        }
    }

    /// Destroys `stack` to the end; panics naming `guarantee` if it fails.
    async fn destroy(
        &self,
        stack: &StackSpec,
        key: &IdempotencyKey,
        checkpoint: &MemoryCheckpoint,
        guarantee: &str,
        how: &str,
    ) {
        let request = self.request(stack, key, checkpoint);
        let what = format!("destroy of stack {}{}", stack.name, spaced(how));
        let executor = self.executor;
        follow(self.options, WHO, &what, true, move |result| {
            let request = match result {
                Some(result) => request.clone().with_command_result(result),
                None => request.clone(),
            };
            executor.destroy(request)
        })
        .await
        .unwrap_or_else(|e| {
            broken!(
                guarantee,
                "{what} failed: {e}; destroying what is gone is success"
            )
        });
    }

    async fn status(&self, stack: &StackSpec, context: &str) -> StackStatus {
        let key = self.key(OP_STATUS, "status", stack);
        let request = self.request(stack, &key, &MemoryCheckpoint::new());
        let what = format!("status of stack {} {context}", stack.name);
        let executor = self.executor;
        follow(self.options, WHO, &what, true, move |result| {
            let request = match result {
                Some(result) => request.clone().with_command_result(result),
                None => request.clone(),
            };
            executor.status(request)
        })
        .await
        .unwrap_or_else(|e| broken!(TRUTHFUL_STATUS, "{what} failed: {e}"))
    }

    /// Checks that stacks of every other kind, named like `stack`, are refused by
    /// every method and that `stack`'s status stays `expected`.
    async fn refuses_other_kinds(&self, stack: &StackSpec, expected: &StackStatus, context: &str) {
        let own = ExecutorKind::of(&stack.executor);
        for other in other_kinds(stack) {
            let kind = ExecutorKind::of(&other.executor);
            let refused = |call: &str, outcome: &dyn std::fmt::Debug| -> ! {
                broken!(
                    OWN_KIND_ONLY,
                    "{call} of a {kind:?} stack named {} {context}, given to a {own:?} executor, \
                     returned {outcome:?}; it must be refused with Error::InvalidValue",
                    other.name
                )
            };
            let key = self.key(OP_OTHER_KIND, "apply", &other);
            match self
                .executor
                .apply(self.request(&other, &key, &MemoryCheckpoint::new()))
                .await
            {
                Err(Error::InvalidValue(_)) => {}
                outcome => refused("apply", &outcome),
            }
            let key = self.key(OP_OTHER_KIND, "destroy", &other);
            match self
                .executor
                .destroy(self.request(&other, &key, &MemoryCheckpoint::new()))
                .await
            {
                Err(Error::InvalidValue(_)) => {}
                outcome => refused("destroy", &outcome),
            }
            let key = self.key(OP_OTHER_KIND, "status", &other);
            match self
                .executor
                .status(self.request(&other, &key, &MemoryCheckpoint::new()))
                .await
            {
                Err(Error::InvalidValue(_)) => {}
                outcome => refused("status", &outcome),
            }
            let now = self.status(stack, context).await;
            if now != *expected {
                broken!(
                    OWN_KIND_ONLY,
                    "after a {kind:?} stack named {} was given to the {own:?} executor {context}, \
                     the status of the real stack changed from {expected:?} to {now:?}; \
                     nothing may be done for another kind",
                    stack.name
                );
            }
        }
    }
}

/// The resources of an `Installed` status, sorted; `None` for `Absent`.
fn sorted(status: &StackStatus) -> Option<Vec<String>> {
    match status {
        StackStatus::Absent => None,
        StackStatus::Installed { resources, .. } => {
            let mut resources = resources.clone();
            resources.sort();
            Some(resources)
        }
    }
}

/// A copy of `stack` with a random suffix on its name.
fn isolated(stack: &StackSpec) -> StackSpec {
    let suffix: u32 = rand::rng().random();
    let suffix = format!("-{suffix:08x}");
    let base: String = stack
        .name
        .as_str()
        .chars()
        .take(MAX_STACK_NAME_LEN - suffix.len())
        .collect();
    let mut copy = stack.clone();
    copy.name = StackName::new(format!("{base}{suffix}"))
        .expect("a stack name with a hex suffix stays valid");
    copy
}

/// Copies of `stack` for every executor kind but its own.
fn other_kinds(stack: &StackSpec) -> Vec<StackSpec> {
    let own = ExecutorKind::of(&stack.executor);
    let specs = [
        ExecutorSpec::Helm {
            source: "oci://registry.invalid/cogrion/conformance".into(),
            version: "0.1.0".into(),
            values: serde_json::Map::new(),
        },
        ExecutorSpec::Manifests {
            documents: vec![serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": { "name": "cogrion-conformance" },
            })],
        },
        ExecutorSpec::Terraform {
            source: "./cogrion-conformance".into(),
            variables: Default::default(),
        },
    ];
    specs
        .into_iter()
        .filter(|spec| ExecutorKind::of(spec) != own)
        .map(|spec| {
            let mut other = stack.clone();
            other.executor = spec;
            other
        })
        .collect()
}

fn spaced(how: &str) -> String {
    if how.is_empty() {
        String::new()
    } else {
        format!(" {how}")
    }
}
