//! Failures that can be corrected, not only retried: a provision or an update
//! that failed on its spec, corrected (or reverted) and resumed at its failed
//! step; and stack graphs submitted at once.

use cogrion::sim::{FaultPlan, FaultTarget};
use cogrion::*;
use cogrion::{lifecycle::*, provider::*, store::*};

use crate::drive::{assert_all_deployed, check_history, check_no_duplicates, drive};
use crate::world::{api, name, spec, spec_with_instance, stack, with_one_engine, ws};

fn failure(rec: &WorkspaceRecord) -> Failure {
    match &rec.state {
        WorkspaceState::Failed(f) => f.clone(),
        other => panic!("expected Failed, found {other:?}"),
    }
}

/// The `SpecChanged` events of a history: (kind, changed paths).
fn spec_changes(history: &[EventRecord]) -> Vec<(SpecChangeKind, Vec<String>)> {
    history
        .iter()
        .filter_map(|h| match &h.event.kind {
            EventKind::SpecChanged { change, diff } => {
                Some((*change, diff.iter().map(|d| d.path.clone()).collect()))
            }
            _ => None,
        })
        .collect()
}

/// A provision that fails on its spec (an instance type the cloud does not
/// offer) is corrected: it resumes at the failed step, in `Provisioning`; the
/// network is not built again, the cluster (whose version the correction also
/// changes) is updated in place, not rebuilt; the history has the diff.
///
/// (Before this change such a workspace could only be retried as it was —
/// failing the same way — or destroyed.)
#[tokio::test]
async fn a_provision_failed_on_its_spec_is_corrected_and_resumes_at_the_failed_step() {
    let (w, mut engines, e) = with_one_engine(31, FaultPlan::none());
    w.offer_only_listed_instance_types();
    let id = ws("acme-prod");
    e.create(id.clone(), spec_with_instance("sim-huge"), api())
        .await
        .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    let rec = e.workspace(&id).await.unwrap();
    let f = failure(&rec);
    assert_eq!(
        (f.operation, f.step.as_str()),
        (WorkspaceOperation::Provision, "node-pools")
    );
    assert!(f.error.contains("sim-huge is not offered"), "{}", f.error);
    assert_eq!(rec.applied, None, "nothing was ever applied");
    assert_eq!(
        rec.layers.keys().copied().collect::<Vec<_>>(),
        [InfraLayer::Network, InfraLayer::Cluster]
    );
    let calls = w.cloud.api_calls();

    // Refusals change nothing: a revert (nothing to revert to), a fixed field,
    // an invalid spec.
    let before = e.store().get_workspace(&id).await.unwrap();
    assert!(matches!(
        e.revert(&id, api()).await,
        Err(Error::NothingApplied(_))
    ));
    let mut moved = spec();
    moved.region = "local-2".parse().unwrap();
    assert!(matches!(
        e.correct(&id, moved, api()).await,
        Err(Error::InvalidSpec(_))
    ));
    let mut broken = spec();
    broken.kubernetes_version = "1.20".parse().unwrap();
    assert!(matches!(
        e.correct(&id, broken, api()).await,
        Err(Error::InvalidSpec(_))
    ));
    assert_eq!(e.store().get_workspace(&id).await.unwrap(), before);

    let mut fixed = spec_with_instance("sim-medium");
    fixed.kubernetes_version = "1.33".parse().unwrap();
    let rec = e.correct(&id, fixed.clone(), api()).await.unwrap();
    assert_eq!(
        rec.state,
        WorkspaceState::Provisioning,
        "a provision resumes as a provision"
    );
    assert!(
        e.deploy_stack(&id, stack("web", ExecutorKind::Helm, &[]), api())
            .await
            .is_err(),
        "no stack deploys before the agent exists"
    );
    drive(&w, &mut engines, &id).await.unwrap();
    let rec = e.workspace(&id).await.unwrap();
    assert_eq!(rec.state, WorkspaceState::Active);
    assert_eq!(rec.spec, fixed);
    assert_eq!(rec.applied.as_ref(), Some(&fixed));
    assert!(
        rec.layers.values().all(|l| l.spec == fixed),
        "every layer now built from the fix"
    );
    let now = w.cloud.api_calls();
    assert_eq!(
        now.creates_of("vpc"),
        calls.creates_of("vpc"),
        "the network is not built again"
    );
    assert_eq!(
        now.creates_of("cluster"),
        calls.creates_of("cluster"),
        "nor the cluster"
    );
    assert!(
        now.updates_of("cluster") > calls.updates_of("cluster"),
        "which is updated in place"
    );
    assert_eq!(
        now.creates_of("node-pool"),
        calls.creates_of("node-pool") + 1,
        "one create call, which succeeded"
    );
    check_no_duplicates(&w).unwrap();

    let history = e.history(&id).await.unwrap();
    assert_eq!(check_history(&history).unwrap(), StateName::Active);
    assert!(history.iter().any(|h| matches!(
        h.event.kind,
        EventKind::Transition {
            from: StateName::Failed,
            to: StateName::Provisioning,
            event: EventName::CorrectionRequested
        }
    )));
    assert_eq!(
        spec_changes(&history),
        [(
            SpecChangeKind::Correction,
            vec![
                "kubernetes_version".to_owned(),
                "node_pools[0].instance_type".to_owned()
            ]
        )]
    );
}

