//! Persistence the host owns: the [`WorkspaceStore`] family of traits and the
//! records they hold.
//!
//! # Expected flow
//! A control-plane replica takes a workspace's [lease](LeaseStore), reads the
//! [record](RecordStore::get_workspace), decides what to do (a pure step), and
//! [commits](RecordStore::commit) the new record together with the events that
//! explain it and any agent commands it queues — one atomic, compare-and-swap,
//! fenced write. Providers save sub-step progress through
//! [checkpoints](RecordStore::put_checkpoint). Agents' commands leave through the
//! [queue](CommandQueue); bootstrap [tokens](TokenStore) and agent
//! [credentials](CredentialStore) live beside the records.
//!
//! # Guarantees every implementation gives
//! - **Compare-and-swap.** A [`PutMode::Create`] fails with
//!   [`Error::AlreadyExists`](crate::Error::AlreadyExists) if the record exists; a
//!   [`PutMode::Update`] fails with [`Error::Conflict`](crate::Error::Conflict)
//!   unless the stored revision is exactly the one given. Of N concurrent writers
//!   based on the same revision, exactly one succeeds.
//! - **Atomic commits.** A [`WorkspaceWrite`] applies entirely or not at all:
//!   record, events and commands.
//! - **Fencing.** A write that carries a fencing token is refused with
//!   [`Error::LeaseLost`](crate::Error::LeaseLost) unless that token belongs to the
//!   workspace's current, unreleased lease. A replica that lost its lease cannot
//!   change anything, even if its compare-and-swap revision is still current.
//! - **Append-only history.** Events get gapless sequence numbers from 1 per
//!   workspace, in commit order, and are never changed.
//! - **Refusals change nothing.** Every error leaves the store as it was.
//!
//! # Caveats
//! Times (`now`) come from the caller's [`Clock`](crate::Clock), not the store's, so
//! simulations are deterministic; replicas sharing a store must keep their clocks
//! within a small fraction of a lease's time to live.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use cogrion_agent_proto::{
    Command, CommandId, CommandKind, CommandResult, CommandSeq, checked_string,
};
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::Result;
use crate::ids::{HolderId, InvalidValue, Labels, StackName, WorkspaceId};
use crate::provisioner::{CloudResource, InfraLayer};
use crate::spec::{SpecChange, SpecChangeKind, WorkspaceSpec};
use crate::stack::{StackGraph, StackStateName};
use crate::state::{EventName, StateName, WorkspaceState};

mod commands;
mod identity;
mod keys;
mod records;
pub mod upgrade;
mod write;

pub use commands::*;
pub use identity::*;
pub use keys::*;
pub use records::*;
pub use write::*;

pub use crate::group::{GroupCommit, WriteCounter, WriteCounts, WriteKind};
pub use crate::memory::InMemoryStore;

