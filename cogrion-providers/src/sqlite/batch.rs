//! Calls that arrive together share one trip to SQLite.
//!
//! Every statement is a round trip to the connection's thread (and, for a
//! write, a commit to the log). A [`Batcher`] queues each call with the
//! channel its answer comes back on; whoever takes the turn runs everything
//! queued so far as one batch, while the others wait for their answers. A
//! lone call is a batch of one. A batch may hand calls back (for instance two
//! that must not share a transaction): they run in a later batch, ahead of
//! calls that came after them.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use cogrion_core::{Error, Result};
use tokio::sync::oneshot;

/// One queued call: its input, and where its answer goes.
pub(super) struct Call<I, O> {
    pub(super) input: I,
    pub(super) answer: oneshot::Sender<Result<O>>,
}

impl<I, O> Call<I, O> {
    /// Answers the call (a caller that went away is not waiting any more).
    pub(super) fn answer(self, result: Result<O>) {
        let _ = self.answer.send(result);
    }
}

/// Calls waiting for a batch, and the turn to run one.
pub(super) struct Batcher<I, O> {
    queue: Mutex<Vec<Call<I, O>>>,
    turn: tokio::sync::Mutex<()>,
    /// Most calls in one batch.
    max: usize,
    batches: AtomicU64,
    calls: AtomicU64,
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<I, O> Batcher<I, O> {
    /// A batcher of at most `max` calls per batch.
    pub(super) fn new(max: usize) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            turn: tokio::sync::Mutex::new(()),
            max: max.max(1),
            batches: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// Batches run so far, and the calls in them.
    pub(super) fn stats(&self) -> (u64, u64) {
        (self.batches.load(Relaxed), self.calls.load(Relaxed))
    }

    /// Makes one call, in a batch with whatever else is waiting. `run` runs a
    /// batch: it answers every call it keeps and returns those it hands back.
    pub(super) async fn call<F, Fut>(&self, input: I, run: F) -> Result<O>
    where
        F: Fn(Vec<Call<I, O>>) -> Fut,
        Fut: Future<Output = Vec<Call<I, O>>>,
    {
        let (answer, mut answered) = oneshot::channel();
        crate::lock_or_recover(&self.queue).push(Call { input, answer });
        // Answered by someone else's batch, or our turn to run one.
        let _turn = tokio::select! {
            biased;
            result = &mut answered => return result.unwrap_or_else(|_| Err(dropped())),
            turn = self.turn.lock() => turn,
        };
        loop {
            if let Ok(result) = answered.try_recv() {
                return result;
            }
            let batch = {
                let mut queue = crate::lock_or_recover(&self.queue);
                let take = queue.len().min(self.max);
                queue.drain(..take).collect::<Vec<_>>()
            };
            if batch.is_empty() {
                // Ours was taken by a batch that was dropped unanswered.
                return Err(dropped());
            }
            let taken = batch.len() as u64;
            let later = run(batch).await;
            self.batches.fetch_add(1, Relaxed);
            self.calls.fetch_add(taken - later.len() as u64, Relaxed);
            if !later.is_empty() {
                let mut queue = crate::lock_or_recover(&self.queue);
                let newer = std::mem::take(&mut *queue);
                queue.extend(later);
                queue.extend(newer);
            }
        }
    }
}

/// Answers every call of `batch`: SQLite is unavailable, for `detail`.
pub(super) fn fail_all<I, O>(batch: Vec<Call<I, O>>, detail: &str) {
    for call in batch {
        call.answer(Err(Error::Unavailable {
            service: "sqlite".into(),
            detail: detail.to_owned(),
        }));
    }
}

fn dropped() -> Error {
    Error::Unavailable {
        service: "sqlite".into(),
        detail: "a batched call was dropped unanswered".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Concurrent calls share batches, each gets its own answer, and calls a
    /// batch hands back run later and are answered too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_batches_and_get_their_own_answers() {
        let batcher = Arc::new(Batcher::<u32, u32>::new(8));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let calls = (0..64u32).map(|i| {
            let (batcher, sizes) = (batcher.clone(), sizes.clone());
            tokio::spawn(async move {
                batcher
                    .call(i, |batch| {
                        let sizes = sizes.clone();
                        async move {
                            tokio::task::yield_now().await;
                            crate::lock_or_recover(&sizes).push(batch.len());
                            // Odd inputs are handed back once: they come back
                            // as `i + 1000` and are answered then.
                            let mut later = Vec::new();
                            for call in batch {
                                if call.input % 2 == 1 && call.input < 1000 {
                                    later.push(Call {
                                        input: call.input + 1000,
                                        answer: call.answer,
                                    });
                                } else {
                                    let answer = call.input * 10;
                                    call.answer(Ok(answer));
                                }
                            }
                            later
                        }
                    })
                    .await
            })
        });
        let answers = futures::future::join_all(calls).await;
        for (i, answer) in answers.into_iter().enumerate() {
            let i = i as u32;
            let expected = if i % 2 == 1 { (i + 1000) * 10 } else { i * 10 };
            assert_eq!(answer.expect("task").expect("answer"), expected);
        }
        let (batches, calls) = batcher.stats();
        assert_eq!(
            calls, 64,
            "every call counted once, in the batch that answered it"
        );
        let sizes = crate::lock_or_recover(&sizes).clone();
        assert_eq!(batches as usize, sizes.len());
        assert!(
            sizes.iter().all(|&n| n <= 8),
            "a batch above the bound: {sizes:?}"
        );
        assert!(
            sizes.len() < 64 + 32,
            "calls arriving together shared batches: {sizes:?}"
        );
    }

    /// A batch that answers nothing and hands nothing back (its calls lost):
    /// each caller gets a typed error, not a hang.
    #[tokio::test]
    async fn a_lost_call_is_an_error_not_a_hang() {
        let batcher = Batcher::<u32, u32>::new(4);
        let result = batcher
            .call(1, |batch| async move {
                drop(batch);
                Vec::new()
            })
            .await;
        assert!(
            matches!(result, Err(Error::Unavailable { .. })),
            "{result:?}"
        );
    }
}
