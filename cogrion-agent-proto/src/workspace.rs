use serde::{Deserialize, Serialize};

use crate::{InlineAscii, InvalidValue, check_chars};

/// The identifier of a workspace: unique within one control plane.
///
/// **Rule:** 3 to 32 characters; lowercase ASCII letters, digits and `-`; starts with
/// a letter and ends with a letter or digit (an RFC 1123 label short enough that
/// cloud resource names derived from it — `cogrion-<id>-nodes-<pool>` — fit every
/// cloud's limits).
///
/// ```
/// use cogrion_agent_proto::WorkspaceId;
/// let id: WorkspaceId = "acme-prod".parse().unwrap();
/// assert_eq!(id.as_str(), "acme-prod");
/// assert!("Acme_Prod".parse::<WorkspaceId>().is_err());
/// ```
///
/// It is kept inline (no allocation): every agent request clones one.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkspaceId(InlineAscii<{ WorkspaceId::MAX_LEN }>);

impl WorkspaceId {
    /// The longest workspace id, in bytes.
    pub const MAX_LEN: usize = 32;
    /// The shortest workspace id, in bytes.
    pub const MIN_LEN: usize = 3;

    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_dns_label("workspace id", &value, Self::MIN_LEN, Self::MAX_LEN)?;
        Ok(Self(InlineAscii::new("workspace id", &value)?))
    }
}

/// Checks an RFC 1123 label (`[a-z]([-a-z0-9]*[a-z0-9])?`) between `min` and `max` bytes.
#[doc(hidden)]
pub fn check_dns_label(
    what: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), InvalidValue> {
    check_chars(
        what,
        value,
        max,
        "lowercase letters, digits and '-', starting with a letter",
        |i, c| {
            if i == 0 {
                c.is_ascii_lowercase()
            } else {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
            }
        },
    )?;
    if value.len() < min {
        return Err(InvalidValue::OutOfRange {
            what,
            value: format!("{} bytes long", value.len()),
            allowed: format!("{min} to {max} bytes"),
        });
    }
    if value.ends_with('-') {
        return Err(InvalidValue::Malformed {
            what,
            reason: "must not end with '-'".into(),
        });
    }
    Ok(())
}

crate::checked_string!(WorkspaceId);
