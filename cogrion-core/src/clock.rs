//! Time, injected.
//!
//! Nothing in Cogrion reads the system clock directly: the engine and the stores take
//! a [`Clock`], so simulations and the crash harness run on a [`ManualClock`] and
//! replay thousands of hours of retries and lease expiries in milliseconds.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time: milliseconds since the Unix epoch, UTC.
///
/// Stored as an integer so every store orders and compares it the same way.
/// Displays as RFC 3339 (`2026-11-29T12:00:00.000Z`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);

    /// The instant `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this instant is (zero if it is not after).
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// From a [`SystemTime`] (instants before the epoch become the epoch).
    pub fn from_system_time(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Self;
    /// This instant plus `d`, saturating at the end of time.
    fn add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

/// A source of the current time.
///
/// **Contract:** `now()` never goes backwards for one clock value. Stores and the
/// engine compare instants that came from the same clock (lease expiries, token
/// TTLs); when several replicas share a store, their clocks must agree to well
/// within a lease's time-to-live.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }
}

/// A clock that never goes back: the wall clock's time when it was made,
/// advanced by the operating system's monotonic timer. The wall clock can be
/// stepped (by NTP, by hand); durations measured on this one cannot, which
/// suits what measures time spans — a simulated cloud's latencies, say — in
/// a long-running process. Clones share the same origin.
///
/// ```
/// use cogrion_core::{Clock, MonotonicClock};
/// let clock = MonotonicClock::new();
/// let (a, b) = (clock.now(), clock.now());
/// assert!(b >= a);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    start: Timestamp,
    origin: std::time::Instant,
}

impl MonotonicClock {
    /// A clock reading the wall clock's time now.
    pub fn new() -> Self {
        Self {
            start: SystemClock.now(),
            origin: std::time::Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Timestamp {
        self.start + self.origin.elapsed()
    }
}

/// A clock that moves only when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use cogrion_core::{Clock, ManualClock, Timestamp};
/// let clock = ManualClock::new(Timestamp::from_millis(1_000));
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now(), Timestamp::from_millis(3_000));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            millis: Arc::new(AtomicU64::new(start.as_millis())),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `t`, earlier or later than what it shows: a test
    /// putting a store's clock where its next check needs it.
    pub fn set(&self, t: Timestamp) {
        self.millis.store(t.as_millis(), Ordering::SeqCst);
    }

    /// Sets the clock to `t` if that is later than what it shows (it never goes back).
    pub fn advance_to(&self, t: Timestamp) {
        self.millis.fetch_max(t.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.millis.load(Ordering::SeqCst))
    }
}
