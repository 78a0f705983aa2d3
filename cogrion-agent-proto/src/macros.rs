/// Implements the conversions every checked string type shares: `FromStr`,
/// `TryFrom<String>`, `Into<String>`, `Display`, `Debug`, `AsRef<str>` and `as_str`.
///
/// The type must be a tuple struct around a `String` (or another text that is
/// `AsRef<str>` and `Into<String>`, such as [`InlineAscii`](crate::InlineAscii))
/// with an inherent
/// `fn new(impl Into<String>) -> Result<Self, InvalidValue>` that enforces its rule,
/// and derive serde with `#[serde(try_from = "String", into = "String")]` so that
/// deserialisation goes through the same check.
#[doc(hidden)]
#[macro_export]
macro_rules! checked_string {
    ($ty:ident) => {
        impl $ty {
            /// The value as text.
            pub fn as_str(&self) -> &str {
                ::std::convert::AsRef::<str>::as_ref(&self.0)
            }
        }
        impl ::std::str::FromStr for $ty {
            type Err = $crate::InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = $crate::InvalidValue;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> Self {
                v.0.into()
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, concat!(stringify!($ty), "({})"), self.as_str())
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
    };
}
