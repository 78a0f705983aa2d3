//! The store's traits, implemented once for [`SqlStore`] on any [`Backend`].

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use cogrion_core::proto::{CommandId, CommandResult};
use cogrion_core::{
    Error, EventRecord, EventSeq, HistoryRetention, HolderId, Resource, Result, WorkspaceId,
    store::{
        AgentCredential, BatchOutcome, BatchWrite, BootstrapTokenRecord, CertSerial, CheckpointKey,
        CommandQueue, CommandStatus, Committed, CredentialStore, FencingToken, Lease, LeaseStore,
        ListQuery, Purged, QueuedCommand, RecordStore, TokenHash, TokenStore, Versioned,
        WorkspaceRecord, WorkspaceWrite,
    },
};
use cogrion_core::{
    StateName, Timestamp,
    store::{FeedCursor, FeedEvent, WorkspaceSummary, WriteKind, check_lease_ttl},
};

use super::{Backend, SqlStore, ops, read_record, to_json};

/// `self.write` or `self.read` of one operation: `$op(conn, args…)`, the
/// arguments moved into the call.
macro_rules! on_conn {
    ($store:expr, $how:ident, |$conn:ident| $body:expr) => {
        $store
            .$how(move |$conn| Box::pin(async move { $body.await }))
            .await
    };
}

#[async_trait]
impl<B: Backend> RecordStore for SqlStore<B> {
    // Records are decoded here, not on the connection's thread.
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Versioned<WorkspaceRecord>> {
        let wanted = id.clone();
        let (revision, body) = on_conn!(self, read, |c| ops::get_workspace(c, &wanted))?;
        read_record(id.as_str(), revision, &body)
    }

    async fn list_workspaces(&self, query: &ListQuery) -> Result<Vec<Versioned<WorkspaceRecord>>> {
        let query = query.clone();
        on_conn!(self, read, |c| ops::list_workspaces(c, &query))?
            .iter()
            .map(|(id, revision, body)| read_record(id, *revision, body))
            .collect()
    }

    async fn commit(&self, write: WorkspaceWrite) -> Result<Committed> {
        self.counts.add(WriteKind::Commit);
        let prepared = ops::Prepared::new(self.backend.dialect(), write)?;
        on_conn!(self, write, |c| ops::apply(c, prepared))
    }

    async fn purge(&self, write: WorkspaceWrite, history: HistoryRetention) -> Result<Purged> {
        on_conn!(self, write, |c| ops::purge(c, write, history))
    }

    /// Group commit: all writes in one transaction (one flush to disk where
    /// commits are synced); one write's refusal leaves the others alone
    /// (every write checks before it writes).
    async fn write_batch(&self, writes: Vec<BatchWrite>) -> Vec<Result<BatchOutcome>> {
        if writes.is_empty() {
            return Vec::new();
        }
        let n = writes.len();
        let clock = self.clock.clone();
        let dialect = self.backend.dialect();
        let items: Vec<ops::Item> = writes
            .into_iter()
            .map(|w| {
                self.counts.add(WriteKind::of(&w));
                ops::Item::new(dialect, w)
            })
            .collect();
        match on_conn!(self, write, |c| ops::write_batch(c, items, &clock)) {
            Ok(results) => results,
            // The transaction itself failed: nothing was written.
            Err(e) => (0..n).map(|_| Err(again(&e))).collect(),
        }
    }

    async fn read_events(
        &self,
        id: &WorkspaceId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        let id = id.clone();
        on_conn!(self, read, |c| ops::read_events(c, &id, after, limit))
    }

    async fn list_summaries(&self, query: &ListQuery) -> Result<Vec<WorkspaceSummary>> {
        let query = query.clone();
        on_conn!(self, read, |c| ops::list_summaries(c, &query))
    }

    async fn count_workspaces(&self, query: &ListQuery) -> Result<BTreeMap<StateName, u64>> {
        let query = query.clone();
        on_conn!(self, read, |c| ops::count_workspaces(c, &query))
    }

    async fn read_feed(&self, after: FeedCursor, limit: usize) -> Result<Vec<FeedEvent>> {
        on_conn!(self, read, |c| ops::read_feed(c, after, limit))
    }

    async fn feed_head(&self) -> Result<FeedCursor> {
        on_conn!(self, read, |c| ops::feed_head(c))
    }

    async fn get_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
    ) -> Result<Option<serde_json::Value>> {
        let (id, key) = (id.clone(), key.clone());
        on_conn!(self, read, |c| ops::get_checkpoint(c, &id, &key))
    }

    async fn put_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
        value: serde_json::Value,
        fence: FencingToken,
    ) -> Result<()> {
        self.counts.add(WriteKind::Checkpoint);
        let (id, key) = (id.clone(), key.clone());
        let value = to_json(self.backend.dialect(), &value)?;
        on_conn!(self, write, |c| ops::put_checkpoint(
            c, &id, &key, &value, fence
        ))
    }
}

