//! The agent-identity part of the store suite: replayed bootstrap exchanges,
//! renewals, and renewals racing revocations.

use std::time::Duration;

use super::store::{T0, create, credential, hash, open_token, serial_of};
use crate::{
    Error, TokenRefusal, WorkspaceId,
    store::{AgentCredential, CertSerial, KeyDigest, WorkspaceStore},
};

fn keyed(ws: &WorkspaceId, n: u8, key: u8) -> AgentCredential {
    let mut c = credential(ws, serial_of(ws, n));
    c.key = Some(KeyDigest([key; 32]));
    c.token = Some(hash(1, ws));
    c
}

fn live(listed: &[AgentCredential]) -> Vec<&CertSerial> {
    listed
        .iter()
        .filter(|c| c.revoked.is_none())
        .map(|c| &c.serial)
        .collect()
}

/// `exchange` replays for the same key within the token's lifetime, and for
/// nothing else.
pub(super) async fn replays(store: &dyn WorkspaceStore) {
    let ws = create(store, "replay").await;
    store.put_token(open_token(&ws, 1)).await.expect("token");
    let at = |s: u64| T0 + Duration::from_secs(s);
    let first = store
        .exchange(&hash(1, &ws), keyed(&ws, 1, 7), at(1))
        .await
        .expect("exchange");
    assert_eq!(first.serial, serial_of(&ws, 1));
    // The answer was lost: the same key again gets the same credential, and
    // nothing changes.
    let again = store
        .exchange(&hash(1, &ws), keyed(&ws, 2, 7), at(5))
        .await
        .expect("a replay with the same key");
    assert_eq!(
        again, first,
        "a replay returns the credential already issued"
    );
    let listed = store.list_credentials(&ws).await.expect("list");
    assert_eq!(listed, vec![first.clone()], "a replay stores nothing");
    // Another key: the token is used.
    expect_err!(
        store.exchange(&hash(1, &ws), keyed(&ws, 3, 8), at(6)).await,
        Error::TokenRefused(TokenRefusal::Reused { .. }),
        "the token replayed with another key"
    );
    // No key at all: the token is used.
    let mut keyless = keyed(&ws, 3, 7);
    keyless.key = None;
    expect_err!(
        store.exchange(&hash(1, &ws), keyless, at(6)).await,
        Error::TokenRefused(TokenRefusal::Reused { .. }),
        "the token replayed without a key"
    );
    // Past the token's lifetime (an hour): used.
    expect_err!(
        store
            .exchange(&hash(1, &ws), keyed(&ws, 3, 7), at(3600))
            .await,
        Error::TokenRefused(TokenRefusal::Reused { .. }),
        "a replay past the token's lifetime"
    );
    // Once the credential is revoked: used.
    store.revoke_all(&ws, "test", at(10)).await.expect("revoke");
    expect_err!(
        store
            .exchange(&hash(1, &ws), keyed(&ws, 3, 7), at(11))
            .await,
        Error::TokenRefused(TokenRefusal::Reused { .. }),
        "a replay of a revoked credential"
    );
    let listed = store.list_credentials(&ws).await.expect("list");
    assert_eq!(
        listed.len(),
        1,
        "refused replays stored nothing: {listed:?}"
    );
    assert!(live(&listed).is_empty());
}

/// `renew_credential`: only a current credential renews; the renewal inherits
/// the identity's token; at most two credentials stay live.
pub(super) async fn renewals(store: &dyn WorkspaceStore) {
    let ws = create(store, "renew").await;
    let at = |s: u64| T0 + Duration::from_secs(s);
    store.put_credential(keyed(&ws, 1, 1)).await.expect("put");
    let renewed = store
        .renew_credential(&serial_of(&ws, 1), keyed(&ws, 2, 2), at(1))
        .await
        .expect("renew a current credential");
    assert_eq!(renewed.renewed_from, Some(serial_of(&ws, 1)));
    assert_eq!(
        renewed.token,
        Some(hash(1, &ws)),
        "the identity's token is inherited"
    );
    assert_eq!(renewed.key, Some(KeyDigest([2; 32])));
    assert_eq!(
        store.get_credential(&renewed.serial).await.expect("get"),
        renewed
    );
    // The renewal's answer was lost: renewing the old one again supersedes it.
    store
        .renew_credential(&serial_of(&ws, 1), keyed(&ws, 3, 3), at(2))
        .await
        .expect("renew again");
    let listed = store.list_credentials(&ws).await.expect("list");
    assert_eq!(
        live(&listed),
        vec![&serial_of(&ws, 1), &serial_of(&ws, 3)],
        "the current credential and its latest renewal stay live: {listed:?}"
    );
    let superseded = listed.iter().find(|c| c.serial == serial_of(&ws, 2));
    assert_eq!(
        superseded
            .and_then(|c| c.revoked.as_ref())
            .map(|r| r.reason.as_str()),
        Some(crate::store::SUPERSEDED_BY_RENEWAL)
    );
    // Refusals change nothing.
    expect_err!(
        store
            .renew_credential(&serial_of(&ws, 2), keyed(&ws, 4, 4), at(3))
            .await,
        Error::CredentialRevoked { .. },
        "renewing a revoked credential"
    );
    expect_err!(
        store
            .renew_credential(&serial_of(&ws, 3), keyed(&ws, 4, 4), at(100_000))
            .await,
        Error::CredentialExpired { .. },
        "renewing an expired credential"
    );
    expect_err!(
        store
            .renew_credential(&serial_of(&ws, 9), keyed(&ws, 4, 4), at(3))
            .await,
        Error::NotFound(_),
        "renewing an unknown credential"
    );
    expect_err!(
        store
            .renew_credential(&serial_of(&ws, 3), keyed(&ws, 1, 4), at(3))
            .await,
        Error::AlreadyExists(_),
        "a renewal whose serial is taken"
    );
    let after = store.list_credentials(&ws).await.expect("list");
    assert_eq!(after, listed, "refused renewals changed nothing");
    // Revocation revokes the renewal too.
    store.revoke_all(&ws, "test", at(4)).await.expect("revoke");
    let listed = store.list_credentials(&ws).await.expect("list");
    assert!(live(&listed).is_empty(), "nothing live after revoke_all");
}

/// Renewals racing revocations of the workspace (a destroy, a
/// re-bootstrap): whichever comes first, nothing is live once both are done.
pub(super) async fn renewal_races(store: &dyn WorkspaceStore) {
    for round in 0..20u8 {
        let ws = create(store, "race").await;
        store.put_credential(keyed(&ws, 1, 1)).await.expect("put");
        let old = serial_of(&ws, 1);
        let (renewed, revoked) = futures::join!(
            store.renew_credential(&old, keyed(&ws, 2, round), T0),
            store.revoke_all(&ws, "workspace destroyed", T0)
        );
        revoked.expect("revoke");
        let listed = store.list_credentials(&ws).await.expect("list");
        assert!(
            live(&listed).is_empty(),
            "round {round}: a renewal racing a revocation left a live credential \
             (renewal: {renewed:?}): {listed:?}"
        );
    }
}
