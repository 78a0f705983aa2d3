//! The `WorkspaceStore` conformance suite.

use std::time::Duration;

use cogrion_agent_proto::{CommandId, CommandKind, CommandOutcome, CommandResult, CommandSeq};
use futures::future::join_all;
use serde_json::json;

use super::{random_workspace_id, sample_workspace_spec};
use crate::{
    Actor, Error, EventKind, EventSeq, HolderId, Labels, ManualClock, Resource, Result, Retry,
    StateName, TenantId, Timestamp, TokenRefusal, WorkspaceId, WorkspaceState,
    store::{
        AgentCredential, BatchOutcome, BatchWrite, BootstrapTokenRecord, CertSerial, CheckpointKey,
        CommandStatus, FencingToken, ListQuery, MAX_LEASE_TTL, NewCommand, NewEvent, Revision,
        TokenHash, WorkspaceRecord, WorkspaceStore, WorkspaceSummary, WorkspaceWrite,
    },
};

/// A point in time far from the epoch, so `now - x` never underflows.
pub(super) const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);
const TTL: Duration = Duration::from_secs(30);

/// Runs every check of the `WorkspaceStore` contract against `store`:
///
/// - records: create is exclusive, a stale revision is a conflict, unknown ids
///   are not found, refused writes change nothing, records round-trip exactly;
/// - N concurrent writers on one revision: exactly one winner per revision;
/// - commits are atomic (record, events and commands all or nothing) and
///   `commit_batch` isolates each write's failure;
/// - history: gapless sequence numbers in commit order, paging;
/// - leases: exclusivity, expiry, renewal, release, strictly increasing fencing
///   tokens, and fenced writes refused after the lease moved on;
/// - bulk claims of due workspaces: earliest due first, up to the limit, never a
///   workspace another holder has live, disjoint between concurrent claimers;
/// - checkpoints: fenced writes, read back;
/// - the command queue: ordered at-least-once delivery until answered, first
///   answer kept, per-workspace isolation, duplicate and oversized commands
///   refused;
/// - bootstrap tokens: one-time, TTL, bound to one workspace, replaced by a newer
///   one, exactly one winner among concurrent exchanges;
/// - many exchanges at once (a reconnect storm): each decided on its own — a
///   replayed token loses, a taken serial spends nothing, older credentials
///   are revoked — whatever a store batches;
/// - agent credentials: recorded, listed per workspace, read for a poll (never
///   "nothing pending" while a command is), revoked permanently;
/// - many polls at once (a fleet reconnecting): each read answers for its own
///   serial, and of concurrent first-poll marks of one credential exactly one
///   reports the first poll — whatever a store batches;
/// - listing by tenant, state, cloud, labels and due time, with paging;
///   summaries that match the records; counts by state;
/// - the feed of every workspace's events: each once, each history in
///   order, resumable after any cursor, a purged history gone from it;
/// - purges: only of a destroyed workspace, fenced and compare-and-swap like a
///   commit, refusals changing nothing; commands, checkpoints, tokens and
///   credentials deleted, with the history and record kept (then updated) or
///   deleted (then the id can be created again), other workspaces untouched.
///
/// Panics on the first violation, naming it.
///
/// `clock` is the clock the store judges leases by (the store was built with
/// it: [`InMemoryStore::with_clock`](crate::store::InMemoryStore::with_clock), or a
/// SQL store's test clock): the suite sets it where each check needs it.
pub async fn store_suite(store: &dyn WorkspaceStore, clock: &ManualClock) {
    records(store).await;
    concurrent_writers(store).await;
    atomic_commits(store).await;
    batch_commits(store, clock).await;
    history(store).await;
    leases(store, clock).await;
    claims(store, clock).await;
    fencing(store, clock).await;
    checkpoints(store, clock).await;
    command_queue(store).await;
    withdrawals(store).await;
    tokens(store).await;
    credentials(store).await;
    exchanges(store).await;
    exchanges_at_once(store).await;
    polls_at_once(store).await;
    listing(store).await;
    feed(store, clock).await;
    purges(store, clock).await;
    super::identity::replays(store).await;
    super::identity::renewals(store).await;
    super::identity::renewal_races(store).await;
}

/// For a store that overrides
/// [`get_credential_for_poll`](crate::store::CredentialStore::get_credential_for_poll):
/// its answer is exact — nothing pending before a command is queued and after
/// it is answered, pending in between. (The trait's default always says
/// pending, which [`store_suite`] accepts.)
pub async fn poll_reads_are_exact(store: &dyn WorkspaceStore) {
    let ws = create(store, "pollread").await;
    let serial =
        CertSerial::new(format!("{:032x}", rand::random::<u128>() >> 1)).expect("valid serial");
    store
        .put_credential(credential(&ws, serial.clone()))
        .await
        .expect("record");
    let pending = async || poll_pending(store, &serial).await;
    assert!(!pending().await, "nothing queued: nothing pending");
    store
        .commit(WorkspaceWrite::new(ws.clone(), T0).command(command("q1")))
        .await
        .expect("queue");
    assert!(pending().await, "a queued command is pending");
    store.deliver(&ws, 0, T0).await.expect("deliver");
    assert!(
        pending().await,
        "a delivered command is pending until answered"
    );
    store
        .answer(&ws, result("q1", CommandOutcome::Succeeded), T0)
        .await
        .expect("answer");
    assert!(!pending().await, "an answered command is not pending");

    // Given up on: a withdrawn command is not pending, a cancelling one is
    // (its cancel request is delivered) until it is answered.
    store
        .commit(
            WorkspaceWrite::new(ws.clone(), T0)
                .command(command("q2"))
                .command(command("q3")),
        )
        .await
        .expect("queue");
    let q2 = CommandId::new("q2").expect("id");
    store.withdraw(&ws, &q2, T0).await.expect("withdraw");
    store.deliver(&ws, 0, T0).await.expect("deliver q3");
    let q3 = CommandId::new("q3").expect("id");
    store.withdraw(&ws, &q3, T0).await.expect("withdraw");
    assert!(pending().await, "a command being cancelled is pending");
    store
        .answer(&ws, result("q3", CommandOutcome::Succeeded), T0)
        .await
        .expect("answer");
    assert!(
        !pending().await,
        "a withdrawn command, and a cancelled one answered, are not pending"
    );
}

/// For a store on its own clock (not a test clock): a lease it grants
/// expires a TTL after the store's now, which — for a database on this
/// machine — is this machine's time while the call ran (within a second for
/// clock reading granularity).
pub async fn leases_run_on_the_stores_clock(store: &dyn WorkspaceStore) {
    use crate::Clock;
    let id = create(store, "ownclock").await;
    let before = crate::SystemClock.now();
    let lease = store
        .acquire(&id, &holder("own-clock"), TTL)
        .await
        .expect("acquire");
    let after = crate::SystemClock.now();
    let slack = Duration::from_secs(1);
    assert!(
        lease.expires_at + slack >= before + TTL && lease.expires_at <= after + TTL + slack,
        "a lease granted between {before} and {after} expires at {}, not a TTL ({TTL:?}) after the store's now",
        lease.expires_at
    );
    let renewed = store.renew(&lease, TTL * 2).await.expect("renew");
    assert!(
        renewed.expires_at > lease.expires_at,
        "renewed for twice as long"
    );
}

/// Whether a poll's read of `serial` says something may be pending.
async fn poll_pending(store: &dyn WorkspaceStore, serial: &CertSerial) -> bool {
    store
        .get_credential_for_poll(serial)
        .await
        .expect("poll read")
        .1
}

/// A store's leases asked at a given time: the store's clock is set to it
/// first (leases are judged by the store's clock, never the caller's).
#[derive(Clone, Copy)]
struct At<'a> {
    store: &'a dyn WorkspaceStore,
    clock: &'a ManualClock,
}

