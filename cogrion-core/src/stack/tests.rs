use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::spec::ExecutorSpec;

const T0: Timestamp = Timestamp::from_millis(7);

fn name(s: &str) -> StackName {
    s.parse().unwrap()
}

fn spec(n: &str, kind: StackKind, deps: &[&str]) -> StackSpec {
    StackSpec {
        name: name(n),
        kind,
        executor: ExecutorSpec::Manifests { documents: vec![] },
        depends_on: deps.iter().map(|d| name(d)).collect(),
    }
}

fn app(n: &str, deps: &[&str]) -> StackSpec {
    spec(n, StackKind::Application, deps)
}

fn names(v: &[StackName]) -> Vec<&str> {
    v.iter().map(StackName::as_str).collect()
}

fn failed(op: StackOperation) -> StackState {
    StackState::Failed(StackFailure {
        operation: op,
        step: "apply".into(),
        error: "boom".into(),
        at: T0,
    })
}

fn event(e: StackEventName) -> StackEvent {
    match e {
        StackEventName::DeployRequested => StackEvent::DeployRequested,
        StackEventName::DeploySucceeded => StackEvent::DeploySucceeded,
        StackEventName::RemoveRequested => StackEvent::RemoveRequested,
        StackEventName::DestroySucceeded => StackEvent::DestroySucceeded,
        StackEventName::OperationFailed => StackEvent::OperationFailed {
            step: "apply".into(),
            error: "boom".into(),
        },
        StackEventName::RetryRequested => StackEvent::RetryRequested,
        StackEventName::Abandoned => StackEvent::Abandoned,
    }
}

/// Every (stack state, event) pair, written out; `Failed` once per operation.
#[test]
fn stack_transition_table_covers_every_pair() {
    use StackEventName as E;
    use StackOperation as Op;
    use StackState as S;
    let fail = |op| Some(failed(op));
    let mut rows: Vec<(StackState, StackEventName, Option<StackState>)> = Vec::new();
    #[rustfmt::skip]
    rows.extend([
        (S::Pending, E::DeployRequested, Some(S::Deploying)),
        (S::Pending, E::DeploySucceeded, None),
        (S::Pending, E::RemoveRequested, Some(S::Destroying)),
        (S::Pending, E::DestroySucceeded, None),
        (S::Pending, E::OperationFailed, None),
        (S::Pending, E::RetryRequested, None),
        (S::Pending, E::Abandoned, None),

        (S::Deploying, E::DeployRequested, None),
        (S::Deploying, E::DeploySucceeded, Some(S::Deployed)),
        (S::Deploying, E::RemoveRequested, Some(S::Destroying)),
        (S::Deploying, E::DestroySucceeded, None),
        (S::Deploying, E::OperationFailed, fail(Op::Deploy)),
        (S::Deploying, E::RetryRequested, None),
        (S::Deploying, E::Abandoned, None),

        (S::Deployed, E::DeployRequested, Some(S::Deploying)),
        (S::Deployed, E::DeploySucceeded, None),
        (S::Deployed, E::RemoveRequested, Some(S::Destroying)),
        (S::Deployed, E::DestroySucceeded, None),
        (S::Deployed, E::OperationFailed, None),
        (S::Deployed, E::RetryRequested, None),
        (S::Deployed, E::Abandoned, None),

        (S::Destroying, E::DeployRequested, None),
        (S::Destroying, E::DeploySucceeded, None),
        (S::Destroying, E::RemoveRequested, None),
        (S::Destroying, E::DestroySucceeded, Some(S::Destroyed)),
        (S::Destroying, E::OperationFailed, fail(Op::Destroy)),
        (S::Destroying, E::RetryRequested, None),
        (S::Destroying, E::Abandoned, Some(S::Destroyed)),

        (S::Destroyed, E::DeployRequested, None),
        (S::Destroyed, E::DeploySucceeded, None),
        (S::Destroyed, E::RemoveRequested, None),
        (S::Destroyed, E::DestroySucceeded, None),
        (S::Destroyed, E::OperationFailed, None),
        (S::Destroyed, E::RetryRequested, None),
        (S::Destroyed, E::Abandoned, None),
    ]);
    for (op, retry_to) in [(Op::Deploy, S::Deploying), (Op::Destroy, S::Destroying)] {
        #[rustfmt::skip]
        rows.extend([
            (failed(op), E::DeployRequested, Some(S::Deploying)),
            (failed(op), E::DeploySucceeded, None),
            (failed(op), E::RemoveRequested, Some(S::Destroying)),
            (failed(op), E::DestroySucceeded, None),
            (failed(op), E::OperationFailed, None),
            (failed(op), E::RetryRequested, Some(retry_to)),
            (failed(op), E::Abandoned, (op == Op::Destroy).then_some(S::Destroyed)),
        ]);
    }
    let mut seen: BTreeMap<(StackStateName, StackEventName), usize> = BTreeMap::new();
    for (s, e, _) in &rows {
        *seen.entry((s.name(), *e)).or_default() += 1;
    }
    for s in StackStateName::ALL {
        for e in StackEventName::ALL {
            let expected = if s == StackStateName::Failed { 2 } else { 1 };
            assert_eq!(seen.get(&(s, e)), Some(&expected), "row for ({s}, {e})");
        }
    }
    for (state, e, expected) in rows {
        let got = stack_step(&state, &event(e), T0);
        match expected {
            Some(to) => assert_eq!(got, Ok(to), "({state:?}, {e})"),
            None => assert_eq!(
                got,
                Err((state.name(), e)),
                "({state:?}, {e}) must be refused"
            ),
        }
    }
}

