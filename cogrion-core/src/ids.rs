//! Checked identifiers and constrained values.
//!
//! Every type here can only hold a value that satisfies its rule: construction and
//! deserialisation both go through the same check, and a refusal is an
//! [`InvalidValue`] naming the rule that was broken.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use cogrion_agent_proto::{check_chars, check_dns_label, checked_string};
use serde::{Deserialize, Serialize};

pub use cogrion_agent_proto::{InvalidValue, WorkspaceId};

/// The tenant a workspace belongs to.
///
/// **Rule:** an RFC 1123 label of 1 to 63 characters: lowercase ASCII letters, digits
/// and `-`, starting with a letter, not ending with `-`.
///
/// ```
/// use cogrion_core::TenantId;
/// assert!("acme".parse::<TenantId>().is_ok());
/// assert!("ACME Corp".parse::<TenantId>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_dns_label("tenant id", &value, 1, 63)?;
        Ok(Self(value))
    }
}
checked_string!(TenantId);

/// The name of a stack, unique within its workspace. It becomes the Helm release
/// name, so it follows Helm's rule.
///
/// **Rule:** an RFC 1123 label of 1 to 53 characters: lowercase ASCII letters, digits
/// and `-`, starting with a letter, not ending with `-`.
///
/// ```
/// use cogrion_core::StackName;
/// assert!("ingress-nginx".parse::<StackName>().is_ok());
/// assert!("ingress_nginx".parse::<StackName>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StackName(String);

impl StackName {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_dns_label("stack name", &value, 1, 53)?;
        Ok(Self(value))
    }
}
checked_string!(StackName);

/// A cloud region, such as `us-east-1` (AWS), `europe-west1` (GCP) or `westeurope`
/// (Azure).
///
/// **Rule:** 2 to 32 characters: lowercase ASCII letters, digits and `-`, starting
/// with a letter, not ending with `-`. Whether the region has the shape the chosen
/// cloud uses is checked when the workspace spec is validated.
///
/// ```
/// use cogrion_core::Region;
/// assert!("eu-west-1".parse::<Region>().is_ok());
/// assert!("EU West".parse::<Region>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Region(String);

impl Region {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_dns_label("region", &value, 2, 32)?;
        Ok(Self(value))
    }
}
checked_string!(Region);

/// The name of a node pool, unique within its workspace.
///
/// **Rule:** an RFC 1123 label of 1 to 40 characters (GKE's limit, the tightest of
/// the three clouds).
///
/// ```
/// use cogrion_core::NodePoolName;
/// assert!("general".parse::<NodePoolName>().is_ok());
/// assert!("general-purpose-nodes-for-the-whole-tenant".parse::<NodePoolName>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodePoolName(String);

impl NodePoolName {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_dns_label("node pool name", &value, 1, 40)?;
        Ok(Self(value))
    }
}
checked_string!(NodePoolName);

/// A machine type as the cloud names it: `m6i.large`, `e2-standard-4`,
/// `Standard_D4s_v5`.
///
/// **Rule:** 1 to 64 characters: ASCII letters, digits, `.`, `-` and `_`, starting
/// with a letter.
///
/// ```
/// use cogrion_core::InstanceType;
/// assert!("Standard_D4s_v5".parse::<InstanceType>().is_ok());
/// assert!("m6i large".parse::<InstanceType>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceType(String);

impl InstanceType {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_chars(
            "instance type",
            &value,
            64,
            "letters, digits, '.', '-', '_', starting with a letter",
            |i, c| {
                c.is_ascii_alphabetic()
                    || (i > 0 && (c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
            },
        )?;
        Ok(Self(value))
    }
}
checked_string!(InstanceType);

/// The name of the control-plane replica that holds a lease, e.g. a pod name.
///
/// **Rule:** 1 to 128 printable ASCII characters without whitespace.
///
/// ```
/// use cogrion_core::HolderId;
/// assert!("control-plane-0".parse::<HolderId>().is_ok());
/// assert!("".parse::<HolderId>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HolderId(String);

impl HolderId {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_chars(
            "lease holder",
            &value,
            128,
            "printable ASCII without spaces",
            |_, c| c.is_ascii_graphic(),
        )?;
        Ok(Self(value))
    }
}
checked_string!(HolderId);