impl At<'_> {
    async fn acquire(
        &self,
        workspace: &WorkspaceId,
        holder: &HolderId,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<crate::store::Lease> {
        self.clock.set(now);
        self.store.acquire(workspace, holder, ttl).await
    }

    async fn renew(
        &self,
        lease: &crate::store::Lease,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<crate::store::Lease> {
        self.clock.set(now);
        self.store.renew(lease, ttl).await
    }

    async fn claim_due(
        &self,
        holder: &HolderId,
        ttl: Duration,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<crate::store::Lease>> {
        self.clock.set(now);
        self.store.claim_due(holder, ttl, until, limit).await
    }
}

fn record(id: &WorkspaceId) -> WorkspaceRecord {
    WorkspaceRecord::new(id.clone(), sample_workspace_spec(), T0)
}

pub(super) async fn create(store: &dyn WorkspaceStore, prefix: &str) -> WorkspaceId {
    let id = random_workspace_id(prefix);
    store
        .commit(WorkspaceWrite::create(record(&id), T0))
        .await
        .unwrap_or_else(|e| panic!("creating workspace {id}: {e}"));
    id
}

fn event(message: &str) -> NewEvent {
    NewEvent {
        at: T0,
        actor: Actor::Api {
            principal: "conformance".into(),
        },
        kind: EventKind::Note,
        message: message.into(),
    }
}

fn command(id: &str) -> NewCommand {
    NewCommand {
        id: CommandId::new(id).expect("valid command id"),
        kind: CommandKind::new("health").expect("valid kind"),
        payload: json!({ "n": id }),
    }
}

fn holder(name: &str) -> HolderId {
    HolderId::new(name).expect("valid holder")
}

async fn records(store: &dyn WorkspaceStore) {
    let id = random_workspace_id("rec");
    expect_err!(
        store.get_workspace(&id).await,
        Error::NotFound(Resource::Workspace(_)),
        "reading a workspace that was never created"
    );

    // A rich record must round-trip exactly.
    let mut rec = record(&id);
    rec.state = WorkspaceState::Failed(crate::Failure {
        operation: crate::WorkspaceOperation::Destroy,
        step: "stack/db".into(),
        error: "bucket not empty".into(),
        at: T0,
        stack: Some("db".parse().expect("valid stack")),
        remaining: vec!["s3 bucket acme-db".into()],
        retryable: Some(false),
    });
    rec.applied = Some(sample_workspace_spec());
    rec.layers.insert(
        crate::provider::InfraLayer::Network,
        crate::store::BuiltLayer {
            spec: sample_workspace_spec(),
            resources: vec![crate::provider::CloudResource {
                layer: crate::provider::InfraLayer::Network,
                kind: "vpc".into(),
                id: "vpc-1".into(),
            }],
            at: T0,
        },
    );
    rec.left_behind.push(crate::LeftBehind {
        operation: 6,
        step: "stack/web".into(),
        stack: Some("web".parse().expect("valid stack")),
        resources: vec!["Deployment web".into()],
        why: crate::LeftReason::Unreachable {
            since: T0,
            error: "no answer".into(),
        },
        at: T0,
    });
    rec.purged_at = Some(T0);
    rec.wake_at = Some(T0 + Duration::from_secs(5));
    rec.next_operation = 7;
    rec.operations.push(crate::store::OperationRecord {
        token: None,
        seq: 6,
        kind: crate::store::OperationKind::Provision,
        stack: None,
        steps: vec![crate::store::StepRecord {
            name: "network".into(),
            status: crate::store::StepStatus::Done,
            attempts: 2,
            budget_from: 1,
            last_error: Some("throttled".into()),
            command: Some(CommandId::new("c-7").expect("valid id")),
            deadline: Some(T0 + Duration::from_secs(60)),
            started_at: Some(T0),
            cancelling: Some(CommandId::new("c-6").expect("valid id")),
            stack: Some("db".parse().expect("valid stack")),
            progress: Some(crate::store::ProgressNote {
                message: "VPC CREATING, 40 s left".into(),
                at: T0,
            }),
        }],
        started_at: T0,
        wake_at: Some(T0 + Duration::from_secs(3)),
        cancel_requested: true,
    });
    rec.cluster = Some(crate::provider::ClusterAccess {
        name: "c".into(),
        endpoint: "https://c.invalid".into(),
        ca_bundle_pem: "-----BEGIN CERTIFICATE-----".into(),
    });
    let committed = store
        .commit(WorkspaceWrite::create(rec.clone(), T0))
        .await
        .expect("create");
    assert_eq!(
        committed.revision,
        Some(Revision(1)),
        "a created record has revision 1"
    );
    let got = store.get_workspace(&id).await.expect("read after create");
    assert_eq!(got.revision, Revision(1));
    assert_eq!(got.value, rec, "a record must read back exactly as written");

    expect_err!(
        store.commit(WorkspaceWrite::create(record(&id), T0)).await,
        Error::AlreadyExists(Resource::Workspace(_)),
        "creating a workspace that exists"
    );
    assert_eq!(
        store.get_workspace(&id).await.expect("read").value,
        rec,
        "a refused create changed the record"
    );

    let mut next = rec.clone();
    next.state = WorkspaceState::Provisioning;
    let c = store
        .commit(WorkspaceWrite::update(next.clone(), Revision(1), T0))
        .await
        .expect("update at revision 1");
    assert_eq!(
        c.revision,
        Some(Revision(2)),
        "each write adds one to the revision"
    );

    match store
        .commit(WorkspaceWrite::update(rec.clone(), Revision(1), T0))
        .await
    {
        Err(Error::Conflict {
            expected, found, ..
        }) => {
            assert_eq!(
                (expected, found),
                (Revision(1), Revision(2)),
                "conflict must report both revisions"
            );
        }
        other => panic!("a stale revision must be a conflict, got {other:?}"),
    }
    let got = store.get_workspace(&id).await.expect("read");
    assert_eq!(
        (got.revision, got.value),
        (Revision(2), next),
        "a refused update changed the record"
    );

    let other = random_workspace_id("rec");
    expect_err!(
        store
            .commit(WorkspaceWrite::update(record(&other), Revision(1), T0))
            .await,
        Error::NotFound(Resource::Workspace(_)),
        "updating a workspace that does not exist"
    );
    expect_err!(
        store
            .commit(WorkspaceWrite::new(other.clone(), T0).event(event("x")))
            .await,
        Error::NotFound(Resource::Workspace(_)),
        "appending events to a workspace that does not exist"
    );

    // A record written under another workspace's id is refused and stores nothing.
    let mut write = WorkspaceWrite::create(record(&other), T0);
    write.workspace = random_workspace_id("rec");
    let target = write.workspace.clone();
    expect_err!(
        store.commit(write).await,
        Error::InvalidValue(_),
        "a record written under another id"
    );
    expect_err!(
        store.get_workspace(&other).await,
        Error::NotFound(_),
        "a refused write stored the record"
    );
    expect_err!(
        store.get_workspace(&target).await,
        Error::NotFound(_),
        "a refused write stored the record"
    );
}

async fn concurrent_writers(store: &dyn WorkspaceStore) {
    const WRITERS: usize = 16;
    // Concurrent creates of one id: exactly one wins.
    let id = random_workspace_id("race");
    let results =
        join_all((0..WRITERS).map(|_| store.commit(WorkspaceWrite::create(record(&id), T0)))).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        wins, 1,
        "{WRITERS} concurrent creates of one workspace: exactly one must succeed"
    );
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, Error::AlreadyExists(_)),
                "a losing create must be AlreadyExists, got {e:?}"
            );
        }
    }

    // Concurrent updates from the same revision, three rounds: one winner each.
    for round in 1..=3u64 {
        let base = store.get_workspace(&id).await.expect("read");
        assert_eq!(base.revision, Revision(round));
        let results = join_all((0..WRITERS).map(|i| {
            let mut rec = base.value.clone();
            rec.next_operation = 1000 * round + i as u64;
            store.commit(
                WorkspaceWrite::update(rec, base.revision, T0).event(event(&format!("writer {i}"))),
            )
        }))
        .await;
        let winners: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one of {WRITERS} writers must win, got {winners:?}"
        );
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, Error::Conflict { .. }),
                    "a losing update must be a Conflict, got {e:?}"
                );
            }
        }
        let after = store.get_workspace(&id).await.expect("read");
        assert_eq!(after.revision, Revision(round + 1));
        assert_eq!(
            after.value.next_operation,
            1000 * round + winners[0] as u64,
            "the winner's write is stored"
        );
    }
    let history = store
        .read_events(&id, EventSeq(0), 0)
        .await
        .expect("history");
    assert_eq!(history.len(), 3, "only the winners' events are appended");
}

async fn atomic_commits(store: &dyn WorkspaceStore) {
    let id = create(store, "atom").await;
    store
        .commit(WorkspaceWrite::new(id.clone(), T0).command(command("c1")))
        .await
        .expect("queue a command");

    let base = store.get_workspace(&id).await.expect("read");
    let mut changed = base.value.clone();
    changed.next_operation = 42;

    // A stale revision refuses the events and commands that came with it.
    let stale = WorkspaceWrite::update(changed.clone(), Revision(base.revision.0 + 5), T0)
        .event(event("should not appear"))
        .command(command("c2"));
    expect_err!(
        store.commit(stale).await,
        Error::Conflict { .. },
        "stale revision"
    );

    // A duplicate command id refuses the record change and events with it.
    let dup = WorkspaceWrite::update(changed.clone(), base.revision, T0)
        .event(event("nope"))
        .command(command("c1"));
    expect_err!(
        store.commit(dup).await,
        Error::AlreadyExists(Resource::Command(..)),
        "duplicate command id"
    );

    // So does a duplicate inside one write, and an oversized payload.
    let twice = WorkspaceWrite::update(changed.clone(), base.revision, T0)
        .command(command("c3"))
        .command(command("c3"));
    expect_err!(
        store.commit(twice).await,
        Error::AlreadyExists(_),
        "one command id twice in one write"
    );
    let mut big = command("c4");
    big.payload = json!("x".repeat(cogrion_agent_proto::MAX_PAYLOAD_LEN + 1));
    let oversized = WorkspaceWrite::update(changed, base.revision, T0)
        .event(event("nope"))
        .command(big);
    expect_err!(
        store.commit(oversized).await,
        Error::InvalidValue(_),
        "an oversized command payload"
    );

    let after = store.get_workspace(&id).await.expect("read");
    assert_eq!(
        after.revision, base.revision,
        "refused commits changed the record"
    );
    assert_eq!(
        after.value, base.value,
        "refused commits changed the record"
    );
    assert!(
        store
            .read_events(&id, EventSeq(0), 0)
            .await
            .expect("history")
            .is_empty(),
        "refused commits appended events"
    );
    let pending = store.deliver(&id, 0, T0).await.expect("deliver");
    let ids: Vec<&str> = pending.iter().map(|c| c.command.id.as_str()).collect();
    assert_eq!(ids, ["c1"], "refused commits queued commands");
}

async fn batch_commits(store: &dyn WorkspaceStore, clock: &ManualClock) {
    let a = create(store, "batch").await;
    let b = create(store, "batch").await;
    let c = create(store, "batch").await;
    let read = |id: WorkspaceId| async move { store.get_workspace(&id).await.expect("read") };
    let (ra, rb, rc) = (
        read(a.clone()).await,
        read(b.clone()).await,
        read(c.clone()).await,
    );
    let results = store
        .commit_batch(vec![
            WorkspaceWrite::update(ra.value.clone(), ra.revision, T0).event(event("a")),
            WorkspaceWrite::update(rb.value.clone(), Revision(99), T0).event(event("b")),
            WorkspaceWrite::update(rc.value.clone(), rc.revision, T0)
                .event(event("c"))
                .command(command("c1")),
        ])
        .await;
    assert_eq!(results.len(), 3, "one result per write");
    assert!(results[0].is_ok(), "write a: {:?}", results[0]);
    assert!(
        matches!(results[1], Err(Error::Conflict { .. })),
        "write b must conflict alone: {:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "write c: {:?}", results[2]);
    assert_eq!(read(a.clone()).await.revision, Revision(2));
    assert_eq!(
        read(b.clone()).await.revision,
        Revision(1),
        "the conflicting write changed its record"
    );
    assert_eq!(read(c.clone()).await.revision, Revision(2));
    assert!(
        store
            .read_events(&b, EventSeq(0), 0)
            .await
            .expect("history")
            .is_empty()
    );
    assert_eq!(store.deliver(&c, 0, T0).await.expect("deliver").len(), 1);
    // Two writes to one workspace in one batch: the second sees the first.
    let ra = read(a.clone()).await;
    let results = store
        .commit_batch(vec![
            WorkspaceWrite::update(ra.value.clone(), ra.revision, T0),
            WorkspaceWrite::update(ra.value.clone(), Revision(ra.revision.0 + 1), T0),
            WorkspaceWrite::update(ra.value.clone(), ra.revision, T0),
        ])
        .await;
    assert!(
        results[0].is_ok() && results[1].is_ok(),
        "chained writes in one batch: {results:?}"
    );
    assert!(
        matches!(results[2], Err(Error::Conflict { .. })),
        "a stale write in a batch: {:?}",
        results[2]
    );
    assert!(store.commit_batch(Vec::new()).await.is_empty());
    mixed_batches(store, clock).await;
}

/// `write_batch` with every kind of write, of several workspaces, each failing
/// or succeeding as it would alone, in order.
async fn mixed_batches(store: &dyn WorkspaceStore, clock: &ManualClock) {
    let at = At { store, clock };
    let a = create(store, "mixed").await;
    let b = create(store, "mixed").await;
    let (r1, r2) = (holder("mixed-1"), holder("mixed-2"));
    let key = CheckpointKey::new("op1/network").expect("key");
    let held = at.acquire(&b, &r2, TTL, T0).await.expect("acquire");
    let results = store
        .write_batch(vec![
            BatchWrite::Acquire {
                workspace: a.clone(),
                holder: r1.clone(),
                ttl: TTL,
            },
            // Refused alone: b is held by another holder.
            BatchWrite::Acquire {
                workspace: b.clone(),
                holder: r1.clone(),
                ttl: TTL,
            },
            // Refused alone: a zero TTL.
            BatchWrite::Acquire {
                workspace: a.clone(),
                holder: r1.clone(),
                ttl: Duration::ZERO,
            },
        ])
        .await;
    assert_eq!(results.len(), 3, "one result per write");
    let lease = match &results[0] {
        Ok(BatchOutcome::Lease(l)) => l.clone(),
        other => panic!("a batched acquire: {other:?}"),
    };
    assert!(
        matches!(results[1], Err(Error::LeaseHeld { .. })),
        "a batched acquire of a held lease: {:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(Error::InvalidValue(_))),
        "a batched acquire with a zero TTL: {:?}",
        results[2]
    );
    let ra = store.get_workspace(&a).await.expect("read");
    let results = store
        .write_batch(vec![
            BatchWrite::PutCheckpoint {
                workspace: a.clone(),
                key: key.clone(),
                value: json!({ "vpc": "vpc-1" }),
                fence: lease.fence,
            },
            // Refused alone: the fence of another workspace's lease.
            BatchWrite::PutCheckpoint {
                workspace: a.clone(),
                key: key.clone(),
                value: json!({ "vpc": "stale" }),
                fence: FencingToken(lease.fence.0 + 100),
            },
            BatchWrite::Commit(
                WorkspaceWrite::update(ra.value.clone(), ra.revision, T0)
                    .event(event("batched"))
                    .fenced(lease.fence),
            ),
            BatchWrite::Release(lease.clone()),
            BatchWrite::Release(held.clone()),
        ])
        .await;
    assert!(
        matches!(results[0], Ok(BatchOutcome::Done)),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Err(Error::LeaseLost { .. })),
        "a batched checkpoint with a wrong fence: {:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Ok(BatchOutcome::Committed(_))),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Ok(BatchOutcome::Done)),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(results[4], Ok(BatchOutcome::Done)),
        "{:?}",
        results[4]
    );
    assert_eq!(
        store.get_checkpoint(&a, &key).await.expect("read"),
        Some(json!({ "vpc": "vpc-1" })),
        "the refused checkpoint left the accepted one"
    );
    assert_eq!(
        store.get_workspace(&a).await.expect("read").revision,
        Revision(ra.revision.0 + 1)
    );
    // Both leases were released: another holder takes them, with greater tokens.
    let again = at
        .acquire(&a, &r2, TTL, T0)
        .await
        .expect("released by the batch");
    assert!(again.fence > lease.fence);
    at.acquire(&b, &r1, TTL, T0)
        .await
        .expect("released by the batch");
    assert!(store.write_batch(Vec::new()).await.is_empty());
}

