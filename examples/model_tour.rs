//! A tour of Cogrion's model, driven by hand: a workspace goes through its whole
//! lifecycle — a failed provisioning retried, the agent's first poll, two
//! dependent stacks, an update, teardown — with every change written to the
//! in-memory store as one fenced, compare-and-swap commit, and the stored history
//! printed at the end.
//!
//! The lifecycle engine will drive these same transitions by itself; this example
//! shows the pieces it is built from.
//!
//! Run with `cargo run --example model_tour`.

use std::time::Duration;

use cogrion::proto::{CommandId, CommandKind, CommandOutcome, CommandResult};
use cogrion::*;
use cogrion::{lifecycle::*, provider::*, store::*};

const SPEC: &str = r#"{
  "tenant": "acme",
  "cloud": { "provider": "simulated" },
  "region": "local-1",
  "kubernetes_version": "1.34",
  "network": { "cidr": "10.42.0.0/16" },
  "node_pools": [
    { "name": "general", "instance_type": "sim-small", "size": { "min": 1, "desired": 2, "max": 4 } }
  ]
}"#;

/// Applies a workspace event: pure step, then one fenced CAS commit with the
/// event that explains it.
async fn transition(
    store: &dyn WorkspaceStore,
    lease: &Lease,
    clock: &ManualClock,
    event: WorkspaceEvent,
    why: &str,
) -> Result<()> {
    let now = clock.now();
    let current = store.get_workspace(&lease.workspace).await?;
    let t = step(&current.value.state, &event, now)?;
    let mut next = current.value.clone();
    next.state = t.to.clone();
    next.updated_at = now;
    store
        .commit(
            WorkspaceWrite::update(next, current.revision, now)
                .fenced(lease.fence)
                .event(NewEvent {
                    at: now,
                    actor: Actor::Engine {
                        holder: lease.holder.clone(),
                    },
                    kind: EventKind::Transition {
                        from: t.from,
                        to: t.to.name(),
                        event: t.event,
                    },
                    message: why.into(),
                }),
        )
        .await?;
    println!("  {:<12} -> {:<12} ({})", t.from, t.to.name(), why);
    Ok(())
}

