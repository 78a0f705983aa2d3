//! Driving a workspace to rest through crashes, races and faults, and the checks
//! every run ends with.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cogrion::store::*;
use cogrion::*;

use crate::world::{CRASH, OUTAGE, World};

/// How one engine's `advance` ended, for the loop.
enum Next {
    Again,
    Wait(Option<Timestamp>),
    AwaitAgent(Option<Timestamp>),
    Rest,
}

fn handle(
    world: &World,
    slot: &mut Engine,
    name: &str,
    result: Result<Action>,
    seen: &mut std::collections::VecDeque<String>,
) -> std::result::Result<Next, String> {
    // What the last answers were, for a run that does not come to rest.
    if seen.len() == 16 {
        seen.pop_front();
    }
    seen.push_back(format!("{} {name}: {result:?}", world.clock.now()));
    Ok(match result {
        Ok(Action::RunAgain) => Next::Again,
        // An engine's times are by its own clock, which may be off the world's.
        Ok(Action::WakeAt(t)) => Next::Wait(Some(world.world_time(name, t))),
        Ok(Action::AwaitAgent { until }) => {
            Next::AwaitAgent(until.map(|t| world.world_time(name, t)))
        }
        Ok(Action::Done) => Next::Rest,
        // The process died: throw the engine away and start a new one on the store.
        Err(Error::Unavailable { detail, .. }) if detail == CRASH => {
            *slot = world.engine(name);
            Next::Again
        }
        // The store failed under a step: nothing of it was kept; go on.
        Err(Error::Unavailable { detail, .. }) if detail == OUTAGE => Next::Again,
        // Fenced out by another replica: this one stops; a new call re-checks the lease.
        Err(Error::LeaseLost { .. }) => Next::Again,
        Err(e) => return Err(format!("advance failed: {e}")),
    })
}

