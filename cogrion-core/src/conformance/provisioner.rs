//! The [`CloudProvisioner`] conformance suite.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::options::{SuiteOptions, follow};
use super::random_workspace_id;
use crate::checkpoint::{MemoryCheckpoint, Progress};
use crate::ids::{IdempotencyKey, NodePoolSize, WorkspaceId};
use crate::provisioner::{
    CloudProvisioner, CloudResource, ClusterAccess, InfraDescription, InfraLayer, LayerRequest,
    LayerState,
};
use crate::spec::WorkspaceSpec;

const WHO: &str = "CloudProvisioner";

// The guarantees, named as the trait's documentation names them.
const IDEMPOTENT: &str = "Idempotent and resumable";
const DESTROY_CONVERGES: &str = "Destroy converges";
const DESCRIBE_TRUTH: &str = "Describe tells the truth";
// What the methods' own documentation promises.
const BUILDS_LAYER: &str = "provision builds one layer, or adopts it";
const UPDATES_LAYER: &str = "update changes one layer";

// Operation numbers the suite derives its idempotency keys from.
const OP_PROVISION: u64 = 1;
const OP_UPDATE: u64 = 2;
const OP_DESTROY: u64 = 3;
const OP_DESTROY_AGAIN: u64 = 4;

const TEARDOWN_ORDER: [InfraLayer; 3] = [
    InfraLayer::NodePools,
    InfraLayer::Cluster,
    InfraLayer::Network,
];

/// Checks that `provisioner` gives the guarantees of [`CloudProvisioner`], and
/// panics with a message naming the broken guarantee on the first violation.
///
/// `spec` must be a valid spec for the provisioner's cloud with at least one node
/// pool. Every check runs on a workspace of its own, named
/// [`random_workspace_id("conf")`](super::random_workspace_id), so the suite can
/// run against a shared account; each check tears down what it built. Against a
/// real cloud, set [`SuiteOptions::sleep`] to a real timer and
/// [`SuiteOptions::max_polls`] high enough for a cluster to come up.
///
/// The checks, in order:
/// 1. `describe` of a workspace never provisioned lists nothing.
/// 2. Destroying every layer of a workspace never provisioned succeeds.
/// 3. The full life cycle of one workspace:
///    - `provision` of `Network`, `Cluster` and `NodePools`, in order, each with a
///      fresh idempotency key and checkpoint, returns a [`LayerState`] of that
///      layer with at least one resource, every resource tagged with the layer;
///      the `Cluster` layer returns [`ClusterAccess`] with an `https://` endpoint;
///    - `describe` lists exactly the union of the layers' resources, sorted and
///      without duplicates, and the cluster access;
///    - provisioning each layer again with the same key and checkpoint (a lost
///      response), then with the same key and a fresh checkpoint (a crash before
///      the checkpoint was saved), returns the same resources and creates none;
///    - `update` of `NodePools` to a spec whose first pool has another desired
///      size returns the layer, and `describe` shows no duplicate; replaying the
///      update with the same key creates nothing;
///    - `destroy` of `NodePools`, `Cluster`, `Network` succeeds, and after each
///      `describe` no longer lists the layer; replaying each destroy, and
///      destroying each layer again in a new operation, succeeds;
///    - `describe` then lists nothing.
/// 4. A half-finished provisioning — `Network` built, `Cluster` called once and
///    not followed — is torn down by destroying all three layers, after which
///    `describe` lists nothing.
///
/// Answers of [`Progress::InProgress`] and transient errors are followed as the
/// engine would (see [`SuiteOptions`]); [`Progress::AwaitCommand`] is a failure.
pub async fn provisioner_suite(
    provisioner: &dyn CloudProvisioner,
    spec: &WorkspaceSpec,
    options: &SuiteOptions,
) {
    assert!(
        !spec.node_pools.is_empty(),
        "provisioner_suite: the spec must have at least one node pool"
    );
    let suite = Suite {
        provisioner,
        options,
    };
    suite.describe_never_provisioned(spec).await;
    suite.destroy_never_provisioned(spec).await;
    suite.full_life_cycle(spec).await;
    suite.partial_then_destroy(spec).await;
}

struct Suite<'a> {
    provisioner: &'a dyn CloudProvisioner,
    options: &'a SuiteOptions,
}

