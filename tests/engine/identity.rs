//! Agent identities that survive lost answers and leaks, and agent
//! connectivity (issue 14, items 1–4).
//!
//! The agents are the in-process simulated Cluster Agents (no Kubernetes
//! cluster exists here); the gateway, the store, the engine and the state
//! machines are the real ones. The same paths over HTTPS, with the real
//! agent runtime, are tested in `cogrion-providers/tests/https.rs` and
//! `cogrion-agent/tests/runtime.rs`.

use std::time::Duration;

use cogrion::sim::FaultPlan;
use cogrion::*;
use cogrion::{agent::*, store::*};

use crate::drive::{active, drive};
use crate::world::{World, api, spec, ws};

fn live(credentials: &[AgentCredential]) -> Vec<&AgentCredential> {
    credentials.iter().filter(|c| c.revoked.is_none()).collect()
}

/// Item 1: the agent's bootstrap answers are lost twice on the way back; it
/// sends the same token with the same key again and gets the certificate
/// already issued (one credential in all), and the workspace becomes Active.
/// (Before: the retry was refused as "token used" and the workspace failed
/// at await-agent after its deadline.)
#[tokio::test]
async fn a_lost_bootstrap_answer_is_replayed() {
    let w = World::new(1, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    let id = ws("lost-answer");
    w.agents.lose_bootstrap_answers(2);
    engines[0].create(id.clone(), spec(), api()).await.unwrap();
    drive(&w, &mut engines, &id).await.unwrap();
    assert!(w.agents.is_installed(&id), "the agent was installed");
    assert_eq!(
        engines[0].workspace(&id).await.unwrap().state,
        WorkspaceState::Active,
        "the replayed exchanges let the agent in"
    );
    let credentials = w.store.list_credentials(&id).await.unwrap();
    assert_eq!(
        credentials.len(),
        1,
        "three exchanges of one token and key issued one credential: {credentials:?}"
    );
}

/// Item 1: a renewal whose answer never reached the agent is not a live
/// agent: once the old certificate expires, the agent is re-bootstrapped.
/// (Before: the undelivered renewal counted as good for its whole life.)
#[tokio::test]
async fn an_undelivered_renewal_is_not_a_live_agent() {
    let w = World::new(2, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    let id = ws("lost-renewal");
    active(&w, &mut engines, &id).await;
    let gateway = w.gateway(&engines[0]);
    let old = live(&w.store.list_credentials(&id).await.unwrap())[0].clone();
    // The renewal is stored; its answer is lost; the agent goes away.
    w.agents.set_unreachable(&id, true);
    let renewed = gateway
        .renew(&old.serial, KeyDigest([7; 32]))
        .await
        .unwrap();
    assert_eq!(renewed.renewed_from, Some(old.serial.clone()));
    w.clock.advance_to(old.expires_at + Duration::from_secs(1));
    let started = engines[0].rebootstrap_expired_agents(api()).await.unwrap();
    assert_eq!(
        started,
        vec![id.clone()],
        "only an undelivered renewal is left: re-bootstrap"
    );
}

/// Item 2: a renewal and a revocation landing together: whichever wins,
/// nothing is live afterwards (the check and the write are one store
/// operation). Run on SQLite, whose calls interleave on a real connection.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_racing_a_revocation_leaves_nothing_live() {
    use std::sync::Arc;
    let dir = crate::world::TempDir::new("renew-race");
    let clock = crate::world::new_clock();
    let store: Arc<dyn WorkspaceStore> = Arc::new(
        cogrion::providers::sqlite::SqliteStore::open(&dir.db())
            .await
            .unwrap()
            .with_clock(Arc::new(clock.clone())),
    );
    let w = World::with_store(3, FaultPlan::none(), Duration::ZERO, store, clock);
    let mut engines = vec![w.engine("cp")];
    let gateway = w.gateway(&engines[0]);
    for round in 0..20u8 {
        let id = ws(&format!("race-{round}"));
        active(&w, &mut engines, &id).await;
        let serial = live(&w.store.list_credentials(&id).await.unwrap())[0]
            .serial
            .clone();
        let now = w.clock.now();
        let (renewed, revoked) = tokio::join!(
            gateway.renew(&serial, KeyDigest([round; 32])),
            w.store.revoke_all(&id, "workspace destroyed", now)
        );
        revoked.unwrap();
        let credentials = w.store.list_credentials(&id).await.unwrap();
        assert!(
            live(&credentials).is_empty(),
            "round {round}: a live credential after the revocation (renewal: {renewed:?})"
        );
    }
}

/// Issue 16: a certificate is renewed only in its renewal window (from half
/// its life, by default); earlier, the renewal is refused with
/// `RenewalTooEarly` and nothing is written. (Before, one certificate was
/// renewed 200 times in 4 s.)
#[tokio::test]
async fn a_certificate_is_renewed_only_in_its_window() {
    let w = World::new(5, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    let id = ws("window");
    active(&w, &mut engines, &id).await;
    let gateway = w.gateway_with(&engines[0], GatewayConfig::default());
    let old = live(&w.store.list_credentials(&id).await.unwrap())[0].clone();
    let opens = old.issued_at
        + Duration::from_millis((old.expires_at.as_millis() - old.issued_at.as_millis()) / 2);
    let before = w.store.list_credentials(&id).await.unwrap();
    for _ in 0..3 {
        match gateway.renew(&old.serial, KeyDigest([3; 32])).await {
            Err(Error::RenewalTooEarly { serial, from }) => {
                assert_eq!((serial, from), (old.serial.clone(), opens));
            }
            other => panic!("a renewal at once: {other:?}"),
        }
    }
    assert_eq!(
        w.store.list_credentials(&id).await.unwrap(),
        before,
        "nothing written"
    );
    w.clock.advance_to(opens);
    let renewed = gateway
        .renew(&old.serial, KeyDigest([3; 32]))
        .await
        .expect("renewed once its window is open");
    assert_eq!(renewed.renewed_from, Some(old.serial));
}

/// Item 3: `rebootstrap_agent` after a leaked key revokes every certificate
/// before the new token exists, a renewal of the leaked one is refused, and
/// only the agent holding the new token completes the re-bootstrap. (Before:
/// a renewal of the leaked certificate completed it, and the old identity
/// stayed valid.)
#[tokio::test]
async fn a_rebootstrap_after_a_leak_shuts_the_leaked_identity_out() {
    let w = World::new(4, FaultPlan::none());
    let mut engines = vec![w.engine("cp")];
    let id = ws("leaked");
    active(&w, &mut engines, &id).await;
    let gateway = w.gateway(&engines[0]);
    let leaked = live(&w.store.list_credentials(&id).await.unwrap())[0]
        .serial
        .clone();
    // The real agent cannot reach the control plane for now.
    w.agents.set_unreachable(&id, true);
    engines[0].rebootstrap_agent(&id, api()).await.unwrap();
    assert!(
        live(&w.store.list_credentials(&id).await.unwrap()).is_empty(),
        "every certificate is revoked by the time the request returns"
    );
    let refused = gateway.renew(&leaked, KeyDigest([9; 32])).await;
    assert!(
        matches!(refused, Err(Error::CredentialRevoked { .. })),
        "the leaked certificate cannot renew: {refused:?}"
    );
    assert!(
        gateway.poll(&leaked).await.is_err(),
        "nor poll with the leaked certificate"
    );
    // Without the new agent, the re-bootstrap cannot complete.
    for _ in 0..50 {
        engines[0].advance(&id).await.unwrap();
        w.clock.advance(Duration::from_secs(1));
    }
    assert_eq!(
        engines[0].workspace(&id).await.unwrap().state,
        WorkspaceState::Updating,
        "still waiting for the agent holding the new token"
    );
    w.agents.set_unreachable(&id, false);
    drive(&w, &mut engines, &id).await.unwrap();
    let rec = engines[0].workspace(&id).await.unwrap();
    assert_eq!(rec.state, WorkspaceState::Active);
    let credentials = w.store.list_credentials(&id).await.unwrap();
    let now_live = live(&credentials);
    assert_eq!(now_live.len(), 1, "one identity: the new one");
    assert_ne!(now_live[0].serial, leaked);
    assert!(
        now_live[0].token.is_some(),
        "it descends from the new token"
    );
}

/// Item 4: connectivity every replica can answer from the store, written at
/// most once per interval, and one `AgentSilent` / `AgentBack` per silence.
#[tokio::test]
async fn agent_connectivity_is_visible_and_silence_is_reported_once() {
    let w = World::new(5, FaultPlan::none());
    let mut engines = vec![w.engine_with("cp", |c| c.with_agent_silence(Duration::from_secs(900)))];
    let id = ws("connectivity");
    active(&w, &mut engines, &id).await;
    // Another replica, whose transport never saw the agent.
    let other = w.engine_with("other", |c| c.with_agent_silence(Duration::from_secs(900)));
    let c = other.agent_connectivity(&id).await.unwrap();
    assert!(c.connected, "seen recently, by the store's account: {c:?}");
    let first_seen = c.last_seen.expect("a durable sighting");

    // Polls within the interval write nothing durable.
    let serial = live(&w.store.list_credentials(&id).await.unwrap())[0]
        .serial
        .clone();
    let before = w.store.get_credential(&serial).await.unwrap();
    w.clock.advance(Duration::from_secs(60));
    w.agents.step_all().await;
    assert_eq!(
        w.store.get_credential(&serial).await.unwrap(),
        before,
        "a poll within the interval writes nothing"
    );
    // Past the interval, one poll writes the sighting.
    w.clock.advance(Duration::from_secs(300));
    w.agents.step_all().await;
    let seen = w
        .store
        .get_credential(&serial)
        .await
        .unwrap()
        .last_seen_at
        .unwrap();
    assert!(seen > first_seen, "the sighting moved on");

    // Silent past the threshold: reported once.
    w.agents.set_unreachable(&id, true);
    w.clock.advance(Duration::from_secs(1000));
    let c = other.agent_connectivity(&id).await.unwrap();
    assert!(!c.connected);
    assert_eq!(c.silent_since, Some(seen));
    let check = other.check_agents(api()).await.unwrap();
    assert_eq!(check.silent, vec![id.clone()]);
    let again = other.check_agents(api()).await.unwrap();
    assert!(again.silent.is_empty(), "reported once per silence");
    // Back again: reported once.
    w.agents.set_unreachable(&id, false);
    w.agents.step_all().await;
    let check = engines[0].check_agents(api()).await.unwrap();
    assert_eq!(check.back, vec![id.clone()]);
    let kinds: Vec<String> = engines[0]
        .history(&id)
        .await
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e.event.kind,
                EventKind::AgentSilent { .. } | EventKind::AgentBack { .. }
            )
        })
        .map(|e| e.event.kind.to_string())
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
}
