//! What a tenant asks for: [`WorkspaceSpec`] and [`StackSpec`].
//!
//! # Two layers of rules
//!
//! **Field rules** belong to the value types: a [`TenantId`] is an RFC 1123 label, a
//! [`NetworkCidr`] is a private IPv4 range, an [`AwsAccountId`] is twelve digits. They
//! are checked on *every* deserialisation, so a `WorkspaceSpec` in memory never holds
//! a malformed field. A document with several bad fields is refused with one
//! [`SpecErrors`] that lists every one of them, each with its path
//! (`tenant`, `network.cidr`, `node_pools[0].size`), not just the first.
//!
//! **Semantic rules** concern what a new request may ask for: a supported Kubernetes
//! version, a region of the cloud's shape, node pool names that are unique, ranges
//! that do not overlap, tags that do not use Cogrion's reserved prefix, payloads that
//! fit their size limits. They are checked by [`WorkspaceSpec::validate`] and
//! [`StackSpec::validate`], which the control plane calls on create and update
//! requests, and which also report every problem at once.
//!
//! The split is deliberate: stored specs must stay readable. When a later Cogrion
//! version tightens a semantic rule (a Kubernetes version leaves the supported
//! window, a limit shrinks), a workspace created under the old rule still loads, so
//! it can be upgraded, changed or destroyed; only a *new* request has to satisfy the
//! new rule.
//!
//! What serde checks itself, and stops at the first problem, is the document's
//! structure: JSON syntax, unknown fields, missing required fields, the `provider` /
//! `type` tags and the JSON type of unchecked fields. Every checked field is read as
//! plain JSON first and checked afterwards, so its problems are collected.
//!
//! [`WorkspaceSpec::from_json`] and [`StackSpec::from_json`] do both steps and return
//! every problem in one [`SpecErrors`]:
//!
//! ```
//! use cogrion_core::WorkspaceSpec;
//!
//! let spec = WorkspaceSpec::from_json(r#"{
//!     "tenant": "acme",
//!     "cloud": { "provider": "simulated" },
//!     "region": "sim-local-1",
//!     "kubernetes_version": "1.34",
//!     "network": { "cidr": "10.40.0.0/16" },
//!     "node_pools": [
//!         { "name": "general", "instance_type": "sim.medium",
//!           "size": { "min": 1, "desired": 2, "max": 4 } }
//!     ]
//! }"#).unwrap();
//! assert_eq!(spec.tenant.as_str(), "acme");
//!
//! // A bad tenant, a public CIDR and a pool whose desired size is below its minimum.
//! let errors = WorkspaceSpec::from_json(r#"{
//!     "tenant": "ACME Corp",
//!     "cloud": { "provider": "simulated" },
//!     "region": "sim-local-1",
//!     "kubernetes_version": "1.34",
//!     "network": { "cidr": "8.8.0.0/16" },
//!     "node_pools": [
//!         { "name": "general", "instance_type": "sim.medium",
//!           "size": { "min": 3, "desired": 1, "max": 4 } }
//!     ]
//! }"#).unwrap_err();
//! assert_eq!(errors.problems.len(), 3);
//! assert_eq!(errors.problems[1].path, "network.cidr");
//! ```

use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::fmt;

use cogrion_agent_proto::{check_chars, check_dns_label, checked_string};
use serde::{Deserialize, Serialize};

use crate::ids::{
    InstanceType, InvalidValue, KubernetesVersion, NetworkCidr, NodePoolName, NodePoolSize, Region,
    StackName, TenantId,
};

mod draft;
mod rules;
#[cfg(test)]
mod tests;

/// Everything needed to stand up a workspace's infrastructure.
///
/// Deserialising checks every field's rule and reports all broken ones together
/// (see the [module docs](self)); [`WorkspaceSpec::validate`] checks the semantic
/// rules a new request must satisfy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "draft::WorkspaceSpecDraft")]
pub struct WorkspaceSpec {
    /// The tenant the workspace belongs to.
    pub tenant: TenantId,
    /// The cloud account the cluster lives in.
    pub cloud: CloudTarget,
    /// The region within that cloud.
    pub region: Region,
    /// The Kubernetes minor version of the cluster.
    pub kubernetes_version: KubernetesVersion,
    /// The cluster's network.
    pub network: NetworkSpec,
    /// The node pools (at least one).
    pub node_pools: Vec<NodePoolSpec>,
    /// The tenant's overrides of the cloud's workspace template.
    #[serde(default)]
    pub overrides: TemplateOverrides,
}