impl Suite<'_> {
    async fn describe_never_provisioned(&self, spec: &WorkspaceSpec) {
        let ws = random_workspace_id("conf");
        let description = self
            .describe(&ws, spec, "of a workspace never provisioned")
            .await;
        expect_empty(
            &ws,
            &description,
            "for a workspace that was never provisioned",
        );
    }

    async fn destroy_never_provisioned(&self, spec: &WorkspaceSpec) {
        let ws = random_workspace_id("conf");
        for layer in TEARDOWN_ORDER {
            let key = IdempotencyKey::derive(&ws, OP_DESTROY, layer.as_str());
            self.destroy(
                request(&ws, spec, layer, &key, &MemoryCheckpoint::new()),
                "of a workspace never provisioned",
            )
            .await;
        }
        let description = self
            .describe(&ws, spec, "after destroying a workspace never provisioned")
            .await;
        expect_empty(
            &ws,
            &description,
            "after destroying a workspace that was never provisioned",
        );
    }

    async fn full_life_cycle(&self, spec: &WorkspaceSpec) {
        let ws = random_workspace_id("conf");

        // Build the layers in order.
        let mut built: Vec<(IdempotencyKey, MemoryCheckpoint, LayerState)> = Vec::new();
        for layer in InfraLayer::BUILD_ORDER {
            let key = IdempotencyKey::derive(&ws, OP_PROVISION, layer.as_str());
            let checkpoint = MemoryCheckpoint::new();
            let state = self
                .provision(
                    request(&ws, spec, layer, &key, &checkpoint),
                    BUILDS_LAYER,
                    "",
                )
                .await;
            check_layer_state(&ws, layer, &state, "provision", BUILDS_LAYER);
            built.push((key, checkpoint, state));
        }
        let cluster = built[1].2.cluster.clone();
        let before = self
            .describe(&ws, spec, "after provisioning every layer")
            .await;
        expect_exactly(
            &ws,
            &before,
            &built.iter().map(|(_, _, s)| s).collect::<Vec<_>>(),
            cluster.as_ref(),
            DESCRIBE_TRUTH,
            "after provisioning every layer",
        );

        // Replays: a lost response (same checkpoint), then a crash before the
        // checkpoint was saved (fresh checkpoint). Both use the step's key.
        for fresh_checkpoint in [false, true] {
            let how = if fresh_checkpoint {
                "again with the same idempotency key and a fresh checkpoint \
                 (a crash before the checkpoint was saved)"
            } else {
                "again with the same idempotency key and checkpoint (a lost response)"
            };
            for (key, checkpoint, first) in &built {
                let layer = first.layer;
                let checkpoint = if fresh_checkpoint {
                    MemoryCheckpoint::new()
                } else {
                    checkpoint.clone()
                };
                let again = self
                    .provision(request(&ws, spec, layer, key, &checkpoint), IDEMPOTENT, how)
                    .await;
                check_layer_state(&ws, layer, &again, "provision", BUILDS_LAYER);
                if sorted(&again.resources) != sorted(&first.resources) {
                    broken!(
                        IDEMPOTENT,
                        "provisioning layer {layer} of workspace {ws} {how} returned other \
                         resources: first {:?}, then {:?}",
                        sorted(&first.resources),
                        sorted(&again.resources)
                    );
                }
                if layer == InfraLayer::Cluster && again.cluster != first.cluster {
                    broken!(
                        IDEMPOTENT,
                        "provisioning layer {layer} of workspace {ws} {how} returned other \
                         cluster access: first {:?}, then {:?}",
                        first.cluster,
                        again.cluster
                    );
                }
                let context = format!("after provisioning layer {layer} {how}");
                let now = self.describe(&ws, spec, &context).await;
                expect_no_change(&ws, &before, &now, IDEMPOTENT, &context);
            }
        }
        let context = "after replaying every layer's provisioning";
        let now = self.describe(&ws, spec, context).await;
        expect_exactly(
            &ws,
            &now,
            &built.iter().map(|(_, _, s)| s).collect::<Vec<_>>(),
            cluster.as_ref(),
            DESCRIBE_TRUTH,
            context,
        );

        // Update the node pools.
        let updated = resized(spec);
        let layer = InfraLayer::NodePools;
        let key = IdempotencyKey::derive(&ws, OP_UPDATE, layer.as_str());
        let update = request(&ws, &updated, layer, &key, &MemoryCheckpoint::new())
            .updating_from(spec.clone());
        let state = self.provision(update, UPDATES_LAYER, "").await;
        check_layer_state(&ws, layer, &state, "update", UPDATES_LAYER);
        let context = "after updating layer node-pools to a new desired size";
        let after_update = self.describe(&ws, &updated, context).await;
        expect_exactly(
            &ws,
            &after_update,
            &[&built[0].2, &built[1].2, &state],
            cluster.as_ref(),
            UPDATES_LAYER,
            context,
        );
        let how = "again with the same idempotency key and a fresh checkpoint";
        let replay = request(&ws, &updated, layer, &key, &MemoryCheckpoint::new())
            .updating_from(spec.clone());
        let again = self.provision(replay, IDEMPOTENT, how).await;
        check_layer_state(&ws, layer, &again, "update", UPDATES_LAYER);
        let context = format!("after updating layer node-pools {how}");
        let now = self.describe(&ws, &updated, &context).await;
        expect_no_change(&ws, &after_update, &now, IDEMPOTENT, &context);
        built[2].2 = state;

        // Tear down in reverse order.
        let mut remaining: Vec<LayerState> = built.into_iter().map(|(_, _, s)| s).collect();
        let mut destroyed: Vec<(IdempotencyKey, MemoryCheckpoint)> = Vec::new();
        for layer in TEARDOWN_ORDER {
            let key = IdempotencyKey::derive(&ws, OP_DESTROY, layer.as_str());
            let checkpoint = MemoryCheckpoint::new();
            self.destroy(
                request(&ws, &updated, layer, &key, &checkpoint),
                "of a provisioned layer",
            )
            .await;
            destroyed.push((key, checkpoint));
            remaining.retain(|s| s.layer != layer);
            let context = format!("after destroy of layer {layer} returned Ready");
            let now = self.describe(&ws, &updated, &context).await;
            let cluster_now = if layer == InfraLayer::NodePools {
                cluster.as_ref()
            } else {
                None
            };
            expect_exactly(
                &ws,
                &now,
                &remaining.iter().collect::<Vec<_>>(),
                cluster_now,
                DESCRIBE_TRUTH,
                &context,
            );
        }

        // Destroying what is gone: replay each step, then a new operation.
        for (layer, (key, checkpoint)) in TEARDOWN_ORDER.into_iter().zip(&destroyed) {
            let replay = request(&ws, &updated, layer, key, checkpoint);
            self.destroy(
                replay,
                "replayed with the same key and checkpoint after it finished",
            )
            .await;
        }
        for layer in TEARDOWN_ORDER {
            let key = IdempotencyKey::derive(&ws, OP_DESTROY_AGAIN, layer.as_str());
            self.destroy(
                request(&ws, &updated, layer, &key, &MemoryCheckpoint::new()),
                "of a layer already destroyed",
            )
            .await;
        }
        let now = self.describe(&ws, &updated, "after a full destroy").await;
        expect_empty(&ws, &now, "after a full destroy");
    }

    async fn partial_then_destroy(&self, spec: &WorkspaceSpec) {
        let ws = random_workspace_id("conf");
        let key = IdempotencyKey::derive(&ws, OP_PROVISION, InfraLayer::Network.as_str());
        let network = self
            .provision(
                request(
                    &ws,
                    spec,
                    InfraLayer::Network,
                    &key,
                    &MemoryCheckpoint::new(),
                ),
                BUILDS_LAYER,
                "",
            )
            .await;
        check_layer_state(
            &ws,
            InfraLayer::Network,
            &network,
            "provision",
            BUILDS_LAYER,
        );

        // Start the cluster and abandon it after one call, as a crashed engine would.
        let key = IdempotencyKey::derive(&ws, OP_PROVISION, InfraLayer::Cluster.as_str());
        let cluster = request(
            &ws,
            spec,
            InfraLayer::Cluster,
            &key,
            &MemoryCheckpoint::new(),
        );
        match self.provisioner.provision(cluster).await {
            Ok(Progress::Ready(state)) => {
                check_layer_state(&ws, InfraLayer::Cluster, &state, "provision", BUILDS_LAYER)
            }
            Ok(Progress::InProgress { .. }) => {}
            Ok(Progress::AwaitCommand(command)) => panic!(
                "{WHO} conformance: provision of layer cluster of workspace {ws} returned \
                 Progress::AwaitCommand({:?}); cloud provisioners never return AwaitCommand",
                command.id
            ),
            Err(e) if e.is_transient() => {}
            Err(e) => broken!(
                BUILDS_LAYER,
                "provision of layer cluster of workspace {ws} failed: {e}"
            ),
        }

        for layer in TEARDOWN_ORDER {
            let key = IdempotencyKey::derive(&ws, OP_DESTROY, layer.as_str());
            let teardown = request(&ws, spec, layer, &key, &MemoryCheckpoint::new());
            self.destroy(
                teardown,
                "of a workspace whose provisioning stopped half-way",
            )
            .await;
        }
        let now = self
            .describe(&ws, spec, "after destroying a half-provisioned workspace")
            .await;
        expect_empty(
            &ws,
            &now,
            "after destroying a workspace whose provisioning stopped half-way",
        );
    }

    /// Provisions (or, with `previous`, updates) the layer of `request` to the
    /// end; panics naming `guarantee` if it fails.
    async fn provision(&self, request: LayerRequest, guarantee: &str, how: &str) -> LayerState {
        let call = if request.previous.is_some() {
            "update"
        } else {
            "provision"
        };
        let what = format!(
            "{call} of layer {} of workspace {}{}",
            request.layer,
            request.workspace,
            spaced(how)
        );
        let provisioner = self.provisioner;
        let result = if request.previous.is_some() {
            follow(self.options, WHO, &what, false, move |_| {
                provisioner.update(request.clone())
            })
            .await
        } else {
            follow(self.options, WHO, &what, false, move |_| {
                provisioner.provision(request.clone())
            })
            .await
        };
        result.unwrap_or_else(|e| broken!(guarantee, "{what} failed: {e}"))
    }

    /// Destroys the layer of `request` to the end; panics if it fails.
    async fn destroy(&self, request: LayerRequest, how: &str) {
        let what = format!(
            "destroy of layer {} {how} (workspace {})",
            request.layer, request.workspace
        );
        let provisioner = self.provisioner;
        follow(self.options, WHO, &what, false, move |_| {
            provisioner.destroy(request.clone())
        })
        .await
        .unwrap_or_else(|e| {
            broken!(
                DESTROY_CONVERGES,
                "{what} failed: {e}; destroying what is already gone, or only partly \
                 built, must succeed"
            )
        })
    }

    /// Describes the workspace, checking the description is sorted and has no
    /// duplicates.
    async fn describe(
        &self,
        ws: &WorkspaceId,
        spec: &WorkspaceSpec,
        context: &str,
    ) -> InfraDescription {
        let description = match self.provisioner.describe(ws, spec).await {
            Ok(d) => d,
            Err(e) => broken!(
                DESCRIBE_TRUTH,
                "describe of workspace {ws} {context} failed: {e}"
            ),
        };
        if let Some(pair) = description.resources.windows(2).find(|w| w[0] >= w[1]) {
            if pair[0] == pair[1] {
                broken!(
                    DESCRIBE_TRUTH,
                    "describe of workspace {ws} {context} lists {:?} twice: {:?}",
                    pair[0],
                    description.resources
                );
            }
            broken!(
                DESCRIBE_TRUTH,
                "describe of workspace {ws} {context} lists its resources unsorted \
                 (InfraDescription::resources must be sorted): {:?}",
                description.resources
            );
        }
        description
    }
}