/// Workspace records, their history and operation checkpoints.
///
/// # Errors
/// [`NotFound`](crate::Error::NotFound) for a workspace that does not exist;
/// [`AlreadyExists`](crate::Error::AlreadyExists) and
/// [`Conflict`](crate::Error::Conflict) from compare-and-swap;
/// [`LeaseLost`](crate::Error::LeaseLost) from a stale fencing token;
/// [`InvalidValue`](crate::Error::InvalidValue) for a write whose record id is not
/// its workspace; [`Unavailable`](crate::Error::Unavailable) when the database is
/// unreachable (nothing was written); [`Corrupt`](crate::Error::Corrupt) when a
/// stored row cannot be read.
///
/// Records are fenced by leases, so every record store is a [`LeaseStore`] too.
#[async_trait]
pub trait RecordStore: LeaseStore + fmt::Debug + Send + Sync + 'static {
    /// Reads a workspace record and its revision.
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Versioned<WorkspaceRecord>>;

    /// Lists workspace records matching `query`, ordered by id.
    async fn list_workspaces(&self, query: &ListQuery) -> Result<Vec<Versioned<WorkspaceRecord>>>;

    /// Applies one atomic write (see [`WorkspaceWrite`]). A write without a record
    /// requires the workspace to exist.
    async fn commit(&self, write: WorkspaceWrite) -> Result<Committed>;

    /// Commits every write as [`commit`](Self::commit) would, in order — each with
    /// its own compare-and-swap and fence, one failing not affecting the others —
    /// returning one result per write. The default goes through
    /// [`write_batch`](Self::write_batch).
    async fn commit_batch(&self, writes: Vec<WorkspaceWrite>) -> Vec<Result<Committed>> {
        self.write_batch(writes.into_iter().map(BatchWrite::Commit).collect())
            .await
            .into_iter()
            .map(|r| r.and_then(BatchOutcome::into_committed))
            .collect()
    }

    /// Applies every write — commits, checkpoints, lease acquisitions and
    /// releases, of any workspaces — as its own method would, in order, one
    /// failing not affecting the others, and returns one result per write.
    /// Durable stores override it to share one transaction (one fsync) among
    /// them all: that is group commit, what [`GroupCommit`]
    /// feeds. The default applies them one at a time.
    async fn write_batch(&self, writes: Vec<BatchWrite>) -> Vec<Result<BatchOutcome>> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(w.apply_alone(self).await);
        }
        out
    }

    /// Reads a workspace's history: events with a sequence number above `after`,
    /// in order, at most `limit` (0: the store's default page).
    async fn read_events(
        &self,
        id: &WorkspaceId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<EventRecord>>;

    /// Summaries of the workspaces `query` selects, ordered by id: what a
    /// listing shows, without reading whole records. The default reads the
    /// records; a store with the summary's fields in columns reads those.
    async fn list_summaries(&self, query: &ListQuery) -> Result<Vec<WorkspaceSummary>> {
        Ok(self
            .list_workspaces(query)
            .await?
            .iter()
            .map(WorkspaceSummary::of)
            .collect())
    }

    /// How many workspaces `query` selects, by state (its `after` and
    /// `limit` ignored). The default pages through the records.
    async fn count_workspaces(&self, query: &ListQuery) -> Result<BTreeMap<StateName, u64>> {
        let mut counts = BTreeMap::new();
        let mut page = query.clone();
        page.after = None;
        page.limit = 1000;
        loop {
            let records = self.list_workspaces(&page).await?;
            let Some(last) = records.last() else {
                return Ok(counts);
            };
            page.after = Some(last.value.id.clone());
            for r in &records {
                *counts.entry(r.value.state.name()).or_insert(0) += 1;
            }
        }
    }

    /// Every workspace's history events after `after`, in feed order, at
    /// most `limit` (0: the store's default page).
    ///
    /// # Contract
    /// A reader that starts from [`FeedCursor::START`] and always resumes
    /// after the last event it read sees every event of every workspace
    /// exactly once — an event whose transaction commits after later ones
    /// included — in an order that keeps each workspace's history in
    /// sequence. An event is readable once its write committed and every
    /// write that could still sort before it has ended; events a purge
    /// deleted are not read.
    async fn read_feed(&self, after: FeedCursor, limit: usize) -> Result<Vec<FeedEvent>>;

    /// The cursor of the last event [`read_feed`](Self::read_feed) could
    /// return now ([`FeedCursor::START`] for none): where a consumer that
    /// wants only what comes next starts. The default pages through the feed.
    async fn feed_head(&self) -> Result<FeedCursor> {
        let mut cursor = FeedCursor::START;
        loop {
            match self.read_feed(cursor, 1000).await?.last() {
                Some(last) => cursor = last.cursor,
                None => return Ok(cursor),
            }
        }
    }

    /// Reads a checkpoint; `None` if it was never written.
    async fn get_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
    ) -> Result<Option<serde_json::Value>>;

    /// Writes a checkpoint, refused unless `fence` is the workspace's current lease.
    async fn put_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
        value: serde_json::Value,
        fence: FencingToken,
    ) -> Result<()>;

    /// Deletes, in one transaction, what a destroyed workspace no longer needs:
    /// its commands, checkpoints, bootstrap tokens and agent credentials. With
    /// [`HistoryRetention::Keep`] it then applies `write` as
    /// [`commit`](Self::commit) would (the record marked purged, events
    /// appended); with [`HistoryRetention::Delete`] it deletes the history, the
    /// lease and the record too (the id may then be created again), after
    /// checking `write`'s preconditions (fence and revision).
    ///
    /// Refused, changing nothing: a write that fails
    /// [`check_preconditions`] (as `commit`); a workspace whose stored state is
    /// not `destroyed`, or a kept record that is not — [`Error::Rejected`](crate::Error::Rejected),
    /// so that no caller can purge a live workspace; a write without a record
    /// ([`InvalidValue`](crate::Error::InvalidValue)).
    async fn purge(&self, write: WorkspaceWrite, history: HistoryRetention) -> Result<Purged>;
}

