//! A fleet's polls in batches: the reads of
//! [`get_credential_for_poll`](cogrion_core::CredentialStore::get_credential_for_poll)
//! arriving together share one `SELECT`, and the first-poll marks of
//! [`mark_polled`](cogrion_core::CredentialStore::mark_polled) one `UPDATE`.
//!
//! After a control-plane restart every agent polls again within seconds; one
//! statement (and one round trip to SQLite's thread) per poll would make the
//! reconnect storm queue on the connections. Each call still gets its own
//! answer: its credential or `NotFound` or `Corrupt`, and for a mark whether
//! this call set the time.

use std::collections::HashMap;

use cogrion_core::{AgentCredential, CertSerial, Error, Resource, Result, Timestamp};
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::batch::{Batcher, Call, fail_all};
use super::{corrupt, millis, read_credential};

/// Most polls in one statement.
const MAX_BATCH: usize = 128;

/// The polls' reads and marks waiting for a batch.
#[derive(Debug)]
pub(super) struct Polls {
    reads: Batcher<CertSerial, (AgentCredential, bool)>,
    marks: Batcher<Mark, bool>,
}

impl Default for Polls {
    fn default() -> Self {
        Self {
            reads: Batcher::new(MAX_BATCH),
            marks: Batcher::new(MAX_BATCH),
        }
    }
}

/// One first-poll mark, as the batch's JSON carries it.
#[derive(Serialize)]
pub(super) struct Mark {
    serial: CertSerial,
    at: i64,
}

/// The read of a batch: `?1` is a JSON array of serials. One statement text
/// for every batch size, so it is prepared once per connection.
const READ: &str = "SELECT CAST(j.key AS INTEGER) AS i, c.body AS body,
            EXISTS (SELECT 1 FROM commands
                    WHERE workspace = c.workspace AND answered = 0) AS pending
     FROM json_each(?1) AS j JOIN credentials c ON c.serial = j.value";

/// The marks of a batch: `?1` is a JSON array of `{"serial", "at"}`. Each
/// row's `last_seen_at` moves up to its time, and its `first_poll_at` is set
/// where no time is set yet (a corrupt body is left alone, and then refused
/// by the read that follows); the rows marked come back with their first-poll
/// time (of a serial twice in the batch, SQLite takes either).
const MARK: &str = "UPDATE credentials
         SET body = json_set(body,
             '$.first_poll_at',
             coalesce(json_extract(body, '$.first_poll_at'), j.value ->> 'at'),
             '$.last_seen_at',
             max(coalesce(json_extract(body, '$.last_seen_at'), 0), j.value ->> 'at'))
     FROM json_each(?1) AS j
     WHERE credentials.serial = j.value ->> 'serial' AND json_valid(credentials.body)
     RETURNING serial, json_extract(body, '$.first_poll_at') AS at";

impl Polls {
    /// Reads, batched: `serial`'s credential and whether its workspace has
    /// unanswered commands.
    pub(super) async fn read(
        &self,
        pool: &SqlitePool,
        serial: &CertSerial,
    ) -> Result<(AgentCredential, bool)> {
        self.reads
            .call(serial.clone(), |batch| async move {
                read_batch(pool, batch).await;
                Vec::new()
            })
            .await
    }

    /// Marks, batched: whether this call set `serial`'s first poll to `now`
    /// (false: set before, or no such credential, or a corrupt row).
    pub(super) async fn mark(
        &self,
        pool: &SqlitePool,
        serial: &CertSerial,
        now: Timestamp,
    ) -> Result<bool> {
        let mark = Mark {
            serial: serial.clone(),
            at: millis(now),
        };
        self.marks
            .call(mark, |batch| async move {
                mark_batch(pool, batch).await;
                Vec::new()
            })
            .await
    }

    /// Batches of reads run so far, and the reads in them.
    pub(super) fn read_stats(&self) -> (u64, u64) {
        self.reads.stats()
    }
}

/// The inputs of `batch` as one JSON array, or why not.
fn json<T: Serialize>(batch: &[Call<T, impl Sized>]) -> std::result::Result<String, String> {
    let inputs: Vec<&T> = batch.iter().map(|c| &c.input).collect();
    serde_json::to_string(&inputs).map_err(|e| format!("encoding a batch: {e}"))
}

async fn read_batch(pool: &SqlitePool, batch: Vec<Call<CertSerial, (AgentCredential, bool)>>) {
    let rows = match json(&batch) {
        Ok(serials) => sqlx::query(READ)
            .bind(serials)
            .fetch_all(pool)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return fail_all(batch, &e),
    };
    let mut found: Vec<Option<&SqliteRow>> = vec![None; batch.len()];
    for row in &rows {
        let i = row
            .try_get::<i64, _>("i")
            .ok()
            .and_then(|i| usize::try_from(i).ok());
        if let Some(slot) = i.and_then(|i| found.get_mut(i)) {
            *slot = Some(row);
        }
    }
    for (call, row) in batch.into_iter().zip(found) {
        let result = match row {
            None => Err(Error::NotFound(Resource::Credential(call.input.clone()))),
            Some(row) => poll_row(row, &call.input),
        };
        call.answer(result);
    }
}

/// A row of [`READ`]: the credential and whether anything is pending.
fn poll_row(row: &SqliteRow, serial: &CertSerial) -> Result<(AgentCredential, bool)> {
    let corrupt = |e: sqlx::Error| corrupt(Resource::Credential(serial.clone()), e);
    let body: String = row.try_get("body").map_err(corrupt)?;
    let pending: bool = row.try_get("pending").map_err(corrupt)?;
    Ok((read_credential(&body, serial.as_str())?, pending))
}

async fn mark_batch(pool: &SqlitePool, batch: Vec<Call<Mark, bool>>) {
    let marked = match json(&batch) {
        Ok(marks) => sqlx::query_as::<_, (String, i64)>(MARK)
            .bind(marks)
            .fetch_all(pool)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let mut marked: HashMap<String, i64> = match marked {
        Ok(rows) => rows.into_iter().collect(),
        Err(e) => return fail_all(batch, &e),
    };
    // A serial twice in one batch (two connections of one agent) was marked
    // once, with one of its calls' times: that call set it.
    for call in batch {
        let serial = call.input.serial.as_str();
        let set = marked.get(serial) == Some(&call.input.at);
        if set {
            marked.remove(serial);
        }
        call.answer(Ok(set));
    }
}