/// Checks what `call` returned for `layer`.
fn check_layer_state(
    ws: &WorkspaceId,
    layer: InfraLayer,
    state: &LayerState,
    call: &str,
    guarantee: &str,
) {
    if state.layer != layer {
        broken!(
            guarantee,
            "{call} of layer {layer} of workspace {ws} returned the state of layer {}",
            state.layer
        );
    }
    if state.resources.is_empty() {
        broken!(
            guarantee,
            "{call} of layer {layer} of workspace {ws} returned no resources"
        );
    }
    if let Some(r) = state.resources.iter().find(|r| r.layer != layer) {
        broken!(
            guarantee,
            "{call} of layer {layer} of workspace {ws} returned {r:?}, \
             which is tagged with another layer"
        );
    }
    if let Some(r) = state
        .resources
        .iter()
        .find(|r| r.id.is_empty() || r.kind.is_empty())
    {
        broken!(
            guarantee,
            "{call} of layer {layer} of workspace {ws} returned {r:?}, \
             which has an empty id or kind"
        );
    }
    if let Some(r) = duplicate(&state.resources) {
        broken!(
            guarantee,
            "{call} of layer {layer} of workspace {ws} returned {r:?} twice"
        );
    }
    if layer == InfraLayer::Cluster {
        match &state.cluster {
            None => broken!(
                guarantee,
                "{call} of layer {layer} of workspace {ws} returned no cluster access"
            ),
            Some(access) if !access.endpoint.starts_with("https://") => broken!(
                guarantee,
                "{call} of layer {layer} of workspace {ws} returned the endpoint {:?}, \
                 which is not https://",
                access.endpoint
            ),
            Some(access) if access.name.is_empty() => {
                broken!(
                    guarantee,
                    "{call} of layer {layer} of workspace {ws} returned a cluster without a name"
                )
            }
            Some(_) => {}
        }
    }
}

