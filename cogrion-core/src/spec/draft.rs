//! Drafts: the documents' structure, with every checked field still plain JSON.
//!
//! Each public spec type deserialises through its draft (`#[serde(try_from = …)]`):
//! serde checks the structure, then the conversion checks every field's rule and
//! collects all the problems, each under its path.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    CloudTarget, ExecutorSpec, NetworkSpec, NodePoolSpec, Problems, SpecErrors, StackKind,
    StackSpec, TemplateOverrides, WorkspaceSpec, at,
};
use crate::ids::StackName;

/// Checks one field's rule by deserialising its JSON into `T`; records the problem
/// under `path` when it fails.
fn field<T: DeserializeOwned>(value: Value, path: String, p: &mut Problems) -> Option<T> {
    T::deserialize(value).map_err(|e| p.push(path, e)).ok()
}

/// [`field`] for an optional field: `Some(None)` when it is absent.
fn optional<T: DeserializeOwned>(
    value: Option<Value>,
    path: String,
    p: &mut Problems,
) -> Option<Option<T>> {
    match value {
        None | Some(Value::Null) => Some(None),
        Some(value) => field(value, path, p).map(Some),
    }
}

/// A [`WorkspaceSpec`] document: its structure, with checked fields as plain JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkspaceSpecDraft {
    tenant: Value,
    cloud: CloudTargetDraft,
    region: Value,
    kubernetes_version: Value,
    network: NetworkSpecDraft,
    node_pools: Vec<NodePoolSpecDraft>,
    #[serde(default)]
    overrides: TemplateOverrides,
}

impl TryFrom<WorkspaceSpecDraft> for WorkspaceSpec {
    type Error = SpecErrors;
    fn try_from(d: WorkspaceSpecDraft) -> Result<Self, SpecErrors> {
        let mut p = Problems::default();
        let tenant = field(d.tenant, "tenant".into(), &mut p);
        let cloud = CloudTarget::from_draft(d.cloud, "cloud", &mut p);
        let region = field(d.region, "region".into(), &mut p);
        let kubernetes_version = field(d.kubernetes_version, "kubernetes_version".into(), &mut p);
        let network = NetworkSpec::from_draft(d.network, "network", &mut p);
        // Convert every pool before collecting, so that each reports its problems.
        let node_pools: Vec<_> = (d.node_pools.into_iter().enumerate())
            .map(|(i, pool)| NodePoolSpec::from_draft(pool, &format!("node_pools[{i}]"), &mut p))
            .collect();
        let spec = (|| {
            Some(Self {
                tenant: tenant?,
                cloud: cloud?,
                region: region?,
                kubernetes_version: kubernetes_version?,
                network: network?,
                node_pools: node_pools.into_iter().collect::<Option<_>>()?,
                overrides: d.overrides,
            })
        })();
        p.finish_with(spec)
    }
}

/// A [`CloudTarget`] document: its structure, with checked fields as plain JSON.
#[derive(Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum CloudTargetDraft {
    Aws {
        account_id: Value,
        #[serde(default)]
        role_arn: Option<Value>,
    },
    Gcp {
        project_id: Value,
    },
    Azure {
        subscription_id: Value,
        resource_group: Value,
    },
    Simulated,
}

impl CloudTarget {
    fn from_draft(d: CloudTargetDraft, base: &str, p: &mut Problems) -> Option<Self> {
        Some(match d {
            CloudTargetDraft::Aws {
                account_id,
                role_arn,
            } => {
                let account_id = field(account_id, at(base, "account_id"), p);
                let role_arn = optional(role_arn, at(base, "role_arn"), p);
                Self::Aws {
                    account_id: account_id?,
                    role_arn: role_arn?,
                }
            }
            CloudTargetDraft::Gcp { project_id } => Self::Gcp {
                project_id: field(project_id, at(base, "project_id"), p)?,
            },
            CloudTargetDraft::Azure {
                subscription_id,
                resource_group,
            } => {
                let subscription_id = field(subscription_id, at(base, "subscription_id"), p);
                let resource_group = field(resource_group, at(base, "resource_group"), p);
                Self::Azure {
                    subscription_id: subscription_id?,
                    resource_group: resource_group?,
                }
            }
            CloudTargetDraft::Simulated => Self::Simulated,
        })
    }
}