/// The cloud account a workspace's cluster is created in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "provider",
    rename_all = "snake_case",
    deny_unknown_fields,
    try_from = "draft::CloudTargetDraft"
)]
pub enum CloudTarget {
    /// AWS: an EKS cluster.
    Aws {
        /// The 12-digit account id.
        account_id: AwsAccountId,
        /// The role the control plane assumes in that account, if not its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role_arn: Option<AwsRoleArn>,
    },
    /// Google Cloud: a GKE cluster.
    Gcp {
        /// The project id.
        project_id: GcpProjectId,
    },
    /// Azure: an AKS cluster.
    Azure {
        /// The subscription id (a UUID).
        subscription_id: AzureSubscriptionId,
        /// The resource group the cluster is created in.
        resource_group: AzureResourceGroup,
    },
    /// Cogrion's simulated cloud, for tests, demos and the quickstart.
    Simulated,
}

/// A workspace's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "draft::NetworkSpecDraft")]
pub struct NetworkSpec {
    /// The VPC / VNet range.
    pub cidr: NetworkCidr,
    /// The pod range, when the cloud's default is not wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<NetworkCidr>,
    /// The service range, when the cloud's default is not wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<NetworkCidr>,
    /// Whether the Kubernetes API endpoint is reachable only from inside the network.
    #[serde(default)]
    pub private_endpoint: bool,
}

/// One node pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "draft::NodePoolSpecDraft")]
pub struct NodePoolSpec {
    /// The pool's name, unique in the workspace.
    pub name: NodePoolName,
    /// The machine type.
    pub instance_type: InstanceType,
    /// The size bounds.
    pub size: NodePoolSize,
    /// Kubernetes labels put on the pool's nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A tenant's changes to the cloud's workspace template: templates are data (the
/// cloud's defaults plus these overrides), not code branches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateOverrides {
    /// Tags / labels put on every cloud resource of the workspace, besides the ones
    /// Cogrion sets itself (keys starting with `cogrion`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Template parameters by name (cloud-specific knobs, e.g.
    /// `eks.endpoint_public_access_cidrs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, serde_json::Value>,
}

/// What a stack is for. When no dependency decides, stacks are deployed infra
/// add-ons first, then observability, then applications, and torn down in the
/// reverse order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackKind {
    /// Cluster add-ons others rely on (ingress, cert-manager, CSI drivers).
    InfraAddon,
    /// Monitoring, logging, tracing.
    Observability,
    /// The tenant's workloads.
    Application,
}

/// A named, versioned deployable unit in a workspace.
///
/// Deserialising checks every field's rule and reports all broken ones together
/// (see the [module docs](self)); [`StackSpec::validate`] checks the semantic rules
/// a new request must satisfy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "draft::StackSpecDraft")]
pub struct StackSpec {
    /// The stack's name, unique in its workspace.
    pub name: StackName,
    /// What the stack is for.
    pub kind: StackKind,
    /// How it is deployed.
    pub executor: ExecutorSpec,
    /// The stacks of the same workspace that must be deployed before this one.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub depends_on: BTreeSet<StackName>,
}

/// How a stack is deployed, and what with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecutorSpec {
    /// A Helm chart, installed by the agent inside the cluster.
    Helm {
        /// Where the chart comes from: `oci://…`, `https://…` or `repo/chart`.
        source: String,
        /// The chart version.
        version: String,
        /// Values passed to the chart (a JSON object).
        #[serde(default)]
        values: serde_json::Map<String, serde_json::Value>,
    },
    /// Plain Kubernetes manifests, applied by the agent with server-side apply.
    Manifests {
        /// The objects, each with `apiVersion`, `kind` and `metadata.name`.
        documents: Vec<serde_json::Value>,
    },
    /// A Terraform module, run on the control-plane side.
    Terraform {
        /// Where the module comes from (a local path, a git URL, a registry address).
        source: String,
        /// Input variables by name.
        #[serde(default)]
        variables: BTreeMap<String, serde_json::Value>,
    },
}