/// Checks that `description` lists exactly the resources of `layers` and
/// `cluster`.
fn expect_exactly(
    ws: &WorkspaceId,
    description: &InfraDescription,
    layers: &[&LayerState],
    cluster: Option<&ClusterAccess>,
    guarantee: &str,
    context: &str,
) {
    let expected: BTreeSet<&CloudResource> = layers.iter().flat_map(|s| &s.resources).collect();
    let listed: BTreeSet<&CloudResource> = description.resources.iter().collect();
    let missing: Vec<_> = expected.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&expected).collect();
    if !extra.is_empty() {
        broken!(
            guarantee,
            "{context}, describe of workspace {ws} lists resources no layer returned: {extra:?} \
             (expected exactly {expected:?})"
        );
    }
    if !missing.is_empty() {
        broken!(
            guarantee,
            "{context}, describe of workspace {ws} does not list resources the layers \
             returned: {missing:?}"
        );
    }
    if description.cluster.as_ref() != cluster {
        broken!(
            guarantee,
            "{context}, describe of workspace {ws} gives the cluster access {:?}; \
             expected {cluster:?}",
            description.cluster
        );
    }
}

/// Checks that a replay left the description as it was.
fn expect_no_change(
    ws: &WorkspaceId,
    before: &InfraDescription,
    now: &InfraDescription,
    guarantee: &str,
    context: &str,
) {
    let before_set: BTreeSet<&CloudResource> = before.resources.iter().collect();
    let now_set: BTreeSet<&CloudResource> = now.resources.iter().collect();
    let created: Vec<_> = now_set.difference(&before_set).collect();
    if !created.is_empty() || now.resources.len() > before.resources.len() {
        broken!(
            guarantee,
            "{context}, describe of workspace {ws} lists new resources: {created:?}"
        );
    }
    let lost: Vec<_> = before_set.difference(&now_set).collect();
    if !lost.is_empty() {
        broken!(
            guarantee,
            "{context}, describe of workspace {ws} no longer lists {lost:?}"
        );
    }
    if now.cluster != before.cluster {
        broken!(
            guarantee,
            "{context}, the cluster access of workspace {ws} changed from {:?} to {:?}",
            before.cluster,
            now.cluster
        );
    }
}

