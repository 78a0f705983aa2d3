//! [`TokenStore::exchange`](cogrion_core::TokenStore::exchange) in batches: the
//! bootstraps of a reconnect storm share transactions.
//!
//! Every statement is a round trip to the SQLite connection's thread, and every
//! commit writes the changed pages to the log. Exchanges arriving together are
//! combined: whoever holds the turn runs all the exchanges queued so far in one
//! transaction of two round trips — one reading, for every exchange, the
//! workspace's state, the token and whether live credentials exist; one with
//! the writes and the commit — while the others wait for their answers. Each
//! exchange is decided alone, by the same rule as a single one; a refused
//! exchange writes nothing. If the batch's transaction fails, it is rolled back
//! and every exchange in it is run again on its own, so each gets its own
//! precise answer.

use std::collections::HashSet;

use cogrion_core::{
    AgentCredential, BootstrapTokenRecord, CertSerial, Error, Resource, Result, Timestamp,
    TokenRefusal,
};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};

use super::batch::{Batcher, Call, fail_all};
use super::{from_json, revoke_credentials, to_json, unavailable};

/// Most exchanges in one transaction.
const MAX_BATCH: usize = 128;

/// One exchange: the token's hash, the credential it is for, and when.
pub(super) struct Exchange {
    hash: String,
    credential: AgentCredential,
    now: Timestamp,
}

type Pending = Call<Exchange, AgentCredential>;

/// The exchanges waiting to share a transaction.
pub(super) type Exchanges = Batcher<Exchange, AgentCredential>;

/// A batcher for [`exchange`].
pub(super) fn exchanges() -> Exchanges {
    Batcher::new(MAX_BATCH)
}

/// Runs one exchange, in a batch with whatever else is waiting.
pub(super) async fn exchange(
    exchanges: &Exchanges,
    pool: &SqlitePool,
    hash: String,
    credential: AgentCredential,
    now: Timestamp,
) -> Result<AgentCredential> {
    let input = Exchange {
        hash,
        credential,
        now,
    };
    exchanges
        .call(input, |mut batch| async move {
            // One exchange per token and per workspace in a batch: a second
            // one must see the first's effect, so it waits for the next batch.
            let later = separate(&mut batch);
            run_batch(pool, batch).await;
            later
        })
        .await
}

/// Moves out of `batch` every exchange whose token or workspace an earlier one
/// in it has.
fn separate(batch: &mut Vec<Pending>) -> Vec<Pending> {
    let (mut hashes, mut workspaces) = (HashSet::new(), HashSet::new());
    let mut later = Vec::new();
    let mut kept = Vec::with_capacity(batch.len());
    for pending in batch.drain(..) {
        let ws = pending.input.credential.workspace.as_str().to_owned();
        if hashes.contains(&pending.input.hash) || workspaces.contains(&ws) {
            later.push(pending);
        } else {
            hashes.insert(pending.input.hash.clone());
            workspaces.insert(ws);
            kept.push(pending);
        }
    }
    *batch = kept;
    later
}

/// What the exchange's rule decided from the row read for it.
enum Decision {
    /// Consume the token (as given) for a new credential; `live`: older
    /// credentials are live, to be revoked.
    Issue(BootstrapTokenRecord, bool),
    /// The token was used for the credential of this serial: a replay if it
    /// is the same agent's (decided once the credential is read), else this
    /// refusal.
    MaybeReplay(BootstrapTokenRecord, CertSerial, Error),
}

fn decide(pending: &Exchange, row: &SqliteRow) -> Result<Decision> {
    let ws = &pending.credential.workspace;
    let state: Option<String> = row.get("state");
    super::retired(ws, state)?;
    let body: Option<String> = row.get("token");
    let body = body.ok_or(Error::TokenRefused(TokenRefusal::Unknown))?;
    let mut token: BootstrapTokenRecord = from_json(&body, || Resource::BootstrapToken)?;
    match token.exchange_for(&pending.credential, pending.now) {
        Ok(()) => Ok(Decision::Issue(token, row.get::<bool, _>("live"))),
        Err(refusal @ Error::TokenRefused(TokenRefusal::Reused { .. })) => {
            match token.issued.clone() {
                Some(serial) => Ok(Decision::MaybeReplay(token, serial, refusal)),
                None => Err(refusal),
            }
        }
        Err(refusal) => Err(refusal),
    }
}

