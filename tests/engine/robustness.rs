//! The engine under concurrency, missing configuration and store outages
//! (issue 14, items 7 and 8), against the simulated world (cloud, cluster and
//! agents simulated; the engine and the in-memory store real).

use std::time::Duration;

use cogrion::sim::FaultPlan;
use cogrion::*;

use crate::drive::drive;
use crate::world::{World, api, spec, ws};

/// Item 7: two tasks of one host call `advance` on one workspace at once,
/// over a store whose writes yield (as one across a network does): each
/// step's effect runs once — the cloud sees exactly the calls of a run with
/// one caller — and the workspace becomes Active. (Before: both calls used
/// the cached lease and ran the same step.)
#[tokio::test]
async fn concurrent_advance_calls_run_each_step_once() {
    async fn run(concurrent: bool) -> cogrion::sim::ApiCallCounts {
        let w = World::new(6, FaultPlan::none());
        w.store.yield_on_writes();
        let engine = w.engine("cp");
        let id = ws("concurrent");
        engine.create(id.clone(), spec(), api()).await.unwrap();
        for _ in 0..2_000 {
            let (a, b) = if concurrent {
                tokio::join!(engine.advance(&id), engine.advance(&id))
            } else {
                (engine.advance(&id).await, engine.advance(&id).await)
            };
            a.unwrap();
            b.unwrap();
            if engine.workspace(&id).await.unwrap().state == WorkspaceState::Active {
                return w.cloud.api().calls();
            }
            w.agents.step_all().await;
            w.clock.advance(Duration::from_millis(500));
        }
        panic!("never became Active");
    }
    assert_eq!(run(true).await, run(false).await);
}

/// Item 8 (first half): what an engine has no implementation for is a typed
/// refusal at the request, and a step meeting it on an engine without it
/// leaves the workspace as it was (no attempt spent, not failed) for an
/// engine that has it. (Before: `Rejected`, as if the cloud had refused, and
/// the step's failure failed the workspace.)
#[tokio::test]
async fn what_no_implementation_is_registered_for_is_configuration() {
    use std::sync::Arc;
    let w = World::new(7, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    // An engine with no provisioner and no executor, on the same store.
    let bare = Engine::builder(Arc::new(w.store.clone()))
        .clock(Arc::new(w.clock.clone()))
        .agent_installer(Arc::new(w.agents.clone()))
        .build()
        .unwrap();
    let refused = bare.create(ws("bare"), spec(), api()).await;
    assert!(
        matches!(refused, Err(Error::NotConfigured { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        w.store.get_workspace(&ws("bare")).await,
        Err(Error::NotFound(_))
    ));
    // A workspace another engine created: the bare engine's step changes nothing.
    let id = ws("configured");
    engines[0].create(id.clone(), spec(), api()).await.unwrap();
    let before = w.store.get_workspace(&id).await.unwrap();
    let stepped = bare.advance(&id).await;
    assert!(
        matches!(stepped, Err(Error::NotConfigured { .. })),
        "{stepped:?}"
    );
    bare.release_leases().await;
    let after = w.store.get_workspace(&id).await.unwrap();
    assert_eq!(
        after.value, before.value,
        "no attempt spent, nothing failed"
    );
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(
        engines[0].workspace(&id).await.unwrap().state,
        WorkspaceState::Active
    );
    // Requests the bare engine cannot carry out are refused, changing nothing.
    let before = w.store.get_workspace(&id).await.unwrap();
    let deploy = bare
        .deploy_stack(
            &id,
            crate::world::stack("db", ExecutorKind::Helm, &[]),
            api(),
        )
        .await;
    assert!(
        matches!(deploy, Err(Error::NotConfigured { .. })),
        "{deploy:?}"
    );
    let update = bare.update(&id, spec(), api()).await;
    assert!(
        matches!(update, Err(Error::NotConfigured { .. })),
        "{update:?}"
    );
    assert_eq!(w.store.get_workspace(&id).await.unwrap(), before);
}

/// Item 8 (second half): the store fails under a step — the provider's
/// checkpoint writes meet an outage, twenty times, against a retry budget of
/// two attempts. `advance` returns the store's error and keeps nothing of the
/// attempt: no retry spent, no failure recorded, and the workspace becomes
/// Active once the store is back. (Before: the provider's error failed the
/// attempt, and past the budget, the workspace.)
#[tokio::test]
async fn a_store_outage_inside_a_step_spends_no_retry() {
    let w = World::new(8, FaultPlan::none());
    let mut engines = vec![w.engine_with("cp", |c| {
        c.with_retry(RetryPolicy::new(
            2,
            Duration::from_millis(200),
            Duration::from_secs(1),
        ))
    })];
    w.store.fail_checkpoint_writes((0..20).collect());
    let id = ws("outage");
    engines[0].create(id.clone(), spec(), api()).await.unwrap();
    let before = w.store.get_workspace(&id).await.unwrap();
    let stepped = engines[0].advance(&id).await;
    assert!(
        matches!(&stepped, Err(Error::Unavailable { .. })),
        "the store's error: {stepped:?}"
    );
    assert_eq!(
        w.store.get_workspace(&id).await.unwrap(),
        before,
        "nothing of the attempt was kept"
    );
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(
        engines[0].workspace(&id).await.unwrap().state,
        WorkspaceState::Active
    );
    let failures = engines[0]
        .history(&id)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.event.kind, EventKind::StepFailed { .. }))
        .count();
    assert_eq!(failures, 0, "an outage is not a step's failure");
}
