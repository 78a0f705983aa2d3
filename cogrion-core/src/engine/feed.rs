//! The durable feed of every workspace's history events: read from the store
//! after a cursor, resumable across restarts and replicas.

use std::collections::VecDeque;

use futures::Stream;
use tokio::sync::broadcast;

use super::Engine;
use crate::error::Result;
use crate::store::{FeedCursor, FeedEvent};

/// How many events [`Engine::watch`] reads at a time.
const WATCH_PAGE: usize = 256;

impl Engine {
    /// Every workspace's history events after `after`, in feed order, at
    /// most `limit` (0: the store's default page). Keep the last event's
    /// [`cursor`](FeedEvent::cursor) and ask again after it: a reader that
    /// does sees every event once, on any replica, after any restart.
    pub async fn events_since(&self, after: FeedCursor, limit: usize) -> Result<Vec<FeedEvent>> {
        self.0.store.read_feed(after, limit).await
    }

    /// The cursor of the last event readable now: [`watch`](Self::watch) or
    /// [`events_since`](Self::events_since) from it for only what comes next.
    pub async fn feed_head(&self) -> Result<FeedCursor> {
        self.0.store.feed_head().await
    }

    /// Every workspace's history events after `after`, as they are committed,
    /// for as long as the stream is polled.
    ///
    /// Events come from the store ([`events_since`](Self::events_since)), so
    /// the stream neither skips nor repeats one, whoever wrote it: this
    /// engine's own commits wake it at once (the in-process broadcast is only
    /// a hint to read again), other replicas' are read every
    /// [`EngineConfig::feed_poll`](crate::EngineConfig::feed_poll). A store
    /// error is yielded and the stream goes on after the next interval;
    /// resume a dropped stream with the last cursor handled.
    pub fn watch(&self, after: FeedCursor) -> impl Stream<Item = Result<FeedEvent>> + Send + use<> {
        let state = Watch {
            engine: self.clone(),
            hints: self.0.events.subscribe(),
            cursor: after,
            ready: VecDeque::new(),
            failed: false,
        };
        futures::stream::unfold(state, |mut w| async move {
            loop {
                if let Some(event) = w.ready.pop_front() {
                    return Some((Ok(event), w));
                }
                if w.failed {
                    w.failed = false;
                    w.wait().await;
                }
                match w.engine.events_since(w.cursor, WATCH_PAGE).await {
                    Ok(page) if page.is_empty() => w.wait().await,
                    Ok(page) => {
                        w.cursor = page.last().map_or(w.cursor, |e| e.cursor);
                        w.ready.extend(page);
                    }
                    Err(e) => {
                        w.failed = true;
                        return Some((Err(e), w));
                    }
                }
            }
        })
    }
}

struct Watch {
    engine: Engine,
    hints: broadcast::Receiver<super::EngineEvent>,
    cursor: FeedCursor,
    ready: VecDeque<FeedEvent>,
    failed: bool,
}

impl Watch {
    /// Until this engine publishes something or the poll interval passes.
    async fn wait(&mut self) {
        let poll = self.engine.0.config.feed_poll;
        tokio::select! {
            _ = self.hints.recv() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}