async fn history(store: &dyn WorkspaceStore) {
    let id = create(store, "hist").await;
    let first = store
        .commit(
            WorkspaceWrite::new(id.clone(), T0)
                .event(event("e1"))
                .event(event("e2"))
                .event(event("e3")),
        )
        .await
        .expect("append");
    assert_eq!(
        first.events,
        [EventSeq(1), EventSeq(2), EventSeq(3)],
        "events are numbered from 1"
    );
    let base = store.get_workspace(&id).await.expect("read");
    let mut ev = event("e4");
    ev.actor = Actor::Engine {
        holder: holder("replica-1"),
    };
    ev.kind = EventKind::Transition {
        from: StateName::Provisioning,
        to: StateName::Active,
        event: crate::lifecycle::EventName::AgentFirstPoll,
    };
    let second = store
        .commit(
            WorkspaceWrite::update(base.value, base.revision, T0)
                .event(ev.clone())
                .event(event("e5")),
        )
        .await
        .expect("append");
    assert_eq!(
        second.events,
        [EventSeq(4), EventSeq(5)],
        "numbers continue without a gap"
    );

    let all = store
        .read_events(&id, EventSeq(0), 0)
        .await
        .expect("history");
    let messages: Vec<&str> = all.iter().map(|e| e.event.message.as_str()).collect();
    assert_eq!(
        messages,
        ["e1", "e2", "e3", "e4", "e5"],
        "history in commit order"
    );
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.seq == EventSeq(i as u64 + 1)),
        "gapless numbering"
    );
    assert_eq!(all[3].event, ev, "an event reads back exactly as written");
    let page = store.read_events(&id, EventSeq(2), 2).await.expect("page");
    assert_eq!(
        page.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        [3, 4],
        "paging with after and limit"
    );
    assert!(
        store
            .read_events(&id, EventSeq(5), 0)
            .await
            .expect("page")
            .is_empty()
    );
    expect_err!(
        store
            .read_events(&random_workspace_id("hist"), EventSeq(0), 0)
            .await,
        Error::NotFound(_),
        "history of an unknown workspace"
    );
}

async fn leases(store: &dyn WorkspaceStore, clock: &ManualClock) {
    let at = At { store, clock };
    let id = create(store, "lease").await;
    let (r1, r2, r3) = (
        holder("replica-1"),
        holder("replica-2"),
        holder("replica-3"),
    );

    expect_err!(
        at.acquire(&id, &r1, Duration::ZERO, T0).await,
        Error::InvalidValue(_),
        "a zero TTL"
    );
    expect_err!(
        at.acquire(&id, &r1, MAX_LEASE_TTL + Duration::from_secs(1), T0)
            .await,
        Error::InvalidValue(_),
        "a TTL above MAX_LEASE_TTL"
    );
    expect_err!(
        at.acquire(&random_workspace_id("lease"), &r1, TTL, T0)
            .await,
        Error::NotFound(_),
        "a lease on an unknown workspace"
    );

    let l1 = at.acquire(&id, &r1, TTL, T0).await.expect("first acquire");
    assert_eq!(l1.expires_at, T0 + TTL);
    match at
        .acquire(&id, &r2, TTL, T0 + Duration::from_secs(10))
        .await
    {
        Err(e @ Error::LeaseHeld { .. }) => {
            let Error::LeaseHeld {
                ref holder,
                expires_at,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(
                (holder, expires_at),
                (&r1, l1.expires_at),
                "LeaseHeld names the holder and expiry"
            );
            assert_eq!(
                e.retry(),
                Retry::After(Some(Duration::from_secs(20))),
                "retry when the lease expires"
            );
        }
        other => panic!("a held lease must refuse another holder, got {other:?}"),
    }
    let again = at
        .acquire(&id, &r1, TTL, T0 + Duration::from_secs(10))
        .await
        .expect("re-acquire by holder");
    assert_eq!(
        again.fence, l1.fence,
        "re-acquiring a held lease keeps its fencing token"
    );
    let renewed = at
        .renew(&again, TTL, T0 + Duration::from_secs(20))
        .await
        .expect("renew");
    assert_eq!(
        (renewed.fence, renewed.expires_at),
        (l1.fence, T0 + Duration::from_secs(50))
    );
    expect_err!(
        at.acquire(&id, &r2, TTL, T0 + Duration::from_secs(49))
            .await,
        Error::LeaseHeld { .. },
        "a renewed lease holds until its new expiry"
    );

    // Expired: another replica takes over with a greater token.
    let l2 = at
        .acquire(&id, &r2, TTL, T0 + Duration::from_secs(50))
        .await
        .expect("take over at expiry");
    assert!(
        l2.fence > l1.fence,
        "a new acquisition must get a greater fencing token"
    );
    expect_err!(
        at.renew(&renewed, TTL, T0 + Duration::from_secs(51)).await,
        Error::LeaseLost { .. },
        "renewing a lease that was taken over"
    );
    store
        .release(&renewed)
        .await
        .expect("releasing a stale lease is a no-op");
    expect_err!(
        at.acquire(&id, &r3, TTL, T0 + Duration::from_secs(52))
            .await,
        Error::LeaseHeld { .. },
        "releasing a stale lease must not release the current one"
    );

    store.release(&l2).await.expect("release");
    let l3 = at
        .acquire(&id, &r3, TTL, T0 + Duration::from_secs(53))
        .await
        .expect("acquire after release");
    assert!(l3.fence > l2.fence, "fencing tokens keep increasing");
    expect_err!(
        at.renew(&l2, TTL, T0 + Duration::from_secs(54)).await,
        Error::LeaseLost { .. },
        "renewing a released lease"
    );

    // An expired lease nobody took over can still be renewed: its token is current.
    let late = at
        .renew(&l3, TTL, T0 + Duration::from_secs(500))
        .await
        .expect("renew after expiry, not taken over");
    assert_eq!(late.fence, l3.fence);

    // Concurrent acquisition of a free lease: exactly one winner.
    let id = create(store, "lease").await;
    let holders: Vec<HolderId> = (0..12).map(|i| holder(&format!("replica-{i}"))).collect();
    let results = join_all(holders.iter().map(|h| at.acquire(&id, h, TTL, T0))).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "concurrent acquires: exactly one winner"
    );
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(Error::LeaseHeld { .. })))
    );
}

/// Long before any other case's due times, so only this case's workspaces are
/// due by then (the suite may run on a database shared with other runs).
const EARLY: Timestamp = Timestamp::from_millis(1_000_000_000_000);

async fn create_due(
    store: &dyn WorkspaceStore,
    prefix: &str,
    due: Option<Duration>,
) -> WorkspaceId {
    let id = random_workspace_id(prefix);
    let mut rec = record(&id);
    rec.wake_at = due.map(|d| EARLY + d);
    store
        .commit(WorkspaceWrite::create(rec, T0))
        .await
        .unwrap_or_else(|e| panic!("creating workspace {id}: {e}"));
    id
}

/// Takes the workspaces out of every later claim (a run leaves nothing due).
async fn undue(store: &dyn WorkspaceStore, ids: &[WorkspaceId]) {
    for id in ids {
        let current = store.get_workspace(id).await.expect("read");
        let mut rec = current.value;
        rec.wake_at = None;
        store
            .commit(WorkspaceWrite::update(rec, current.revision, T0))
            .await
            .expect("clearing wake_at");
    }
}

