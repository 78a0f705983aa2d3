//! What a connection may hold before it is authenticated: its source's share
//! of the unauthenticated connections, a handshake slot only while the server
//! works on its handshake, and rate-limited logging of what was refused.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The source a connection is counted against: its IPv4 address, or the /64
/// of its IPv6 address (one host usually holds a whole /64). An IPv4 address
/// mapped into IPv6 counts as itself.
pub(super) fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Connections not (yet) authenticated: at most `per_source` from one
/// source — a new one beyond it closes the source's oldest, so a client
/// sharing an address with an attacker (behind one NAT) still gets in — and,
/// through the semaphore, at most its permits in all.
pub(super) struct Unauthenticated {
    per_source: usize,
    /// Each source's connections, oldest first: what wakes each to close.
    by_source: Mutex<HashMap<IpAddr, VecDeque<Arc<Notify>>>>,
    total: Arc<Semaphore>,
}

impl Unauthenticated {
    pub(super) fn new(total: usize, per_source: usize) -> Self {
        Self {
            per_source: per_source.max(1),
            by_source: Mutex::default(),
            total: Arc::new(Semaphore::new(total)),
        }
    }

    /// The total's semaphore: the accept loop takes a permit before it
    /// accepts, so beyond the total new connections wait in the listen
    /// backlog rather than take a file each.
    pub(super) fn total(&self) -> Arc<Semaphore> {
        self.total.clone()
    }

    /// Counts a connection from `ip` against its source; when the source
    /// has its share already, its oldest connection is told to close
    /// ([`UnauthenticatedGuard::evicted`]).
    pub(super) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        permit: OwnedSemaphorePermit,
    ) -> UnauthenticatedGuard {
        let source = source_of(ip);
        let evict = Arc::new(Notify::new());
        let mut by_source = crate::lock_or_recover(&self.by_source);
        let connections = by_source.entry(source).or_default();
        while connections.len() >= self.per_source {
            if let Some(oldest) = connections.pop_front() {
                // A permit stored: it closes whenever it next looks.
                oldest.notify_one();
            }
        }
        connections.push_back(evict.clone());
        UnauthenticatedGuard {
            table: self.clone(),
            source,
            evict,
            _permit: permit,
        }
    }

    /// Sources with a connection counted now (the table holds no others).
    pub(super) fn sources(&self) -> usize {
        crate::lock_or_recover(&self.by_source).len()
    }
}

/// A connection counted as unauthenticated while it lives.
pub(super) struct UnauthenticatedGuard {
    table: Arc<Unauthenticated>,
    source: IpAddr,
    evict: Arc<Notify>,
    _permit: OwnedSemaphorePermit,
}

impl UnauthenticatedGuard {
    /// Completes when a newer connection from the same source took this
    /// one's place: the connection is then to close.
    pub(super) fn evicted(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let evict = self.evict.clone();
        async move { evict.notified().await }
    }
}

impl Drop for UnauthenticatedGuard {
    fn drop(&mut self) {
        let mut by_source = crate::lock_or_recover(&self.table.by_source);
        if let Some(connections) = by_source.get_mut(&self.source) {
            connections.retain(|c| !Arc::ptr_eq(c, &self.evict));
            if connections.is_empty() {
                // The table holds only sources with connections open: it
                // cannot grow with the addresses an attacker cycles through.
                by_source.remove(&self.source);
            }
        }
    }
}

/// The soft limit of open files of this process (Linux's
/// `/proc/self/limits`), if it can be read.
pub(super) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pin_project_lite::pin_project! {
    /// A TCP stream that holds a handshake slot until the server's first
    /// flight is written: the slot bounds the handshakes the server computes
    /// at once, not the clients that are slow to answer.
    pub(super) struct Metered<S> {
        #[pin]
        inner: S,
        pub(super) slot: Option<OwnedSemaphorePermit>,
    }
}

impl<S> Metered<S> {
    pub(super) fn new(inner: S) -> Self {
        Self { inner, slot: None }
    }
}