/// One problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecProblem {
    /// Where, as a path into the spec: `network.pod_cidr`, `node_pools[1].size`.
    /// Map entries are addressed by their JSON-quoted key
    /// (`node_pools[0].labels["team"]`); a problem with the document as a whole
    /// (malformed JSON, an unknown field) has the empty path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in a spec, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid spec: {}", self.problems.iter().map(|p| if p.path.is_empty() { p.message.clone() } else { format!("{}: {}", p.path, p.message) }).collect::<Vec<_>>().join("; "))]
pub struct SpecErrors {
    /// The problems, in the order of the spec's fields.
    pub problems: Vec<SpecProblem>,
}

// ---------------------------------------------------------------------------------
// Cloud account identifiers
// ---------------------------------------------------------------------------------

/// An AWS account id.
///
/// **Rule:** exactly 12 ASCII digits (leading zeros are significant).
///
/// ```
/// use cogrion_core::AwsAccountId;
/// assert!("012345678901".parse::<AwsAccountId>().is_ok());
/// assert!("1234-5678-9012".parse::<AwsAccountId>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AwsAccountId(String);

impl AwsAccountId {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        const WHAT: &str = "AWS account id";
        let value = value.into();
        check_chars(WHAT, &value, 12, "ASCII digits", |_, c| c.is_ascii_digit())?;
        if value.len() != 12 {
            return Err(InvalidValue::OutOfRange {
                what: WHAT,
                value: format!("{} digits long", value.len()),
                allowed: "exactly 12 digits".into(),
            });
        }
        Ok(Self(value))
    }
}
checked_string!(AwsAccountId);

/// The ARN of an IAM role the control plane assumes.
///
/// **Rule:** `arn:<partition>:iam::<account>:role/<path/name>`, at most 2048
/// characters, where the partition is `aws`, `aws-cn`, `aws-us-gov` or one of the
/// isolated partitions (`aws-iso`, `aws-iso-b`, `aws-iso-e`, `aws-iso-f`), the
/// account is 12 ASCII digits, and `path/name` is made of ASCII letters, digits and
/// `+=,.@_/-`, with non-empty `/`-separated segments and a role name (the last
/// segment) of at most 64 characters.
///
/// ```
/// use cogrion_core::AwsRoleArn;
/// let arn: AwsRoleArn = "arn:aws:iam::123456789012:role/platform/cogrion-admin".parse().unwrap();
/// assert_eq!(arn.account_id(), "123456789012");
/// assert!("arn:aws:iam::123456789012:user/alice".parse::<AwsRoleArn>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AwsRoleArn(String);