async fn claims(store: &dyn WorkspaceStore, clock: &ManualClock) {
    let at = At { store, clock };
    let secs = Duration::from_secs;
    let (r1, r2) = (holder("claimer-1"), holder("claimer-2"));
    let a = create_due(store, "claim", Some(secs(1))).await;
    let b = create_due(store, "claim", Some(secs(2))).await;
    let c = create_due(store, "claim", Some(secs(3))).await;
    let later = create_due(store, "claim", Some(secs(100))).await;
    let never = create_due(store, "claim", None).await;
    let until = EARLY + secs(10);
    let now = EARLY + secs(10);
    let sorted = |v: Vec<crate::store::Lease>| {
        let mut v: Vec<_> = v.into_iter().map(|l| (l.workspace.clone(), l)).collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let names = |v: &[(WorkspaceId, crate::store::Lease)]| {
        v.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()
    };
    let mut first_two = vec![a.clone(), b.clone()];
    first_two.sort();

    expect_err!(
        at.claim_due(&r1, Duration::ZERO, now, until, 10).await,
        Error::InvalidValue(_),
        "a claim with a zero TTL"
    );
    let mine = sorted(at.claim_due(&r1, TTL, now, until, 2).await.expect("claim"));
    assert_eq!(
        names(&mine),
        first_two,
        "a claim takes the earliest due first, up to the limit"
    );
    for (_, l) in &mine {
        assert_eq!(l.holder, r1);
        assert_eq!(l.expires_at, now + TTL, "a claimed lease lasts the TTL");
    }
    expect_err!(
        at.acquire(&a, &r2, TTL, now).await,
        Error::LeaseHeld { .. },
        "acquiring a workspace another holder claimed"
    );
    let theirs = sorted(at.claim_due(&r2, TTL, now, until, 10).await.expect("claim"));
    assert_eq!(
        names(&theirs),
        vec![c.clone()],
        "a claim skips what others hold live, and what is not due (or never due)"
    );
    // A holder already has what it holds: claiming again takes nothing new.
    assert!(
        at.claim_due(&r1, TTL, now + secs(5), until, 10)
            .await
            .expect("claim")
            .is_empty(),
        "a holder's own live leases are not claimed again"
    );
    // A restart under the same name releases the previous run's leases; they are
    // then claimable at once, under greater tokens.
    let other = at.acquire(&later, &r2, TTL, now).await.expect("acquire");
    // (At least these two: a run before this one on the same store may have left
    // more under this name.)
    assert!(store.release_all(&r1).await.expect("release_all") >= 2);
    assert_eq!(
        store.release_all(&r1).await.expect("release_all"),
        0,
        "releasing twice releases nothing more"
    );
    expect_err!(
        at.acquire(&later, &r1, TTL, now).await,
        Error::LeaseHeld { .. },
        "release_all leaves other holders' leases alone"
    );
    store.release(&other).await.expect("release");
    let again = sorted(
        at.claim_due(&r1, TTL, now + secs(5), until, 10)
            .await
            .expect("claim"),
    );
    assert_eq!(
        names(&again),
        first_two,
        "released leases are claimable at once"
    );
    for ((_, old), (_, new)) in mine.iter().zip(&again) {
        assert!(
            new.fence > old.fence,
            "a claim after a release gets a greater token"
        );
        assert_eq!(new.expires_at, now + secs(5) + TTL);
    }
    // Once they expire, another holder takes them over with greater tokens, and
    // the first holder's fenced writes are refused.
    let late = now + secs(5) + TTL + secs(1);
    let taken = sorted(
        at.claim_due(&r2, TTL, late, until, 10)
            .await
            .expect("claim"),
    );
    let mut all_three = vec![a.clone(), b.clone(), c.clone()];
    all_three.sort();
    assert_eq!(names(&taken), all_three, "expired leases are claimable");
    for (id, old) in &again {
        let new = &taken.iter().find(|(t, _)| t == id).expect("taken").1;
        assert!(
            new.fence > old.fence,
            "a takeover by claim gets a greater token"
        );
        expect_err!(
            store
                .commit(
                    WorkspaceWrite::new(id.clone(), late)
                        .event(event("stale"))
                        .fenced(old.fence)
                )
                .await,
            Error::LeaseLost { .. },
            "a write fenced by a lease taken over by a claim"
        );
    }
    // A released lease is claimable at once.
    let (_, lc) = taken.iter().find(|(t, _)| t == &c).expect("c");
    store.release(lc).await.expect("release");
    let after_release = at
        .claim_due(&r1, TTL, late, until, 10)
        .await
        .expect("claim");
    assert_eq!(
        after_release
            .iter()
            .map(|l| l.workspace.clone())
            .collect::<Vec<_>>(),
        vec![c.clone()],
        "a released lease is claimable"
    );
    assert!(after_release[0].fence > lc.fence);
    undue(store, &[a, b, c, later, never]).await;

    // Concurrent claimers never get the same workspace, and together they get
    // every due one.
    let mut due = Vec::new();
    for i in 0..12 {
        due.push(create_due(store, "claim", Some(secs(20 + i))).await);
    }
    due.sort();
    let claimers: Vec<HolderId> = (0..4).map(|i| holder(&format!("claimer-c{i}"))).collect();
    let n = due.len();
    let results = join_all(claimers.iter().map(|h| async move {
        at.claim_due(h, TTL, now, EARLY + secs(60), n)
            .await
            .expect("claim")
            .into_iter()
            .map(|l| l.workspace)
            .collect::<Vec<_>>()
    }))
    .await;
    let mut union: Vec<WorkspaceId> = results.iter().flatten().cloned().collect();
    union.sort();
    let total = union.len();
    union.dedup();
    assert_eq!(
        total,
        union.len(),
        "two concurrent claimers got the same workspace"
    );
    assert_eq!(
        union, due,
        "concurrent claimers together took every due workspace"
    );
    undue(store, &due).await;
    assert!(
        at.claim_due(&r1, TTL, late + TTL * 4, EARLY + secs(1000), 100)
            .await
            .expect("claim")
            .is_empty(),
        "a workspace whose wake_at is cleared is not claimed"
    );
}

async fn fencing(store: &dyn WorkspaceStore, clock: &ManualClock) {
    let at = At { store, clock };
    let id = create(store, "fence").await;
    let l1 = at
        .acquire(&id, &holder("replica-1"), TTL, T0)
        .await
        .expect("acquire");
    let base = store.get_workspace(&id).await.expect("read");
    store
        .commit(WorkspaceWrite::update(base.value.clone(), base.revision, T0).fenced(l1.fence))
        .await
        .expect("a write under the current lease");
    let base = store.get_workspace(&id).await.expect("read");

    expect_err!(
        store
            .commit(
                WorkspaceWrite::update(base.value.clone(), base.revision, T0)
                    .fenced(FencingToken(l1.fence.0 + 100))
            )
            .await,
        Error::LeaseLost { .. },
        "a write with a token that was never issued"
    );

    // Expired but not taken over: the token is still the current one.
    store
        .commit(
            WorkspaceWrite::new(id.clone(), T0 + Duration::from_secs(60))
                .event(event("late"))
                .fenced(l1.fence),
        )
        .await
        .expect("an expired lease nobody took over still fences");

    let l2 = at
        .acquire(&id, &holder("replica-2"), TTL, T0 + Duration::from_secs(60))
        .await
        .expect("take over");
    let stale = WorkspaceWrite::update(base.value.clone(), base.revision, T0)
        .event(event("stale"))
        .fenced(l1.fence);
    expect_err!(
        store.commit(stale).await,
        Error::LeaseLost { .. },
        "a write by the previous holder, at the current revision"
    );
    assert_eq!(
        store.get_workspace(&id).await.expect("read").revision,
        base.revision,
        "a fenced-out write changed the record"
    );

    store.release(&l2).await.expect("release");
    expect_err!(
        store
            .commit(
                WorkspaceWrite::new(id.clone(), T0)
                    .event(event("released"))
                    .fenced(l2.fence)
            )
            .await,
        Error::LeaseLost { .. },
        "a write under a released lease"
    );
    let messages: Vec<String> = store
        .read_events(&id, EventSeq(0), 0)
        .await
        .expect("history")
        .into_iter()
        .map(|e| e.event.message)
        .collect();
    assert_eq!(messages, ["late"], "fenced-out writes appended events");

    let fresh = random_workspace_id("fence");
    expect_err!(
        store
            .commit(WorkspaceWrite::create(record(&fresh), T0).fenced(FencingToken(1)))
            .await,
        Error::LeaseLost { .. },
        "a fenced create (no lease can exist yet)"
    );
}

async fn checkpoints(store: &dyn WorkspaceStore, clock: &ManualClock) {
    let at = At { store, clock };
    let id = create(store, "ckpt").await;
    let key = CheckpointKey::for_step(1, "cluster").expect("valid key");
    assert_eq!(
        store.get_checkpoint(&id, &key).await.expect("read"),
        None,
        "a checkpoint never written"
    );
    expect_err!(
        store
            .put_checkpoint(&id, &key, json!(1), FencingToken(1))
            .await,
        Error::LeaseLost { .. },
        "a checkpoint written without a lease"
    );
    let l1 = at
        .acquire(&id, &holder("replica-1"), TTL, T0)
        .await
        .expect("acquire");
    store
        .put_checkpoint(&id, &key, json!({"vpc": "vpc-1"}), l1.fence)
        .await
        .expect("write");
    store
        .put_checkpoint(&id, &key, json!({"vpc": "vpc-1", "subnets": 3}), l1.fence)
        .await
        .expect("overwrite");
    assert_eq!(
        store.get_checkpoint(&id, &key).await.expect("read"),
        Some(json!({"vpc": "vpc-1", "subnets": 3}))
    );
    let other = CheckpointKey::for_step(1, "network").expect("valid key");
    assert_eq!(
        store.get_checkpoint(&id, &other).await.expect("read"),
        None,
        "checkpoints are per key"
    );

    let _l2 = at
        .acquire(&id, &holder("replica-2"), TTL, T0 + TTL)
        .await
        .expect("take over");
    expect_err!(
        store
            .put_checkpoint(&id, &key, json!("stale"), l1.fence)
            .await,
        Error::LeaseLost { .. },
        "a checkpoint written by the previous holder"
    );
    assert_eq!(
        store.get_checkpoint(&id, &key).await.expect("read"),
        Some(json!({"vpc": "vpc-1", "subnets": 3}))
    );
    let unknown = random_workspace_id("ckpt");
    expect_err!(
        store.get_checkpoint(&unknown, &key).await,
        Error::NotFound(_),
        "checkpoint of an unknown workspace"
    );
    expect_err!(
        store
            .put_checkpoint(&unknown, &key, json!(1), l1.fence)
            .await,
        Error::NotFound(_),
        "checkpoint of an unknown workspace"
    );
}

/// Withdrawals ([`CommandQueue::withdraw`](crate::store::CommandQueue::withdraw)):
/// a command no agent was handed is withdrawn — never delivered, never
/// answered; one handed out becomes cancelling — delivered as a cancel
/// request (not counted as a delivery) until its answer is stored; an
/// answered one is left as it is, and its answer returned; unknown ids and
/// other workspaces' commands are not found and change nothing.
async fn withdrawals(store: &dyn WorkspaceStore) {
    let a = create(store, "withdraw").await;
    let b = create(store, "withdraw").await;
    let id = |s: &str| CommandId::new(s).expect("id");
    store
        .commit(
            WorkspaceWrite::new(a.clone(), T0)
                .command(command("w1"))
                .command(command("w2"))
                .command(command("w3")),
        )
        .await
        .expect("queue");
    store
        .commit(WorkspaceWrite::new(b.clone(), T0).command(command("w1")))
        .await
        .expect("queue");
    let later = T0 + Duration::from_secs(60);

    // w1: never handed out, withdrawn.
    assert_eq!(
        store
            .withdraw(&a, &id("w1"), later)
            .await
            .expect("withdraw"),
        CommandStatus::Withdrawn { at: later },
        "an undelivered command is withdrawn"
    );
    let delivered = store.deliver(&a, 0, T0).await.expect("deliver");
    assert_eq!(
        delivered
            .iter()
            .map(|q| q.command.id.as_str())
            .collect::<Vec<_>>(),
        ["w2", "w3"],
        "a withdrawn command is never delivered"
    );
    assert!(
        !store
            .answer(&a, result("w1", CommandOutcome::Succeeded), later)
            .await
            .expect("answer"),
        "an answer to a withdrawn command is not stored"
    );
    assert_eq!(
        store.get_command(&a, &id("w1")).await.expect("read").status,
        CommandStatus::Withdrawn { at: later },
        "still withdrawn"
    );
    assert_eq!(
        store.withdraw(&a, &id("w1"), T0).await.expect("again"),
        CommandStatus::Withdrawn { at: later },
        "withdrawing twice changes nothing"
    );

    // w2: handed out, so it is cancelled rather than withdrawn.
    assert_eq!(
        store
            .withdraw(&a, &id("w2"), later)
            .await
            .expect("withdraw"),
        CommandStatus::Cancelling { at: later },
        "a delivered command is cancelled"
    );
    let again = store.deliver(&a, 0, T0).await.expect("deliver");
    assert_eq!(
        again
            .iter()
            .map(|q| (q.command.id.as_str(), q.deliveries, q.status.is_open()))
            .collect::<Vec<_>>(),
        [("w2", 1, true), ("w3", 2, true)],
        "a cancelling command is still handed out (as a cancel request), its deliveries not counted"
    );
    assert_eq!(again[0].status, CommandStatus::Cancelling { at: later });
    assert!(
        store
            .answer(&a, result("w2", CommandOutcome::Succeeded), later)
            .await
            .expect("answer"),
        "the answer to a cancelled command is stored"
    );
    assert!(
        matches!(
            store.get_command(&a, &id("w2")).await.expect("read").status,
            CommandStatus::Answered { .. }
        ),
        "answered"
    );

    // w3: answered before its step gave up; the answer is kept and returned.
    store
        .answer(&a, result("w3", CommandOutcome::Succeeded), T0)
        .await
        .expect("answer");
    assert!(
        matches!(
            store.withdraw(&a, &id("w3"), later).await.expect("withdraw"),
            CommandStatus::Answered { result, at } if result.outcome == CommandOutcome::Succeeded && at == T0
        ),
        "withdrawing an answered command returns its answer"
    );
    assert!(
        store.deliver(&a, 0, T0).await.expect("deliver").is_empty(),
        "nothing left to hand out"
    );

    // Refusals change nothing.
    expect_err!(
        store.withdraw(&a, &id("zz"), later).await,
        Error::NotFound(Resource::Command(..)),
        "withdrawing an unknown command"
    );
    expect_err!(
        store
            .withdraw(&random_workspace_id("withdraw"), &id("w1"), later)
            .await,
        Error::NotFound(_),
        "withdrawing in an unknown workspace"
    );
    assert_eq!(
        store.get_command(&b, &id("w1")).await.expect("read").status,
        CommandStatus::Pending,
        "B's command of the same id is untouched"
    );
}

fn result(id: &str, outcome: CommandOutcome) -> CommandResult {
    CommandResult {
        id: CommandId::new(id).expect("valid id"),
        outcome,
        output: json!({ "by": id }),
    }
}

async fn command_queue(store: &dyn WorkspaceStore) {
    let a = create(store, "queue").await;
    let b = create(store, "queue").await;
    assert!(
        store.deliver(&a, 0, T0).await.expect("deliver").is_empty(),
        "an empty queue delivers nothing"
    );
    expect_err!(
        store.deliver(&random_workspace_id("queue"), 0, T0).await,
        Error::NotFound(_),
        "queue of an unknown workspace"
    );

    let c = store
        .commit(
            WorkspaceWrite::new(a.clone(), T0)
                .command(command("a1"))
                .command(command("a2"))
                .command(command("a3")),
        )
        .await
        .expect("queue");
    assert_eq!(
        c.commands,
        [CommandSeq(1), CommandSeq(2), CommandSeq(3)],
        "commands are numbered from 1"
    );
    store
        .commit(WorkspaceWrite::new(b.clone(), T0).command(command("b1")))
        .await
        .expect("queue");

    let first = store.deliver(&a, 0, T0).await.expect("deliver");
    let ids: Vec<&str> = first.iter().map(|q| q.command.id.as_str()).collect();
    assert_eq!(
        ids,
        ["a1", "a2", "a3"],
        "delivery in sequence order, own workspace only"
    );
    assert!(
        first
            .iter()
            .all(|q| q.deliveries == 1 && q.status == CommandStatus::Pending)
    );
    assert_eq!(
        first[1].command.payload,
        json!({"n": "a2"}),
        "payload round-trips"
    );
    assert_eq!(first[1].command.seq, CommandSeq(2));
    let second = store.deliver(&a, 2, T0).await.expect("deliver");
    assert_eq!(
        second
            .iter()
            .map(|q| q.command.id.as_str())
            .collect::<Vec<_>>(),
        ["a1", "a2"],
        "limit"
    );
    assert!(
        second.iter().all(|q| q.deliveries == 2),
        "unanswered commands are delivered again (at-least-once)"
    );

    assert!(
        store
            .answer(&a, result("a2", CommandOutcome::Succeeded), T0)
            .await
            .expect("answer"),
        "a first answer"
    );
    let failed = CommandOutcome::Failed {
        message: "late duplicate".into(),
        retryable: false,
    };
    assert!(
        !store
            .answer(&a, result("a2", failed), T0)
            .await
            .expect("answer"),
        "a repeated answer reports false"
    );
    match store
        .get_command(&a, &CommandId::new("a2").expect("id"))
        .await
        .expect("read")
        .status
    {
        CommandStatus::Answered { result: r, at } => {
            assert_eq!(
                (r.outcome, at),
                (CommandOutcome::Succeeded, T0),
                "the first answer is kept"
            );
            assert_eq!(r.output, json!({"by": "a2"}));
        }
        other => panic!("an answered command must read back as answered, got {other:?}"),
    }
    let pending = store.deliver(&a, 0, T0).await.expect("deliver");
    assert_eq!(
        pending
            .iter()
            .map(|q| q.command.id.as_str())
            .collect::<Vec<_>>(),
        ["a1", "a3"],
        "answered commands are not delivered"
    );

    // Isolation: A's agent cannot see or answer B's commands.
    expect_err!(
        store
            .answer(&a, result("b1", CommandOutcome::Succeeded), T0)
            .await,
        Error::NotFound(Resource::Command(..)),
        "answering another workspace's command"
    );
    expect_err!(
        store
            .get_command(&a, &CommandId::new("b1").expect("id"))
            .await,
        Error::NotFound(_),
        "reading another workspace's command"
    );
    assert_eq!(
        store.deliver(&b, 0, T0).await.expect("deliver")[0].status,
        CommandStatus::Pending,
        "B's command stays pending"
    );
    expect_err!(
        store
            .answer(&a, result("zz", CommandOutcome::Succeeded), T0)
            .await,
        Error::NotFound(_),
        "answering an unknown command"
    );
    let mut big = result("a1", CommandOutcome::Succeeded);
    big.output = json!("x".repeat(cogrion_agent_proto::MAX_PAYLOAD_LEN + 1));
    expect_err!(
        store.answer(&a, big, T0).await,
        Error::InvalidValue(_),
        "an oversized result"
    );
    assert_eq!(
        store
            .get_command(&a, &CommandId::new("a1").expect("id"))
            .await
            .expect("read")
            .status,
        CommandStatus::Pending,
        "a refused answer changed the command"
    );
    // Ids are unique per workspace, but two workspaces may use the same id.
    expect_err!(
        store
            .commit(WorkspaceWrite::new(a.clone(), T0).command(command("a1")))
            .await,
        Error::AlreadyExists(_),
        "re-queueing an existing id"
    );
    let c = store
        .commit(WorkspaceWrite::new(b.clone(), T0).command(command("a1")))
        .await
        .expect("same id in B");
    assert_eq!(c.commands, [CommandSeq(2)], "numbering is per workspace");
    let c = store
        .commit(WorkspaceWrite::new(a.clone(), T0).command(command("a4")))
        .await
        .expect("queue");
    assert_eq!(
        c.commands,
        [CommandSeq(4)],
        "numbering continues without a gap"
    );
}

/// An unconsumed bootstrap token of `ws` (its hash from `byte`), valid for an
/// hour from `T0`.
pub(super) fn open_token(ws: &WorkspaceId, byte: u8) -> BootstrapTokenRecord {
    BootstrapTokenRecord::new(
        ws.clone(),
        hash(byte, ws),
        T0,
        T0 + Duration::from_secs(3600),
    )
}

/// An agent credential of `ws`, valid for a day from `T0`.
pub(super) fn credential(ws: &WorkspaceId, serial: CertSerial) -> AgentCredential {
    AgentCredential::new(ws.clone(), serial, T0, T0 + Duration::from_secs(86_400))
}

pub(super) fn hash(byte: u8, salt: &WorkspaceId) -> TokenHash {
    let mut h = [byte; 32];
    for (i, b) in salt.as_str().bytes().enumerate() {
        h[i % 32] ^= b;
    }
    TokenHash(h)
}

async fn tokens(store: &dyn WorkspaceStore) {
    let a = create(store, "token").await;
    let b = create(store, "token").await;
    let token = |byte: u8, ws: &WorkspaceId, ttl: u64| {
        BootstrapTokenRecord::new(
            ws.clone(),
            hash(byte, ws),
            T0,
            T0 + Duration::from_secs(ttl),
        )
    };
    expect_err!(
        store
            .put_token(token(1, &random_workspace_id("token"), 3600))
            .await,
        Error::NotFound(_),
        "a token for an unknown workspace"
    );
    let t1 = token(1, &a, 3600);
    store.put_token(t1.clone()).await.expect("store token");
    expect_err!(
        store.put_token(t1.clone()).await,
        Error::AlreadyExists(_),
        "storing a hash twice"
    );

    expect_err!(
        store.consume(&hash(9, &a), &a, T0).await,
        Error::TokenRefused(TokenRefusal::Unknown),
        "an unknown token"
    );
    expect_err!(
        store.consume(&t1.hash, &b, T0).await,
        Error::TokenRefused(TokenRefusal::WrongWorkspace),
        "a token presented for another workspace"
    );
    let expired_at = t1.expires_at;
    match store.consume(&t1.hash, &a, expired_at).await {
        Err(Error::TokenRefused(TokenRefusal::Expired { expired_at: at })) => {
            assert_eq!(at, expired_at)
        }
        other => panic!("a token at its expiry must be refused as expired, got {other:?}"),
    }
    let now = T0 + Duration::from_secs(5);
    let consumed = store
        .consume(&t1.hash, &a, now)
        .await
        .expect("refusals must not consume the token");
    assert_eq!(consumed.consumed_at, Some(now));
    assert_eq!(consumed.workspace, a);
    match store
        .consume(&t1.hash, &a, now + Duration::from_secs(1))
        .await
    {
        Err(Error::TokenRefused(TokenRefusal::Reused { consumed_at })) => {
            assert_eq!(consumed_at, now)
        }
        other => panic!("a used token must be refused as reused, got {other:?}"),
    }

    // A newer token replaces the unconsumed one.
    let t2 = token(2, &b, 3600);
    let t3 = token(3, &b, 3600);
    store.put_token(t2.clone()).await.expect("store");
    store
        .put_token(t3.clone())
        .await
        .expect("store replacement");
    expect_err!(
        store.consume(&t2.hash, &b, T0).await,
        Error::TokenRefused(TokenRefusal::Unknown),
        "a replaced token"
    );

    // Concurrent exchanges of one token: exactly one wins.
    let results = join_all((0..12).map(|_| store.consume(&t3.hash, &b, T0))).await;
    one_winner(results.iter().collect(), "concurrent exchanges");
}

/// Exactly one of `results` (uses of one token) won; the others lost as reused.
fn one_winner<T: std::fmt::Debug>(results: Vec<&Result<T>>, what: &str) {
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{what}: exactly one winner: {results:?}"
    );
    assert!(
        results.iter().all(
            |r| r.is_ok() || matches!(r, Err(Error::TokenRefused(TokenRefusal::Reused { .. })))
        ),
        "{what}: the others lose as reused: {results:?}"
    );
}

