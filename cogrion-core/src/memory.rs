//! [`InMemoryStore`]: a complete [`WorkspaceStore`](crate::store::WorkspaceStore) in
//! memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use cogrion_agent_proto::{CommandId, CommandResult};

use crate::clock::{Clock, Timestamp};
use crate::error::{Error, Resource, Result, TokenRefusal};
use crate::ids::{HolderId, WorkspaceId};
use crate::state::StateName;
use crate::store::{
    AgentCredential, BootstrapTokenRecord, CertSerial, CheckpointKey, CommandQueue, CommandStatus,
    Committed, CredentialStore, EventRecord, EventSeq, FeedCursor, FeedEvent, FencingToken,
    HistoryRetention, Lease, LeaseStore, ListQuery, Purged, PutMode, QueuedCommand, RecordStore,
    Revision, Revocation, TokenHash, TokenStore, Versioned, WorkspaceRecord, WorkspaceWrite,
    check_lease_ttl, check_preconditions, check_purge, check_write,
};

const DEFAULT_PAGE: usize = 1000;

/// A [`WorkspaceStore`](crate::store::WorkspaceStore) that keeps everything in process
/// memory, behind one mutex. Clones share the same data.
///
/// It implements every method with the same guarantees as the durable stores (it
/// passes the same conformance suite) but keeps nothing across a restart: use it
/// for tests, simulations and single-process demos.
///
/// ```
/// use std::sync::Arc;
/// use cogrion_core::{Error, store::{InMemoryStore, WorkspaceStore}};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store: Arc<dyn WorkspaceStore> = Arc::new(InMemoryStore::new());
/// let missing = store.get_workspace(&"acme-prod".parse().unwrap()).await;
/// assert!(matches!(missing, Err(Error::NotFound(_))));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct InMemoryStore {
    inner: Arc<Mutex<Inner>>,
    /// The store's clock: leases expire by it.
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct Inner {
    workspaces: BTreeMap<WorkspaceId, Workspace>,
    tokens: HashMap<TokenHash, BootstrapTokenRecord>,
    credentials: BTreeMap<CertSerial, AgentCredential>,
    /// The feed of every workspace's events: position → (workspace, seq).
    feed: BTreeMap<u64, (WorkspaceId, EventSeq)>,
    /// The last position given (never reused, even after a purge).
    last_position: u64,
}

#[derive(Debug)]
struct Workspace {
    record: WorkspaceRecord,
    revision: Revision,
    events: Vec<EventRecord>,
    commands: Vec<QueuedCommand>,
    command_index: HashMap<CommandId, usize>,
    lease: Option<LeaseState>,
    last_fence: u64,
    checkpoints: BTreeMap<CheckpointKey, serde_json::Value>,
    /// The workspace's unconsumed bootstrap token, if any.
    open_token: Option<TokenHash>,
    /// The workspace's credentials, by serial.
    credentials: std::collections::BTreeSet<CertSerial>,
}

#[derive(Debug, Clone)]
struct LeaseState {
    holder: HolderId,
    fence: FencingToken,
    expires_at: Timestamp,
    released: bool,
}

impl Workspace {
    /// Its command `id`, or not found.
    fn command_mut(&mut self, id: &CommandId) -> Result<&mut QueuedCommand> {
        match self.command_index.get(id) {
            Some(&i) => Ok(&mut self.commands[i]),
            None => Err(Error::NotFound(Resource::Command(
                self.record.id.clone(),
                id.clone(),
            ))),
        }
    }

    fn check_fence(&self, fence: FencingToken) -> Result<()> {
        match &self.lease {
            Some(l) if l.fence == fence && !l.released => Ok(()),
            _ => Err(Error::LeaseLost {
                workspace: self.record.id.clone(),
                fence: fence.0,
            }),
        }
    }
}

impl Workspace {
    /// Whether the lease can be claimed now: nobody holds it live.
    fn claimable(&self, now: Timestamp) -> bool {
        self.lease
            .as_ref()
            .is_none_or(|l| l.released || l.expires_at <= now)
    }

