//! What a tenant asks for: [`WorkspaceSpec`] and [`StackSpec`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{
    InstanceType, KubernetesVersion, NetworkCidr, NodePoolName, NodePoolSize, Region, StackName,
    TenantId,
};

/// Everything needed to stand up a workspace's infrastructure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(tag = "provider", rename_all = "snake_case", deny_unknown_fields)]
pub enum CloudTarget {
    /// AWS: an EKS cluster.
    Aws {
        /// The 12-digit account id.
        account_id: String,
        /// The role the control plane assumes in that account, if not its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role_arn: Option<String>,
    },
    /// Google Cloud: a GKE cluster.
    Gcp {
        /// The project id.
        project_id: String,
    },
    /// Azure: an AKS cluster.
    Azure {
        /// The subscription id (a UUID).
        subscription_id: String,
        /// The resource group the cluster is created in.
        resource_group: String,
    },
    /// Cogrion's simulated cloud, for tests, demos and the quickstart.
    Simulated,
}

/// A workspace's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in a spec, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid spec: {}", self.problems.iter().map(|p| format!("{}: {}", p.path, p.message)).collect::<Vec<_>>().join("; "))]
pub struct SpecErrors {
    /// The problems, in the order of the spec's fields.
    pub problems: Vec<SpecProblem>,
}
