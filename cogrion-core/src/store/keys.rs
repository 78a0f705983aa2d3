//! Keys and versions of stored things: revisions, fencing tokens, event
//! sequence numbers, certificate serials, digests, checkpoint keys.

use super::*;

/// The version of a stored record: 1 when created, one more on every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a record write treats what is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Only if nothing is stored under the id.
    Create,
    /// Only if the stored record has exactly this revision.
    Update(Revision),
}

/// A value together with the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its revision; pass it to [`PutMode::Update`] to write a change.
    pub revision: Revision,
}

/// A lease's fencing token: strictly increasing per workspace, one per
/// acquisition (renewals keep it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

/// The position of an event in its workspace's history: gapless from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventSeq(pub u64);

/// The serial number of an agent certificate.
///
/// **Rule:** 1 to 40 lowercase hex digits (at most 20 bytes, RFC 5280).
///
/// ```
/// use cogrion_core::store::CertSerial;
/// assert!("01a9ff".parse::<CertSerial>().is_ok());
/// assert!("xyz".parse::<CertSerial>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CertSerial(cogrion_agent_proto::InlineAscii<{ CertSerial::MAX_LEN }>);

impl CertSerial {
    /// The longest serial, in hex digits (kept inline: every agent request
    /// clones one).
    pub const MAX_LEN: usize = 40;

    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        cogrion_agent_proto::check_chars(
            "certificate serial",
            &value,
            Self::MAX_LEN,
            "lowercase hex digits",
            |_, c| c.is_ascii_digit() || ('a'..='f').contains(&c),
        )?;
        Ok(Self(cogrion_agent_proto::InlineAscii::new(
            "certificate serial",
            &value,
        )?))
    }
}
checked_string!(CertSerial);

/// A SHA-256 digest type: 32 bytes, written as 64 lowercase hex digits.
macro_rules! sha256_digest {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub [u8; 32]);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }

        impl From<$name> for String {
            fn from(h: $name) -> Self {
                h.to_string()
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                s.parse()
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            /// Parses 64 lowercase hex digits.
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                cogrion_agent_proto::check_chars($what, s, 64, "lowercase hex digits", |_, c| {
                    c.is_ascii_digit() || ('a'..='f').contains(&c)
                })?;
                if s.len() != 64 {
                    return Err(InvalidValue::Malformed {
                        what: $what,
                        reason: format!("{} hex digits, expected 64", s.len()),
                    });
                }
                let mut out = [0u8; 32];
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte =
                        u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("checked hex digits");
                }
                Ok(Self(out))
            }
        }
    };
}

sha256_digest!(
    /// The SHA-256 hash of a bootstrap token. The token itself is never stored.
    TokenHash,
    "token hash"
);

sha256_digest!(
    /// The SHA-256 digest of an agent's public key (its DER
    /// `SubjectPublicKeyInfo`, as the agent's certificate signing request
    /// carries it): which key a credential was issued for.
    ///
    /// ```
    /// use cogrion_core::store::KeyDigest;
    /// let d: KeyDigest = "ab".repeat(32).parse().unwrap();
    /// assert_eq!(d.to_string(), "ab".repeat(32));
    /// assert!("AB".repeat(32).parse::<KeyDigest>().is_err());
    /// ```
    KeyDigest,
    "key digest"
);

/// The key of an operation checkpoint: which operation and step it belongs to.
///
/// **Rule:** 1 to 128 bytes of lowercase letters, digits, `.`, `/`, `_` and `-`.
///
/// ```
/// use cogrion_core::store::CheckpointKey;
/// assert!("op3/cluster".parse::<CheckpointKey>().is_ok());
/// assert!("op3 cluster".parse::<CheckpointKey>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CheckpointKey(String);

impl CheckpointKey {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        cogrion_agent_proto::check_chars(
            "checkpoint key",
            &value,
            128,
            "lowercase letters, digits, '.', '/', '_', '-'",
            |_, c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '/' | '_' | '-')
            },
        )?;
        Ok(Self(value))
    }

    /// The key of step `step` of operation number `operation`.
    pub fn for_step(operation: u64, step: &str) -> Result<Self, InvalidValue> {
        Self::new(format!("op{operation}/{step}"))
    }
}
checked_string!(CheckpointKey);

/// A place in the feed of every workspace's history events
/// ([`RecordStore::read_feed`]): what a consumer keeps to resume after a
/// restart, on any replica. It is the transaction that wrote an event (0
/// where the store commits in order, as SQLite and the in-memory store do)
/// and the event's position; the feed is ordered by both. Written as
/// `<transaction>.<position>`.
///
/// ```
/// use cogrion_core::store::FeedCursor;
/// let c: FeedCursor = "0.42".parse()?;
/// assert_eq!((c.tx(), c.position()), (0, 42));
/// assert!(FeedCursor::START < c);
/// assert!("42".parse::<FeedCursor>().is_err());
/// # Ok::<(), cogrion_core::InvalidValue>(())
/// ```
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct FeedCursor {
    tx: u64,
    position: u64,
}

impl FeedCursor {
    /// Before every event.
    pub const START: Self = Self { tx: 0, position: 0 };

    /// The cursor of the event at `position` written by transaction `tx`.
    pub const fn new(tx: u64, position: u64) -> Self {
        Self { tx, position }
    }

    /// The writing transaction's id (0 where the store commits in order).
    pub const fn tx(self) -> u64 {
        self.tx
    }

    /// The event's position.
    pub const fn position(self) -> u64 {
        self.position
    }

    /// For a store that commits in order (its transaction ids all 0): the
    /// position after which to read. A cursor with a transaction id is
    /// another kind of store's, past everything of this one's.
    pub const fn in_order_position(self) -> u64 {
        if self.tx > 0 { u64::MAX } else { self.position }
    }
}

impl fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.tx, self.position)
    }
}

impl std::str::FromStr for FeedCursor {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let bad = || InvalidValue::Malformed {
            what: "feed cursor",
            reason: format!("{s:?} is not <transaction>.<position>"),
        };
        let (tx, position) = s.split_once('.').ok_or_else(bad)?;
        let number = |t: &str| {
            if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse::<u64>().map_err(|_| bad())
        };
        Ok(Self::new(number(tx)?, number(position)?))
    }
}

impl TryFrom<String> for FeedCursor {
    type Error = InvalidValue;

    fn try_from(s: String) -> Result<Self, InvalidValue> {
        s.parse()
    }
}

impl From<FeedCursor> for String {
    fn from(c: FeedCursor) -> Self {
        c.to_string()
    }
}