/// Checks that `description` lists nothing.
fn expect_empty(ws: &WorkspaceId, description: &InfraDescription, context: &str) {
    if !description.resources.is_empty() {
        broken!(
            DESCRIBE_TRUTH,
            "{context}, describe of workspace {ws} lists {:?}",
            description.resources
        );
    }
    if let Some(access) = &description.cluster {
        broken!(
            DESCRIBE_TRUTH,
            "{context}, describe of workspace {ws} gives the cluster access {access:?}"
        );
    }
}

/// A request for `layer` of `ws`, with its own handle on `checkpoint` (clones of
/// a [`MemoryCheckpoint`] share its value).
fn request(
    ws: &WorkspaceId,
    spec: &WorkspaceSpec,
    layer: InfraLayer,
    key: &IdempotencyKey,
    checkpoint: &MemoryCheckpoint,
) -> LayerRequest {
    LayerRequest::new(
        ws.clone(),
        spec.clone(),
        layer,
        key.clone(),
        Arc::new(checkpoint.clone()),
    )
}

fn spaced(how: &str) -> String {
    if how.is_empty() {
        String::new()
    } else {
        format!(" {how}")
    }
}

fn sorted(resources: &[CloudResource]) -> Vec<&CloudResource> {
    let mut v: Vec<_> = resources.iter().collect();
    v.sort();
    v
}

fn duplicate(resources: &[CloudResource]) -> Option<&CloudResource> {
    let mut seen = BTreeSet::new();
    resources.iter().find(|r| !seen.insert(*r))
}

/// `spec` with the first node pool's desired size changed, kept valid.
fn resized(spec: &WorkspaceSpec) -> WorkspaceSpec {
    let mut updated = spec.clone();
    let pool = &mut updated.node_pools[0];
    let (min, desired, max) = (pool.size.min(), pool.size.desired(), pool.size.max());
    let (min, desired, max) = if desired < max {
        (min, desired + 1, max)
    } else if desired > min {
        (min, desired - 1, max)
    } else if max < NodePoolSize::MAX_NODES {
        (min, desired + 1, max + 1)
    } else {
        (min - 1, desired - 1, max)
    };
    pool.size =
        NodePoolSize::new(min, desired, max).expect("a resized node pool stays within its rule");
    updated
}