/// Applies a stack event inside the workspace record.
async fn stack_change(
    store: &dyn WorkspaceStore,
    lease: &Lease,
    clock: &ManualClock,
    stack: &StackName,
    change: impl FnOnce(&mut StackGraph, StateName, Timestamp) -> Result<StackState, GraphError>,
) -> Result<()> {
    let now = clock.now();
    let current = store.get_workspace(&lease.workspace).await?;
    let mut next = current.value.clone();
    let from = next.stacks.get(stack).map(|e| e.state.name());
    let to = change(&mut next.stacks, current.value.state.name(), now)?.name();
    store
        .commit(
            WorkspaceWrite::update(next, current.revision, now)
                .fenced(lease.fence)
                .event(NewEvent {
                    at: now,
                    actor: Actor::Engine {
                        holder: lease.holder.clone(),
                    },
                    kind: EventKind::StackTransition {
                        stack: stack.clone(),
                        from,
                        to,
                    },
                    message: format!("stack {stack} is {to}"),
                }),
        )
        .await?;
    println!(
        "  stack {stack:<13} {} -> {to}",
        from.map_or("-".to_string(), |f| f.to_string())
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let clock = ManualClock::new(Timestamp::from_millis(1_800_000_000_000));
    // The store judges leases by the same (manual) clock the tour moves.
    let store = InMemoryStore::with_clock(std::sync::Arc::new(clock.clone()));

    println!("1. A spec with three mistakes is refused with all three:");
    let bad = SPEC
        .replace("\"acme\"", "\"ACME\"")
        .replace("10.42.0.0/16", "10.42.0.1/16")
        .replace("\"max\": 4", "\"max\": 0");
    if let Err(errors) = WorkspaceSpec::from_json(&bad) {
        for p in &errors.problems {
            println!("   - {}: {}", p.path, p.message);
        }
    }

    println!("2. A valid spec creates the workspace in Provisioning:");
    let spec = WorkspaceSpec::from_json(SPEC)?;
    let id: WorkspaceId = "acme-prod".parse()?;
    let now = clock.now();
    store
        .commit(
            WorkspaceWrite::create(WorkspaceRecord::new(id.clone(), spec, now), now).event(
                NewEvent {
                    at: now,
                    actor: Actor::Api {
                        principal: "platform-team".into(),
                    },
                    kind: EventKind::Created,
                    message: "workspace requested".into(),
                },
            ),
        )
        .await?;
    let lease = store
        .acquire(&id, &"control-plane-0".parse()?, Duration::from_secs(30))
        .await?;
    println!(
        "   created; lease held by {} with fencing token {}",
        lease.holder, lease.fence.0
    );

    println!(
        "3. Provisioning fails at the cluster step, is retried, and the agent's first poll makes it Active:"
    );
    clock.advance(Duration::from_secs(40));
    let lease = store.renew(&lease, Duration::from_secs(30)).await?;
    let failure = WorkspaceEvent::OperationFailed {
        step: "cluster".into(),
        error: "quota exceeded".into(),
    };
    transition(
        &store,
        &lease,
        &clock,
        failure,
        "the cloud refused: quota exceeded",
    )
    .await?;
    transition(
        &store,
        &lease,
        &clock,
        WorkspaceEvent::RetryRequested,
        "tenant raised the quota and retried",
    )
    .await?;
    // The agent bootstraps (its certificate is recorded so it can be revoked later)…
    let now = clock.now();
    store
        .put_credential(AgentCredential::new(
            id.clone(),
            "01".parse()?,
            now,
            now + Duration::from_secs(24 * 3600),
        ))
        .await?;
    clock.advance(Duration::from_secs(3));
    // …and its first authenticated poll is the only way into Active.
    transition(
        &store,
        &lease,
        &clock,
        WorkspaceEvent::AgentFirstPoll,
        "first authenticated agent poll",
    )
    .await?;

    println!("4. Two stacks, one depending on the other, deploy in dependency order:");
    let helm = |chart: &str| ExecutorSpec::Helm {
        source: format!("oci://registry.example/charts/{chart}"),
        version: "1.0.0".into(),
        values: Default::default(),
    };
    let cert_manager: StackName = "cert-manager".parse()?;
    let shop: StackName = "shop".parse()?;
    let current = store.get_workspace(&id).await?;
    let mut next = current.value.clone();
    next.stacks.add_all(vec![
        StackSpec {
            name: shop.clone(),
            kind: StackKind::Application,
            executor: helm("shop"),
            depends_on: [cert_manager.clone()].into(),
        },
        StackSpec {
            name: cert_manager.clone(),
            kind: StackKind::InfraAddon,
            executor: helm("cert-manager"),
            depends_on: Default::default(),
        },
    ])?;
    let order = next.stacks.deploy_order();
    store
        .commit(WorkspaceWrite::update(next, current.revision, clock.now()).fenced(lease.fence))
        .await?;
    println!(
        "   deploy order: {}",
        order
            .iter()
            .map(StackName::as_str)
            .collect::<Vec<_>>()
            .join(" -> ")
    );
    if let Err(e) = store
        .get_workspace(&id)
        .await?
        .value
        .stacks
        .check_deploy(&shop, StateName::Active)
    {
        println!("   refused early: {e}");
    }
    for stack in &order {
        clock.advance(Duration::from_secs(2));
        stack_change(&store, &lease, &clock, stack, |g, ws, t| {
            g.request_deploy(stack, ws, t)
        })
        .await?;
        // Helm work runs in the agent: one durable command, delivered, answered.
        let cmd = CommandId::new(format!("{id}.deploy.{stack}"))?;
        store
            .commit(
                WorkspaceWrite::new(id.clone(), clock.now())
                    .fenced(lease.fence)
                    .command(NewCommand {
                        id: cmd.clone(),
                        kind: CommandKind::new("helm.apply")?,
                        payload: serde_json::json!({ "release": stack.as_str() }),
                    }),
            )
            .await?;
        let delivered = store.deliver(&id, 0, clock.now()).await?;
        println!(
            "   agent received {} (delivery #{})",
            delivered[0].command.id, delivered[0].deliveries
        );
        store
            .answer(
                &id,
                CommandResult::new(cmd, CommandOutcome::Succeeded, serde_json::Value::Null)?,
                clock.now(),
            )
            .await?;
        stack_change(&store, &lease, &clock, stack, |g, _, t| {
            g.apply(stack, &StackEvent::DeploySucceeded, t)
        })
        .await?;
    }

    println!("5. Illegal requests are typed errors and change nothing:");
    let before = store.get_workspace(&id).await?;
    match step(
        &before.value.state,
        &WorkspaceEvent::RetryRequested,
        clock.now(),
    ) {
        Err(e) => println!("   {e}"),
        Ok(_) => unreachable!("retry is refused in Active"),
    }
    let mut g = before.value.stacks.clone();
    match g.request_removal(&cert_manager, clock.now()) {
        Err(e) => println!("   {e}"),
        Ok(_) => unreachable!("cert-manager has a dependent"),
    }
    assert_eq!(store.get_workspace(&id).await?.revision, before.revision);

    println!("6. An update, then teardown in reverse dependency order:");
    clock.advance(Duration::from_secs(5));
    transition(
        &store,
        &lease,
        &clock,
        WorkspaceEvent::UpdateRequested,
        "node pool resized to 3",
    )
    .await?;
    transition(
        &store,
        &lease,
        &clock,
        WorkspaceEvent::UpdateCompleted,
        "update applied",
    )
    .await?;
    transition(
        &store,
        &lease,
        &clock,
        WorkspaceEvent::DestroyRequested,
        "tenant offboarded",
    )
    .await?;
    let teardown = store
        .get_workspace(&id)
        .await?
        .value
        .stacks
        .teardown_order();
    for stack in &teardown {
        stack_change(&store, &lease, &clock, stack, |g, _, t| {
            g.request_removal(stack, t)
        })
        .await?;
        stack_change(&store, &lease, &clock, stack, |g, _, t| {
            g.apply(stack, &StackEvent::DestroySucceeded, t)
        })
        .await?;
    }
    let revoked = store
        .revoke_all(&id, "workspace destroyed", clock.now())
        .await?;
    println!("   agent credentials revoked: {}", revoked.len());
    transition(
        &store,
        &lease,
        &clock,
        WorkspaceEvent::DestroyCompleted,
        "network deleted last",
    )
    .await?;
    store.release(&lease).await?;

    println!("7. The stored history:");
    for e in store.read_events(&id, EventSeq(0), 0).await? {
        let kind = e.event.kind.to_string();
        println!(
            "  #{:<3} {}  {kind:<44} {}",
            e.seq.0, e.event.at, e.event.message
        );
    }
    let last = store.get_workspace(&id).await?;
    assert_eq!(last.value.state, WorkspaceState::Destroyed);
    println!(
        "Final state: {} (revision {})",
        last.value.state.name(),
        last.revision
    );
    Ok(())
}