/// A serial for credential `n` of workspace `ws`, unique across workspaces.
pub(super) fn serial_of(ws: &WorkspaceId, n: u8) -> CertSerial {
    let digits: String = ws.as_str().bytes().map(|b| format!("{b:02x}")).collect();
    CertSerial::new(format!(
        "{n:02x}{}",
        &digits[digits.len().saturating_sub(30)..]
    ))
    .expect("serial")
}

/// Many polls at once, as a fleet reconnecting brings them (a store may run
/// them together): every read answers for its own serial, and of two
/// first-poll marks of one credential at once exactly one reports the first
/// poll, whose time is kept.
async fn polls_at_once(store: &dyn WorkspaceStore) {
    let mut fleet = Vec::new();
    for i in 0..12 {
        let ws = create(store, "pollmany").await;
        let credential = credential(&ws, serial_of(&ws, 1));
        store
            .put_credential(credential.clone())
            .await
            .expect("record");
        let queued = i % 3 == 0;
        if queued {
            store
                .commit(WorkspaceWrite::new(ws, T0).command(command("m1")))
                .await
                .expect("queue");
        }
        fleet.push((credential, queued));
    }
    let unknown = serial_of(&fleet[0].0.workspace, 9);

    // Every serial read twice and an unknown one, all at once.
    let reads = futures::future::join_all(
        fleet
            .iter()
            .chain(&fleet)
            .map(|(c, _)| store.get_credential_for_poll(&c.serial))
            .chain([store.get_credential_for_poll(&unknown)]),
    )
    .await;
    for (k, read) in reads[..2 * fleet.len()].iter().enumerate() {
        let (credential, queued) = &fleet[k % fleet.len()];
        match read {
            Ok((read, pending)) => {
                assert_eq!(read, credential, "read {k} answers for its own serial");
                assert!(
                    *pending || !queued,
                    "read {k}: nothing pending while a command is"
                );
            }
            Err(e) => panic!("read {k} of a recorded credential: {e}"),
        }
    }
    expect_err!(
        reads.last().expect("the unknown serial's read"),
        Error::NotFound(_),
        "an unknown serial among many polls"
    );

    // Every credential's first poll marked twice at once, and an unknown one.
    let at = |k: u64| T0 + Duration::from_secs(k);
    let marks = futures::future::join_all(
        fleet
            .iter()
            .flat_map(|(c, _)| [(c, 1), (c, 2)])
            .map(|(c, k)| store.mark_polled(&c.serial, at(k)))
            .chain([store.mark_polled(&unknown, at(1))]),
    )
    .await;
    for (i, (credential, _)) in fleet.iter().enumerate() {
        let pair = (&marks[2 * i], &marks[2 * i + 1]);
        let winner = match pair {
            (Ok(true), Ok(false)) => 1,
            (Ok(false), Ok(true)) => 2,
            other => panic!(
                "two first polls of {} at once: exactly one reports it, got {other:?}",
                credential.serial
            ),
        };
        assert_eq!(
            store
                .get_credential(&credential.serial)
                .await
                .expect("read")
                .first_poll_at,
            Some(at(winner)),
            "the reported first poll's time is kept"
        );
    }
    expect_err!(
        marks.last().expect("the unknown serial's mark"),
        Error::NotFound(_),
        "marking an unknown serial among many"
    );
}