/// An IPv4 network in CIDR notation, for a workspace's VPC / VNet and its pod and
/// service ranges.
///
/// **Rule:** `a.b.c.d/n` with a prefix length from 16 to 28 (the range every
/// supported cloud accepts for a VPC), no host bits set, inside a private range
/// (RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, or the RFC 6598
/// shared range `100.64.0.0/10`). Tenant clusters are never given public address
/// space.
///
/// ```
/// use cogrion_core::NetworkCidr;
/// let cidr: NetworkCidr = "10.42.0.0/16".parse().unwrap();
/// assert_eq!(cidr.prefix_len(), 16);
/// assert!("10.42.0.1/16".parse::<NetworkCidr>().is_err()); // host bits set
/// assert!("8.8.0.0/16".parse::<NetworkCidr>().is_err());   // public
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetworkCidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl NetworkCidr {
    /// The shortest prefix accepted.
    pub const MIN_PREFIX: u8 = 16;
    /// The longest prefix accepted.
    pub const MAX_PREFIX: u8 = 28;

    const PRIVATE: [(Ipv4Addr, u8); 4] = [
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
        (Ipv4Addr::new(100, 64, 0, 0), 10),
    ];

    /// Checks `addr/prefix` against the rule above.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, InvalidValue> {
        const WHAT: &str = "network CIDR";
        if !(Self::MIN_PREFIX..=Self::MAX_PREFIX).contains(&prefix) {
            return Err(InvalidValue::OutOfRange {
                what: WHAT,
                value: format!("/{prefix}"),
                allowed: format!("/{} to /{}", Self::MIN_PREFIX, Self::MAX_PREFIX),
            });
        }
        if u32::from(addr) & !mask(prefix) != 0 {
            return Err(InvalidValue::Malformed {
                what: WHAT,
                reason: format!(
                    "{addr}/{prefix} has host bits set; the network is {}/{prefix}",
                    Ipv4Addr::from(u32::from(addr) & mask(prefix))
                ),
            });
        }
        let candidate = Self { addr, prefix };
        if !Self::PRIVATE
            .iter()
            .any(|&(a, p)| (Self { addr: a, prefix: p }).contains_net(&candidate))
        {
            return Err(InvalidValue::OutOfRange {
                what: WHAT,
                value: candidate.to_string(),
                allowed:
                    "a private range: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10"
                        .into(),
            });
        }
        Ok(candidate)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.contains_net(other) || other.contains_net(self)
    }

    fn contains_net(&self, other: &Self) -> bool {
        other.prefix >= self.prefix
            && u32::from(other.addr) & mask(self.prefix) == u32::from(self.addr)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for NetworkCidr {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = |reason: &str| InvalidValue::Malformed {
            what: "network CIDR",
            reason: format!("{s:?}: {reason}"),
        };
        if s.len() > 18 {
            return Err(malformed("expected a.b.c.d/n"));
        }
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| malformed("expected a.b.c.d/n"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| malformed("not an IPv4 address"))?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("the prefix length is not a number"));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| malformed("the prefix length is not a number"))?;
        Self::new(addr, prefix)
    }
}

impl TryFrom<String> for NetworkCidr {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<NetworkCidr> for String {
    fn from(c: NetworkCidr) -> Self {
        c.to_string()
    }
}

impl fmt::Display for NetworkCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for NetworkCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkCidr({self})")
    }
}

/// A Kubernetes minor version, `1.<minor>`.
///
/// **Rule:** the text `1.<minor>` with `minor` from 0 to 99 and no leading zero.
/// Which versions a new workspace may *request* is narrower: those of the
/// `k8s-openapi` release Cogrion builds against ([`KubernetesVersion::SUPPORTED`],
/// checked by spec validation). Parsing stays wider so that a workspace created on
/// a version that has since left the supported window can still be read and
/// upgraded.
///
/// ```
/// use cogrion_core::KubernetesVersion;
/// let v: KubernetesVersion = "1.34".parse().unwrap();
/// assert!(v.is_supported());
/// assert!("1.34.2".parse::<KubernetesVersion>().is_err()); // patch versions are the cloud's choice
/// assert!("2.0".parse::<KubernetesVersion>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KubernetesVersion {
    minor: u8,
}