impl AwsRoleArn {
    const PARTITIONS: [&'static str; 7] = [
        "aws",
        "aws-cn",
        "aws-us-gov",
        "aws-iso",
        "aws-iso-b",
        "aws-iso-e",
        "aws-iso-f",
    ];

    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        const WHAT: &str = "AWS role ARN";
        const MAX: usize = 2048;
        let value = value.into();
        if value.is_empty() {
            return Err(InvalidValue::Empty { what: WHAT });
        }
        if value.len() > MAX {
            return Err(InvalidValue::TooLong {
                what: WHAT,
                len: value.len(),
                max: MAX,
            });
        }
        let malformed = |reason: &str| InvalidValue::Malformed {
            what: WHAT,
            reason: format!("{reason}; expected arn:aws:iam::<12-digit account>:role/<path/name>"),
        };
        let rest = value
            .strip_prefix("arn:")
            .ok_or_else(|| malformed("it does not start with \"arn:\""))?;
        let (partition, rest) = rest
            .split_once(':')
            .ok_or_else(|| malformed("there is no partition"))?;
        if !Self::PARTITIONS.contains(&partition) {
            return Err(InvalidValue::OutOfRange {
                what: WHAT,
                value: format!("in partition {:?}", truncated(partition, 32)),
                allowed: Self::PARTITIONS.join(", "),
            });
        }
        let rest = rest
            .strip_prefix("iam::")
            .ok_or_else(|| malformed("it is not an IAM ARN (service \"iam\", empty region)"))?;
        let (account, resource) = rest
            .split_once(':')
            .ok_or_else(|| malformed("there is no account"))?;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("the account is not 12 digits"));
        }
        let path_name = resource
            .strip_prefix("role/")
            .ok_or_else(|| malformed("the resource is not role/<path/name>"))?;
        let offset = value.len() - path_name.len();
        if let Some((at, found)) = path_name.char_indices().find(|&(_, c)| {
            !(c.is_ascii_alphanumeric()
                || matches!(c, '+' | '=' | ',' | '.' | '@' | '_' | '/' | '-'))
        }) {
            return Err(InvalidValue::BadCharacter {
                what: WHAT,
                found,
                at: offset + at,
                allowed: "in the role path and name: ASCII letters, digits and '+=,.@_/-'",
            });
        }
        if path_name.split('/').any(str::is_empty) {
            return Err(malformed("the role path and name have an empty segment"));
        }
        let name_len = path_name.rsplit('/').next().map_or(0, str::len);
        if name_len > 64 {
            return Err(InvalidValue::OutOfRange {
                what: WHAT,
                value: format!("a role name of {name_len} characters"),
                allowed: "a role name of 1 to 64 characters".into(),
            });
        }
        Ok(Self(value))
    }

    /// The partition: `aws`, `aws-cn`, `aws-us-gov`, ….
    pub fn partition(&self) -> &str {
        self.0.split(':').nth(1).unwrap_or_default()
    }

    /// The 12-digit id of the account the role belongs to.
    pub fn account_id(&self) -> &str {
        self.0.split(':').nth(4).unwrap_or_default()
    }

    /// The role's name, without its path.
    pub fn role_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }
}
checked_string!(AwsRoleArn);

/// A Google Cloud project id.
///
/// **Rule:** 6 to 30 characters: lowercase ASCII letters, digits and `-`, starting
/// with a letter, not ending with `-`. (Legacy domain-scoped ids such as
/// `example.com:project` are not accepted.)
///
/// ```
/// use cogrion_core::GcpProjectId;
/// assert!("acme-prod-42".parse::<GcpProjectId>().is_ok());
/// assert!("42-acme".parse::<GcpProjectId>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GcpProjectId(String);

impl GcpProjectId {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_dns_label("GCP project id", &value, 6, 30)?;
        Ok(Self(value))
    }
}
checked_string!(GcpProjectId);

/// An Azure subscription id.
///
/// **Rule:** a UUID in the canonical 8-4-4-4-12 form of hex digits. Upper- and
/// lowercase hex digits are accepted; the value is stored (and printed and
/// serialised) in lowercase.
///
/// ```
/// use cogrion_core::AzureSubscriptionId;
/// let id: AzureSubscriptionId = "0B1F6471-1BF0-4DDA-AEC3-CB9272F09590".parse().unwrap();
/// assert_eq!(id.as_str(), "0b1f6471-1bf0-4dda-aec3-cb9272f09590");
/// assert!("0b1f64711bf04ddaaec3cb9272f09590".parse::<AzureSubscriptionId>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AzureSubscriptionId(String);

impl AzureSubscriptionId {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        const WHAT: &str = "Azure subscription id";
        let mut value = value.into();
        check_chars(WHAT, &value, 36, "hex digits and '-'", |_, c| {
            c.is_ascii_hexdigit() || c == '-'
        })?;
        let canonical = value.len() == 36
            && value
                .bytes()
                .enumerate()
                .all(|(i, b)| matches!(i, 8 | 13 | 18 | 23) == (b == b'-'));
        if !canonical {
            return Err(InvalidValue::Malformed {
                what: WHAT,
                reason: format!(
                    "{value:?} is not a UUID of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
                ),
            });
        }
        value.make_ascii_lowercase();
        Ok(Self(value))
    }
}
checked_string!(AzureSubscriptionId);