/// A failed update is reverted (back to the last applied spec, nothing left to
/// change) or corrected (resumed in `Updating` with the fixed spec); a failed
/// destroy cannot be corrected; an `Active` workspace has nothing to correct.
#[tokio::test]
async fn a_failed_update_is_reverted_or_corrected() {
    let (w, mut engines, e) = with_one_engine(32, FaultPlan::none());
    w.offer_only_listed_instance_types();
    let id = ws("acme-prod");
    e.create(id.clone(), spec(), api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    let before = e.store().get_workspace(&id).await.unwrap();
    match e.correct(&id, spec(), api()).await {
        Err(Error::WrongState(t)) => {
            assert_eq!(
                (t.state, t.event),
                (StateName::Active, EventName::CorrectionRequested)
            )
        }
        other => panic!("correcting an active workspace: {other:?}"),
    }
    assert_eq!(e.store().get_workspace(&id).await.unwrap(), before);

    // Revert.
    e.update(&id, spec_with_instance("sim-huge"), api())
        .await
        .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    let f = failure(&e.workspace(&id).await.unwrap());
    assert_eq!(
        (f.operation, f.step.as_str()),
        (WorkspaceOperation::Update, "node-pools")
    );
    let rec = e.revert(&id, api()).await.unwrap();
    assert_eq!(rec.state, WorkspaceState::Updating);
    assert_eq!(rec.spec, spec());
    drive(&w, &mut engines, &id).await.unwrap();
    let rec = e.workspace(&id).await.unwrap();
    assert_eq!(rec.state, WorkspaceState::Active);
    assert_eq!(
        (rec.spec.clone(), rec.applied.clone()),
        (spec(), Some(spec()))
    );

    // Correct.
    let mut bigger = spec_with_instance("sim-huge");
    bigger.node_pools[0].size = NodePoolSize::new(1, 3, 5).unwrap();
    e.update(&id, bigger, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(failure(&e.workspace(&id).await.unwrap()).step, "node-pools");
    let mut fixed = spec_with_instance("sim-large");
    fixed.node_pools[0].size = NodePoolSize::new(1, 3, 5).unwrap();
    let rec = e.correct(&id, fixed.clone(), api()).await.unwrap();
    assert_eq!(
        rec.state,
        WorkspaceState::Updating,
        "an update resumes as an update"
    );
    drive(&w, &mut engines, &id).await.unwrap();
    let rec = e.workspace(&id).await.unwrap();
    assert_eq!(rec.state, WorkspaceState::Active);
    assert_eq!(rec.applied, Some(fixed.clone()));
    assert_eq!(
        w.cloud.api_calls().creates_of("node-pool"),
        1,
        "updated, never rebuilt"
    );
    let history = e.history(&id).await.unwrap();
    assert_eq!(check_history(&history).unwrap(), StateName::Active);
    let kinds: Vec<SpecChangeKind> = spec_changes(&history).into_iter().map(|c| c.0).collect();
    assert_eq!(
        kinds,
        [
            SpecChangeKind::Update,
            SpecChangeKind::Revert,
            SpecChangeKind::Update,
            SpecChangeKind::Correction
        ]
    );

    // A failed destroy has retry and abandon, not correction.
    w.cloud
        .faults()
        .fail_permanently(FaultTarget::Layer(InfraLayer::Network));
    e.destroy(&id, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(
        failure(&e.workspace(&id).await.unwrap()).operation,
        WorkspaceOperation::Destroy
    );
    let before = e.store().get_workspace(&id).await.unwrap();
    for result in [
        e.correct(&id, spec(), api()).await,
        e.revert(&id, api()).await,
    ] {
        match result {
            Err(Error::WrongState(t)) => assert_eq!(t.state, StateName::Failed),
            other => panic!("correcting a failed destroy: {other:?}"),
        }
    }
    assert_eq!(e.store().get_workspace(&id).await.unwrap(), before);
}

/// A stack graph submitted at once: dependents wait for their dependencies
/// instead of being refused, and deploy in order; a dependency that fails
/// fails its dependents, naming it; a bad graph is refused whole; removing a
/// stack others depend on is refused.
///
/// (Before this change a stack whose dependency was still deploying was
/// refused.)
#[tokio::test]
async fn a_stack_graph_submitted_at_once_deploys_in_order_and_fails_together() {
    let faults = FaultPlan::none();
    let (w, mut engines, e) = with_one_engine(33, faults.clone());
    let id = ws("acme-prod");
    e.create(id.clone(), spec(), api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();

    // Refused whole: a cycle, an unknown dependency, a duplicate.
    let before = e.store().get_workspace(&id).await.unwrap();
    for (graph, why) in [
        (
            vec![
                stack("a", ExecutorKind::Helm, &["b"]),
                stack("b", ExecutorKind::Helm, &["a"]),
            ],
            "cycle",
        ),
        (
            vec![
                stack("a", ExecutorKind::Helm, &[]),
                stack("b", ExecutorKind::Helm, &["nope"]),
            ],
            "unknown",
        ),
        (
            vec![
                stack("a", ExecutorKind::Helm, &[]),
                stack("a", ExecutorKind::Helm, &[]),
            ],
            "duplicate",
        ),
    ] {
        assert!(
            matches!(
                e.deploy_stacks(&id, graph, api()).await,
                Err(Error::StackGraph(_))
            ),
            "{why}"
        );
        assert_eq!(e.store().get_workspace(&id).await.unwrap(), before, "{why}");
    }

    e.deploy_stacks(
        &id,
        vec![
            stack("web", ExecutorKind::Manifests, &["api"]),
            stack("api", ExecutorKind::Helm, &["db"]),
            stack("db", ExecutorKind::Terraform, &[]),
        ],
        api(),
    )
    .await
    .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    let history = e.history(&id).await.unwrap();
    let deployed: Vec<String> = history
        .iter()
        .filter_map(|h| match &h.event.kind {
            EventKind::StackTransition {
                stack,
                to: StackStateName::Deployed,
                ..
            } => Some(stack.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(deployed, ["db", "api", "web"], "in dependency order");
    // Nobody's apply started before its dependency was deployed. The deploys
    // were planned in dependency order: db, api, web.
    let position = |pred: &dyn Fn(&EventKind) -> bool| {
        history.iter().position(|h| pred(&h.event.kind)).unwrap()
    };
    let deployed_at = |s: &str| {
        let s = name(s);
        position(
            &move |k| matches!(k, EventKind::StackTransition { stack, to: StackStateName::Deployed, .. } if *stack == s),
        )
    };
    let planned: Vec<u64> = history
        .iter()
        .filter_map(|h| {
            let rest = h
                .event
                .message
                .strip_prefix("planned StackDeploy operation ")?;
            rest.split(':').next()?.parse().ok()
        })
        .collect();
    assert_eq!(planned.len(), 3, "{planned:?}");
    let started = |op: u64| {
        position(
            &move |k| matches!(k, EventKind::StepStarted { operation, .. } if *operation == op),
        )
    };
    assert!(started(planned[1]) > deployed_at("db"), "api waited for db");
    assert!(
        started(planned[2]) > deployed_at("api"),
        "web waited for api"
    );

    // A dependency that fails fails what waits for it, naming it.
    faults.fail_permanently(FaultTarget::Stack(name("queue")));
    e.deploy_stacks(
        &id,
        vec![
            stack("queue", ExecutorKind::Terraform, &[]),
            stack("worker", ExecutorKind::Helm, &["queue"]),
            stack("ui", ExecutorKind::Manifests, &["worker"]),
        ],
        api(),
    )
    .await
    .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    let rec = e.workspace(&id).await.unwrap();
    assert_eq!(
        rec.state,
        WorkspaceState::Active,
        "failed stacks do not fail the workspace"
    );
    let error = |s: &str| match &rec.stacks.get(&name(s)).unwrap().state {
        StackState::Failed(f) => f.error.clone(),
        other => panic!("{s}: expected Failed, got {other:?}"),
    };
    assert!(error("queue").contains("rejected"), "{}", error("queue"));
    assert!(
        error("worker").contains("dependency queue failed"),
        "{}",
        error("worker")
    );
    assert!(
        error("ui").contains("dependency worker failed"),
        "{}",
        error("ui")
    );
    assert!(
        !w.cluster
            .installed(&id)
            .iter()
            .any(|(n, _, _)| ["worker", "ui"].contains(&n.as_str())),
        "nothing waiting was deployed"
    );
    // The dependency fixed and retried, its dependents retried: all deployed.
    faults.clear_permanent(FaultTarget::Stack(name("queue")));
    for s in ["queue", "worker", "ui"] {
        e.retry_stack(&id, &name(s), api()).await.unwrap();
    }
    drive(&w, &mut engines, &id).await.unwrap();
    assert_all_deployed(&e.workspace(&id).await.unwrap());

    // Removing a stack others depend on is refused, as it always was.
    let before = e.store().get_workspace(&id).await.unwrap();
    assert!(matches!(
        e.remove_stack(&id, &name("db"), api()).await,
        Err(Error::StackGraph(GraphError::HasDependents { .. }))
    ));
    assert_eq!(e.store().get_workspace(&id).await.unwrap(), before);
    assert_eq!(
        check_history(&e.history(&id).await.unwrap()).unwrap(),
        StateName::Active
    );
}