    /// Grants (or renews) the lease to `holder`, by the rules of
    /// [`LeaseStore::acquire`].
    fn grant(&mut self, holder: &HolderId, ttl: Duration, now: Timestamp) -> Result<Lease> {
        let live = self
            .lease
            .as_ref()
            .filter(|l| !l.released && l.expires_at > now);
        let fence = match live {
            Some(l) if &l.holder != holder => {
                return Err(Error::LeaseHeld {
                    workspace: self.record.id.clone(),
                    holder: l.holder.clone(),
                    expires_at: l.expires_at,
                    retry_after: l.expires_at.since(now),
                });
            }
            Some(l) => l.fence,
            None => {
                self.last_fence += 1;
                FencingToken(self.last_fence)
            }
        };
        let expires_at = now + ttl;
        self.lease = Some(LeaseState {
            holder: holder.clone(),
            fence,
            expires_at,
            released: false,
        });
        Ok(Lease {
            workspace: self.record.id.clone(),
            holder: holder.clone(),
            fence,
            expires_at,
        })
    }
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::with_clock(Arc::new(crate::clock::SystemClock))
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose leases expire by `clock` (a test's manual clock,
    /// say) instead of the system's.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::default(),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied write: every
        // method checks everything before it mutates.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn credential(&self, serial: &CertSerial) -> Result<&AgentCredential> {
        self.credentials
            .get(serial)
            .ok_or_else(|| Error::NotFound(Resource::Credential(serial.clone())))
    }

    fn workspace(&self, id: &WorkspaceId) -> Result<&Workspace> {
        self.workspaces
            .get(id)
            .ok_or_else(|| Error::NotFound(Resource::Workspace(id.clone())))
    }

    fn workspace_mut(&mut self, id: &WorkspaceId) -> Result<&mut Workspace> {
        self.workspaces
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(Resource::Workspace(id.clone())))
    }

    fn commit(&mut self, write: WorkspaceWrite) -> Result<Committed> {
        let id = write.workspace.clone();
        let existing = self.workspaces.get(&id);
        let first_seq = existing.map_or(1, |w| w.commands.len() as u64 + 1);
        let commands = check_write(&write, first_seq)?;

        // Check everything before changing anything.
        let live_fence =
            existing.and_then(|ws| ws.lease.as_ref().filter(|l| !l.released).map(|l| l.fence));
        check_preconditions(&write, existing.map(|ws| ws.revision), live_fence)?;
        if let Some(ws) = existing
            && let Some(c) = commands
                .iter()
                .find(|c| ws.command_index.contains_key(&c.id))
        {
            return Err(Error::AlreadyExists(Resource::Command(id, c.id.clone())));
        }

        let record_written = write.record.is_some();
        let ws = match write.record {
            Some((record, PutMode::Create)) => self.workspaces.entry(id).or_insert(Workspace {
                record,
                revision: Revision(1),
                events: Vec::new(),
                commands: Vec::new(),
                command_index: HashMap::new(),
                lease: None,
                last_fence: 0,
                checkpoints: BTreeMap::new(),
                open_token: None,
                credentials: Default::default(),
            }),
            Some((record, PutMode::Update(rev))) => {
                let ws = self.workspaces.get_mut(&id).expect("checked above");
                ws.record = record;
                ws.revision = Revision(rev.0 + 1);
                ws
            }
            None => self.workspaces.get_mut(&id).expect("checked above"),
        };
        let mut committed = Committed {
            revision: record_written.then_some(ws.revision),
            events: Vec::with_capacity(write.events.len()),
            commands: Vec::with_capacity(commands.len()),
        };
        for event in write.events {
            let seq = EventSeq(ws.events.len() as u64 + 1);
            ws.events.push(EventRecord { seq, event });
            committed.events.push(seq);
            self.last_position += 1;
            self.feed
                .insert(self.last_position, (ws.record.id.clone(), seq));
        }
        for command in commands {
            committed.commands.push(command.seq);
            ws.command_index
                .insert(command.id.clone(), ws.commands.len());
            ws.commands.push(QueuedCommand {
                command,
                enqueued_at: write.now,
                deliveries: 0,
                status: CommandStatus::Pending,
            });
        }
        Ok(committed)
    }
}