impl KubernetesVersion {
    /// The oldest and newest minor versions a new workspace may request: those of
    /// `k8s-openapi` 0.28 (features `v1_32` to `v1_36`).
    pub const SUPPORTED: (Self, Self) = (Self { minor: 32 }, Self { minor: 36 });

    /// The version `1.<minor>`.
    pub fn new(minor: u8) -> Result<Self, InvalidValue> {
        if minor > 99 {
            return Err(InvalidValue::OutOfRange {
                what: "Kubernetes version",
                value: format!("1.{minor}"),
                allowed: "1.0 to 1.99".into(),
            });
        }
        Ok(Self { minor })
    }

    /// The minor version.
    pub fn minor(&self) -> u8 {
        self.minor
    }

    /// Whether a new workspace may request this version.
    pub fn is_supported(&self) -> bool {
        (Self::SUPPORTED.0..=Self::SUPPORTED.1).contains(self)
    }
}

impl FromStr for KubernetesVersion {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || InvalidValue::Malformed {
            what: "Kubernetes version",
            reason: format!(
                "{:?} is not of the form 1.<minor>",
                s.chars().take(16).collect::<String>()
            ),
        };
        let minor = s.strip_prefix("1.").ok_or_else(malformed)?;
        if minor.is_empty()
            || minor.len() > 2
            || !minor.bytes().all(|b| b.is_ascii_digit())
            || (minor.len() > 1 && minor.starts_with('0'))
        {
            return Err(malformed());
        }
        Self::new(minor.parse().map_err(|_| malformed())?)
    }
}

impl TryFrom<String> for KubernetesVersion {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<KubernetesVersion> for String {
    fn from(v: KubernetesVersion) -> Self {
        v.to_string()
    }
}

impl fmt::Display for KubernetesVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1.{}", self.minor)
    }
}

impl fmt::Debug for KubernetesVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KubernetesVersion({self})")
    }
}

/// The size bounds of a node pool.
///
/// **Rule:** `min <= desired <= max`, `max` from 1 to [`NodePoolSize::MAX_NODES`].
/// `min` may be 0 (a pool that scales to zero).
///
/// ```
/// use cogrion_core::NodePoolSize;
/// assert!(NodePoolSize::new(1, 3, 5).is_ok());
/// assert!(NodePoolSize::new(3, 1, 5).is_err()); // desired below min
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawNodePoolSize", into = "RawNodePoolSize")]
pub struct NodePoolSize {
    min: u32,
    desired: u32,
    max: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodePoolSize {
    min: u32,
    desired: u32,
    max: u32,
}

impl NodePoolSize {
    /// The largest pool accepted (EKS's per-nodegroup limit is 1,000 with a raised
    /// quota; GKE and AKS allow the same per pool).
    pub const MAX_NODES: u32 = 1000;

    /// Checks the bounds against the rule above.
    pub fn new(min: u32, desired: u32, max: u32) -> Result<Self, InvalidValue> {
        const WHAT: &str = "node pool size";
        if max == 0 || max > Self::MAX_NODES {
            return Err(InvalidValue::OutOfRange {
                what: WHAT,
                value: format!("max {max}"),
                allowed: format!("max from 1 to {}", Self::MAX_NODES),
            });
        }
        if !(min <= desired && desired <= max) {
            return Err(InvalidValue::OutOfRange {
                what: WHAT,
                value: format!("min {min}, desired {desired}, max {max}"),
                allowed: "min <= desired <= max".into(),
            });
        }
        Ok(Self { min, desired, max })
    }

