//! Short checked text kept inline: no allocation to make, clone or drop it.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use crate::InvalidValue;

/// ASCII text of at most `N` bytes, stored inline.
///
/// Identifiers that every agent request clones and every connected agent holds
/// (a workspace id, a certificate serial) are kept this way, so holding or
/// cloning one costs no heap allocation. It compares, orders and hashes as its
/// text does.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct InlineAscii<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> InlineAscii<N> {
    /// `value` kept inline; `what` names it in the error when it does not fit
    /// (longer than `N` bytes, or not ASCII).
    pub fn new(what: &'static str, value: &str) -> Result<Self, InvalidValue> {
        const { assert!(N <= u8::MAX as usize, "the length is kept in a u8") };
        if value.len() > N {
            return Err(InvalidValue::TooLong {
                what,
                len: value.len(),
                max: N,
            });
        }
        if let Some((at, found)) = value.char_indices().find(|(_, c)| !c.is_ascii()) {
            return Err(InvalidValue::BadCharacter {
                what,
                found,
                at,
                allowed: "ASCII",
            });
        }
        let mut bytes = [0; N];
        bytes[..value.len()].copy_from_slice(value.as_bytes());
        Ok(Self {
            len: value.len() as u8,
            bytes,
        })
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // ASCII by construction.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl<const N: usize> std::fmt::Debug for InlineAscii<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> AsRef<str> for InlineAscii<N> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> From<InlineAscii<N>> for String {
    fn from(v: InlineAscii<N>) -> Self {
        v.as_str().to_owned()
    }
}

impl<const N: usize> PartialEq for InlineAscii<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl<const N: usize> Eq for InlineAscii<N> {}

impl<const N: usize> PartialOrd for InlineAscii<N> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for InlineAscii<N> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl<const N: usize> Hash for InlineAscii<N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_compares_and_refuses_like_its_text() {
        let a = InlineAscii::<8>::new("t", "abc").unwrap();
        let b = InlineAscii::<8>::new("t", "abcd").unwrap();
        assert_eq!(a.as_str(), "abc");
        assert_eq!(String::from(b), "abcd");
        assert!(a < b, "ordered as text: a prefix first");
        assert_eq!(a, InlineAscii::<8>::new("t", "abc").unwrap());
        assert_eq!(InlineAscii::<8>::new("t", "").unwrap().as_str(), "");
        assert_eq!(
            InlineAscii::<8>::new("t", "12345678").unwrap().as_str(),
            "12345678"
        );
        assert!(matches!(
            InlineAscii::<8>::new("t", "123456789"),
            Err(InvalidValue::TooLong { len: 9, max: 8, .. })
        ));
        assert!(matches!(
            InlineAscii::<8>::new("t", "é"),
            Err(InvalidValue::BadCharacter { found: 'é', .. })
        ));
        let hash = |v: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v(&mut h);
            h.finish()
        };
        assert_eq!(hash(&|h| a.hash(h)), hash(&|h| "abc".hash(h)));
    }
}