/// A possible replay decided: the earlier credential, or `refusal`.
async fn replay(
    conn: &mut SqliteConnection,
    pending: &Exchange,
    token: BootstrapTokenRecord,
    serial: &CertSerial,
    refusal: Error,
) -> Result<AgentCredential> {
    let body: Option<String> = sqlx::query_scalar("SELECT body FROM credentials WHERE serial = ?")
        .bind(serial.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(unavailable)?;
    if let Some(body) = body {
        let issued = super::read_credential(&body, serial.as_str())?;
        if token.replays(&issued, &pending.credential, pending.now) {
            return Ok(issued);
        }
    }
    Err(refusal)
}

/// `BEGIN` and the read of a batch: `?1` is a JSON array of
/// `{"ws": …, "hash": …}`, one per exchange, in order. One statement text for
/// every batch size, so it is prepared once per connection.
const READ_BATCH: &str = "BEGIN IMMEDIATE;
     SELECT CAST(j.key AS INTEGER) AS i,
            (SELECT state FROM workspaces WHERE id = j.value ->> 'ws') AS state,
            (SELECT body FROM tokens WHERE hash = j.value ->> 'hash') AS token,
            EXISTS (SELECT 1 FROM credentials c WHERE c.workspace = j.value ->> 'ws'
                    AND json_extract(c.body, '$.revoked') IS NULL) AS live
     FROM json_each(?1) AS j";

/// The writes of a batch's accepted exchanges and the commit: `?1` is a JSON
/// array of `{"hash", "token", "serial", "ws", "credential"}` (the two bodies
/// as JSON text). One statement text for every batch size.
const WRITE_BATCH: &str = "UPDATE tokens SET consumed = 1, body = j.value ->> 'token'
         FROM json_each(?1) AS j WHERE tokens.hash = j.value ->> 'hash';
     INSERT INTO credentials (serial, workspace, body)
         SELECT j.value ->> 'serial', j.value ->> 'ws', j.value ->> 'credential'
         FROM json_each(?1) AS j;
     COMMIT";

/// Runs `batch` in one transaction and answers each exchange; on a failure of
/// the transaction, runs each on its own.
async fn run_batch(pool: &SqlitePool, batch: Vec<Pending>) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => return fail_all(batch, &e.to_string()),
    };
    let inputs: Vec<&Exchange> = batch.iter().map(|p| &p.input).collect();
    match together(&mut conn, &inputs).await {
        Ok(results) => {
            for (pending, result) in batch.into_iter().zip(results) {
                pending.answer(result);
            }
        }
        Err(_) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            for pending in batch {
                let result = alone(&mut conn, &pending.input).await;
                pending.answer(result);
            }
        }
    }
}

/// The batch in one transaction: every exchange's answer, or the error that
/// failed the transaction (then nothing of it stays once rolled back).
async fn together(
    conn: &mut SqliteConnection,
    batch: &[&Exchange],
) -> Result<Vec<Result<AgentCredential>>> {
    let keys: Vec<serde_json::Value> = batch
        .iter()
        .map(|p| serde_json::json!({ "ws": p.credential.workspace.as_str(), "hash": p.hash }))
        .collect();
    let rows = sqlx::query(READ_BATCH)
        .bind(serde_json::Value::Array(keys).to_string())
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
    let mut decided: Vec<Option<Result<Decision>>> = (0..batch.len()).map(|_| None).collect();
    for row in &rows {
        let i = usize::try_from(row.get::<i64, _>("i")).unwrap_or(usize::MAX);
        if let Some(slot) = decided.get_mut(i) {
            *slot = Some(decide(batch[i], row));
        }
    }
    let mut answers: Vec<Option<Result<AgentCredential>>> = Vec::with_capacity(batch.len());
    let mut writes = Vec::new();
    for (pending, decision) in batch.iter().zip(decided) {
        match decision {
            Some(Ok(Decision::Issue(token, live))) => {
                let ws = &pending.credential.workspace;
                if live {
                    revoke_credentials(conn, ws, "re-bootstrapped", pending.now).await?;
                }
                writes.push(serde_json::json!({
                    "hash": pending.hash,
                    "token": to_json(&token)?,
                    "serial": pending.credential.serial.as_str(),
                    "ws": ws.as_str(),
                    "credential": to_json(&pending.credential)?,
                }));
                answers.push(Some(Ok(pending.credential.clone())));
            }
            Some(Ok(Decision::MaybeReplay(token, serial, refusal))) => {
                answers.push(Some(replay(conn, pending, token, &serial, refusal).await));
            }
            Some(Err(e)) => answers.push(Some(Err(e))),
            None => answers.push(None),
        }
    }
    // A taken serial names its credential when this batch wrote just one (a
    // batch of several is rerun one by one, which names it).
    let only = (writes.len() == 1).then(|| {
        batch.iter().zip(&answers).find_map(|(p, a)| {
            matches!(a, Some(Ok(c)) if c.serial == p.credential.serial)
                .then(|| p.credential.serial.clone())
        })
    });
    sqlx::query(WRITE_BATCH)
        .bind(serde_json::Value::Array(writes).to_string())
        .execute(&mut *conn)
        .await
        .map_err(|e| match (e.as_database_error(), only.flatten()) {
            (Some(d), Some(serial)) if d.is_unique_violation() => {
                Error::AlreadyExists(Resource::Credential(serial))
            }
            _ => unavailable(e),
        })?;
    Ok(answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| {
                Err(Error::Unavailable {
                    service: "sqlite".into(),
                    detail: "no row read for an exchange".into(),
                })
            })
        })
        .collect())
}

/// One exchange in a transaction of its own, with its precise error.
async fn alone(conn: &mut SqliteConnection, pending: &Exchange) -> Result<AgentCredential> {
    match together(conn, &[pending]).await {
        Ok(mut results) => results.pop().unwrap_or_else(|| {
            Err(Error::Unavailable {
                service: "sqlite".into(),
                detail: "no answer for an exchange".into(),
            })
        }),
        Err(e) => {
            // Nothing of it stays (a no-op if BEGIN itself failed).
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}