#[async_trait]
impl RecordStore for InMemoryStore {
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Versioned<WorkspaceRecord>> {
        let inner = self.lock();
        let ws = inner.workspace(id)?;
        Ok(Versioned {
            value: ws.record.clone(),
            revision: ws.revision,
        })
    }

    async fn list_workspaces(&self, query: &ListQuery) -> Result<Vec<Versioned<WorkspaceRecord>>> {
        let inner = self.lock();
        let limit = if query.limit == 0 {
            DEFAULT_PAGE
        } else {
            query.limit
        };
        Ok(inner
            .workspaces
            .values()
            .filter(|w| query.after.as_ref().is_none_or(|a| &w.record.id > a))
            .filter(|w| query.selects(&w.record))
            .take(limit)
            .map(|w| Versioned {
                value: w.record.clone(),
                revision: w.revision,
            })
            .collect())
    }

    async fn commit(&self, write: WorkspaceWrite) -> Result<Committed> {
        self.lock().commit(write)
    }

    async fn commit_batch(&self, writes: Vec<WorkspaceWrite>) -> Vec<Result<Committed>> {
        let mut inner = self.lock();
        writes.into_iter().map(|w| inner.commit(w)).collect()
    }

    async fn read_feed(&self, after: FeedCursor, limit: usize) -> Result<Vec<FeedEvent>> {
        let inner = self.lock();
        let limit = if limit == 0 { DEFAULT_PAGE } else { limit };
        // This store commits in order.
        let from = after.in_order_position();
        Ok(inner
            .feed
            .range(from.saturating_add(1)..)
            .filter_map(|(&position, (id, seq))| {
                let event = inner.workspaces.get(id)?.events.get(seq.0 as usize - 1)?;
                Some(FeedEvent {
                    cursor: FeedCursor::new(0, position),
                    workspace: id.clone(),
                    event: event.clone(),
                })
            })
            .take(limit)
            .collect())
    }

    async fn feed_head(&self) -> Result<FeedCursor> {
        let inner = self.lock();
        Ok(inner
            .feed
            .keys()
            .next_back()
            .map_or(FeedCursor::START, |&p| FeedCursor::new(0, p)))
    }

    async fn read_events(
        &self,
        id: &WorkspaceId,
        after: EventSeq,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        let inner = self.lock();
        let ws = inner.workspace(id)?;
        let limit = if limit == 0 { DEFAULT_PAGE } else { limit };
        let start = usize::try_from(after.0)
            .unwrap_or(usize::MAX)
            .min(ws.events.len());
        Ok(ws.events[start..].iter().take(limit).cloned().collect())
    }

    async fn get_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
    ) -> Result<Option<serde_json::Value>> {
        let inner = self.lock();
        Ok(inner.workspace(id)?.checkpoints.get(key).cloned())
    }

    async fn put_checkpoint(
        &self,
        id: &WorkspaceId,
        key: &CheckpointKey,
        value: serde_json::Value,
        fence: FencingToken,
    ) -> Result<()> {
        let mut inner = self.lock();
        let ws = inner.workspace_mut(id)?;
        ws.check_fence(fence)?;
        ws.checkpoints.insert(key.clone(), value);
        Ok(())
    }

    async fn purge(&self, write: WorkspaceWrite, history: HistoryRetention) -> Result<Purged> {
        let mut inner = self.lock();
        let id = write.workspace.clone();
        let existing = inner.workspaces.get(&id);
        let live_fence =
            existing.and_then(|ws| ws.lease.as_ref().filter(|l| !l.released).map(|l| l.fence));
        check_purge(
            &write,
            history,
            existing.map(|ws| ws.record.state.name().as_str()),
            existing.map(|ws| ws.revision),
            live_fence,
        )?;
        let tokens: Vec<TokenHash> = inner
            .tokens
            .iter()
            .filter(|(_, t)| t.workspace == id)
            .map(|(h, _)| *h)
            .collect();
        for hash in &tokens {
            inner.tokens.remove(hash);
        }
        let ws = inner.workspace_mut(&id)?;
        let serials = std::mem::take(&mut ws.credentials);
        let mut purged = Purged {
            commands: ws.commands.len() as u64,
            checkpoints: ws.checkpoints.len() as u64,
            tokens: tokens.len() as u64,
            credentials: serials.len() as u64,
            events: 0,
        };
        ws.commands.clear();
        ws.command_index.clear();
        ws.checkpoints.clear();
        ws.open_token = None;
        for serial in &serials {
            inner.credentials.remove(serial);
        }
        match history {
            HistoryRetention::Keep => {
                inner.commit(write)?;
            }
            HistoryRetention::Delete => {
                let ws = inner.workspaces.remove(&id).expect("checked above");
                purged.events = ws.events.len() as u64;
                inner.feed.retain(|_, (w, _)| w != &id);
            }
        }
        Ok(purged)
    }
}