/// A held lease on one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// Who holds it.
    pub holder: HolderId,
    /// The token that fences the holder's writes.
    pub fence: FencingToken,
    /// When it expires unless renewed, by the store's clock.
    pub expires_at: Timestamp,
}

/// Leases: at most one replica drives a workspace at a time.
///
/// # Contract
/// - **Time is the store's.** Whether a lease has expired, and when a lease
///   granted or renewed now expires, is judged by the store's own clock — the
///   database's (PostgreSQL's `now()`, SQLite's time inside the writing
///   transaction) or the one the in-memory store was given — never by the
///   caller's, so replicas whose clocks disagree still agree on who holds a
///   lease. [`Lease::expires_at`] is in the store's time: a holder judges how
///   long its lease holds by its own clock, from when it asked (at most the
///   TTL), not by comparing `expires_at` with its own clock.
/// - [`acquire`](Self::acquire) succeeds when nobody holds an unexpired lease, or
///   when the caller already does (then it renews it, keeping the fencing token).
///   A fresh acquisition gets a fencing token greater than every earlier one.
/// - While the lease is held and unexpired, others get
///   [`LeaseHeld`](crate::Error::LeaseHeld).
/// - [`renew`](Self::renew) extends a lease whose token is still current — even
///   past its expiry, if nobody took it over — and fails with
///   [`LeaseLost`](crate::Error::LeaseLost) otherwise.
/// - [`release`](Self::release) ends a current lease; releasing a stale one does
///   nothing.
/// - [`claim_due`](Self::claim_due) acquires, in one transaction, the leases of
///   up to `limit` workspaces that are due (their
///   [`wake_at`](WorkspaceRecord::wake_at) is at or before `until`) and that
///   nobody — the caller included — holds a live lease on, earliest due first.
///   (A holder already has what it holds; see `release_all` for a restart.) Workspaces another
///   replica is claiming at the same moment are skipped, not waited for
///   (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so replicas spread the work
///   instead of contending for it. Each returned lease follows the rules of
///   `acquire`.
/// - [`release_all`](Self::release_all) releases every lease `holder` holds: a
///   replica restarting under the same name calls it first, so that what its
///   previous run held can be claimed at once, under new fencing tokens that
///   fence out anything the previous run still had in flight.
/// - A TTL of zero or above [`MAX_LEASE_TTL`] is refused with
///   [`InvalidValue`](crate::Error::InvalidValue).
#[async_trait]
pub trait LeaseStore: fmt::Debug + Send + Sync + 'static {
    /// Takes (or renews) the lease on `workspace` for `ttl` from the store's
    /// now.
    async fn acquire(
        &self,
        workspace: &WorkspaceId,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Lease>;

    /// Extends `lease` to the store's now plus `ttl`.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease>;

    /// Gives `lease` up.
    async fn release(&self, lease: &Lease) -> Result<()>;

    /// Takes the leases of up to `limit` due workspaces nobody holds (see the
    /// contract above); an empty answer means there is nothing to claim now.
    /// (`until` is the caller's time, compared with the workspaces' wake
    /// times, which their writers set; leases are judged by the store's time.)
    async fn claim_due(
        &self,
        holder: &HolderId,
        ttl: Duration,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<Lease>>;

    /// Releases every lease `holder` holds; returns how many.
    async fn release_all(&self, holder: &HolderId) -> Result<u64>;
}

/// The durable queue of commands for each workspace's agent.
///
/// # Contract
/// Commands are queued by [`RecordStore::commit`] (atomically with the state change
/// that needs them), get gapless sequence numbers per workspace, and stay
/// [`Pending`](CommandStatus::Pending) — delivered again on every
/// [`deliver`](Self::deliver) — until [`answer`](Self::answer) stores the agent's
/// result. Delivery is therefore at-least-once; agents de-duplicate by id.
/// A step that gives up waiting calls [`withdraw`](Self::withdraw) before it
/// queues its retry, so that no command runs twice at once: one never delivered
/// is [`Withdrawn`](CommandStatus::Withdrawn) (no agent will see it), one
/// delivered becomes [`Cancelling`](CommandStatus::Cancelling) (every poll asks
/// the agent to cancel it, until it answers). `withdraw` and `deliver` are
/// atomic with each other: a command is never both handed out and withdrawn. A
/// command id is unique within its workspace: queueing it again fails the whole
/// commit with [`AlreadyExists`](crate::Error::AlreadyExists). A workspace's agent
/// can only see and answer that workspace's commands: another workspace's id is
/// [`NotFound`](crate::Error::NotFound).
#[async_trait]
pub trait CommandQueue: fmt::Debug + Send + Sync + 'static {
    /// Hands out the workspace's open commands in sequence order (at most
    /// `limit`, 0 meaning all): the pending ones, counting one delivery for
    /// each, and the cancelling ones (for the agent to cancel; not counted).
    /// With nothing open it writes nothing.
    async fn deliver(
        &self,
        workspace: &WorkspaceId,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<QueuedCommand>>;

    /// Stores the agent's result for one of the workspace's open commands.
    /// Answering an already answered command keeps the first result and returns
    /// `false`, as does answering a withdrawn one (nothing is stored); otherwise
    /// returns `true`.
    async fn answer(
        &self,
        workspace: &WorkspaceId,
        result: CommandResult,
        now: Timestamp,
    ) -> Result<bool>;

    /// Reads one command and where it stands.
    async fn get_command(&self, workspace: &WorkspaceId, id: &CommandId) -> Result<QueuedCommand>;

    /// Takes back a command its step gave up waiting for, by the rule of
    /// [`QueuedCommand::withdrawal`], and returns its status after: `Withdrawn`
    /// (no agent will see it), `Cancelling` (an agent has it), or — when it is
    /// no longer pending — its status unchanged (an answer that came in time
    /// is kept and returned).
    async fn withdraw(
        &self,
        workspace: &WorkspaceId,
        id: &CommandId,
        now: Timestamp,
    ) -> Result<CommandStatus>;
}

/// Bootstrap-token hashes.
///
/// # Contract
/// A workspace has at most one unconsumed token: storing a new one replaces it.
/// [`consume`](Self::consume) is atomic: of two concurrent exchanges of one token
/// exactly one succeeds; each refusal is a distinct
/// [`TokenRefused`](crate::Error::TokenRefused) reason and changes nothing.
#[async_trait]
pub trait TokenStore: fmt::Debug + Send + Sync + 'static {
    /// Stores a newly issued token's hash, replacing the workspace's unconsumed
    /// token if any. The workspace must exist; a hash already stored is
    /// [`AlreadyExists`](crate::Error::AlreadyExists).
    async fn put_token(&self, token: BootstrapTokenRecord) -> Result<()>;

    /// Exchanges the token with this hash for `workspace` at `now`, marking it
    /// consumed.
    async fn consume(
        &self,
        hash: &TokenHash,
        workspace: &WorkspaceId,
        now: Timestamp,
    ) -> Result<BootstrapTokenRecord>;

    /// A bootstrap, in one transaction: exchanges the token as
    /// [`consume`](Self::consume) does for `credential`'s workspace (recording
    /// `credential`'s serial as the one it [`issued`](BootstrapTokenRecord::issued)),
    /// revokes that workspace's earlier credentials (`re-bootstrapped`), and
    /// stores `credential`, which it returns. A workspace being destroyed (or
    /// destroyed) takes no new agent:
    /// [`WorkspaceRetired`](crate::TokenRefusal::WorkspaceRetired), whatever the
    /// token. All or nothing: a refusal, or a credential that cannot be stored,
    /// changes nothing.
    ///
    /// **Replay.** An agent that lost the answer sends the same token again,
    /// with the same key. If the token was consumed by an exchange whose
    /// credential has that same [`key`](AgentCredential::key), the credential
    /// is not revoked, and the token's lifetime has not ended, nothing changes
    /// and that earlier credential is returned (same serial). Any other key is
    /// refused as [`Reused`](crate::TokenRefusal::Reused).
    async fn exchange(
        &self,
        hash: &TokenHash,
        credential: AgentCredential,
        now: Timestamp,
    ) -> Result<AgentCredential>;
}