/// Drives `ws` until every engine answers `Done`, stepping the agents and moving
/// the clock as the answers ask. With two engines, they race for every step.
pub async fn drive(
    world: &World,
    engines: &mut [Engine],
    ws: &WorkspaceId,
) -> std::result::Result<(), String> {
    let mut seen = std::collections::VecDeque::new();
    for _ in 0..20_000 {
        let mut nexts = Vec::new();
        if engines.len() == 1 && world.concurrent_advance.load(Ordering::SeqCst) {
            // Two tasks of one host advance the workspace at once.
            let (ra, rb) = tokio::join!(engines[0].advance(ws), engines[0].advance(ws));
            nexts.push(handle(world, &mut engines[0], "replica-a", ra, &mut seen)?);
            nexts.push(handle(world, &mut engines[0], "replica-a", rb, &mut seen)?);
        } else if engines.len() == 1 {
            let r = engines[0].advance(ws).await;
            nexts.push(handle(world, &mut engines[0], "replica-a", r, &mut seen)?);
        } else {
            let (a, b) = (engines[0].clone(), engines[1].clone());
            let (wa, wb) = (ws.clone(), ws.clone());
            let ra = tokio::spawn(async move { a.advance(&wa).await });
            let rb = tokio::spawn(async move { b.advance(&wb).await });
            let (ra, rb) = (
                ra.await.map_err(|e| e.to_string())?,
                rb.await.map_err(|e| e.to_string())?,
            );
            nexts.push(handle(world, &mut engines[0], "replica-a", ra, &mut seen)?);
            nexts.push(handle(world, &mut engines[1], "replica-b", rb, &mut seen)?);
        }
        if nexts.iter().any(|n| matches!(n, Next::Again)) {
            continue;
        }
        if nexts.iter().all(|n| matches!(n, Next::Rest)) {
            return Ok(());
        }
        // Racing replicas: one finished (and released the lease) while the other
        // saw the lease held. The workspace is at rest if nothing is planned.
        let record = match engines[0].workspace(ws).await {
            Ok(record) => record,
            // Purged with its history: nothing is left to drive.
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        // Nothing planned, or nothing scheduled (a failed operation kept for
        // a retry): the other replica only saw the lease of the one that
        // found nothing to do — which, racing, it may see round after round.
        if nexts.iter().any(|n| matches!(n, Next::Rest))
            && (record.operations.is_empty() || record.wake_at.is_none())
        {
            return Ok(());
        }
        // Everyone waits: let the agents work, then move time to the earliest wake.
        world.agents.step_all().await;
        let now = world.clock.now();
        let wake = nexts
            .iter()
            .filter_map(|n| match n {
                Next::Wait(t) | Next::AwaitAgent(t) => *t,
                _ => None,
            })
            .min();
        let awaiting_agent = nexts.iter().any(|n| matches!(n, Next::AwaitAgent(_)));
        let step = if awaiting_agent {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(1)
        };
        let mut target = match wake {
            Some(t) if !awaiting_agent => t.max(now + step),
            Some(t) => t.min(now + step).max(now + Duration::from_millis(1)),
            None => now + step,
        };
        // Racing replicas: one may have seen the lease held just before the
        // other released it, and asked to come back when the lease expires.
        // Nothing happens before the workspace's own wake time, so time jumps
        // there (else a wait of days would take one lease time per round).
        // Not while the workspace waits on its agent, though: the agent
        // works meanwhile (a lost answer, say, takes it a few rounds).
        let waits_on_agent = record.operations.iter().any(|o| {
            o.steps.iter().find(|s| !s.is_finished()).is_some_and(|s| {
                s.command.is_some() || s.cancelling.is_some() || s.name == "await-agent"
            })
        });
        if !awaiting_agent
            && !waits_on_agent
            && let Some(due) = record.wake_at
            && due > target
        {
            target = due;
        }
        world.clock.advance_to(target);
    }
    let rec = engines[0].workspace(ws).await.map_err(|e| e.to_string())?;
    let ops: Vec<String> = rec
        .operations
        .iter()
        .map(|o| {
            let steps: Vec<String> = o
                .steps
                .iter()
                .map(|s| format!("{}:{:?}", s.name, s.status))
                .collect();
            format!(
                "#{} {:?} [{}] wake {:?}",
                o.seq,
                o.kind,
                steps.join(", "),
                o.wake_at
            )
        })
        .collect();
    Err(format!(
        "workspace {ws} did not come to rest: {:?}, wake {:?}, clock {}, operations {ops:?}; the last answers: {seen:#?}",
        rec.state.name(),
        rec.wake_at,
        world.clock.now()
    ))
}

/// Checks the stored history: gapless numbering, a created workspace, and state
/// changes that chain (each starts where the previous ended), stacks included.
pub fn check_history(events: &[EventRecord]) -> std::result::Result<StateName, String> {
    let mut state = StateName::Provisioning;
    let mut stacks: std::collections::BTreeMap<StackName, StackStateName> = Default::default();
    for (i, e) in events.iter().enumerate() {
        if e.seq.0 != i as u64 + 1 {
            return Err(format!("event {} has sequence number {}", i + 1, e.seq.0));
        }
        match &e.event.kind {
            EventKind::Created if i != 0 => return Err("created twice".into()),
            EventKind::Transition { from, to, .. } => {
                if *from != state {
                    return Err(format!(
                        "#{}: transition from {from} but the workspace was {state}",
                        e.seq.0
                    ));
                }
                state = *to;
            }
            EventKind::StackTransition { stack, from, to } => {
                let known = stacks.get(stack).copied();
                if *from != known {
                    return Err(format!(
                        "#{}: stack {stack} from {from:?} but it was {known:?}",
                        e.seq.0
                    ));
                }
                if *to == StackStateName::Destroyed {
                    stacks.remove(stack);
                } else {
                    stacks.insert(stack.clone(), *to);
                }
            }
            _ => {}
        }
        if i == 0 && e.event.kind != EventKind::Created {
            return Err("the history does not start with the creation".into());
        }
    }
    Ok(state)
}

/// What must hold after a workspace is destroyed (and, once driven to rest,
/// purged): nothing Cogrion created is left — in the cloud, in the cluster,
/// the agent — unless the destroy's receipt names it; the agent's credentials
/// were revoked; a purged workspace keeps its record and history and nothing
/// else; no work is left.
pub async fn check_destroyed(
    world: &World,
    engine: &Engine,
    ws: &WorkspaceId,
) -> std::result::Result<(), String> {
    let rec = engine.workspace(ws).await.map_err(|e| e.to_string())?;
    if rec.state != WorkspaceState::Destroyed {
        return Err(format!("expected Destroyed, found {:?}", rec.state));
    }
    let receipt = &rec.left_behind;
    let named = |what: &str| {
        receipt
            .iter()
            .any(|l| l.resources.iter().any(|r| r == what))
    };
    let live = world.cloud.live_resources(ws);
    let unnamed: Vec<_> = live
        .iter()
        .filter(|r| !named(&format!("{} {}", r.kind, r.id)))
        .collect();
    if !unnamed.is_empty() {
        return Err(format!(
            "the cloud still holds {unnamed:?}, which no receipt names ({receipt:?})"
        ));
    }
    for (stack, _, _) in world.cluster.installed(ws) {
        if !receipt.iter().any(|l| l.stack.as_ref() == Some(&stack)) {
            return Err(format!(
                "the cluster still holds stack {stack}, which no receipt names"
            ));
        }
    }
    if world.agents.is_installed(ws) && !receipt.iter().any(|l| l.step == "uninstall-agent") {
        return Err("the agent is still installed, and no receipt says so".into());
    }
    let history = engine.history(ws).await.map_err(|e| e.to_string())?;
    let revoked = history.iter().any(|e| {
        matches!(&e.event.kind, EventKind::StepDone { step, .. } if step == "revoke-agent-credentials")
    });
    if !revoked {
        return Err("the destroy never revoked the agent's credentials".into());
    }
    let creds = engine
        .store()
        .list_credentials(ws)
        .await
        .map_err(|e| e.to_string())?;
    match rec.purged_at {
        Some(_) => {
            if !creds.is_empty() {
                return Err(format!(
                    "a purged workspace still has credentials {creds:?}"
                ));
            }
            if !rec.operations.is_empty() || rec.wake_at.is_some() {
                return Err(format!(
                    "a purged workspace still has work: {:?}",
                    rec.operations
                ));
            }
        }
        None => {
            if creds.iter().any(|c| c.revoked.is_none()) {
                return Err("an agent certificate was not revoked".into());
            }
            let only_purge =
                rec.operations.len() == 1 && rec.operations[0].kind == OperationKind::Purge;
            if !only_purge {
                return Err(format!(
                    "a destroyed workspace has other work than its purge: {:?}",
                    rec.operations
                ));
            }
        }
    }
    Ok(())
}

/// When the history says the workspace became `Destroyed`.
pub fn destroyed_at(history: &[EventRecord]) -> Option<Timestamp> {
    history.iter().find_map(|e| match e.event.kind {
        EventKind::Transition {
            to: StateName::Destroyed,
            ..
        } => Some(e.event.at),
        _ => None,
    })
}

/// No intent ever held two resources, in the cloud or in the cluster.
pub fn check_no_duplicates(world: &World) -> std::result::Result<(), String> {
    let d = world.cloud.duplicates();
    if !d.is_empty() {
        return Err(format!("the cloud held two resources for {d:?}"));
    }
    let d = world.cluster.duplicates();
    if !d.is_empty() {
        return Err(format!("the cluster held two installations for {d:?}"));
    }
    Ok(())
}

/// A new workspace `id`, driven to `Active`.
pub async fn active(w: &World, engines: &mut [Engine], id: &WorkspaceId) {
    engines[0]
        .create(id.clone(), crate::world::spec(), crate::world::api())
        .await
        .unwrap();
    drive(w, engines, id).await.unwrap();
    assert_eq!(
        engines[0].workspace(id).await.unwrap().state,
        WorkspaceState::Active
    );
}

/// An active workspace with these stacks deployed.
pub async fn active_with(
    w: &World,
    engines: &mut [Engine],
    id: &WorkspaceId,
    stacks: Vec<StackSpec>,
) {
    active(w, engines, id).await;
    engines[0]
        .deploy_stacks(id, stacks, crate::world::api())
        .await
        .unwrap();
    drive(w, engines, id).await.unwrap();
    let rec = engines[0].workspace(id).await.unwrap();
    assert_eq!(rec.state, WorkspaceState::Active);
    assert_all_deployed(&rec);
}

/// Every stack of `rec` is deployed.
pub fn assert_all_deployed(rec: &WorkspaceRecord) {
    assert!(
        rec.stacks
            .iter()
            .all(|(_, s)| s.state == StackState::Deployed),
        "{:?}",
        rec.stacks
    );
}

/// Asserts that the feed events `seen` hold each of `ids`' whole history,
/// every event once and in order (events of other workspaces are ignored).
pub async fn check_fed<'a>(
    engine: &Engine,
    seen: &[FeedEvent],
    ids: impl IntoIterator<Item = &'a WorkspaceId>,
) {
    for id in ids {
        let history = engine.history(id).await.unwrap();
        let fed: Vec<EventRecord> = seen
            .iter()
            .filter(|e| &e.workspace == id)
            .map(|e| e.event.clone())
            .collect();
        assert_eq!(fed, history, "{id}: every event once, in order");
    }
}