/// Many exchanges at once, as a reconnect storm brings them (a store may run
/// them together): every one is decided as if alone.
async fn exchanges_at_once(store: &dyn WorkspaceStore) {
    let mut workspaces = Vec::new();
    for _ in 0..24 {
        let ws = create(store, "storm").await;
        store.put_token(open_token(&ws, 3)).await.expect("a token");
        workspaces.push(ws);
    }
    let cred = |ws: &WorkspaceId, n: u8| credential(ws, serial_of(ws, n));
    // Workspace 1 holds serial 1 already (the exchange asks for it: refused);
    // workspace 2 holds serial 1 (the exchange for serial 2 revokes it).
    store
        .put_credential(cred(&workspaces[1], 1))
        .await
        .expect("a credential");
    store
        .put_credential(cred(&workspaces[2], 1))
        .await
        .expect("a credential");
    // Two storms: the first all good but for workspace 0's token, replayed
    // three more times; the second with workspace 1's taken serial among good
    // ones (a store that batches must still answer each on its own).
    let mut attempts = Vec::new();
    for (i, ws) in workspaces.iter().enumerate() {
        if i != 1 && i < 20 {
            attempts.push((i, cred(ws, 2)));
        }
    }
    for n in 3..6 {
        attempts.push((0, cred(&workspaces[0], n)));
    }
    let first_storm = attempts.len();
    // The taken serial comes after good ones, so a store that batches meets
    // it inside a batch.
    for (i, ws) in workspaces.iter().enumerate().skip(20) {
        attempts.push((i, cred(ws, 2)));
    }
    attempts.push((1, cred(&workspaces[1], 1)));
    let hashes: Vec<TokenHash> = attempts
        .iter()
        .map(|(i, _)| hash(3, &workspaces[*i]))
        .collect();
    let storm =
        |range: std::ops::Range<usize>| {
            join_all(attempts[range.clone()].iter().zip(&hashes[range]).map(
                |((_, credential), h)| {
                    store.exchange(h, credential.clone(), T0 + Duration::from_secs(1))
                },
            ))
        };
    let mut results = storm(0..first_storm).await;
    results.extend(storm(first_storm..attempts.len()).await);
    let of = |i: usize| -> Vec<&Result<AgentCredential>> {
        attempts
            .iter()
            .zip(&results)
            .filter(|((w, _), _)| *w == i)
            .map(|(_, r)| r)
            .collect()
    };
    one_winner(of(0), "a token's replays in a storm");
    expect_err!(
        of(1)[0],
        Error::AlreadyExists(_),
        "an exchange among many whose serial is taken"
    );
    let held = store.list_credentials(&workspaces[1]).await.expect("list");
    assert!(
        held.len() == 1 && held[0].revoked.is_none(),
        "the refused exchange revoked and stored nothing: {held:?}"
    );
    store
        .exchange(
            &hash(3, &workspaces[1]),
            cred(&workspaces[1], 2),
            T0 + Duration::from_secs(2),
        )
        .await
        .expect("the refused exchange left its token unspent");
    for (i, ws) in workspaces.iter().enumerate().skip(2) {
        assert!(of(i)[0].is_ok(), "exchange {i}: {:?}", of(i)[0]);
        let listed = store.list_credentials(ws).await.expect("list");
        let live: Vec<_> = listed.iter().filter(|c| c.revoked.is_none()).collect();
        assert!(
            live.len() == 1 && live[0].serial == serial_of(ws, 2),
            "exchange {i}: only the new credential is live: {listed:?}"
        );
    }
    let revoked = store.list_credentials(&workspaces[2]).await.expect("list");
    assert!(
        revoked
            .iter()
            .any(|c| c.serial == serial_of(&workspaces[2], 1)
                && c.revoked.as_ref().map(|r| r.reason.as_str()) == Some("re-bootstrapped")),
        "the older credential was revoked: {revoked:?}"
    );
}

/// `exchange`: the token consumed, the older credentials revoked and the new one
/// stored in one transaction — or nothing.
async fn exchanges(store: &dyn WorkspaceStore) {
    let ws = create(store, "exch").await;
    let other = create(store, "exch").await;
    let digits: String = ws.as_str().bytes().map(|b| format!("{b:02x}")).collect();
    let serial = |n: u8| {
        CertSerial::new(format!(
            "{n:02x}{}",
            &digits[digits.len().saturating_sub(30)..]
        ))
        .expect("serial")
    };
    let cred = |n: u8| credential(&ws, serial(n));
    let token = |byte: u8| {
        BootstrapTokenRecord::new(
            ws.clone(),
            hash(byte, &ws),
            T0,
            T0 + Duration::from_secs(3600),
        )
    };
    store
        .put_credential(cred(1))
        .await
        .expect("an earlier credential");
    store.put_token(token(1)).await.expect("a token");
    // A credential whose serial is taken: refused, and the token is not spent.
    expect_err!(
        store.exchange(&hash(1, &ws), cred(1), T0).await,
        Error::AlreadyExists(_),
        "an exchange whose credential exists already"
    );
    let listed = store.list_credentials(&ws).await.expect("list");
    assert!(
        listed.iter().all(|c| c.revoked.is_none()),
        "a refused exchange revoked nothing"
    );
    // Another workspace's token: refused, nothing stored.
    let mut foreign = cred(9);
    foreign.workspace = other.clone();
    expect_err!(
        store.exchange(&hash(1, &ws), foreign, T0).await,
        Error::TokenRefused(TokenRefusal::WrongWorkspace),
        "an exchange for another workspace"
    );
    assert!(
        store
            .list_credentials(&other)
            .await
            .expect("list")
            .is_empty()
    );
    // The exchange itself.
    let exchanged = store
        .exchange(&hash(1, &ws), cred(2), T0 + Duration::from_secs(1))
        .await
        .expect("exchange");
    assert_eq!(
        exchanged,
        cred(2),
        "the exchange returns the credential it stored"
    );
    let listed = store.list_credentials(&ws).await.expect("list");
    assert_eq!(listed.len(), 2);
    for c in &listed {
        if c.serial == serial(1) {
            assert_eq!(
                c.revoked.as_ref().map(|r| r.reason.as_str()),
                Some("re-bootstrapped")
            );
        } else {
            assert!(c.revoked.is_none(), "the new credential is live");
        }
    }
    // Spent: a second exchange is refused and stores nothing.
    expect_err!(
        store
            .exchange(&hash(1, &ws), cred(3), T0 + Duration::from_secs(2))
            .await,
        Error::TokenRefused(TokenRefusal::Reused { .. }),
        "a second exchange of one token"
    );
    assert_eq!(store.list_credentials(&ws).await.expect("list").len(), 2);

    // A workspace being destroyed takes no new agent, whatever the token; the
    // token stays unspent.
    let retired = random_workspace_id("exch");
    let mut rec = record(&retired);
    rec.state = WorkspaceState::Destroying;
    store
        .commit(WorkspaceWrite::create(rec, T0))
        .await
        .expect("create");
    let retired_token = open_token(&retired, 7);
    store.put_token(retired_token).await.expect("a token");
    let mut late = cred(5);
    late.workspace = retired.clone();
    expect_err!(
        store.exchange(&hash(7, &retired), late, T0).await,
        Error::TokenRefused(TokenRefusal::WorkspaceRetired { .. }),
        "an exchange into a workspace being destroyed"
    );
    assert!(
        store
            .list_credentials(&retired)
            .await
            .expect("list")
            .is_empty()
    );
    expect_err!(
        store
            .exchange(&hash(1, &random_workspace_id("exch")), cred(6), T0)
            .await,
        Error::TokenRefused(_),
        "an unknown token"
    );
}