#[async_trait]
impl<B: Backend> LeaseStore for SqlStore<B> {
    async fn acquire(
        &self,
        workspace: &WorkspaceId,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Lease> {
        self.counts.add(WriteKind::Acquire);
        let (ws, holder, clock) = (workspace.clone(), holder.clone(), self.clock.clone());
        on_conn!(self, write, |c| ops::acquire(c, ws, holder, ttl, &clock))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        check_lease_ttl(ttl)?;
        let (lease, clock) = (lease.clone(), self.clock.clone());
        on_conn!(self, write, |c| ops::renew(c, lease, ttl, &clock))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.counts.add(WriteKind::Release);
        let lease = lease.clone();
        on_conn!(self, write, |c| ops::release(c, &lease))
    }

    async fn claim_due(
        &self,
        holder: &HolderId,
        ttl: Duration,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<Lease>> {
        check_lease_ttl(ttl)?;
        let (holder, clock) = (holder.clone(), self.clock.clone());
        on_conn!(self, write, |c| ops::claim_due(
            c, &holder, ttl, until, limit, &clock
        ))
    }

    async fn release_all(&self, holder: &HolderId) -> Result<u64> {
        let holder = holder.clone();
        on_conn!(self, write, |c| ops::release_all(c, &holder))
    }
}

#[async_trait]
impl<B: Backend> CommandQueue for SqlStore<B> {
    async fn deliver(
        &self,
        workspace: &WorkspaceId,
        limit: usize,
        _now: Timestamp,
    ) -> Result<Vec<QueuedCommand>> {
        // An idle poll reads and writes nothing else.
        let ws = workspace.clone();
        if !on_conn!(self, read, |c| ops::has_open_commands(c, &ws))? {
            return Ok(Vec::new());
        }
        let ws = workspace.clone();
        on_conn!(self, write, |c| ops::deliver(c, &ws, limit))
    }

    async fn answer(
        &self,
        workspace: &WorkspaceId,
        result: CommandResult,
        now: Timestamp,
    ) -> Result<bool> {
        result.check()?;
        let ws = workspace.clone();
        on_conn!(self, write, |c| ops::answer(c, &ws, result, now))
    }

    async fn get_command(&self, workspace: &WorkspaceId, id: &CommandId) -> Result<QueuedCommand> {
        let (ws, id) = (workspace.clone(), id.clone());
        on_conn!(self, read, |c| ops::get_command(c, &ws, &id))
    }

    async fn withdraw(
        &self,
        workspace: &WorkspaceId,
        id: &CommandId,
        now: Timestamp,
    ) -> Result<CommandStatus> {
        let (ws, id) = (workspace.clone(), id.clone());
        on_conn!(self, write, |c| ops::withdraw(c, &ws, &id, now))
    }
}

#[async_trait]
impl<B: Backend> TokenStore for SqlStore<B> {
    async fn put_token(&self, token: BootstrapTokenRecord) -> Result<()> {
        on_conn!(self, write, |c| ops::put_token(c, token))
    }

    async fn consume(
        &self,
        hash: &TokenHash,
        workspace: &WorkspaceId,
        now: Timestamp,
    ) -> Result<BootstrapTokenRecord> {
        let (hash, ws) = (*hash, workspace.clone());
        on_conn!(self, write, |c| ops::consume(c, hash, &ws, now))
    }

    async fn exchange(
        &self,
        hash: &TokenHash,
        credential: AgentCredential,
        now: Timestamp,
    ) -> Result<AgentCredential> {
        let hash = *hash;
        on_conn!(self, write, |c| ops::exchange(c, hash, credential, now))
    }
}

#[async_trait]
impl<B: Backend> CredentialStore for SqlStore<B> {
    async fn put_credential(&self, credential: AgentCredential) -> Result<()> {
        on_conn!(self, write, |c| ops::put_credential(c, credential))
    }

    async fn get_credential(&self, serial: &CertSerial) -> Result<AgentCredential> {
        let serial = serial.clone();
        on_conn!(self, read, |c| async {
            ops::credential_of(c, &serial)
                .await?
                .ok_or_else(|| Error::NotFound(Resource::Credential(serial.clone())))
        })
    }

    async fn get_credential_for_poll(
        &self,
        serial: &CertSerial,
    ) -> Result<(AgentCredential, bool)> {
        let serial = serial.clone();
        on_conn!(self, read, |c| ops::credential_for_poll(c, &serial))
    }

    async fn list_credentials(&self, workspace: &WorkspaceId) -> Result<Vec<AgentCredential>> {
        let ws = workspace.clone();
        on_conn!(self, read, |c| ops::list_credentials(c, &ws))
    }

    async fn mark_polled(&self, serial: &CertSerial, now: Timestamp) -> Result<bool> {
        let serial = serial.clone();
        on_conn!(self, write, |c| ops::mark_polled(c, &serial, now))
    }

    async fn renew_credential(
        &self,
        old: &CertSerial,
        renewed: AgentCredential,
        now: Timestamp,
    ) -> Result<AgentCredential> {
        let old = old.clone();
        on_conn!(self, write, |c| ops::renew_credential(
            c, &old, renewed, now
        ))
    }

    async fn revoke_all(
        &self,
        workspace: &WorkspaceId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Vec<CertSerial>> {
        let (ws, reason) = (workspace.clone(), reason.to_owned());
        on_conn!(self, write, |c| ops::revoke_all(c, &ws, &reason, now))
    }
}

/// The error of a failed transaction, once more for each of its writes (its
/// text: a cause cannot be shared).
fn again(e: &Error) -> Error {
    match e {
        Error::Unavailable {
            service, detail, ..
        } => Error::Unavailable {
            service: service.clone(),
            detail: detail.clone(),
            source: None,
        },
        other => Error::Unavailable {
            service: "database".into(),
            detail: other.to_string(),
            source: None,
        },
    }
}