#[async_trait]
impl LeaseStore for InMemoryStore {
    async fn acquire(
        &self,
        workspace: &WorkspaceId,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Lease> {
        check_lease_ttl(ttl)?;
        let now = self.clock.now();
        self.lock()
            .workspace_mut(workspace)?
            .grant(holder, ttl, now)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        check_lease_ttl(ttl)?;
        let now = self.clock.now();
        let mut inner = self.lock();
        let ws = inner.workspace_mut(&lease.workspace)?;
        ws.check_fence(lease.fence)?;
        let state = ws.lease.as_mut().expect("check_fence found it");
        state.expires_at = now + ttl;
        Ok(Lease {
            expires_at: state.expires_at,
            ..lease.clone()
        })
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let mut inner = self.lock();
        let ws = inner.workspace_mut(&lease.workspace)?;
        if let Some(state) = ws.lease.as_mut()
            && state.fence == lease.fence
        {
            state.released = true;
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        holder: &HolderId,
        ttl: Duration,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<Lease>> {
        check_lease_ttl(ttl)?;
        let now = self.clock.now();
        let mut inner = self.lock();
        let mut due: Vec<(Timestamp, WorkspaceId)> = inner
            .workspaces
            .values()
            .filter_map(|w| {
                let at = w.record.wake_at.filter(|at| *at <= until)?;
                w.claimable(now).then(|| (at, w.record.id.clone()))
            })
            .collect();
        due.sort_unstable();
        due.truncate(limit);
        due.into_iter()
            .map(|(_, id)| inner.workspace_mut(&id)?.grant(holder, ttl, now))
            .collect()
    }

    async fn release_all(&self, holder: &HolderId) -> Result<u64> {
        let mut inner = self.lock();
        let mut released = 0;
        for w in inner.workspaces.values_mut() {
            if let Some(l) = w.lease.as_mut()
                && &l.holder == holder
                && !l.released
            {
                l.released = true;
                released += 1;
            }
        }
        Ok(released)
    }
}

#[async_trait]
impl CommandQueue for InMemoryStore {
    async fn deliver(
        &self,
        workspace: &WorkspaceId,
        limit: usize,
        _now: Timestamp,
    ) -> Result<Vec<QueuedCommand>> {
        let mut inner = self.lock();
        let ws = inner.workspace_mut(workspace)?;
        let limit = if limit == 0 { usize::MAX } else { limit };
        Ok(ws
            .commands
            .iter_mut()
            .filter(|c| c.status.is_open())
            .take(limit)
            .map(|c| {
                if c.status == CommandStatus::Pending {
                    c.deliveries += 1;
                }
                c.clone()
            })
            .collect())
    }

    async fn answer(
        &self,
        workspace: &WorkspaceId,
        result: CommandResult,
        now: Timestamp,
    ) -> Result<bool> {
        result.check()?;
        let mut inner = self.lock();
        let command = inner.workspace_mut(workspace)?.command_mut(&result.id)?;
        if !command.status.is_open() {
            return Ok(false);
        }
        command.status = CommandStatus::Answered { result, at: now };
        Ok(true)
    }

    async fn get_command(&self, workspace: &WorkspaceId, id: &CommandId) -> Result<QueuedCommand> {
        let inner = self.lock();
        let ws = inner.workspace(workspace)?;
        ws.command_index
            .get(id)
            .map(|&i| ws.commands[i].clone())
            .ok_or_else(|| Error::NotFound(Resource::Command(workspace.clone(), id.clone())))
    }

    async fn withdraw(
        &self,
        workspace: &WorkspaceId,
        id: &CommandId,
        now: Timestamp,
    ) -> Result<CommandStatus> {
        let mut inner = self.lock();
        let command = inner.workspace_mut(workspace)?.command_mut(id)?;
        if let Some(status) = command.withdrawal(now) {
            command.status = status;
        }
        Ok(command.status.clone())
    }
}

#[async_trait]
impl TokenStore for InMemoryStore {
    async fn put_token(&self, token: BootstrapTokenRecord) -> Result<()> {
        let mut inner = self.lock();
        inner.workspace(&token.workspace)?;
        if inner.tokens.contains_key(&token.hash) {
            return Err(Error::AlreadyExists(Resource::BootstrapToken));
        }
        let replaced = inner
            .workspace_mut(&token.workspace)?
            .open_token
            .replace(token.hash);
        if let Some(old) = replaced {
            inner.tokens.remove(&old);
        }
        inner.tokens.insert(token.hash, token);
        Ok(())
    }

    async fn consume(
        &self,
        hash: &TokenHash,
        workspace: &WorkspaceId,
        now: Timestamp,
    ) -> Result<BootstrapTokenRecord> {
        self.lock().consume(hash, workspace, now)
    }

    async fn exchange(
        &self,
        hash: &TokenHash,
        credential: AgentCredential,
        now: Timestamp,
    ) -> Result<AgentCredential> {
        let mut inner = self.lock();
        // Everything that can refuse is checked before anything changes.
        let state = inner.workspace(&credential.workspace)?.record.state.name();
        if matches!(state, StateName::Destroying | StateName::Destroyed) {
            return Err(Error::TokenRefused(TokenRefusal::WorkspaceRetired {
                state,
            }));
        }
        if inner.credentials.contains_key(&credential.serial) {
            return Err(Error::AlreadyExists(Resource::Credential(
                credential.serial,
            )));
        }
        let workspace = credential.workspace.clone();
        // The same agent, replaying an exchange whose answer it lost.
        if let Some(token) = inner.tokens.get(hash)
            && let Some(issued) = token.issued.as_ref().and_then(|s| inner.credentials.get(s))
            && token.replays(issued, &credential, now)
        {
            return Ok(issued.clone());
        }
        inner.spend(hash, &workspace, |t| t.exchange_for(&credential, now))?;
        inner.revoke_all(&workspace, "re-bootstrapped", now)?;
        inner.put_credential(credential.clone())?;
        Ok(credential)
    }
}

impl Inner {
    fn consume(
        &mut self,
        hash: &TokenHash,
        workspace: &WorkspaceId,
        now: Timestamp,
    ) -> Result<BootstrapTokenRecord> {
        self.spend(hash, workspace, |t| t.consume(workspace, now))
    }

    /// Spends the token with this hash by `rule` (which refuses, changing
    /// nothing, or marks it consumed): it is no longer the workspace's open one.
    fn spend(
        &mut self,
        hash: &TokenHash,
        workspace: &WorkspaceId,
        rule: impl FnOnce(&mut BootstrapTokenRecord) -> Result<()>,
    ) -> Result<BootstrapTokenRecord> {
        let token = self
            .tokens
            .get_mut(hash)
            .ok_or(Error::TokenRefused(TokenRefusal::Unknown))?;
        rule(token)?;
        let token = token.clone();
        let ws = self.workspace_mut(workspace)?;
        if ws.open_token == Some(*hash) {
            ws.open_token = None;
        }
        Ok(token)
    }

    fn put_credential(&mut self, credential: AgentCredential) -> Result<()> {
        self.workspace(&credential.workspace)?;
        if self.credentials.contains_key(&credential.serial) {
            return Err(Error::AlreadyExists(Resource::Credential(
                credential.serial,
            )));
        }
        self.workspace_mut(&credential.workspace)?
            .credentials
            .insert(credential.serial.clone());
        self.credentials
            .insert(credential.serial.clone(), credential);
        Ok(())
    }

    fn revoke_all(
        &mut self,
        workspace: &WorkspaceId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Vec<CertSerial>> {
        let serials: Vec<CertSerial> = self
            .workspace(workspace)?
            .credentials
            .iter()
            .cloned()
            .collect();
        let mut revoked = Vec::new();
        for serial in serials {
            let Some(c) = self.credentials.get_mut(&serial) else {
                continue;
            };
            if c.revoked.is_none() {
                c.revoked = Some(Revocation {
                    at: now,
                    reason: reason.to_owned(),
                });
                revoked.push(c.serial.clone());
            }
        }
        Ok(revoked)
    }
}

#[async_trait]
impl CredentialStore for InMemoryStore {
    async fn put_credential(&self, credential: AgentCredential) -> Result<()> {
        self.lock().put_credential(credential)
    }

    async fn get_credential(&self, serial: &CertSerial) -> Result<AgentCredential> {
        self.lock().credential(serial).cloned()
    }

    async fn get_credential_for_poll(
        &self,
        serial: &CertSerial,
    ) -> Result<(AgentCredential, bool)> {
        let inner = self.lock();
        let credential = inner.credential(serial)?.clone();
        let pending = inner
            .workspaces
            .get(&credential.workspace)
            .is_some_and(|w| w.commands.iter().any(|c| c.status.is_open()));
        Ok((credential, pending))
    }

    async fn list_credentials(&self, workspace: &WorkspaceId) -> Result<Vec<AgentCredential>> {
        let inner = self.lock();
        let ws = inner.workspace(workspace)?;
        Ok(ws
            .credentials
            .iter()
            .filter_map(|s| inner.credentials.get(s).cloned())
            .collect())
    }

    async fn mark_polled(&self, serial: &CertSerial, now: Timestamp) -> Result<bool> {
        let mut inner = self.lock();
        let c = inner
            .credentials
            .get_mut(serial)
            .ok_or_else(|| Error::NotFound(Resource::Credential(serial.clone())))?;
        c.last_seen_at = Some(c.last_seen_at.map_or(now, |t| t.max(now)));
        if c.first_poll_at.is_some() {
            return Ok(false);
        }
        c.first_poll_at = Some(now);
        Ok(true)
    }

    async fn renew_credential(
        &self,
        old: &CertSerial,
        renewed: AgentCredential,
        now: Timestamp,
    ) -> Result<AgentCredential> {
        let mut inner = self.lock();
        let current = inner.credential(old)?;
        let renewed = crate::store::check_renewal(current, renewed, now)?;
        if inner.credentials.contains_key(&renewed.serial) {
            return Err(Error::AlreadyExists(Resource::Credential(renewed.serial)));
        }
        let others: Vec<CertSerial> = inner
            .workspace(&renewed.workspace)?
            .credentials
            .iter()
            .filter(|s| *s != old)
            .cloned()
            .collect();
        for serial in others {
            if let Some(c) = inner.credentials.get_mut(&serial)
                && c.revoked.is_none()
            {
                c.revoked = Some(Revocation {
                    at: now,
                    reason: crate::store::SUPERSEDED_BY_RENEWAL.to_owned(),
                });
            }
        }
        inner.put_credential(renewed.clone())?;
        Ok(renewed)
    }

    async fn revoke_all(
        &self,
        workspace: &WorkspaceId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Vec<CertSerial>> {
        self.lock().revoke_all(workspace, reason, now)
    }
}