async fn credentials(store: &dyn WorkspaceStore) {
    let a = create(store, "cred").await;
    let b = create(store, "cred").await;
    let serial = serial_of;
    let cred = |ws: &WorkspaceId, n: u8| credential(ws, serial(ws, n));
    expect_err!(
        store
            .put_credential(cred(&random_workspace_id("cred"), 1))
            .await,
        Error::NotFound(_),
        "a credential for an unknown workspace"
    );
    for n in [2, 1] {
        store.put_credential(cred(&a, n)).await.expect("record");
    }
    store.put_credential(cred(&b, 1)).await.expect("record");
    expect_err!(
        store.put_credential(cred(&a, 1)).await,
        Error::AlreadyExists(_),
        "a serial recorded twice"
    );
    assert_eq!(
        store.get_credential(&serial(&a, 1)).await.expect("read"),
        cred(&a, 1)
    );
    expect_err!(
        store.get_credential(&serial(&a, 9)).await,
        Error::NotFound(_),
        "an unknown serial"
    );
    let listed = store.list_credentials(&a).await.expect("list");
    assert_eq!(
        listed,
        [cred(&a, 1), cred(&a, 2)],
        "a workspace's credentials, by serial, and only its own"
    );

    // A poll's read: the record, and whether anything may be pending (a
    // store may always say so; it never says nothing when something is).
    let (read, _) = store
        .get_credential_for_poll(&serial(&a, 1))
        .await
        .expect("poll read");
    assert_eq!(read, cred(&a, 1), "a poll reads the same record");
    expect_err!(
        store.get_credential_for_poll(&serial(&a, 9)).await,
        Error::NotFound(_),
        "a poll's read of an unknown serial"
    );
    let b_serial = serial(&b, 1);
    let b_pending = async || poll_pending(store, &b_serial).await;
    store
        .commit(WorkspaceWrite::new(b.clone(), T0).command(command("p1")))
        .await
        .expect("queue");
    assert!(
        b_pending().await,
        "a queued command is pending for the poll"
    );
    store
        .answer(&b, result("p1", CommandOutcome::Succeeded), T0)
        .await
        .expect("answer");
    if !b_pending().await {
        assert!(
            store.deliver(&b, 0, T0).await.expect("deliver").is_empty(),
            "nothing pending means nothing to deliver"
        );
    }

    // The first poll is recorded once; later polls keep the first time.
    let polled = T0 + Duration::from_secs(10);
    assert!(
        store
            .mark_polled(&serial(&a, 1), polled)
            .await
            .expect("mark"),
        "the first poll reports true"
    );
    assert!(
        !store
            .mark_polled(&serial(&a, 1), polled + TTL)
            .await
            .expect("mark"),
        "later polls report false"
    );
    assert_eq!(
        store
            .get_credential(&serial(&a, 1))
            .await
            .expect("read")
            .first_poll_at,
        Some(polled)
    );
    expect_err!(
        store.mark_polled(&serial(&a, 9), polled).await,
        Error::NotFound(_),
        "marking an unknown serial"
    );

    let at = T0 + Duration::from_secs(100);
    let mut revoked = store
        .revoke_all(&a, "workspace destroyed", at)
        .await
        .expect("revoke");
    revoked.sort();
    assert_eq!(revoked, [serial(&a, 1), serial(&a, 2)]);
    let r = store
        .get_credential(&serial(&a, 2))
        .await
        .expect("read")
        .revoked
        .expect("revoked");
    assert_eq!((r.at, r.reason.as_str()), (at, "workspace destroyed"));
    assert!(
        store
            .revoke_all(&a, "again", at + TTL)
            .await
            .expect("revoke")
            .is_empty(),
        "revocation is permanent"
    );
    assert_eq!(
        store
            .get_credential(&serial(&a, 2))
            .await
            .expect("read")
            .revoked
            .expect("revoked")
            .reason,
        "workspace destroyed",
        "the first revocation is kept"
    );
    assert!(
        store
            .get_credential(&serial(&b, 1))
            .await
            .expect("read")
            .revoked
            .is_none(),
        "other workspaces untouched"
    );
}

async fn listing(store: &dyn WorkspaceStore) {
    let tenant = TenantId::new(format!(
        "t{}",
        random_workspace_id("x").as_str().replace('-', "")
    ))
    .expect("tenant");
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = random_workspace_id("list");
        let mut rec = record(&id);
        rec.spec.tenant = tenant.clone();
        if i == 1 {
            rec.state = WorkspaceState::Active;
            rec.wake_at = Some(T0 + Duration::from_secs(10));
        }
        store
            .commit(WorkspaceWrite::create(rec, T0))
            .await
            .expect("create");
        ids.push(id);
    }
    ids.sort();
    let query = |f: &dyn Fn(&mut ListQuery)| {
        let mut q = ListQuery {
            tenant: Some(tenant.clone()),
            ..ListQuery::default()
        };
        f(&mut q);
        q
    };
    let names = |v: Vec<crate::store::Versioned<WorkspaceRecord>>| {
        v.into_iter().map(|r| r.value.id).collect::<Vec<_>>()
    };
    assert_eq!(
        names(store.list_workspaces(&query(&|_| {})).await.expect("list")),
        ids,
        "by tenant, in id order"
    );
    let page1 = names(
        store
            .list_workspaces(&query(&|q| q.limit = 2))
            .await
            .expect("list"),
    );
    assert_eq!(page1, ids[..2], "limit");
    let after = page1[1].clone();
    let page2 = names(
        store
            .list_workspaces(&query(&|q| q.after = Some(after.clone())))
            .await
            .expect("list"),
    );
    assert_eq!(page2, ids[2..], "paging with after");
    let active = store
        .list_workspaces(&query(&|q| q.state = Some(StateName::Active)))
        .await
        .expect("list");
    assert_eq!(active.len(), 1, "by state");
    let due = |at| query(&move |q| q.due_at = Some(at));
    assert!(
        store
            .list_workspaces(&due(T0))
            .await
            .expect("list")
            .is_empty(),
        "nothing due yet"
    );
    assert_eq!(
        store
            .list_workspaces(&due(T0 + Duration::from_secs(10)))
            .await
            .expect("list")
            .len(),
        1,
        "due at wake_at"
    );
    listing_by_cloud_and_labels(store, &tenant, &ids).await;
}

/// Listing by cloud and labels, summaries and counts: `ids` are `tenant`'s
/// three workspaces (the second `Active`), on the sample spec's cloud.
async fn listing_by_cloud_and_labels(
    store: &dyn WorkspaceStore,
    tenant: &TenantId,
    ids: &[WorkspaceId],
) {
    let of_tenant = ListQuery::new().tenant(tenant.clone());
    let labels = |pairs: &[(&str, &str)]| {
        pairs.iter().fold(Labels::new(), |l, (k, v)| {
            l.with(k, v).expect("valid label")
        })
    };
    // Label the first two: `team` on both, `env` differing; keys with dots
    // and slashes as Kubernetes writes them.
    for (id, env) in [(&ids[0], "prod"), (&ids[1], "dev")] {
        let current = store.get_workspace(id).await.expect("read");
        let mut rec = current.value;
        rec.labels = labels(&[("team", "payments"), ("env", env), ("k8s.io/tier", "")]);
        store
            .commit(WorkspaceWrite::update(rec, current.revision, T0))
            .await
            .expect("label");
    }
    let listed = |q: ListQuery| async move {
        let summaries = store.list_summaries(&q).await.expect("summaries");
        let records = store.list_workspaces(&q).await.expect("list");
        let ids: Vec<WorkspaceId> = summaries.iter().map(|s| s.id.clone()).collect();
        assert_eq!(
            ids,
            records
                .iter()
                .map(|r| r.value.id.clone())
                .collect::<Vec<_>>(),
            "summaries and records select the same workspaces for {q:?}"
        );
        for (summary, record) in summaries.iter().zip(&records) {
            assert_eq!(
                summary,
                &WorkspaceSummary::of(record),
                "a summary is its record's"
            );
        }
        ids
    };
    let team = of_tenant.clone().labels(labels(&[("team", "payments")]));
    assert_eq!(listed(team.clone()).await, ids[..2], "by one label");
    assert_eq!(
        listed(
            of_tenant
                .clone()
                .labels(labels(&[("team", "payments"), ("env", "dev")]))
        )
        .await,
        ids[1..2],
        "by every label given"
    );
    assert_eq!(
        listed(of_tenant.clone().labels(labels(&[("k8s.io/tier", "")]))).await,
        ids[..2],
        "a key with dots and a slash, an empty value"
    );
    assert!(
        listed(of_tenant.clone().labels(labels(&[("env", "staging")])))
            .await
            .is_empty(),
        "a value nobody has"
    );
    assert!(
        listed(of_tenant.clone().labels(labels(&[("k8s.io/tier", "x")])))
            .await
            .is_empty(),
        "an empty value is not any value"
    );
    let cloud = crate::CloudKind::of(&sample_workspace_spec().cloud);
    assert_eq!(
        listed(of_tenant.clone().cloud(cloud)).await,
        ids,
        "by cloud"
    );
    let other = if cloud == crate::CloudKind::Aws {
        crate::CloudKind::Gcp
    } else {
        crate::CloudKind::Aws
    };
    assert!(
        listed(of_tenant.clone().cloud(other)).await.is_empty(),
        "another cloud"
    );
    let mut paged = team.clone();
    paged.limit = 1;
    assert_eq!(listed(paged.clone()).await, ids[..1], "labels with a limit");
    assert_eq!(
        listed(paged.after(ids[0].clone())).await,
        ids[1..2],
        "labels with paging"
    );
    let counts = store.count_workspaces(&of_tenant).await.expect("count");
    assert_eq!(
        counts,
        [(StateName::Provisioning, 2), (StateName::Active, 1)]
            .into_iter()
            .collect(),
        "counts by state"
    );
    let mut counted = team;
    counted.after = Some(ids[0].clone());
    counted.limit = 1;
    assert_eq!(
        store
            .count_workspaces(&counted)
            .await
            .expect("count")
            .values()
            .sum::<u64>(),
        2,
        "a count ignores paging"
    );
}