impl TryFrom<CloudTargetDraft> for CloudTarget {
    type Error = SpecErrors;
    fn try_from(d: CloudTargetDraft) -> Result<Self, SpecErrors> {
        let mut p = Problems::default();
        let cloud = Self::from_draft(d, "", &mut p);
        p.finish_with(cloud)
    }
}

/// A [`NetworkSpec`] document: its structure, with checked fields as plain JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NetworkSpecDraft {
    cidr: Value,
    #[serde(default)]
    pod_cidr: Option<Value>,
    #[serde(default)]
    service_cidr: Option<Value>,
    #[serde(default)]
    private_endpoint: bool,
}

impl NetworkSpec {
    fn from_draft(d: NetworkSpecDraft, base: &str, p: &mut Problems) -> Option<Self> {
        let cidr = field(d.cidr, at(base, "cidr"), p);
        let pod_cidr = optional(d.pod_cidr, at(base, "pod_cidr"), p);
        let service_cidr = optional(d.service_cidr, at(base, "service_cidr"), p);
        Some(Self {
            cidr: cidr?,
            pod_cidr: pod_cidr?,
            service_cidr: service_cidr?,
            private_endpoint: d.private_endpoint,
        })
    }
}

impl TryFrom<NetworkSpecDraft> for NetworkSpec {
    type Error = SpecErrors;
    fn try_from(d: NetworkSpecDraft) -> Result<Self, SpecErrors> {
        let mut p = Problems::default();
        let network = Self::from_draft(d, "", &mut p);
        p.finish_with(network)
    }
}

/// A [`NodePoolSpec`] document: its structure, with checked fields as plain JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodePoolSpecDraft {
    name: Value,
    instance_type: Value,
    size: Value,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl NodePoolSpec {
    fn from_draft(d: NodePoolSpecDraft, base: &str, p: &mut Problems) -> Option<Self> {
        let name = field(d.name, at(base, "name"), p);
        let instance_type = field(d.instance_type, at(base, "instance_type"), p);
        let size = field(d.size, at(base, "size"), p);
        Some(Self {
            name: name?,
            instance_type: instance_type?,
            size: size?,
            labels: d.labels,
        })
    }
}

impl TryFrom<NodePoolSpecDraft> for NodePoolSpec {
    type Error = SpecErrors;
    fn try_from(d: NodePoolSpecDraft) -> Result<Self, SpecErrors> {
        let mut p = Problems::default();
        let pool = Self::from_draft(d, "", &mut p);
        p.finish_with(pool)
    }
}

/// A [`StackSpec`] document: its structure, with checked fields as plain JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StackSpecDraft {
    name: Value,
    kind: StackKind,
    executor: ExecutorSpec,
    #[serde(default)]
    depends_on: Vec<Value>,
}

impl TryFrom<StackSpecDraft> for StackSpec {
    type Error = SpecErrors;
    fn try_from(d: StackSpecDraft) -> Result<Self, SpecErrors> {
        let mut p = Problems::default();
        let name = field(d.name, "name".into(), &mut p);
        // Check every dependency before collecting, so that each reports its problem.
        let depends_on: Vec<Option<StackName>> = (d.depends_on.into_iter().enumerate())
            .map(|(i, dep)| field(dep, format!("depends_on[{i}]"), &mut p))
            .collect();
        let spec = (|| {
            Some(Self {
                name: name?,
                kind: d.kind,
                executor: d.executor,
                depends_on: depends_on.into_iter().collect::<Option<_>>()?,
            })
        })();
        p.finish_with(spec)
    }
}