/// An Azure resource group name.
///
/// **Rule:** 1 to 90 characters: ASCII letters, digits, `_`, `-`, `.`, `(` and `)`,
/// not ending with `.`. (Azure also allows non-ASCII letters; Cogrion accepts only
/// the ASCII subset, so that the name is safe in every cloud tag and log line.)
///
/// ```
/// use cogrion_core::AzureResourceGroup;
/// assert!("rg-acme_prod(1)".parse::<AzureResourceGroup>().is_ok());
/// assert!("rg-acme.".parse::<AzureResourceGroup>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AzureResourceGroup(String);

impl AzureResourceGroup {
    /// Checks `value` against the rule above.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidValue> {
        const WHAT: &str = "Azure resource group";
        let value = value.into();
        check_chars(
            WHAT,
            &value,
            90,
            "ASCII letters, digits, '_', '-', '.', '(' and ')'",
            |_, c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')'),
        )?;
        if value.ends_with('.') {
            return Err(InvalidValue::Malformed {
                what: WHAT,
                reason: "must not end with '.'".into(),
            });
        }
        Ok(Self(value))
    }
}
checked_string!(AzureResourceGroup);

/// The first `max` characters of `s`, with `…` when something was cut.
fn truncated(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

// ---------------------------------------------------------------------------------
// Reading JSON and validating requests
// ---------------------------------------------------------------------------------

/// Which request changed a workspace's desired spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecChangeKind {
    /// An update of an `Active` workspace.
    Update,
    /// A corrected spec for a failed provision or update.
    Correction,
    /// Back to the last applied spec, after a failed update.
    Revert,
}

impl fmt::Display for SpecChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Update => "update",
            Self::Correction => "correction",
            Self::Revert => "revert",
        })
    }
}

/// One field that differs between two specs, as [`WorkspaceSpec::diff`]
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecChange {
    /// The field's path in the spec's JSON form (`node_pools[0].instance_type`).
    pub path: String,
    /// Its value before (`None`: absent).
    pub from: Option<serde_json::Value>,
    /// Its value after (`None`: absent).
    pub to: Option<serde_json::Value>,
}

impl fmt::Display for SpecChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<serde_json::Value>| match v {
            Some(v) => v.to_string(),
            None => "(none)".into(),
        };
        write!(
            f,
            "{}: {} -> {}",
            self.path,
            show(&self.from),
            show(&self.to)
        )
    }
}

/// Every leaf that differs between `a` and `b`, under `path`.
fn diff_values(
    path: &str,
    a: Option<&serde_json::Value>,
    b: Option<&serde_json::Value>,
    out: &mut Vec<SpecChange>,
) {
    use serde_json::Value;
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_values(&sub, x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                diff_values(&format!("{path}[{i}]"), x.get(i), y.get(i), out);
            }
        }
        (a, b) if a != b => out.push(SpecChange {
            path: path.to_owned(),
            from: a.cloned(),
            to: b.cloned(),
        }),
        _ => {}
    }
}

impl WorkspaceSpec {
    /// Every field that differs from `self` to `to`, by path in the spec's
    /// JSON form; empty when they are equal.
    ///
    /// ```
    /// # let json = r#"{"tenant": "acme", "cloud": {"provider": "simulated"}, "region": "local-1",
    /// #   "kubernetes_version": "1.34", "network": {"cidr": "10.42.0.0/16"},
    /// #   "node_pools": [{"name": "general", "instance_type": "sim-small",
    /// #                   "size": {"min": 1, "desired": 2, "max": 3}}]}"#;
    /// let a = cogrion_core::WorkspaceSpec::from_json(json).unwrap();
    /// let mut b = a.clone();
    /// b.kubernetes_version = "1.33".parse().unwrap();
    /// let diff = a.diff(&b);
    /// assert_eq!(diff.len(), 1);
    /// assert_eq!(diff[0].to_string(), r#"kubernetes_version: "1.34" -> "1.33""#);
    /// assert!(a.diff(&a).is_empty());
    /// ```
    pub fn diff(&self, to: &WorkspaceSpec) -> Vec<SpecChange> {
        let value = |s: &WorkspaceSpec| serde_json::to_value(s).unwrap_or_default();
        let mut out = Vec::new();
        diff_values("", Some(&value(self)), Some(&value(to)), &mut out);
        out
    }

