//! No command runs twice at once (issue 14, item 9): a command its step gave
//! up on is withdrawn if no agent had it, otherwise cancelled, and the step's
//! retry waits for the cancel's answer or a new agent. Against the simulated
//! world (cloud, cluster and agents simulated — the agents honour cancel
//! requests as the asynchronous agent of In-cluster part 1 will); the engine,
//! gateway and in-memory store are the real ones.

use std::time::Duration;

use cogrion::proto::CommandId;
use cogrion::sim::FaultPlan;
use cogrion::*;
use cogrion::{provider::*, sim::*, store::*};

use crate::drive::{active, drive};
use crate::world::{World, api, name, stack, ws};

/// A world whose engine waits 10 s for a command's answer, with its agents
/// prepared by `agents` before any is installed; a workspace `name` driven
/// to `Active`, and a Helm stack `web` requested for it.
async fn deploying(
    seed: u64,
    name: &str,
    agents: impl FnOnce(&SimulatedAgents),
) -> (World, Vec<Engine>, Engine, WorkspaceId) {
    let w = World::new(seed, FaultPlan::none());
    let engine = w.engine_with("cp", |c| {
        c.with_deadlines(
            Duration::from_secs(600),
            Duration::from_secs(10),
            Duration::from_secs(120),
        )
    });
    agents(&w.agents);
    let mut engines = vec![engine.clone()];
    let id = ws(name);
    active(&w, &mut engines, &id).await;
    engine
        .deploy_stack(&id, stack("web", ExecutorKind::Helm, &[]), api())
        .await
        .unwrap();
    (w, engines, engine, id)
}

/// The command a step of `id` waits for, if one does.
async fn awaited(engine: &Engine, id: &WorkspaceId) -> Option<CommandId> {
    let rec = engine.workspace(id).await.unwrap();
    rec.operations
        .iter()
        .flat_map(|o| &o.steps)
        .find_map(|s| s.command.clone())
}

/// The command events of `id`'s history, in order, as text.
async fn command_events(engine: &Engine, id: &WorkspaceId) -> Vec<String> {
    engine
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event.kind {
            EventKind::CommandQueued { id } => Some(format!("queued {id}")),
            EventKind::CommandAnswered { id, succeeded } => {
                Some(format!("answered {id} {succeeded}"))
            }
            EventKind::CommandWithdrawn { id, delivered } => {
                Some(format!("withdrawn {id} delivered={delivered}"))
            }
            EventKind::CommandSuperseded { id, succeeded } => {
                Some(format!("superseded {id} {succeeded:?}"))
            }
            _ => None,
        })
        .collect()
}

fn deployed(rec: &WorkspaceRecord) -> bool {
    rec.stacks.get(&name("web")).map(|s| s.state.name()) == Some(StackStateName::Deployed)
}

/// A command no agent received by its deadline (the agent was cut off) is
/// withdrawn before its retry is queued: once the agent is back, it runs the
/// retry only. (Before: the first command stayed pending, and the agent ran
/// both.)
#[tokio::test]
async fn a_command_no_agent_received_is_withdrawn_before_its_retry() {
    let (w, mut engines, engine, id) = deploying(31, "withdrawn", |_| {}).await;
    let before = w.agents.executed(&id);
    w.agents.set_unreachable(&id, true);
    let first = loop {
        engine.advance(&id).await.unwrap();
        if let Some(c) = awaited(&engine, &id).await {
            break c;
        }
    };
    w.clock.advance(Duration::from_secs(11));
    engine.advance(&id).await.unwrap();
    assert!(
        matches!(
            w.store.get_command(&id, &first).await.unwrap().status,
            CommandStatus::Withdrawn { .. }
        ),
        "withdrawn in the store"
    );
    w.agents.set_unreachable(&id, false);
    drive(&w, &mut engines, &id).await.unwrap();
    assert!(deployed(&engine.workspace(&id).await.unwrap()));
    let base = first.as_str().rsplit_once('.').unwrap().0;
    assert_eq!(
        command_events(&engine, &id).await,
        [
            format!("queued {first}"),
            format!("withdrawn {first} delivered=false"),
            format!("queued {base}.2"),
            format!("answered {base}.2 true"),
        ]
    );
    assert_eq!(
        w.agents.executed(&id) - before,
        1,
        "the agent ran the retry only"
    );
    assert!(w.agents.overlaps().is_empty());
}