#[test]
fn unknown_dependency_is_refused_and_changes_nothing() {
    let mut g = StackGraph::new();
    g.add(app("db", &[])).unwrap();
    let before = g.clone();
    assert_eq!(
        g.add(app("api", &["db", "cache"])),
        Err(GraphError::UnknownDependency {
            stack: name("api"),
            missing: name("cache")
        })
    );
    assert_eq!(g, before);
}

#[test]
fn duplicate_and_self_dependency_are_refused() {
    let mut g = StackGraph::new();
    g.add(app("db", &[])).unwrap();
    let before = g.clone();
    assert_eq!(
        g.add(app("db", &[])),
        Err(GraphError::DuplicateStack(name("db")))
    );
    assert_eq!(
        g.add(app("loop", &["loop"])),
        Err(GraphError::Cycle {
            cycle: vec![name("loop"), name("loop")]
        })
    );
    assert_eq!(g, before);
}

#[test]
fn a_cycle_is_refused_with_its_path() {
    let mut g = StackGraph::new();
    g.add_all(vec![
        app("a", &[]),
        app("b", &["a"]),
        app("c", &["b"]),
        app("d", &[]),
    ])
    .unwrap();
    let before = g.clone();
    let err = g.upgrade(app("a", &["c"])).unwrap_err();
    let GraphError::Cycle { cycle } = &err else {
        panic!("expected a cycle, got {err:?}")
    };
    assert_eq!(cycle.first(), cycle.last(), "the cycle is closed");
    assert_eq!(
        cycle.len(),
        4,
        "a -> c -> b -> a, in some rotation: {cycle:?}"
    );
    for n in ["a", "b", "c"] {
        assert!(cycle.contains(&name(n)), "{n} is on the cycle {cycle:?}");
    }
    assert!(!cycle.contains(&name("d")));
    assert!(err.to_string().starts_with("dependency cycle: "), "{err}");
    assert_eq!(g, before, "a refused upgrade changes nothing");

    // A batch that contains a cycle among its own members is refused whole.
    let mut g = StackGraph::new();
    let err = g
        .add_all(vec![app("x", &["y"]), app("y", &["x"]), app("z", &[])])
        .unwrap_err();
    assert!(matches!(err, GraphError::Cycle { .. }));
    assert!(g.is_empty(), "all or nothing");
    assert_eq!(
        g.upgrade(app("ghost", &[])),
        Err(GraphError::UnknownStack(name("ghost")))
    );
}

#[test]
fn deploy_order_is_topological_with_kind_tie_break() {
    let mut g = StackGraph::new();
    g.add_all(vec![
        spec("web", StackKind::Application, &["db"]),
        spec("db", StackKind::Application, &["cert-manager"]),
        spec("metrics", StackKind::Observability, &[]),
        spec("cert-manager", StackKind::InfraAddon, &[]),
        spec("ingress", StackKind::InfraAddon, &[]),
        spec("alpha-app", StackKind::Application, &[]),
    ])
    .unwrap();
    assert_eq!(
        names(&g.deploy_order()),
        [
            "cert-manager",
            "ingress",
            "metrics",
            "alpha-app",
            "db",
            "web"
        ],
        "add-ons, then observability, then applications, dependencies first"
    );
    assert_eq!(
        names(&g.teardown_order()),
        [
            "web",
            "db",
            "alpha-app",
            "metrics",
            "ingress",
            "cert-manager"
        ]
    );
    // A dependency overrides the kind order: an add-on that needs an application
    // comes after it.
    g.add(spec("backup", StackKind::InfraAddon, &["db"]))
        .unwrap();
    let order = g.deploy_order();
    let pos = |n: &str| order.iter().position(|x| x.as_str() == n).unwrap();
    assert!(pos("db") < pos("backup"));
}

