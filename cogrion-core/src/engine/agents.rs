//! The engine's view of agents: re-bootstrapping their identity, and their
//! connectivity as every replica can tell it.

use serde::{Deserialize, Serialize};

use super::{Engine, plan};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::ids::WorkspaceId;
use crate::state::{StateName, WorkspaceEvent, step};
use crate::store::{
    Actor, AgentCredential, EventKind, ListQuery, OperationKind, Versioned, WorkspaceRecord,
};

/// Where a workspace's agent stands: what [`Engine::agent_connectivity`]
/// answers, on any replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentConnectivity {
    /// Seen within [`EngineConfig::agent_silence`](crate::EngineConfig::agent_silence).
    pub connected: bool,
    /// Whether this replica's transport holds a connection of it now.
    pub connected_here: bool,
    /// When it was last seen: the later of this replica's transport (exact)
    /// and the store (every replica's polls, to within the gateway's
    /// [`seen_interval`](crate::agent::GatewayConfig::seen_interval)). `None`: never.
    pub last_seen: Option<Timestamp>,
    /// When it is silent past the threshold: since when (its last sighting,
    /// or the issue of its certificate if it never polled).
    pub silent_since: Option<Timestamp>,
}

/// What one [`Engine::check_agents`] round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentCheck {
    /// Workspaces whose agent had no good certificate left: re-bootstrapping.
    pub rebootstrapped: Vec<WorkspaceId>,
    /// Workspaces whose agent was reported silent this round.
    pub silent: Vec<WorkspaceId>,
    /// Workspaces whose silent agent was seen again this round.
    pub back: Vec<WorkspaceId>,
}

/// The latest durable sighting among `credentials`, and since when the
/// workspace has been without one if never seen.
fn durable_sighting(credentials: &[AgentCredential]) -> (Option<Timestamp>, Option<Timestamp>) {
    let seen = credentials
        .iter()
        .filter_map(|c| c.last_seen_at.or(c.first_poll_at))
        .max();
    let issued = credentials.iter().map(|c| c.issued_at).max();
    (seen, issued)
}

impl Engine {
    /// Gives the workspace's agent a new identity (only from `Active`, as an
    /// update): a fresh one-time bootstrap token, the agent re-installed with it
    /// (the [`AgentInstaller`](crate::agent::AgentInstaller) writes the new token
    /// where the agent reads it), and — once the agent exchanged it — its first
    /// poll under the new certificate; then `Active` again. The exchange
    /// revokes the earlier certificates.
    ///
    /// This is the way back for an agent whose certificate expired while it
    /// was away (it cannot renew an expired certificate, and waits for a fresh
    /// token): [`rebootstrap_expired_agents`](Self::rebootstrap_expired_agents)
    /// finds those, and the [`Driver`](crate::Driver) calls it periodically. A
    /// host also calls it after a suspected leak of an agent's key.
    ///
    /// Before anything else — before the new token exists — every certificate
    /// of the workspace is revoked and the agent disconnected, and the wait
    /// for the agent accepts only a certificate obtained with the new token
    /// (or a renewal of one): a leaked key, or a renewal made with it, cannot
    /// complete the re-bootstrap. A request refused by the workspace's state
    /// revokes nothing (checked first; a request that loses a race with
    /// another between the check and the plan has revoked the certificates,
    /// and returns [`Error::WrongState`]).
    pub async fn rebootstrap_agent(
        &self,
        id: &WorkspaceId,
        actor: Actor,
    ) -> Result<WorkspaceRecord> {
        let now = self.0.clock.now();
        let current = self.0.store.get_workspace(id).await?;
        step(&current.value.state, &WorkspaceEvent::UpdateRequested, now)?;
        let revoked = self
            .0
            .store
            .revoke_all(id, "re-bootstrap requested", now)
            .await?;
        if let Some(t) = &self.0.transport
            && let Err(e) = t.disconnect(id, "re-bootstrap requested").await
        {
            tracing::warn!(workspace = %id, error = %e, "could not disconnect the agent; its certificates are revoked");
        }
        self.mutate(id, &actor, |rec, j| {
            let t = step(&rec.state, &WorkspaceEvent::UpdateRequested, j.now)?;
            j.transition(rec, t, "agent re-bootstrap requested");
            j.event(
                EventKind::Note,
                format!(
                    "revoked {} agent certificate(s) before issuing a new token",
                    revoked.len()
                ),
            );
            j.plan(rec, OperationKind::Update, None, plan::rebootstrap());
            Ok(())
        })
        .await
    }

    /// Starts [`rebootstrap_agent`](Self::rebootstrap_agent) for every `Active`
    /// workspace whose agent holds no certificate that is still good — current
    /// (neither expired nor revoked) and used (an agent polled with it: a
    /// certificate whose answer never reached the agent is no sign of one);
    /// returns them. It reads every `Active` workspace's
    /// credentials (a page of workspaces at a time, no write for the others).
    pub async fn rebootstrap_expired_agents(&self, actor: Actor) -> Result<Vec<WorkspaceId>> {
        let mut started = Vec::new();
        let mut query = ListQuery::new().state(StateName::Active).limit(500);
        while let Some(page) = self.next_page(&mut query).await? {
            for ws in &page {
                let id = &ws.value.id;
                let credentials = self.0.store.list_credentials(id).await?;
                if self
                    .rebootstrap_if_expired(id, &credentials, &actor)
                    .await?
                {
                    started.push(id.clone());
                }
            }
        }
        Ok(started)
    }