    /// The fewest nodes.
    pub fn min(&self) -> u32 {
        self.min
    }
    /// The nodes wanted now.
    pub fn desired(&self) -> u32 {
        self.desired
    }
    /// The most nodes.
    pub fn max(&self) -> u32 {
        self.max
    }
}

impl TryFrom<RawNodePoolSize> for NodePoolSize {
    type Error = InvalidValue;
    fn try_from(r: RawNodePoolSize) -> Result<Self, Self::Error> {
        Self::new(r.min, r.desired, r.max)
    }
}

impl From<NodePoolSize> for RawNodePoolSize {
    fn from(s: NodePoolSize) -> Self {
        Self {
            min: s.min,
            desired: s.desired,
            max: s.max,
        }
    }
}

/// A key that makes a cloud or executor call idempotent: the same operation step
/// always derives the same key, so a call replayed after a crash is recognised by
/// the provider (AWS `clientRequestToken`, GCP `requestId`, …) instead of creating a
/// second resource.
///
/// **Rule:** 1 to 64 characters: ASCII letters, digits, `-` and `_` (the
/// intersection of what the clouds accept as request tokens).
///
/// ```
/// use cogrion_core::{WorkspaceId, provider::{IdempotencyKey}};
/// let ws: WorkspaceId = "acme-prod".parse().unwrap();
/// let a = IdempotencyKey::derive(&ws, 3, "cluster");
/// assert_eq!(a, IdempotencyKey::derive(&ws, 3, "cluster"));
/// assert_ne!(a, IdempotencyKey::derive(&ws, 4, "cluster"));
/// assert!("has space".parse::<IdempotencyKey>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_chars(
            "idempotency key",
            &value,
            64,
            "letters, digits, '-', '_'",
            |_, c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'),
        )?;
        Ok(Self(value))
    }

    /// The key of step `step` of the workspace's operation number `operation`.
    ///
    /// The derivation is a fixed 128-bit FNV-1a hash, stable across Cogrion
    /// versions, so an operation started by one version and resumed by the next
    /// keeps its keys.
    pub fn derive(workspace: &WorkspaceId, operation: u64, step: &str) -> Self {
        let input = format!("{workspace}\u{0}{operation}\u{0}{step}");
        Self(format!("cg-{:032x}", fnv1a_128(input.as_bytes())))
    }
}
checked_string!(IdempotencyKey);

fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