    /// Reads a spec from JSON and checks both its field rules and its semantic
    /// rules ([`validate`](Self::validate)), as a create or update request must.
    ///
    /// # Errors
    /// Every problem, in field order. When a field breaks its rule, the field
    /// problems are returned and the semantic rules are not checked. Malformed
    /// JSON, an unknown field or a missing required field is reported as a single
    /// problem with the serde message (and an empty path).
    pub fn from_json(json: &str) -> Result<Self, SpecErrors> {
        let parsed: draft::WorkspaceSpecDraft =
            serde_json::from_str(json).map_err(document_error)?;
        let spec = Self::try_from(parsed)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the semantic rules a new or changed workspace must satisfy.
    ///
    /// * `cloud.role_arn`: the role is in the workspace's AWS account.
    /// * `region`: has the shape the cloud uses — AWS `us-east-1`, `us-gov-west-1`;
    ///   GCP `europe-west1`; Azure `westeurope` (lowercase letters and digits); any
    ///   region for the simulated cloud.
    /// * `kubernetes_version`: [supported](KubernetesVersion::is_supported).
    /// * `network`: the pod and service ranges overlap neither the network range
    ///   nor each other.
    /// * `node_pools`: 1 to 32 pools with unique names; at most 64 labels per pool,
    ///   each a valid Kubernetes label key (an optional DNS-subdomain prefix of at
    ///   most 253 characters and `/`, then a name of at most 63 characters of
    ///   `[A-Za-z0-9._-]` starting and ending with a letter or digit) and value (at
    ///   most 63 characters, empty or of the same form as a name).
    /// * `overrides.tags`: at most 50; keys of 1 to 128 characters, values of at most
    ///   256; keys starting with `cogrion` (in any case) are reserved for Cogrion.
    /// * `overrides.parameters`: names of 1 to 128 characters of `[a-z0-9._-]`
    ///   starting with a letter; at most 64 KiB of JSON in total.
    ///
    /// # Errors
    /// Every broken rule, in field order.
    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut p = Problems::default();
        if let CloudTarget::Aws {
            account_id,
            role_arn: Some(arn),
        } = &self.cloud
            && arn.account_id() != account_id.as_str()
        {
            p.push(
                "cloud.role_arn",
                format!(
                    "the role is in account {}, not in the workspace's account {account_id}",
                    arn.account_id()
                ),
            );
        }
        if let Err(expected) = rules::region_shape(&self.cloud, self.region.as_str()) {
            p.push(
                "region",
                format!("{:?} is not {expected}", self.region.as_str()),
            );
        }
        if !self.kubernetes_version.is_supported() {
            let (oldest, newest) = KubernetesVersion::SUPPORTED;
            p.push(
                "kubernetes_version",
                format!(
                    "{} is not supported; new workspaces may request {oldest} to {newest}",
                    self.kubernetes_version
                ),
            );
        }
        self.network.check(&mut p);
        self.check_node_pools(&mut p);
        self.overrides.check(&mut p);
        p.finish()
    }