    /// Where `id`'s agent stands: whether it was seen within
    /// [`agent_silence`](crate::EngineConfig::agent_silence), when it was last
    /// seen, and since when it is silent. Answers on every replica: the
    /// store's coarse sightings are combined with this replica's transport.
    pub async fn agent_connectivity(&self, id: &WorkspaceId) -> Result<AgentConnectivity> {
        let credentials = self.0.store.list_credentials(id).await?;
        Ok(self.connectivity(id, &credentials).await)
    }

    /// [`agent_connectivity`](Self::agent_connectivity) from `credentials`,
    /// the workspace's as just read.
    pub(super) async fn connectivity(
        &self,
        id: &WorkspaceId,
        credentials: &[AgentCredential],
    ) -> AgentConnectivity {
        let presence = self.presence(id).await;
        let now = self.0.clock.now();
        let (durable, issued) = durable_sighting(credentials);
        let last_seen = durable.max(presence.as_ref().map(|p| p.last_seen));
        let silent_since = match last_seen.or(issued) {
            Some(t) if now >= t + self.0.config.agent_silence => Some(t),
            _ => None,
        };
        AgentConnectivity {
            connected: last_seen.is_some() && silent_since.is_none(),
            connected_here: presence.is_some_and(|p| p.connected),
            last_seen,
            silent_since,
        }
    }

    /// What this replica's transport knows of `id`'s agent, if anything.
    pub(super) async fn presence(&self, id: &WorkspaceId) -> Option<crate::agent::AgentPresence> {
        let transport = self.0.transport.as_ref()?;
        transport.presence(id).await.unwrap_or_else(|e| {
            tracing::debug!(workspace = %id, error = %e, "the transport could not say whether it sees the agent");
            None
        })
    }

    /// One round over every `Active` and `Updating` workspace's agent (a page
    /// of workspaces at a time): re-bootstraps those with no good certificate
    /// left (`Active` ones, as
    /// [`rebootstrap_expired_agents`](Self::rebootstrap_expired_agents)),
    /// records [`EventKind::AgentSilent`] once for an agent silent past
    /// [`agent_silence`](crate::EngineConfig::agent_silence), and
    /// [`EventKind::AgentBack`] when it is seen again. The
    /// [`Driver`](crate::Driver) runs it periodically. It reads each
    /// workspace's credentials once and writes only for a change.
    pub async fn check_agents(&self, actor: Actor) -> Result<AgentCheck> {
        let mut check = AgentCheck::default();
        for state in [StateName::Active, StateName::Updating] {
            let mut query = ListQuery::new().state(state).limit(500);
            while let Some(page) = self.next_page(&mut query).await? {
                for ws in &page {
                    self.check_agent(&ws.value, &actor, &mut check).await?;
                }
            }
        }
        Ok(check)
    }

    /// The next page of `query` (which moves past it), or `None` at the end.
    async fn next_page(
        &self,
        query: &mut ListQuery,
    ) -> Result<Option<Vec<Versioned<WorkspaceRecord>>>> {
        let page = self.0.store.list_workspaces(query).await?;
        Ok(page.last().map(|last| last.value.id.clone()).map(|after| {
            query.after = Some(after);
            page
        }))
    }

    async fn check_agent(
        &self,
        rec: &WorkspaceRecord,
        actor: &Actor,
        check: &mut AgentCheck,
    ) -> Result<()> {
        let id = &rec.id;
        let credentials = self.0.store.list_credentials(id).await?;
        if rec.state.name() == StateName::Active
            && self.rebootstrap_if_expired(id, &credentials, actor).await?
        {
            check.rebootstrapped.push(id.clone());
            return Ok(());
        }
        let connectivity = self.connectivity(id, &credentials).await;
        let (kind, message, list) = match (rec.agent_silent_since, connectivity.silent_since) {
            (None, Some(since)) => (
                EventKind::AgentSilent { since },
                format!("the agent has not been seen since {since}"),
                &mut check.silent,
            ),
            (Some(_), None) => {
                let at = connectivity.last_seen.unwrap_or_else(|| self.0.clock.now());
                (
                    EventKind::AgentBack { at },
                    format!("the agent was seen again at {at}"),
                    &mut check.back,
                )
            }
            _ => return Ok(()),
        };
        let silent_since = connectivity.silent_since;
        // A note about the agent, not a request: the workspace is not woken,
        // and nothing is written if another replica recorded it first.
        let written = self
            .write_record(id, actor, false, |rec, j| {
                if rec.agent_silent_since.is_some() == silent_since.is_some() {
                    return Ok(false);
                }
                rec.agent_silent_since = silent_since;
                j.event(kind.clone(), message.clone());
                Ok(true)
            })
            .await?;
        if written.is_some() {
            tracing::info!(workspace = %id, %message);
            list.push(id.clone());
        }
        Ok(())
    }

    /// Starts a re-bootstrap of `id`'s agent if none of `credentials` (the
    /// workspace's) is good — current and used; whether it started one.
    async fn rebootstrap_if_expired(
        &self,
        id: &WorkspaceId,
        credentials: &[AgentCredential],
        actor: &Actor,
    ) -> Result<bool> {
        let now = self.0.clock.now();
        if credentials
            .iter()
            .any(|c| c.is_current(now) && c.was_used())
        {
            return Ok(false);
        }
        match self.rebootstrap_agent(id, actor.clone()).await {
            Ok(_) => {
                tracing::info!(workspace = %id, "the agent's certificates all expired: re-bootstrapping it");
                Ok(true)
            }
            // Another replica or a request moved it on meanwhile.
            Err(Error::WrongState(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