/// Issued agent certificates and their revocations.
///
/// # Contract
/// Serials are unique across workspaces. Revocation is permanent.
#[async_trait]
pub trait CredentialStore: fmt::Debug + Send + Sync + 'static {
    /// Records an issued certificate (the workspace must exist).
    async fn put_credential(&self, credential: AgentCredential) -> Result<()>;

    /// Reads a certificate's record.
    async fn get_credential(&self, serial: &CertSerial) -> Result<AgentCredential>;

    /// Reads a certificate's record for its agent's poll, with whether the
    /// workspace may have commands not yet answered: `false` only when it has
    /// none, so that an idle poll reads nothing more. The default reads the
    /// record and answers `true` (the poll then asks
    /// [`CommandQueue::deliver`]); a store that can tell both in one read
    /// overrides it.
    async fn get_credential_for_poll(
        &self,
        serial: &CertSerial,
    ) -> Result<(AgentCredential, bool)> {
        Ok((self.get_credential(serial).await?, true))
    }

    /// Lists a workspace's certificates, by serial.
    async fn list_credentials(&self, workspace: &WorkspaceId) -> Result<Vec<AgentCredential>>;

    /// Records an authenticated poll with the certificate: its
    /// [`last_seen_at`](AgentCredential::last_seen_at) becomes `now`, and its
    /// [`first_poll_at`](AgentCredential::first_poll_at) too if unset. The
    /// gateway calls it for the first poll and then at most once per
    /// [`seen_interval`](crate::agent::GatewayConfig::seen_interval), never once per
    /// poll. Returns `true` if this was the first poll, `false` if one was
    /// recorded before (the first time is kept).
    async fn mark_polled(&self, serial: &CertSerial, now: Timestamp) -> Result<bool>;

    /// A renewal, in one transaction: `old` must be current (not revoked:
    /// [`CredentialRevoked`](crate::Error::CredentialRevoked); not expired at
    /// `now`: [`CredentialExpired`](crate::Error::CredentialExpired)); every
    /// other live credential of its workspace is revoked (`superseded by a
    /// renewal`), so that the workspace keeps at most two — `old` and its
    /// renewal; and `renewed` is stored with its [`token`](AgentCredential::token)
    /// and [`renewed_from`](AgentCredential::renewed_from) taken from `old`.
    /// Returns the stored renewal. A refusal changes nothing. Since the check
    /// and the write are one, a revocation (a destroy, a re-bootstrap) either
    /// comes first and refuses the renewal, or comes after and revokes it too.
    async fn renew_credential(
        &self,
        old: &CertSerial,
        renewed: AgentCredential,
        now: Timestamp,
    ) -> Result<AgentCredential>;

    /// Revokes every unrevoked certificate of the workspace; returns their serials.
    async fn revoke_all(
        &self,
        workspace: &WorkspaceId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Vec<CertSerial>>;
}

/// Everything a control plane stores: the traits above, implemented together.
///
/// Implemented automatically for every type that implements all of them; use it
/// as `Arc<dyn WorkspaceStore>`.
pub trait WorkspaceStore:
    RecordStore + LeaseStore + CommandQueue + TokenStore + CredentialStore
{
}

impl<T> WorkspaceStore for T where
    T: RecordStore + LeaseStore + CommandQueue + TokenStore + CredentialStore
{
}