/// A workspace's labels: up to [`Labels::MAX`] key/value pairs the host
/// attaches to find workspaces by ([`Engine::list`](crate::Engine::list)
/// filters on them). They are the host's metadata: changing them changes
/// nothing in the cloud or the cluster.
///
/// **Rule:** a key is 1 to 63 characters: lowercase ASCII letters, digits,
/// `-`, `_`, `.` and `/`, starting with a letter or digit; a value is 0 to 63
/// characters: ASCII letters, digits, `-`, `_` and `.`.
///
/// ```
/// use cogrion_core::Labels;
/// let labels = Labels::new().with("team", "payments")?.with("env", "prod")?;
/// assert_eq!(labels.get("env"), Some("prod"));
/// assert!(Labels::new().with("Team", "x").is_err());
/// # Ok::<(), cogrion_core::InvalidValue>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// The most labels a workspace has.
    pub const MAX: usize = 32;

    /// No labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `key` set to `value` (replacing an earlier value).
    pub fn with(mut self, key: &str, value: &str) -> Result<Self, InvalidValue> {
        self.insert(key, value)?;
        Ok(self)
    }

    /// Sets `key` to `value` (replacing an earlier value).
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), InvalidValue> {
        check_chars(
            "label key",
            key,
            63,
            "lowercase ASCII letters, digits, '-', '_', '.' and '/', starting with a letter or digit",
            |i, c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || (i > 0 && matches!(c, '-' | '_' | '.' | '/'))
            },
        )?;
        if !value.is_empty() {
            check_chars(
                "label value",
                value,
                63,
                "ASCII letters, digits, '-', '_' and '.'",
                |_, c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
            )?;
        }
        if !self.0.contains_key(key) && self.0.len() >= Self::MAX {
            return Err(InvalidValue::OutOfRange {
                what: "number of labels",
                value: (self.0.len() + 1).to_string(),
                allowed: format!("at most {}", Self::MAX),
            });
        }
        self.0.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The labels, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every label of `selector` is set here to the same value.
    pub fn contains_all(&self, selector: &Labels) -> bool {
        selector.iter().all(|(k, v)| self.get(k) == Some(v))
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = InvalidValue;

    fn try_from(map: BTreeMap<String, String>) -> Result<Self, InvalidValue> {
        let mut labels = Labels::new();
        for (k, v) in &map {
            labels.insert(k, v)?;
        }
        Ok(labels)
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cidr_rules() {
        for ok in [
            "10.0.0.0/16",
            "172.16.0.0/16",
            "192.168.0.0/24",
            "100.64.0.0/16",
            "10.1.2.16/28",
        ] {
            assert!(ok.parse::<NetworkCidr>().is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.0/8",
            "10.0.0.0/29",
            "10.0.0.1/16",
            "11.0.0.0/16",
            "172.32.0.0/16",
            "10.0.0.0",
            "10.0.0/16",
            "10.0.0.0/016",
            "10.0.0.0/-1",
            "",
            "a.b.c.d/16",
            "10.0.0.0/16 ",
            "::1/64",
        ] {
            assert!(bad.parse::<NetworkCidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cidr_overlap() {
        let a: NetworkCidr = "10.0.0.0/16".parse().unwrap();
        let b: NetworkCidr = "10.0.128.0/20".parse().unwrap();
        let c: NetworkCidr = "10.1.0.0/16".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }

    #[test]
    fn kubernetes_versions() {
        assert_eq!("1.32".parse::<KubernetesVersion>().unwrap().minor(), 32);
        assert!(!"1.20".parse::<KubernetesVersion>().unwrap().is_supported());
        for bad in ["1", "1.", "1.032", "v1.32", "1.3a", "1.100", "01.32"] {
            assert!(bad.parse::<KubernetesVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_goes_through_the_check() {
        assert!(serde_json::from_str::<StackName>("\"Bad\"").is_err());
        assert!(serde_json::from_str::<NodePoolSize>(r#"{"min":2,"desired":1,"max":3}"#).is_err());
        let s: NodePoolSize = serde_json::from_str(r#"{"min":0,"desired":1,"max":3}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"min":0,"desired":1,"max":3}"#
        );
    }

    proptest! {
        #[test]
        fn cidr_display_round_trips(a in any::<u32>(), p in 0u8..=32) {
            if let Ok(c) = NetworkCidr::new(Ipv4Addr::from(a), p) {
                prop_assert_eq!(c.to_string().parse::<NetworkCidr>().unwrap(), c);
            }
        }

        #[test]
        fn cidr_parser_is_total(s in ".{0,24}") {
            let _ = s.parse::<NetworkCidr>();
        }

        #[test]
        fn idempotency_keys_satisfy_their_rule(op in any::<u64>(), step in "[a-z-]{1,40}") {
            let ws = WorkspaceId::new("acme-prod").unwrap();
            let k = IdempotencyKey::derive(&ws, op, &step);
            prop_assert!(IdempotencyKey::new(k.as_str()).is_ok());
        }
    }

    #[test]
    fn labels_follow_their_rule() {
        let l = Labels::new()
            .with("team", "a")
            .unwrap()
            .with("k8s.io/x", "")
            .unwrap();
        assert_eq!(l.len(), 2);
        for bad_key in ["", "-x", "Team", "a b", &"k".repeat(64)] {
            assert!(Labels::new().with(bad_key, "v").is_err(), "{bad_key:?}");
        }
        for bad_value in ["a b", "x/y", &"v".repeat(64)] {
            assert!(Labels::new().with("k", bad_value).is_err(), "{bad_value:?}");
        }
        let mut full = Labels::new();
        for i in 0..Labels::MAX {
            full.insert(&format!("k{i}"), "v").unwrap();
        }
        assert!(full.insert("one-more", "v").is_err());
        full.insert("k0", "replaced").unwrap();
        assert!(serde_json::from_str::<Labels>(r#"{"Bad":"v"}"#).is_err());
        let read: Labels = serde_json::from_str(r#"{"team":"a","k8s.io/x":""}"#).unwrap();
        assert_eq!(read, l);
        assert!(read.contains_all(&Labels::new().with("team", "a").unwrap()));
        assert!(!read.contains_all(&Labels::new().with("team", "b").unwrap()));
    }
}
