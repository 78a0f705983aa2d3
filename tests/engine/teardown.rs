//! Destroys that converge or say exactly why: what may be skipped (agent-run
//! work only, with a receipt), a destroy blocked for good naming its blocker,
//! abandoning with a receipt, and the purge after the retention.

use std::time::Duration;

use cogrion::sim::{Fault, FaultPlan, FaultTarget};
use cogrion::*;
use cogrion::{provider::*, store::*};

use crate::drive::{active_with, check_destroyed, check_history, check_no_duplicates, drive};
use crate::world::{World, api, name, spec, stack, with_one_engine, ws};

/// The objects stack `stack` holds in `id`'s cluster.
fn objects_of(w: &World, id: &WorkspaceId, stack: &str) -> Vec<String> {
    w.cluster
        .installed(id)
        .into_iter()
        .find(|(n, _, _)| n.as_str() == stack)
        .map(|(_, _, objects)| objects)
        .unwrap_or_else(|| panic!("stack {stack} is not installed"))
}

fn failure(rec: &WorkspaceRecord) -> Failure {
    match &rec.state {
        WorkspaceState::Failed(f) => f.clone(),
        other => panic!("expected Failed, found {other:?}"),
    }
}

/// With the agent out of reach, a Helm stack's teardown is skipped past its
/// deadline and the receipt names its objects and since when the agent was
/// silent; a Terraform stack's teardown — its resources live outside the
/// cluster — is never skipped: failing past the same deadline, it fails the
/// destroy naming itself, and a retry tears it down.
///
/// (Before this change every stack teardown counted as in-cluster: the
/// Terraform stack was skipped with "deleting the cluster removes what is left
/// in it".)
#[tokio::test]
async fn only_agent_run_teardown_is_skipped_and_the_receipt_says_what_was_left() {
    let faults = FaultPlan::none();
    let (w, mut engines, e) = with_one_engine(21, faults.clone());
    let id = ws("acme-prod");
    active_with(
        &w,
        &mut engines,
        &id,
        vec![
            stack("web", ExecutorKind::Helm, &[]),
            stack("db", ExecutorKind::Terraform, &[]),
        ],
    )
    .await;
    let web_objects = objects_of(&w, &id, "web");
    let db_objects = objects_of(&w, &id, "db");
    let rec = e.workspace(&id).await.unwrap();
    assert_eq!(
        rec.stacks
            .get(&name("web"))
            .unwrap()
            .inventory
            .as_ref()
            .unwrap()
            .resources,
        web_objects,
        "the executor's report of what it installed is kept"
    );

    // The agent goes silent; the Terraform stack's cloud API fails for longer
    // than the teardown deadline (120 s in these tests) lasts.
    let last_poll = w.clock.now();
    w.agents.set_unreachable(&id, true);
    for _ in 0..12 {
        faults.inject_next_for(FaultTarget::Stack(name("db")), Fault::Unavailable);
    }
    w.clock.advance(Duration::from_secs(30));
    e.destroy(&id, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();

    let rec = e.workspace(&id).await.unwrap();
    let f = failure(&rec);
    assert_eq!(f.operation, WorkspaceOperation::Destroy);
    assert_eq!(f.step, "stack/db", "the blocker is the Terraform stack");
    assert_eq!(f.stack, Some(name("db")));
    assert!(f.error.contains("gave up after 10 attempts"), "{}", f.error);
    assert_eq!(
        f.remaining, db_objects,
        "what still exists, as the executor reports it"
    );
    // The Helm stack was skipped, with a receipt.
    assert_eq!(rec.left_behind.len(), 1, "{:?}", rec.left_behind);
    let web = &rec.left_behind[0];
    assert_eq!(
        (web.step.as_str(), web.stack.clone()),
        ("stack/web", Some(name("web")))
    );
    assert_eq!(web.resources, web_objects);
    match &web.why {
        LeftReason::Unreachable { since, error } => {
            assert!(
                *since <= last_poll,
                "silent since {since}, the last poll was at {last_poll}"
            );
            assert!(error.contains("no answer"), "{error}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    let history = e.history(&id).await.unwrap();
    let skipped = history
        .iter()
        .find_map(|h| match &h.event.kind {
            EventKind::StepSkipped {
                step,
                left,
                unreachable_since,
                ..
            } if step == "stack/web" => Some((left.clone(), *unreachable_since)),
            _ => None,
        })
        .expect("the history records the skip");
    assert_eq!(skipped.0, web_objects);
    assert!(skipped.1.is_some());

    // The cause goes away; a retry tears the Terraform stack down, and the rest
    // runs (the agent's uninstall is skipped too: the cluster is out of reach).
    e.retry(&id, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    check_destroyed(&w, &e, &id).await.unwrap();
    let rec = e.workspace(&id).await.unwrap();
    let steps: Vec<&str> = rec.left_behind.iter().map(|l| l.step.as_str()).collect();
    assert_eq!(steps, ["stack/web", "uninstall-agent"]);
    assert!(
        !w.cluster
            .installed(&id)
            .iter()
            .any(|(n, _, _)| n.as_str() == "db"),
        "the Terraform stack was torn down, not skipped"
    );
    assert!(
        w.cloud.live_resources(&id).is_empty(),
        "cloud-side teardown always runs"
    );
    assert_eq!(
        check_history(&e.history(&id).await.unwrap()).unwrap(),
        StateName::Destroyed
    );
}

/// A teardown that fails for good fails the destroy with its blocker named; a
/// retry fails the same way; the dry run shows what could be abandoned and
/// what each would leave; abandoning refuses what cannot be, changing nothing,
/// and otherwise records a receipt and lets the destroy finish.
///
/// (Before this change a permanent teardown error left only `retry`, which
/// re-ran the same failing step forever.)
#[tokio::test]
async fn a_blocked_destroy_names_its_blocker_and_can_be_abandoned_with_a_receipt() {
    let faults = FaultPlan::none();
    let (w, mut engines, e) = with_one_engine(22, faults.clone());
    let id = ws("acme-prod");
    active_with(
        &w,
        &mut engines,
        &id,
        vec![
            stack("db", ExecutorKind::Terraform, &[]),
            stack("web", ExecutorKind::Helm, &["db"]),
        ],
    )
    .await;
    let db_objects = objects_of(&w, &id, "db");

    // Abandoning is only for a failed destroy.
    let before = e.store().get_workspace(&id).await.unwrap();
    match e.abandon(&id, &[name("db").into()], "x", api()).await {
        Err(Error::WrongState(t)) => assert_eq!(t.state, StateName::Active),
        other => panic!("abandon while active: {other:?}"),
    }
    assert_eq!(e.store().get_workspace(&id).await.unwrap(), before);

    faults.fail_permanently(FaultTarget::Stack(name("db")));
    e.destroy(&id, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    let f = failure(&e.workspace(&id).await.unwrap());
    assert_eq!(
        (f.operation, f.step.as_str()),
        (WorkspaceOperation::Destroy, "stack/db")
    );
    assert_eq!(f.stack, Some(name("db")));
    assert!(f.error.contains("rejected"), "{}", f.error);
    assert_eq!(f.remaining, db_objects);

    // A retry runs the same step, which fails the same way.
    e.retry(&id, api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    assert_eq!(failure(&e.workspace(&id).await.unwrap()).step, "stack/db");

    // The dry run: where the destroy stands, and what abandoning would leave.
    let plan = e.destroy_plan(&id).await.unwrap();
    let row = |s: &str| plan.steps.iter().find(|p| p.step == s).unwrap().clone();
    assert!(row("stack/web").finished && !row("stack/web").abandonable);
    let db = row("stack/db");
    assert!(db.abandonable && !db.finished);
    assert_eq!(db.removes, db_objects);
    assert!(db.last_error.as_deref().unwrap().contains("rejected"));
    assert!(
        !row("revoke-agent-credentials").abandonable,
        "the agent's credentials are always revoked"
    );
    assert!(row("network").abandonable);
    assert!(
        !row("network").removes.is_empty(),
        "the network's resources, from describe"
    );

    // Refusals change nothing.
    let before = e.store().get_workspace(&id).await.unwrap();
    for (targets, why) in [
        (
            vec![AbandonTarget::from(name("web"))],
            "a step that already finished",
        ),
        (
            vec![name("nope").into()],
            "a stack the destroy does not have",
        ),
        (
            vec![name("db").into(), name("nope").into()],
            "one bad target among good ones",
        ),
        (vec![], "nothing named"),
    ] {
        match e.abandon(&id, &targets, "because", api()).await {
            Err(Error::NotAbandonable { .. }) => {}
            other => panic!("{why}: {other:?}"),
        }
        assert_eq!(e.store().get_workspace(&id).await.unwrap(), before, "{why}");
    }

    let owner = Actor::Api {
        principal: "alice@platform".into(),
    };
    e.abandon(
        &id,
        &[name("db").into()],
        "bucket kept under legal hold",
        owner.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        e.workspace(&id).await.unwrap().state,
        WorkspaceState::Destroying
    );
    drive(&w, &mut engines, &id).await.unwrap();
    check_destroyed(&w, &e, &id).await.unwrap();
    let rec = e.workspace(&id).await.unwrap();
    assert_eq!(rec.left_behind.len(), 1);
    let receipt = &rec.left_behind[0];
    assert_eq!(receipt.step, "stack/db");
    assert_eq!(receipt.stack, Some(name("db")));
    assert_eq!(receipt.resources, db_objects);
    match &receipt.why {
        LeftReason::Abandoned {
            actor,
            reason,
            error,
        } => {
            assert_eq!(actor, &owner);
            assert_eq!(reason, "bucket kept under legal hold");
            assert!(error.as_deref().unwrap().contains("rejected"));
        }
        other => panic!("expected Abandoned, got {other:?}"),
    }
    assert!(
        w.cloud.live_resources(&id).is_empty(),
        "the rest was torn down"
    );
    let history = e.history(&id).await.unwrap();
    assert_eq!(check_history(&history).unwrap(), StateName::Destroyed);
    let abandoned = history
        .iter()
        .find(|h| matches!(h.event.kind, EventKind::StepAbandoned { .. }))
        .expect("the history has the receipt");
    assert_eq!(abandoned.event.actor, owner);
    assert_eq!(abandoned.event.message, "bucket kept under legal hold");
    check_no_duplicates(&w).unwrap();
}

/// After `Destroyed` and the retention, a workspace's commands, checkpoints,
/// tokens and credentials are deleted; its record and history are kept, or
/// deleted too, as configured; with purging off, nothing is.
#[tokio::test]
async fn a_destroyed_workspace_is_purged_after_its_retention() {
    const DAY: Duration = Duration::from_secs(86_400);
    for history in [
        Some(HistoryRetention::Keep),
        Some(HistoryRetention::Delete),
        None,
    ] {
        let w = World::new(23, FaultPlan::none());
        let e = w.engine_with("cp", |c| {
            c.with_purge(history.map(|h| PurgePolicy::new(DAY, h)))
        });
        let mut engines = vec![e.clone()];
        let id = ws("acme-prod");
        active_with(
            &w,
            &mut engines,
            &id,
            vec![stack("web", ExecutorKind::Helm, &[])],
        )
        .await;
        e.destroy(&id, api()).await.unwrap();
        // Up to Destroyed, not further.
        loop {
            let rec = e.workspace(&id).await.unwrap();
            if rec.state == WorkspaceState::Destroyed {
                break;
            }
            match e.advance(&id).await.unwrap() {
                Action::RunAgain => {}
                Action::AwaitAgent { .. } => {
                    w.agents.step_all().await;
                }
                Action::WakeAt(t) => w.clock.advance_to(t),
                Action::Done => panic!("rest before Destroyed"),
            }
        }
        let destroyed = w.clock.now();
        let queued = e
            .history(&id)
            .await
            .unwrap()
            .iter()
            .find_map(|h| match &h.event.kind {
                EventKind::CommandQueued { id } => Some(id.clone()),
                _ => None,
            });
        let queued = queued.expect("the stacks' commands were queued");
        assert!(e.store().get_command(&id, &queued).await.is_ok());
        assert!(!e.store().list_credentials(&id).await.unwrap().is_empty());

        let Some(retention) = history else {
            assert!(e.workspace(&id).await.unwrap().operations.is_empty());
            assert_eq!(
                e.advance(&id).await.unwrap(),
                Action::Done,
                "nothing to purge"
            );
            assert!(
                !e.store().list_credentials(&id).await.unwrap().is_empty(),
                "kept"
            );
            continue;
        };
        // Not before the retention.
        assert_eq!(
            e.advance(&id).await.unwrap(),
            Action::WakeAt(destroyed + DAY)
        );
        assert!(
            e.store().get_command(&id, &queued).await.is_ok(),
            "nothing purged yet"
        );
        w.clock.advance_to(destroyed + DAY);
        drive(&w, &mut engines, &id).await.unwrap();
        match retention {
            HistoryRetention::Keep => {
                check_destroyed(&w, &e, &id).await.unwrap();
                let rec = e.workspace(&id).await.unwrap();
                assert_eq!(rec.purged_at, Some(destroyed + DAY));
                assert!(matches!(
                    e.store().get_command(&id, &queued).await,
                    Err(Error::NotFound(_))
                ));
                let history = e.history(&id).await.unwrap();
                assert_eq!(check_history(&history).unwrap(), StateName::Destroyed);
                assert_eq!(history.last().unwrap().event.kind, EventKind::Purged);
            }
            HistoryRetention::Delete => {
                assert!(matches!(e.workspace(&id).await, Err(Error::NotFound(_))));
                let credentials = e.store().list_credentials(&id).await;
                assert!(
                    matches!(&credentials, Err(Error::NotFound(_)))
                        || matches!(&credentials, Ok(c) if c.is_empty()),
                    "{credentials:?}"
                );
                // The id is free again.
                e.create(id.clone(), spec(), api()).await.unwrap();
                drive(&w, &mut engines, &id).await.unwrap();
                assert_eq!(
                    e.workspace(&id).await.unwrap().state,
                    WorkspaceState::Active
                );
            }
        }
    }
}