#[test]
fn deploy_requires_a_ready_workspace_and_dependencies_deployed_or_deploying() {
    let mut g = StackGraph::new();
    g.add_all(vec![app("db", &[]), app("api", &["db"])])
        .unwrap();
    for state in [
        StateName::Provisioning,
        StateName::Failed,
        StateName::Destroying,
        StateName::Destroyed,
    ] {
        let before = g.clone();
        assert_eq!(
            g.request_deploy(&name("db"), state, T0),
            Err(GraphError::WorkspaceNotReady {
                stack: name("db"),
                state
            })
        );
        assert_eq!(g, before);
    }
    assert_eq!(
        g.request_deploy(&name("api"), StateName::Active, T0),
        Err(GraphError::DependenciesNotDeployed {
            stack: name("api"),
            waiting: vec![name("db")]
        }),
        "a dependency never asked to deploy"
    );
    assert_eq!(
        g.request_deploy(&name("db"), StateName::Active, T0),
        Ok(StackState::Deploying)
    );
    // A dependency being deployed: accepted (the engine's deploy waits for it).
    let mut waiting = g.clone();
    assert_eq!(
        waiting.request_deploy(&name("api"), StateName::Updating, T0),
        Ok(StackState::Deploying)
    );
    // A failed dependency: refused, nothing changed.
    let mut broken = g.clone();
    broken
        .apply(
            &name("db"),
            &StackEvent::OperationFailed {
                step: "apply".into(),
                error: "boom".into(),
            },
            T0,
        )
        .unwrap();
    let before = broken.clone();
    assert_eq!(
        broken.request_deploy(&name("api"), StateName::Active, T0),
        Err(GraphError::DependenciesNotDeployed {
            stack: name("api"),
            waiting: vec![name("db")]
        })
    );
    assert_eq!(broken, before);
    g.apply(&name("db"), &StackEvent::DeploySucceeded, T0)
        .unwrap();
    assert_eq!(
        g.request_deploy(&name("api"), StateName::Updating, T0),
        Ok(StackState::Deploying)
    );
    // A second deploy request while deploying is a wrong-state error naming the state.
    assert_eq!(
        g.request_deploy(&name("api"), StateName::Active, T0),
        Err(GraphError::WrongStackState {
            stack: name("api"),
            state: StackStateName::Deploying,
            event: StackEventName::DeployRequested
        })
    );
    assert_eq!(
        g.request_deploy(&name("nope"), StateName::Active, T0),
        Err(GraphError::UnknownStack(name("nope")))
    );
}

#[test]
fn a_failed_stack_is_listed_and_can_be_retried_or_removed_alone() {
    let mut g = StackGraph::new();
    g.add_all(vec![app("db", &[]), app("cache", &[])]).unwrap();
    g.request_deploy(&name("db"), StateName::Active, T0)
        .unwrap();
    g.apply(
        &name("db"),
        &StackEvent::OperationFailed {
            step: "apply".into(),
            error: "x".into(),
        },
        T0,
    )
    .unwrap();
    assert_eq!(g.failed(), [&name("db")]);
    assert_eq!(
        g.apply(&name("db"), &StackEvent::RetryRequested, T0),
        Ok(StackState::Deploying)
    );
    g.apply(
        &name("db"),
        &StackEvent::OperationFailed {
            step: "apply".into(),
            error: "x".into(),
        },
        T0,
    )
    .unwrap();
    assert_eq!(
        g.request_removal(&name("db"), T0),
        Ok(StackState::Destroying)
    );
    assert!(g.failed().is_empty());
}

#[test]
fn a_stack_with_dependents_cannot_be_removed_alone() {
    let mut g = StackGraph::new();
    g.add_all(vec![
        app("db", &[]),
        app("api", &["db"]),
        app("web", &["api"]),
        app("other", &[]),
    ])
    .unwrap();
    let before = g.clone();
    assert_eq!(
        g.request_removal(&name("db"), T0),
        Err(GraphError::HasDependents {
            stack: name("db"),
            dependents: vec![name("api")]
        })
    );
    assert_eq!(g, before);
    assert_eq!(
        names(&g.removal_set(&name("db")).unwrap()),
        ["web", "api", "db"],
        "cascade in teardown order"
    );

    // Removing the dependents first, then the stack, works.
    for n in ["web", "api", "db"] {
        g.request_removal(&name(n), T0).unwrap();
        g.apply(&name(n), &StackEvent::DestroySucceeded, T0)
            .unwrap();
    }
    assert_eq!(g.forget(&name("db")).unwrap().state, StackState::Destroyed);
    assert!(
        matches!(
            g.forget(&name("other")),
            Err(GraphError::WrongStackState { .. })
        ),
        "only destroyed stacks are forgotten"
    );
    assert_eq!(
        g.request_removal(&name("ghost"), T0),
        Err(GraphError::UnknownStack(name("ghost")))
    );
}