/// The feed of every workspace's events: each event once, each workspace's
/// history in order, resumable from any cursor; a purge's deleted history
/// is not read.
async fn feed(store: &dyn WorkspaceStore, clock: &ManualClock) {
    // Where the feed stands now: everything before belongs to other checks.
    let start = store.feed_head().await.expect("the feed's head");
    assert!(
        store
            .read_feed(start, 10)
            .await
            .expect("read the feed")
            .is_empty(),
        "nothing after the head"
    );
    let a = create(store, "feeda").await;
    let b = create(store, "feedb").await;
    for round in 0..3 {
        for id in [&a, &b] {
            store
                .commit(
                    WorkspaceWrite::new(id.clone(), T0)
                        .event(event(&format!("{round}.1")))
                        .event(event(&format!("{round}.2"))),
                )
                .await
                .expect("append");
        }
    }
    let read_all = |from, page: usize| async move {
        let mut out = Vec::new();
        let mut cursor = from;
        loop {
            let got = store.read_feed(cursor, page).await.expect("read the feed");
            assert!(got.len() <= page, "a page is at most its limit");
            let Some(last) = got.last() else { return out };
            cursor = last.cursor;
            out.extend(got);
        }
    };
    let all: Vec<crate::store::FeedEvent> = read_all(start, 4)
        .await
        .into_iter()
        .filter(|e| e.workspace == a || e.workspace == b)
        .collect();
    assert_eq!(all.len(), 12, "every event once: {all:?}");
    for w in [&a, &b] {
        let seqs: Vec<u64> = all
            .iter()
            .filter(|e| &e.workspace == w)
            .map(|e| e.event.seq.0)
            .collect();
        assert_eq!(seqs, (1..=6).collect::<Vec<_>>(), "{w}'s history in order");
        let history = store.read_events(w, EventSeq(0), 0).await.expect("history");
        let fed: Vec<_> = all
            .iter()
            .filter(|e| &e.workspace == w)
            .map(|e| e.event.clone())
            .collect();
        assert_eq!(
            fed, history,
            "the feed carries {w}'s events as its history does"
        );
    }
    assert!(
        all.windows(2).all(|p| p[0].cursor < p[1].cursor),
        "cursors increase along the feed"
    );
    // Resuming from any event's cursor reads exactly what follows it.
    let middle = all[5].cursor;
    let rest: Vec<_> = read_all(middle, 1000)
        .await
        .into_iter()
        .filter(|e| e.workspace == a || e.workspace == b)
        .collect();
    assert_eq!(rest, all[6..], "resuming after a cursor");
    // A purge that deletes a history removes its events from the feed.
    let (purged, lease) = destroyed_with_leftovers(store, clock).await;
    let before_purge = read_all(start, 1000).await;
    assert!(before_purge.iter().any(|e| e.workspace == purged));
    store
        .purge(
            purge_write(store, &purged, &lease).await,
            crate::HistoryRetention::Delete,
        )
        .await
        .expect("purge");
    let after_purge = read_all(start, 1000).await;
    assert!(
        after_purge.iter().all(|e| e.workspace != purged),
        "a deleted history is not in the feed"
    );
    assert_eq!(
        after_purge
            .iter()
            .filter(|e| e.workspace == a || e.workspace == b)
            .count(),
        12,
        "the others' events stay"
    );
}

/// A destroyed workspace with something of every kind a purge deletes: two
/// commands (one answered), a checkpoint, a token, a credential, two events.
/// Returns it with its lease.
async fn destroyed_with_leftovers(
    store: &dyn WorkspaceStore,
    clock: &ManualClock,
) -> (WorkspaceId, crate::store::Lease) {
    let at = At { store, clock };
    let id = create(store, "purge").await;
    let lease = at
        .acquire(&id, &holder("purger"), TTL, T0)
        .await
        .expect("lease");
    store
        .commit(
            WorkspaceWrite::new(id.clone(), T0)
                .command(command("p1"))
                .command(command("p2"))
                .event(event("before the destroy")),
        )
        .await
        .expect("queue");
    store
        .answer(&id, result("p1", CommandOutcome::Succeeded), T0)
        .await
        .expect("answer");
    let key = CheckpointKey::new("op1/network").expect("key");
    store
        .put_checkpoint(&id, &key, json!({"vpc": "v-1"}), lease.fence)
        .await
        .expect("checkpoint");
    store.put_token(open_token(&id, 9)).await.expect("token");
    store
        .put_credential(credential(&id, serial_of(&id, 9)))
        .await
        .expect("credential");
    let current = store.get_workspace(&id).await.expect("read");
    let mut rec = current.value;
    rec.state = WorkspaceState::Destroyed;
    store
        .commit(
            WorkspaceWrite::update(rec, current.revision, T0)
                .fenced(lease.fence)
                .event(event("destroyed")),
        )
        .await
        .expect("destroyed");
    (id, lease)
}

/// The purge write of `id`'s current record, fenced by `lease`.
async fn purge_write(
    store: &dyn WorkspaceStore,
    id: &WorkspaceId,
    lease: &crate::store::Lease,
) -> WorkspaceWrite {
    let current = store.get_workspace(id).await.expect("read");
    let mut rec = current.value;
    rec.purged_at = Some(T0);
    WorkspaceWrite::update(rec, current.revision, T0)
        .fenced(lease.fence)
        .event(event("purged"))
}

async fn purges(store: &dyn WorkspaceStore, clock: &ManualClock) {
    let at = At { store, clock };
    use crate::{HistoryRetention, store::Purged};
    // What `destroyed_with_leftovers` leaves, and `events` of history.
    let leftovers = |events| Purged {
        commands: 2,
        checkpoints: 1,
        tokens: 1,
        credentials: 1,
        events,
    };
    // A live workspace is never purged.
    let live = create(store, "purge").await;
    let live_lease = at
        .acquire(&live, &holder("purger"), TTL, T0)
        .await
        .expect("lease");
    let write = purge_write(store, &live, &live_lease).await;
    for history in [HistoryRetention::Keep, HistoryRetention::Delete] {
        expect_err!(
            store.purge(write.clone(), history).await,
            Error::Rejected { .. },
            "purging a workspace that is not destroyed"
        );
    }
    assert_eq!(
        store
            .get_workspace(&live)
            .await
            .expect("still there")
            .revision,
        Revision(1)
    );

    let (id, lease) = destroyed_with_leftovers(store, clock).await;
    let before = store.get_workspace(&id).await.expect("read");
    let events_before = store
        .read_events(&id, EventSeq(0), 0)
        .await
        .expect("events");
    let write = purge_write(store, &id, &lease).await;
    // Refusals change nothing.
    let mut stale = write.clone();
    stale.fence = Some(FencingToken(lease.fence.0 + 1));
    expect_err!(
        store.purge(stale, HistoryRetention::Keep).await,
        Error::LeaseLost { .. },
        "a purge under a stale fencing token"
    );
    let mut old = write.clone();
    if let Some((_, mode)) = &mut old.record {
        *mode = crate::store::PutMode::Update(Revision(before.revision.0 - 1));
    }
    expect_err!(
        store.purge(old, HistoryRetention::Delete).await,
        Error::Conflict { .. },
        "a purge based on an old revision"
    );
    let mut revived = write.clone();
    if let Some((rec, _)) = &mut revived.record {
        rec.state = WorkspaceState::Active;
    }
    expect_err!(
        store.purge(revived, HistoryRetention::Keep).await,
        Error::Rejected { .. },
        "a kept record that is not destroyed"
    );
    expect_err!(
        store
            .purge(
                write.clone().command(command("late")),
                HistoryRetention::Keep
            )
            .await,
        Error::InvalidValue(_),
        "a purge that queues a command"
    );
    let mut bare = WorkspaceWrite::new(id.clone(), T0).fenced(lease.fence);
    bare.events.push(event("no record"));
    expect_err!(
        store.purge(bare, HistoryRetention::Keep).await,
        Error::InvalidValue(_),
        "a purge without the record it is based on"
    );
    assert_eq!(
        store.get_workspace(&id).await.expect("read"),
        before,
        "refused purges changed the record"
    );
    assert!(
        store
            .get_command(&id, &CommandId::new("p2").expect("id"))
            .await
            .is_ok(),
        "refused purges deleted a command"
    );
    assert_eq!(
        store.list_credentials(&id).await.expect("list").len(),
        1,
        "refused purges deleted a credential"
    );

    // Keep: what a destroyed workspace no longer needs goes; record and history stay.
    let purged = store
        .purge(write, HistoryRetention::Keep)
        .await
        .expect("purge, history kept");
    assert_eq!(purged, leftovers(0), "what the purge reports");
    let after = store.get_workspace(&id).await.expect("the record is kept");
    assert_eq!(after.revision, Revision(before.revision.0 + 1));
    assert_eq!(after.value.purged_at, Some(T0));
    let events = store
        .read_events(&id, EventSeq(0), 0)
        .await
        .expect("history");
    assert_eq!(
        events.len(),
        events_before.len() + 1,
        "the history is kept, the purge's event appended"
    );
    for c in ["p1", "p2"] {
        expect_err!(
            store
                .get_command(&id, &CommandId::new(c).expect("id"))
                .await,
            Error::NotFound(_),
            "a purged command"
        );
    }
    let key = CheckpointKey::new("op1/network").expect("key");
    assert_eq!(
        store.get_checkpoint(&id, &key).await.expect("read"),
        None,
        "a purged checkpoint"
    );
    assert!(
        store.list_credentials(&id).await.expect("list").is_empty(),
        "purged credentials"
    );
    expect_err!(
        store.get_credential(&serial_of(&id, 9)).await,
        Error::NotFound(_),
        "a purged credential"
    );
    expect_err!(
        store.consume(&hash(9, &id), &id, T0).await,
        Error::TokenRefused(TokenRefusal::Unknown) | Error::NotFound(_),
        "a purged token"
    );
    assert!(store.deliver(&id, 0, T0).await.expect("deliver").is_empty());
    // The live workspace was not touched.
    assert_eq!(
        store
            .get_workspace(&live)
            .await
            .expect("still there")
            .revision,
        Revision(1)
    );

    // Delete: nothing of the workspace is left, and its id is free again.
    let (gone, lease) = destroyed_with_leftovers(store, clock).await;
    let events = store
        .read_events(&gone, EventSeq(0), 0)
        .await
        .expect("events")
        .len() as u64;
    let write = purge_write(store, &gone, &lease).await;
    let purged = store
        .purge(write, HistoryRetention::Delete)
        .await
        .expect("purge, history deleted");
    assert_eq!(purged, leftovers(events), "what the purge reports");
    expect_err!(
        store.get_workspace(&gone).await,
        Error::NotFound(Resource::Workspace(_)),
        "a purged record"
    );
    let events_left = store.read_events(&gone, EventSeq(0), 0).await;
    assert!(
        matches!(&events_left, Err(Error::NotFound(_)))
            || matches!(&events_left, Ok(e) if e.is_empty()),
        "a deleted history: {events_left:?}"
    );
    store
        .commit(WorkspaceWrite::create(record(&gone), T0))
        .await
        .expect("the id of a workspace purged with its history can be created again");
    at.acquire(&gone, &holder("purger"), TTL, T0)
        .await
        .expect("a lease on the new workspace");
    assert!(
        store
            .read_events(&gone, EventSeq(0), 0)
            .await
            .expect("events")
            .is_empty()
    );
}
