//! Whole lifecycles and the engine's refusals.

use cogrion::proto::CommandId;
use cogrion::provider::*;
use cogrion::sim::{FaultPlan, FaultTarget};
use cogrion::*;

use crate::drive::{check_destroyed, check_history, check_no_duplicates, destroyed_at, drive};
use crate::world::{World, api, spec, stack, ws};

async fn state(e: &Engine, id: &WorkspaceId) -> WorkspaceState {
    e.workspace(id).await.unwrap().state
}

async fn stack_state(e: &Engine, id: &WorkspaceId, name: &str) -> Option<StackStateName> {
    e.workspace(id)
        .await
        .unwrap()
        .stacks
        .get(&name.parse().unwrap())
        .map(|s| s.state.name())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_lives_its_whole_life() {
    let w = World::new(1, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    let mut events = engines[0].subscribe();
    let id = ws("acme-prod");

    engines[0].create(id.clone(), spec(), api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(state(&engines[0], &id).await, WorkspaceState::Active);
    assert!(
        engines[0].workspace(&id).await.unwrap().cluster.is_some(),
        "the cluster's access is recorded"
    );
    assert_eq!(
        w.cloud.live_resources(&id).len(),
        5,
        "a VPC with two subnets, the cluster, one node pool"
    );

    engines[0]
        .deploy_stack(&id, stack("db", ExecutorKind::Helm, &[]), api())
        .await
        .unwrap();
    engines[0]
        .deploy_stack(&id, stack("infra", ExecutorKind::Terraform, &[]), api())
        .await
        .unwrap();
    // web needs db, which is still deploying: accepted, and it waits for db.
    engines[0]
        .deploy_stack(&id, stack("web", ExecutorKind::Manifests, &["db"]), api())
        .await
        .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    for s in ["db", "infra", "web"] {
        assert_eq!(
            stack_state(&engines[0], &id, s).await,
            Some(StackStateName::Deployed),
            "{s}"
        );
    }
    assert_eq!(w.cluster.installed(&id).len(), 3);

    // An update resizes the node pool while stacks keep running.
    let mut bigger = spec();
    bigger.node_pools[0].size = NodePoolSize::new(1, 3, 5).unwrap();
    engines[0].update(&id, bigger.clone(), api()).await.unwrap();
    assert_eq!(state(&engines[0], &id).await, WorkspaceState::Updating);
    drive(&w, &mut engines, &id).await.unwrap();
    let rec = engines[0].workspace(&id).await.unwrap();
    assert_eq!(
        (rec.state.clone(), rec.spec.clone()),
        (WorkspaceState::Active, bigger)
    );

    // The dry run lists the teardown in order, with what each step removes.
    let plan = engines[0].destroy_plan(&id).await.unwrap();
    let names: Vec<&str> = plan.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(
        names,
        [
            "stack/web",
            "stack/infra",
            "stack/db",
            "revoke-agent-credentials",
            "uninstall-agent",
            "node-pools",
            "cluster",
            "network"
        ]
    );
    assert!(
        plan.steps
            .iter()
            .find(|s| s.step == "cluster")
            .unwrap()
            .removes
            .len()
            == 1
    );
    assert_eq!(
        state(&engines[0], &id).await,
        WorkspaceState::Active,
        "a dry run changes nothing"
    );

    engines[0].destroy(&id, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    check_destroyed(&w, &engines[0], &id).await.unwrap();
    check_no_duplicates(&w).unwrap();
    let history = engines[0].history(&id).await.unwrap();
    assert_eq!(check_history(&history).unwrap(), StateName::Destroyed);
    assert!(
        history.iter().all(|e| !e.event.message.is_empty()),
        "every event says why"
    );
    // Every step's attempt is in the history before its outcome, and every
    // command the agent answered, once, by the agent.
    for (i, h) in history.iter().enumerate() {
        if let EventKind::StepDone { operation, step } = &h.event.kind {
            assert!(
                history[..i].iter().any(|s| matches!(
                    &s.event.kind,
                    EventKind::StepStarted { operation: o, step: n, .. } if o == operation && n == step
                )),
                "op {operation} step {step} done without a recorded start"
            );
        }
    }
    let queued: Vec<&CommandId> = history
        .iter()
        .filter_map(|h| match &h.event.kind {
            EventKind::CommandQueued { id } => Some(id),
            _ => None,
        })
        .collect();
    let answered: Vec<&CommandId> = history
        .iter()
        .filter_map(|h| match &h.event.kind {
            EventKind::CommandAnswered {
                id,
                succeeded: true,
            } => {
                assert_eq!(h.event.actor, Actor::Agent);
                Some(id)
            }
            _ => None,
        })
        .collect();
    assert!(!queued.is_empty());
    assert_eq!(
        queued, answered,
        "each queued command answered once, in order"
    );

    // Subscribers saw the transitions as they happened.
    let mut transitions = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let EngineEventKind::Transition { to, .. } = e.kind {
            transitions.push(to);
        }
    }
    assert_eq!(
        transitions,
        [
            StateName::Active,
            StateName::Updating,
            StateName::Active,
            StateName::Destroying,
            StateName::Destroyed
        ]
    );
}

#[tokio::test]
async fn requests_in_the_wrong_state_are_typed_errors_that_change_nothing() {
    let w = World::new(2, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    let e = engines[0].clone();
    let id = ws("acme-prod");

    // A bad spec is refused with every problem, and nothing is stored.
    let mut bad = spec();
    bad.kubernetes_version = "1.20".parse().unwrap();
    bad.node_pools.push(bad.node_pools[0].clone());
    match e.create(id.clone(), bad, api()).await {
        Err(Error::InvalidSpec(errors)) => assert_eq!(errors.problems.len(), 2, "{errors}"),
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    assert!(matches!(e.workspace(&id).await, Err(Error::NotFound(_))));

    e.create(id.clone(), spec(), api()).await.unwrap();
    let revision = || async { e.store().get_workspace(&id).await.unwrap().revision };
    let before = revision().await;
    assert!(matches!(
        e.create(id.clone(), spec(), api()).await,
        Err(Error::AlreadyExists(_))
    ));
    for (what, result) in [
        ("update", e.update(&id, spec(), api()).await.map(|_| ())),
        ("retry", e.retry(&id, api()).await.map(|_| ())),
    ] {
        match result {
            Err(Error::WrongState(t)) => assert_eq!(t.state, StateName::Provisioning, "{what}"),
            other => panic!("{what} while provisioning: {other:?}"),
        }
    }
    match e
        .deploy_stack(&id, stack("db", ExecutorKind::Helm, &[]), api())
        .await
    {
        Err(Error::StackGraph(GraphError::WorkspaceNotReady { state, .. })) => {
            assert_eq!(state, StateName::Provisioning)
        }
        other => panic!("deploy while provisioning: {other:?}"),
    }
    assert_eq!(revision().await, before, "refused requests wrote nothing");

    drive(&w, &mut engines, &id).await.unwrap();
    let before = revision().await;
    let mut moved = spec();
    moved.region = "local-2".parse().unwrap();
    assert!(
        matches!(
            e.update(&id, moved, api()).await,
            Err(Error::InvalidSpec(_))
        ),
        "the region cannot change"
    );
    assert!(matches!(
        e.deploy_stack(&id, stack("web", ExecutorKind::Helm, &["nope"]), api())
            .await,
        Err(Error::StackGraph(GraphError::UnknownDependency { .. }))
    ));
    assert!(matches!(
        e.retry(&id, api()).await,
        Err(Error::WrongState(_))
    ));
    assert!(matches!(
        e.retry_stack(&id, &"web".parse().unwrap(), api()).await,
        Err(Error::StackGraph(GraphError::UnknownStack(_)))
    ));
    assert_eq!(revision().await, before, "refused requests wrote nothing");

    e.deploy_stack(&id, stack("db", ExecutorKind::Helm, &[]), api())
        .await
        .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    e.deploy_stack(&id, stack("web", ExecutorKind::Helm, &["db"]), api())
        .await
        .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    let before = revision().await;
    assert!(matches!(
        e.remove_stack(&id, &"db".parse().unwrap(), api()).await,
        Err(Error::StackGraph(GraphError::HasDependents { .. }))
    ));
    assert_eq!(revision().await, before);

    e.destroy(&id, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    let before = revision().await;
    for result in [
        e.destroy(&id, api()).await.map(|_| ()),
        e.update(&id, spec(), api()).await.map(|_| ()),
        e.retry(&id, api()).await.map(|_| ()),
    ] {
        match result {
            Err(Error::WrongState(t)) => assert_eq!(t.state, StateName::Destroyed),
            other => panic!("request on a destroyed workspace: {other:?}"),
        }
    }
    assert_eq!(revision().await, before, "Destroyed is terminal");
}

#[tokio::test]
async fn a_failed_provisioning_is_retried_from_the_failed_step() {
    let faults = FaultPlan::none();
    let w = World::new(3, faults.clone());
    let mut engines = vec![w.engine("cp")];
    let e = engines[0].clone();
    let id = ws("acme-prod");
    faults.fail_permanently(FaultTarget::Layer(InfraLayer::Cluster));

    e.create(id.clone(), spec(), api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    match state(&e, &id).await {
        WorkspaceState::Failed(f) => {
            assert_eq!(
                (f.operation, f.step.as_str()),
                (WorkspaceOperation::Provision, "cluster")
            );
            assert!(f.error.contains("rejected"), "{}", f.error);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let creates = w.cloud.api_calls().total_creates();
    assert_eq!(
        creates, 3,
        "only the network (a VPC, two subnets) was created"
    );

    // Retrying while the cloud still refuses fails again, at the same step.
    e.retry(&id, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    assert!(matches!(state(&e, &id).await, WorkspaceState::Failed(f) if f.step == "cluster"));

    faults.clear_permanent(FaultTarget::Layer(InfraLayer::Cluster));
    e.retry(&id, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(state(&e, &id).await, WorkspaceState::Active);
    assert_eq!(
        w.cloud.api_calls().total_creates(),
        5,
        "the network was not created again"
    );
    check_no_duplicates(&w).unwrap();
}

#[tokio::test]
async fn destroy_from_failed_and_from_provisioning_leaves_nothing() {
    let faults = FaultPlan::none();
    let w = World::new(4, faults.clone());
    let mut engines = vec![w.engine("cp")];
    let e = engines[0].clone();

    // Half-finished provisioning, then destroy.
    let failed = ws("half-done");
    faults.fail_permanently(FaultTarget::Layer(InfraLayer::NodePools));
    e.create(failed.clone(), spec(), api()).await.unwrap();
    drive(&w, &mut engines, &failed).await.unwrap();
    assert!(matches!(
        state(&e, &failed).await,
        WorkspaceState::Failed(_)
    ));
    assert_eq!(
        w.cloud.live_resources(&failed).len(),
        4,
        "network and cluster exist, no node pool"
    );
    faults.clear_permanent(FaultTarget::Layer(InfraLayer::NodePools));
    e.destroy(&failed, api()).await.unwrap();
    drive(&w, &mut engines, &failed).await.unwrap();
    check_destroyed(&w, &e, &failed).await.unwrap();

    // Destroy while provisioning cancels it.
    let cancelled = ws("cancelled");
    e.create(cancelled.clone(), spec(), api()).await.unwrap();
    for _ in 0..2 {
        e.advance(&cancelled).await.unwrap();
    }
    e.destroy(&cancelled, api()).await.unwrap();
    drive(&w, &mut engines, &cancelled).await.unwrap();
    check_destroyed(&w, &e, &cancelled).await.unwrap();
    let history = e.history(&cancelled).await.unwrap();
    assert_eq!(check_history(&history).unwrap(), StateName::Destroyed);
    assert!(!history.iter().any(|h| matches!(
        h.event.kind,
        EventKind::Transition {
            to: StateName::Active,
            ..
        }
    )));
    check_no_duplicates(&w).unwrap();
}

#[tokio::test]
async fn a_failed_stack_does_not_fail_its_workspace() {
    let faults = FaultPlan::none();
    let w = World::new(5, faults.clone());
    let mut engines = vec![w.engine("cp")];
    let e = engines[0].clone();
    let id = ws("acme-prod");
    e.create(id.clone(), spec(), api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();

    faults.fail_permanently(FaultTarget::Stack("web".parse().unwrap()));
    e.deploy_stack(&id, stack("web", ExecutorKind::Helm, &[]), api())
        .await
        .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    let rec = e.workspace(&id).await.unwrap();
    assert_eq!(
        rec.state,
        WorkspaceState::Active,
        "the workspace stays active"
    );
    assert_eq!(rec.stacks.failed(), [&"web".parse::<StackName>().unwrap()]);

    faults.clear_permanent(FaultTarget::Stack("web".parse().unwrap()));
    e.retry_stack(&id, &"web".parse().unwrap(), api())
        .await
        .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(
        stack_state(&e, &id, "web").await,
        Some(StackStateName::Deployed)
    );

    e.remove_stack(&id, &"web".parse().unwrap(), api())
        .await
        .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(
        stack_state(&e, &id, "web").await,
        None,
        "a removed stack leaves the graph"
    );
    assert!(w.cluster.installed(&id).is_empty());
}

#[tokio::test]
async fn destroy_skips_in_cluster_teardown_when_the_agent_is_gone() {
    let w = World::new(6, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    let e = engines[0].clone();
    let id = ws("acme-prod");
    e.create(id.clone(), spec(), api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    e.deploy_stack(&id, stack("web", ExecutorKind::Helm, &[]), api())
        .await
        .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();

    w.agents.set_unreachable(&id, true);
    e.destroy(&id, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    let rec = e.workspace(&id).await.unwrap();
    assert_eq!(rec.state, WorkspaceState::Destroyed);
    assert!(
        w.cloud.live_resources(&id).is_empty(),
        "cloud-side teardown always runs"
    );
    let history = e.history(&id).await.unwrap();
    let skipped: Vec<&str> = history
        .iter()
        .filter_map(|h| match &h.event.kind {
            EventKind::StepSkipped { step, .. } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        skipped,
        ["stack/web", "uninstall-agent"],
        "the history says what was skipped"
    );
}

#[tokio::test]
async fn the_agent_must_poll_before_the_workspace_is_active() {
    let w = World::new(7, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    let e = engines[0].clone();
    let id = ws("acme-prod");
    w.agents.set_unreachable(&id, true);
    e.create(id.clone(), spec(), api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    match state(&e, &id).await {
        WorkspaceState::Failed(f) => assert_eq!(f.step, "await-agent"),
        other => panic!("without a poll the workspace must not become active: {other:?}"),
    }
    // A retry issues a fresh token (the first may have expired) and waits again.
    w.agents.set_unreachable(&id, false);
    e.retry(&id, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(state(&e, &id).await, WorkspaceState::Active);
}

/// A stack whose agent never answers exhausts its retries (each attempt queues a
/// command of its own); a retry after the agent is back starts a new budget with
/// new command ids and succeeds.
#[tokio::test]
async fn a_stack_retried_after_its_commands_went_unanswered_deploys() {
    let w = World::new(8, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    let e = engines[0].clone();
    let id = ws("acme-prod");
    e.create(id.clone(), spec(), api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();

    w.agents.set_unreachable(&id, true);
    e.deploy_stack(&id, stack("web", ExecutorKind::Helm, &[]), api())
        .await
        .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    let rec = e.workspace(&id).await.unwrap();
    match &rec.stacks.get(&"web".parse().unwrap()).unwrap().state {
        StackState::Failed(f) => {
            assert!(f.error.contains("gave up after 10 attempts"), "{}", f.error)
        }
        other => panic!("expected the stack to fail, got {other:?}"),
    }
    assert_eq!(rec.state, WorkspaceState::Active);

    w.agents.set_unreachable(&id, false);
    e.retry_stack(&id, &"web".parse().unwrap(), api())
        .await
        .unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(
        stack_state(&e, &id, "web").await,
        Some(StackStateName::Deployed)
    );
}

/// Destroy while provisioning waits for the agent's first poll: the wait is
/// dropped at once (nothing is in flight), the workspace never fails, and the
/// agent that shows up late gets no identity.
#[tokio::test]
async fn destroy_while_waiting_for_the_agent_cancels_cleanly() {
    let w = World::new(9, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    let e = engines[0].clone();
    let id = ws("acme-prod");
    w.agents.set_unreachable(&id, true);
    e.create(id.clone(), spec(), api()).await.unwrap();
    while !matches!(e.advance(&id).await.unwrap(), Action::AwaitAgent { .. }) {}

    e.destroy(&id, api()).await.unwrap();
    // The late agent tries to bootstrap with its still-valid token: refused.
    w.agents.set_unreachable(&id, false);
    w.agents.step_all().await;
    assert!(
        e.store().list_credentials(&id).await.unwrap().is_empty(),
        "no identity for a retiring workspace"
    );

    let start = w.clock.now();
    drive(&w, &mut engines, &id).await.unwrap();
    check_destroyed(&w, &e, &id).await.unwrap();
    let history = e.history(&id).await.unwrap();
    assert!(
        destroyed_at(&history).unwrap().since(start) < std::time::Duration::from_secs(60),
        "the wait was not sat out"
    );
    assert!(
        !history.iter().any(|h| matches!(
            h.event.kind,
            EventKind::Transition {
                to: StateName::Failed,
                ..
            }
        )),
        "a cancelled wait does not fail the workspace"
    );
}