/// A command the agent is running when its deadline passes gets a cancel
/// request; the retry is queued only once the agent has answered it (here:
/// stopped, answered as failed), and that late answer is recorded and
/// ignored. (Before: the retry was queued at once and ran next to the first
/// command.)
#[tokio::test]
async fn a_command_running_past_its_deadline_is_cancelled_and_its_retry_waits() {
    // The first command the agent gets runs for 40 rounds (20 s of the
    // driver's half-second rounds), twice the deadline.
    let (w, mut engines, engine, id) =
        deploying(32, "cancelled", |agents| agents.hold_commands(40, 1)).await;
    drive(&w, &mut engines, &id).await.unwrap();
    assert!(deployed(&engine.workspace(&id).await.unwrap()));
    assert!(
        w.agents.overlaps().is_empty(),
        "two commands of one step ran at once: {:?}",
        w.agents.overlaps()
    );
    assert_eq!(w.agents.cancelled(&id), 1, "the agent stopped the first");
    let events = command_events(&engine, &id).await;
    let first = events[0].strip_prefix("queued ").unwrap().to_string();
    let base = first.rsplit_once('.').unwrap().0;
    assert_eq!(
        events,
        [
            format!("queued {first}"),
            format!("withdrawn {first} delivered=true"),
            format!("superseded {first} Some(false)"),
            format!("queued {base}.2"),
            format!("answered {base}.2 true"),
        ]
    );
}

/// A command being cancelled whose agent is gone (cut off while running it)
/// holds the retry until a new agent connects: here after the operator
/// re-bootstraps the agent. The new agent ignores cancel requests (as one
/// that predates them would), so the old command is let go without an
/// answer, on the new connection alone.
#[tokio::test]
async fn a_new_agent_lets_a_cancelled_command_go() {
    let (w, mut engines, engine, id) =
        deploying(33, "reconnected", |agents| agents.hold_commands(1_000, 1)).await;
    // Until the agent has the command; then it is cut off.
    let first = loop {
        engine.advance(&id).await.unwrap();
        w.agents.step_all().await;
        if let Some(c) = awaited(&engine, &id).await
            && w.store.get_command(&id, &c).await.unwrap().deliveries > 0
        {
            break c;
        }
    };
    w.agents.set_unreachable(&id, true);
    w.agents.hold_commands(0, 0);
    w.agents.ignore_cancels(true);
    w.clock.advance(Duration::from_secs(11));
    engine.advance(&id).await.unwrap();
    // However often it is woken and however long it waits, the retry waits.
    for _ in 0..5 {
        w.clock.advance(Duration::from_secs(600));
        engine.advance(&id).await.unwrap();
    }
    let events = command_events(&engine, &id).await;
    assert_eq!(
        events,
        [
            format!("queued {first}"),
            format!("withdrawn {first} delivered=true"),
        ],
        "nothing queued while the first may still run"
    );
    engine.rebootstrap_agent(&id, api()).await.unwrap();
    w.agents.set_unreachable(&id, false);
    drive(&w, &mut engines, &id).await.unwrap();
    let rec = engine.workspace(&id).await.unwrap();
    assert!(deployed(&rec), "{:?}", rec.state);
    let events = command_events(&engine, &id).await;
    let base = first.as_str().rsplit_once('.').unwrap().0;
    assert_eq!(
        events,
        [
            format!("queued {first}"),
            format!("withdrawn {first} delivered=true"),
            format!("superseded {first} None"),
            format!("queued {base}.2"),
            format!("answered {base}.2 true"),
        ]
    );
    assert!(w.agents.overlaps().is_empty());
}