    fn check_node_pools(&self, p: &mut Problems) {
        if self.node_pools.is_empty() {
            p.push("node_pools", "a workspace needs at least one node pool");
        } else if self.node_pools.len() > rules::MAX_NODE_POOLS {
            p.push(
                "node_pools",
                format!(
                    "{} node pools; the limit is {}",
                    self.node_pools.len(),
                    rules::MAX_NODE_POOLS
                ),
            );
        }
        let mut seen = BTreeMap::new();
        for (i, pool) in self.node_pools.iter().enumerate() {
            let base = format!("node_pools[{i}]");
            match seen.entry(pool.name.as_str()) {
                btree_map::Entry::Vacant(v) => {
                    v.insert(i);
                }
                btree_map::Entry::Occupied(o) => p.push(
                    at(&base, "name"),
                    format!(
                        "{:?} is already the name of node_pools[{}]",
                        pool.name.as_str(),
                        o.get()
                    ),
                ),
            }
            let labels = at(&base, "labels");
            if pool.labels.len() > rules::MAX_LABELS {
                p.push(
                    &labels,
                    format!(
                        "{} labels; the limit is {}",
                        pool.labels.len(),
                        rules::MAX_LABELS
                    ),
                );
            }
            for (key, value) in &pool.labels {
                if let Err(e) = rules::label_key(key) {
                    p.push(entry(&labels, key), format!("invalid label key: {e}"));
                }
                if let Err(e) = rules::label_value(value) {
                    p.push(entry(&labels, key), format!("invalid label value: {e}"));
                }
            }
        }
    }
}

impl NetworkSpec {
    fn check(&self, p: &mut Problems) {
        if let Some(pod) = &self.pod_cidr
            && pod.overlaps(&self.cidr)
        {
            p.push(
                "network.pod_cidr",
                format!("{pod} overlaps the network range {}", self.cidr),
            );
        }
        if let Some(service) = &self.service_cidr {
            if service.overlaps(&self.cidr) {
                p.push(
                    "network.service_cidr",
                    format!("{service} overlaps the network range {}", self.cidr),
                );
            }
            if let Some(pod) = &self.pod_cidr
                && service.overlaps(pod)
            {
                p.push(
                    "network.service_cidr",
                    format!("{service} overlaps the pod range {pod}"),
                );
            }
        }
    }
}

impl TemplateOverrides {
    fn check(&self, p: &mut Problems) {
        const TAGS: &str = "overrides.tags";
        const PARAMETERS: &str = "overrides.parameters";
        if self.tags.len() > rules::MAX_TAGS {
            p.push(
                TAGS,
                format!("{} tags; the limit is {}", self.tags.len(), rules::MAX_TAGS),
            );
        }
        for (key, value) in &self.tags {
            if let Err(e) = rules::tag_key(key) {
                p.push(entry(TAGS, key), e);
            }
            if let Err(e) = rules::tag_value(value) {
                p.push(entry(TAGS, key), e);
            }
        }
        let size = rules::json_len(&self.parameters);
        if size > rules::MAX_PARAMETERS_BYTES {
            p.push(
                PARAMETERS,
                format!(
                    "{size} bytes of JSON; the limit is {} (64 KiB)",
                    rules::MAX_PARAMETERS_BYTES
                ),
            );
        }
        for name in self.parameters.keys() {
            if let Err(e) = rules::parameter_name(name) {
                p.push(entry(PARAMETERS, name), e);
            }
        }
    }
}

impl StackSpec {
    /// Reads a stack spec from JSON and checks both its field rules and its
    /// semantic rules ([`validate`](Self::validate)), as a create or update request
    /// must.
    ///
    /// # Errors
    /// As [`WorkspaceSpec::from_json`]: every problem, field problems first (and
    /// then alone); structural JSON problems as one problem with an empty path.
    ///
    /// ```
    /// use cogrion_core::StackSpec;
    /// let errors = StackSpec::from_json(r#"{
    ///     "name": "Ingress", "kind": "infra_addon",
    ///     "executor": { "type": "helm", "source": "ingress-nginx/ingress-nginx", "version": "4.13.0" },
    ///     "depends_on": ["cert_manager"]
    /// }"#).unwrap_err();
    /// let paths: Vec<_> = errors.problems.iter().map(|p| p.path.as_str()).collect();
    /// assert_eq!(paths, ["name", "depends_on[0]"]);
    /// ```
    pub fn from_json(json: &str) -> Result<Self, SpecErrors> {
        let parsed: draft::StackSpecDraft = serde_json::from_str(json).map_err(document_error)?;
        let spec = Self::try_from(parsed)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the semantic rules a new or changed stack must satisfy.
    ///
    /// * Helm: `source` is `oci://…`, `https://…`, `http://…`, a local path
    ///   (`./…`, `../…`, `/…`) or `repo/chart`, at most 2048 characters without
    ///   whitespace; `version` is 1 to 64 characters of `[A-Za-z0-9.+_-]` (semver is
    ///   not required); `values` are at most 1 MiB of JSON (the size limit of Helm's
    ///   release secret).
    /// * Manifests: 1 to 500 documents, each a JSON object with a non-empty string
    ///   `apiVersion`, `kind` and `metadata.name`; at most 1 MiB of JSON in total.
    /// * Terraform: `source` of 1 to 2048 characters; variable names matching
    ///   `[A-Za-z_][A-Za-z0-9_-]*`, at most 64 characters; `variables` at most 1 MiB
    ///   of JSON.
    /// * `depends_on`: the stack does not depend on itself.
    ///
    /// # Errors
    /// Every broken rule, in field order.
    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut p = Problems::default();
        self.executor.check(&mut p);
        if self.depends_on.contains(&self.name) {
            p.push(
                "depends_on",
                format!("the stack {:?} depends on itself", self.name.as_str()),
            );
        }
        p.finish()
    }
}