#[test]
fn graph_round_trips_through_json() {
    let mut g = StackGraph::new();
    g.add_all(vec![app("db", &[]), app("api", &["db"])])
        .unwrap();
    g.request_deploy(&name("db"), StateName::Active, T0)
        .unwrap();
    let json = serde_json::to_string(&g).unwrap();
    assert_eq!(serde_json::from_str::<StackGraph>(&json).unwrap(), g);
}

/// A random edit of a graph of up to 8 stacks named s0..s7.
#[derive(Debug, Clone)]
enum Edit {
    Add(usize, Vec<usize>, u8),
    Upgrade(usize, Vec<usize>),
    Remove(usize),
}

fn any_edit() -> impl Strategy<Value = Edit> {
    let idx = 0usize..8;
    let deps = proptest::collection::vec(0usize..8, 0..3);
    prop_oneof![
        (idx.clone(), deps.clone(), 0u8..3).prop_map(|(i, d, k)| Edit::Add(i, d, k)),
        (idx.clone(), deps).prop_map(|(i, d)| Edit::Upgrade(i, d)),
        idx.prop_map(Edit::Remove),
    ]
}

fn s(i: usize) -> String {
    format!("s{i}")
}

proptest! {
    /// After any sequence of edits: every refused edit left the graph unchanged;
    /// the graph stays acyclic with known dependencies; the deploy order lists
    /// every stack once with dependencies first; teardown is its reverse.
    #[test]
    fn graph_invariants_hold_over_random_edits(edits in proptest::collection::vec(any_edit(), 0..40)) {
        let mut g = StackGraph::new();
        let kinds = [StackKind::InfraAddon, StackKind::Observability, StackKind::Application];
        for edit in edits {
            let before = g.clone();
            let result = match &edit {
                Edit::Add(i, d, k) => {
                    let deps: Vec<String> = d.iter().map(|j| s(*j)).collect();
                    let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                    g.add(spec(&s(*i), kinds[*k as usize], &deps))
                }
                Edit::Upgrade(i, d) => {
                    let deps: Vec<String> = d.iter().map(|j| s(*j)).collect();
                    let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
                    let kind = g.get(&name(&s(*i))).map_or(StackKind::Application, |e| e.spec.kind);
                    g.upgrade(spec(&s(*i), kind, &deps))
                }
                Edit::Remove(i) => {
                    let n = name(&s(*i));
                    g.request_removal(&n, T0)
                        .and_then(|_| g.apply(&n, &StackEvent::DestroySucceeded, T0))
                        .and_then(|_| g.forget(&n))
                        .map(|_| ())
                }
            };
            if let Err(e) = &result {
                // Removal is three edits; only its first step may be refused.
                if !matches!(edit, Edit::Remove(_)) || !matches!(e, GraphError::WrongStackState { .. }) {
                    prop_assert_eq!(&g, &before, "refused edit {:?} ({}) changed the graph", edit, e);
                }
                if let GraphError::Cycle { cycle } = e {
                    prop_assert_eq!(cycle.first(), cycle.last());
                    for w in cycle.windows(2) {
                        // Each hop is a dependency edge in the attempted graph.
                        let deps = match &edit {
                            Edit::Add(i, d, _) | Edit::Upgrade(i, d) if w[0].as_str() == s(*i) => {
                                d.iter().map(|j| name(&s(*j))).collect::<Vec<_>>()
                            }
                            _ => g.get(&w[0]).map(|e| e.spec.depends_on.iter().cloned().collect()).unwrap_or_default(),
                        };
                        prop_assert!(deps.contains(&w[1]), "{} -> {} is not an edge", w[0], w[1]);
                    }
                }
            }
            let order = g.deploy_order();
            prop_assert_eq!(order.len(), g.len(), "every stack once");
            for (pos, n) in order.iter().enumerate() {
                for dep in &g.get(n).unwrap().spec.depends_on {
                    let dep_pos = order.iter().position(|x| x == dep);
                    prop_assert!(dep_pos.is_some_and(|p| p < pos), "{} before its dependency {}", n, dep);
                }
            }
            let mut rev = g.teardown_order();
            rev.reverse();
            prop_assert_eq!(rev, order);
        }
    }
}