impl<S: AsyncRead> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        given_back(this.slot, this.inner.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        given_back(this.slot, this.inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// `written`, the handshake slot given back once anything was written: the
/// server's part of the handshake is computed, and the client answers
/// without holding it.
fn given_back(
    slot: &mut Option<OwnedSemaphorePermit>,
    written: Poll<io::Result<usize>>,
) -> Poll<io::Result<usize>> {
    if matches!(written, Poll::Ready(Ok(_))) {
        slot.take();
    }
    written
}

/// Counts per key in windows of a fixed length — refused bootstraps per
/// source, renewals per certificate — in a table of at most `capacity` keys
/// whose windows run: expired ones are dropped when it fills, and a new key
/// that finds it full of running windows is not counted (a limiter only
/// slows down; it never lets anything in that would otherwise be refused).
pub(super) struct WindowCounts<K> {
    window: Duration,
    capacity: usize,
    /// Per key: the count, when its window began, whether it went over.
    counts: Mutex<HashMap<K, (u32, Instant, bool)>>,
}

/// A key past its allowance in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Over {
    /// Until its window ends.
    pub(super) left: Duration,
    /// Whether this is its first time over in this window.
    pub(super) first: bool,
}

impl<K: std::hash::Hash + Eq + Clone> WindowCounts<K> {
    pub(super) fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            counts: Mutex::default(),
        }
    }

    /// Counts one more for `key`; `Some` when that makes more than `allowed`
    /// in its window.
    pub(super) fn count(&self, key: &K, allowed: u32) -> Option<Over> {
        let window = self.window;
        let mut counts = crate::lock_or_recover(&self.counts);
        if !counts.contains_key(key) && counts.len() >= self.capacity {
            counts.retain(|_, (_, since, _)| since.elapsed() < window);
            if counts.len() >= self.capacity {
                return None;
            }
        }
        let entry = counts
            .entry(key.clone())
            .or_insert((0, Instant::now(), false));
        if entry.1.elapsed() >= window {
            *entry = (0, Instant::now(), false);
        }
        entry.0 = entry.0.saturating_add(1);
        if entry.0 <= allowed {
            return None;
        }
        let first = !std::mem::replace(&mut entry.2, true);
        Some(Over {
            left: window.saturating_sub(entry.1.elapsed()),
            first,
        })
    }
}

/// Logs a kind of refusal at most once per interval, with the count of those
/// not logged since: a flood of refusals costs a line a second, not a line
/// each.
pub(super) struct LogLimit {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimit {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(count not logged since the last line)` when this one is to be
    /// logged; `None` (and counted) otherwise.
    pub(super) fn admit(&self) -> Option<u64> {
        let mut last = crate::lock_or_recover(&self.last);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.interval) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_ipv4_is_itself() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_of(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn a_source_gets_its_share_its_oldest_goes_and_closed_sources_are_forgotten() {
        let table = Arc::new(Unauthenticated::new(10, 2));
        let permit = || table.total().try_acquire_owned().unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let one = table.admit(a, permit());
        let two = table.admit(a, permit());
        let three = table.admit(a, permit());
        let evicted =
            |g: &UnauthenticatedGuard| futures::FutureExt::now_or_never(g.evicted()).is_some();
        assert!(evicted(&one), "the third from one source closes the first");
        assert!(!evicted(&two) && !evicted(&three));
        drop(one);
        let other = table.admit("192.0.2.2".parse().unwrap(), permit());
        assert!(!evicted(&other), "another source has its own share");
        assert_eq!(table.sources(), 2);
        assert_eq!(table.total().available_permits(), 7);
        drop((two, three, other));
        assert_eq!(table.sources(), 0, "no entry left for closed sources");
        assert_eq!(table.total().available_permits(), 10);
    }

    #[test]
    fn counts_go_over_once_per_window_in_a_bounded_table() {
        let counts = WindowCounts::new(Duration::from_secs(3600), 2);
        assert_eq!(counts.count(&"a", 2), None);
        assert_eq!(counts.count(&"a", 2), None);
        let over = counts.count(&"a", 2).expect("a third of two allowed");
        assert!(over.first && over.left > Duration::from_secs(3500));
        assert!(!counts.count(&"a", 2).unwrap().first, "logged once");
        assert_eq!(counts.count(&"b", 0).map(|o| o.first), Some(true));
        // Full of running windows: a new key is not counted.
        assert_eq!(counts.count(&"c", 0), None);
        // Expired windows make room, and start again.
        let counts = WindowCounts::new(Duration::ZERO, 1);
        assert!(counts.count(&"a", 0).is_some());
        assert!(counts.count(&"b", 0).is_some(), "a's window expired");
    }

    #[test]
    fn refusal_logging_is_one_line_per_interval_with_the_count_skipped() {
        let limit = LogLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.admit(), None);
        }
        let limit = LogLimit::new(Duration::ZERO);
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), Some(0));
    }

    #[test]
    fn this_process_has_an_open_files_limit() {
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