impl ExecutorSpec {
    fn check(&self, p: &mut Problems) {
        match self {
            Self::Helm {
                source,
                version,
                values,
            } => {
                if let Err(e) = rules::helm_source(source) {
                    p.push("executor.source", e);
                }
                if let Err(e) = rules::helm_version(version) {
                    p.push("executor.version", e);
                }
                rules::check_payload_size(values, "executor.values", p);
            }
            Self::Manifests { documents } => {
                const DOCUMENTS: &str = "executor.documents";
                if documents.is_empty() {
                    p.push(DOCUMENTS, "at least one document is needed");
                } else if documents.len() > rules::MAX_DOCUMENTS {
                    p.push(
                        DOCUMENTS,
                        format!(
                            "{} documents; the limit is {}",
                            documents.len(),
                            rules::MAX_DOCUMENTS
                        ),
                    );
                }
                rules::check_payload_size(documents, DOCUMENTS, p);
                for (i, document) in documents.iter().enumerate() {
                    rules::check_manifest(document, &format!("{DOCUMENTS}[{i}]"), p);
                }
            }
            Self::Terraform { source, variables } => {
                if let Err(e) = rules::terraform_source(source) {
                    p.push("executor.source", e);
                }
                rules::check_payload_size(variables, "executor.variables", p);
                for name in variables.keys() {
                    if let Err(e) = rules::terraform_variable(name) {
                        p.push(entry("executor.variables", name), e);
                    }
                }
            }
        }
    }
}

/// The problems found so far, in the order found.
#[derive(Default)]
struct Problems(Vec<SpecProblem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl fmt::Display) {
        self.0.push(SpecProblem {
            path: path.into(),
            message: message.to_string(),
        });
    }

    fn finish(self) -> Result<(), SpecErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(SpecErrors { problems: self.0 })
        }
    }

    /// `value` if nothing was found. A conversion yields `None` only after pushing
    /// the problem that made it fail, so an empty list always comes with a value.
    fn finish_with<T>(self, value: Option<T>) -> Result<T, SpecErrors> {
        self.finish()?;
        value.ok_or_else(|| SpecErrors {
            problems: vec![SpecProblem {
                path: String::new(),
                message: "invalid spec".into(),
            }],
        })
    }
}

/// `base.field`, or `field` at the root.
fn at(base: &str, field: &str) -> String {
    if base.is_empty() {
        field.to_owned()
    } else {
        format!("{base}.{field}")
    }
}

/// `base["key"]`, the key JSON-quoted.
fn entry(base: &str, key: &str) -> String {
    let quoted = serde_json::to_string(key).unwrap_or_else(|_| format!("{key:?}"));
    format!("{base}[{quoted}]")
}

/// A problem with the document as a whole.
fn document_error(e: serde_json::Error) -> SpecErrors {
    SpecErrors {
        problems: vec![SpecProblem {
            path: String::new(),
            message: e.to_string(),
        }],
    }
}
