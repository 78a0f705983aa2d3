//! Tests of the simulated world: the conformance suites (feature
//! `conformance`) and targeted checks of latency, faults and the audits.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cogrion_agent_proto::{Command, CommandKind, CommandOutcome, CommandResult, CommandSeq};

use super::*;
use crate::checkpoint::{Checkpoint, MemoryCheckpoint, Progress};
use crate::clock::{ManualClock, Timestamp};
use crate::error::{Error, Result};
use crate::executor::{ExecutionTarget, Executor, ExecutorKind, StackRequest, StackStatus};
use crate::ids::{IdempotencyKey, StackName, WorkspaceId};
use crate::provisioner::{CloudProvisioner, InfraLayer, LayerRequest, LayerState};
use crate::spec::{StackSpec, WorkspaceSpec};

// ---------------------------------------------------------------------------
// Inputs and helpers
// ---------------------------------------------------------------------------

fn spec_with(pools: serde_json::Value) -> WorkspaceSpec {
    serde_json::from_value(serde_json::json!({
        "tenant": "acme",
        "cloud": { "provider": "simulated" },
        "region": "local-1",
        "kubernetes_version": "1.34",
        "network": { "cidr": "10.42.0.0/16" },
        "node_pools": pools
    }))
    .expect("a valid spec")
}

fn spec() -> WorkspaceSpec {
    spec_with(serde_json::json!([
        { "name": "general", "instance_type": "sim-small", "size": { "min": 1, "desired": 2, "max": 3 } }
    ]))
}

fn ws(name: &str) -> WorkspaceId {
    name.parse().expect("a valid workspace id")
}

fn helm_stack(name: &str) -> StackSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "kind": "infra_addon",
        "executor": { "type": "helm", "source": "ingress-nginx/ingress-nginx", "version": "4.13.0" }
    }))
    .expect("a valid stack")
}

fn manifests_stack(name: &str, config: &str) -> StackSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "kind": "application",
        "executor": {
            "type": "manifests",
            "documents": [
                { "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": config } },
                { "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": name } }
            ]
        }
    }))
    .expect("a valid stack")
}

fn terraform_stack(name: &str) -> StackSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "kind": "infra_addon",
        "executor": { "type": "terraform", "source": "./modules/dns", "variables": { "zone": "acme.example" } }
    }))
    .expect("a valid stack")
}

fn layer_request(
    ws: &WorkspaceId,
    spec: &WorkspaceSpec,
    layer: InfraLayer,
    operation: u64,
    checkpoint: &MemoryCheckpoint,
) -> LayerRequest {
    LayerRequest::new(
        ws.clone(),
        spec.clone(),
        layer,
        IdempotencyKey::derive(ws, operation, layer.as_str()),
        Arc::new(checkpoint.clone()),
    )
}

fn stack_request(ws: &WorkspaceId, stack: &StackSpec, operation: u64) -> StackRequest {
    StackRequest::new(
        ExecutionTarget::new(ws.clone(), None),
        stack.clone(),
        IdempotencyKey::derive(ws, operation, stack.name.as_str()),
        Arc::new(MemoryCheckpoint::new()),
    )
}

/// A cloud on a manual clock with the given per-layer latencies in seconds
/// (network, cluster, node pools).
fn cloud_with(latency: [u64; 3], faults: FaultPlan) -> (SimulatedCloud, ManualClock) {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let mut builder = SimulatedCloud::builder()
        .clock(Arc::new(clock.clone()))
        .faults(faults);
    for (layer, secs) in InfraLayer::BUILD_ORDER.into_iter().zip(latency) {
        builder = builder.latency(layer, Duration::from_secs(secs));
    }
    (builder.build(), clock)
}

/// Calls `call` until `Ready`, advancing `clock` on `InProgress`; panics on
/// anything else.
async fn ready<T: fmt::Debug>(
    clock: &ManualClock,
    mut call: impl AsyncFnMut() -> Result<Progress<T>>,
) -> T {
    for _ in 0..100 {
        match call().await {
            Ok(Progress::Ready(value)) => return value,
            Ok(Progress::InProgress { poll_after, .. }) => clock.advance(poll_after),
            other => panic!("expected Ready or InProgress, got {other:?}"),
        }
    }
    panic!("not ready after 100 calls");
}

async fn provision_all(
    cloud: &SimulatedCloud,
    clock: &ManualClock,
    ws: &WorkspaceId,
    spec: &WorkspaceSpec,
) -> Vec<LayerState> {
    let mut states = Vec::new();
    for layer in InfraLayer::BUILD_ORDER {
        let request = layer_request(ws, spec, layer, 1, &MemoryCheckpoint::new());
        states.push(ready(clock, async || cloud.provision(request.clone()).await).await);
    }
    states
}

fn is_lost(result: &Result<impl fmt::Debug>) -> bool {
    result.as_ref().err().is_some_and(is_lost_error)
}

fn is_lost_error(e: &Error) -> bool {
    matches!(e, Error::Unavailable { detail, .. } if detail == RESPONSE_LOST)
}

fn command(new: crate::store::NewCommand, seq: u64) -> Command {
    Command::new(new.id, CommandSeq(seq), new.kind, new.payload).expect("a small command")
}

/// Runs one executor call to the end, answering commands through `cluster`.
async fn through_agent<T: fmt::Debug>(
    cluster: &SimulatedCluster,
    request: &StackRequest,
    mut call: impl AsyncFnMut(StackRequest) -> Result<Progress<T>>,
) -> Result<T> {
    let mut request = request.clone();
    for seq in 1..=10 {
        match call(request.clone()).await? {
            Progress::Ready(value) => return Ok(value),
            Progress::AwaitCommand(new) => {
                let result = cluster.handle(&request.target.workspace, &command(new, seq));
                request = request.with_command_result(result);
            }
            Progress::InProgress { .. } => {}
        }
    }
    panic!("the executor did not finish after 10 calls");
}

// ---------------------------------------------------------------------------
// Conformance
// ---------------------------------------------------------------------------

#[cfg(feature = "conformance")]
mod conformance_suites {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::clock::Clock;
    use crate::conformance::{
        SuiteOptions, executor_suite, provisioner_suite, random_workspace_id, sample_workspace_spec,
    };

    /// Suite options whose sleep advances `clock`.
    fn advancing(clock: &ManualClock) -> SuiteOptions {
        let clock = clock.clone();
        SuiteOptions::default().with_sleep(move |delay| {
            clock.advance(delay);
            Box::pin(async {})
        })
    }

    fn assert_clean(cloud: &SimulatedCloud) {
        assert!(
            cloud.duplicates().is_empty(),
            "duplicates: {:?}",
            cloud.duplicates()
        );
        assert_eq!(cloud.all_live(), 0, "the suite tears down what it built");
    }

    #[tokio::test]
    async fn cloud_passes_the_provisioner_suite() {
        let cloud = SimulatedCloud::new();
        provisioner_suite(&cloud, &sample_workspace_spec(), &SuiteOptions::default()).await;
        assert_clean(&cloud);
        assert!(cloud.api_calls().total_creates() > 0);
    }

    #[tokio::test]
    async fn cloud_with_latency_passes_the_provisioner_suite() {
        let (cloud, clock) = cloud_with([2, 4, 3], FaultPlan::none());
        let start = clock.now();
        provisioner_suite(&cloud, &sample_workspace_spec(), &advancing(&clock)).await;
        assert_clean(&cloud);
        assert!(
            clock.now().since(start) >= Duration::from_secs(9),
            "the suite had to wait for the latency"
        );
    }

    #[tokio::test]
    async fn cloud_with_transient_faults_passes_the_provisioner_suite_without_duplicates() {
        let mut lost = 0;
        for seed in 0..12 {
            let faults = FaultPlan::transient(seed, 0.2);
            let (cloud, clock) = cloud_with([2, 4, 3], faults.clone());
            let options = advancing(&clock).with_max_polls(500);
            provisioner_suite(&cloud, &sample_workspace_spec(), &options).await;
            assert_clean(&cloud);
            let injected = faults.injected();
            assert!(!injected.is_empty(), "seed {seed} injected nothing");
            lost += injected
                .iter()
                .filter(|f| f.fault == Fault::LostResponse)
                .count();
        }
        assert!(lost > 10, "only {lost} lost responses were exercised");
    }

    /// Suite options with an agent stand-in that runs commands on `cluster` for
    /// `ws`.
    fn with_agent(
        options: SuiteOptions,
        cluster: &SimulatedCluster,
        ws: &WorkspaceId,
    ) -> SuiteOptions {
        let cluster = cluster.clone();
        let ws = ws.clone();
        let seq = Arc::new(AtomicU64::new(0));
        options.with_agent(move |new| {
            let seq = seq.fetch_add(1, Ordering::SeqCst) + 1;
            let result = cluster.handle(&ws, &command(new, seq));
            Box::pin(async move { result })
        })
    }

    async fn run_executor_suite(kind: ExecutorKind, stack: StackSpec, faults: FaultPlan) {
        let cluster = SimulatedCluster::new();
        let executor = SimulatedExecutor::new(kind, cluster.clone(), faults.clone());
        let target = ExecutionTarget::new(random_workspace_id("sim"), None);
        let options = with_agent(SuiteOptions::default(), &cluster, &target.workspace);
        executor_suite(&executor, &target, &stack, &options).await;
        assert!(
            cluster.installed(&target.workspace).is_empty(),
            "the suite removes its stack"
        );
        assert!(cluster.duplicates().is_empty());
        let handled: u64 = cluster.commands_handled().values().sum();
        match kind {
            ExecutorKind::Terraform => assert_eq!(handled, 0),
            _ => assert!(handled > 0, "{kind:?} stacks go through the agent"),
        }
    }

    fn stacks() -> [(ExecutorKind, StackSpec); 3] {
        [
            (ExecutorKind::Helm, helm_stack("ingress")),
            (
                ExecutorKind::Manifests,
                manifests_stack("web", "web-config"),
            ),
            (ExecutorKind::Terraform, terraform_stack("dns")),
        ]
    }

    #[tokio::test]
    async fn every_executor_kind_passes_the_executor_suite() {
        for (kind, stack) in stacks() {
            run_executor_suite(kind, stack, FaultPlan::none()).await;
        }
    }

    #[tokio::test]
    async fn every_executor_kind_passes_the_executor_suite_with_transient_faults() {
        for (kind, stack) in stacks() {
            for seed in 0..6 {
                let faults = FaultPlan::transient(seed, 0.2);
                run_executor_suite(kind, stack.clone(), faults.clone()).await;
                assert!(!faults.injected().is_empty(), "{kind:?} seed {seed}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Fault plans
// ---------------------------------------------------------------------------

#[test]
fn scripted_faults_come_first_and_in_order_and_targeted_ones_wait_for_their_target() {
    let plan = FaultPlan::none();
    let cluster = FaultTarget::Layer(InfraLayer::Cluster);
    let network = FaultTarget::Layer(InfraLayer::Network);
    plan.inject_next_for(InfraLayer::Cluster, Fault::LostResponse);
    plan.inject_next(Fault::Throttle);
    assert_eq!(plan.decide("provision", &network), Some(Fault::Throttle));
    assert_eq!(plan.decide("provision", &network), None);
    assert_eq!(plan.scripted_pending(), 1);
    assert_eq!(
        plan.decide("provision", &cluster),
        Some(Fault::LostResponse)
    );
    assert_eq!(plan.decide("provision", &cluster), None);
    let injected = plan.injected();
    assert_eq!(injected.len(), 2);
    assert_eq!(injected[1].call, 3);
    assert_eq!(injected[1].target, cluster);
}

#[test]
fn permanent_failures_last_until_cleared() {
    let plan = FaultPlan::none();
    let stack: StackName = "web".parse().unwrap();
    plan.fail_permanently(stack.clone());
    for _ in 0..3 {
        assert_eq!(
            plan.decide("apply", &FaultTarget::Stack(stack.clone())),
            Some(Fault::Reject)
        );
    }
    assert_eq!(
        plan.decide("apply", &FaultTarget::Stack("api".parse().unwrap())),
        None
    );
    assert!(plan.clear_permanent(stack.clone()));
    assert!(!plan.clear_permanent(stack.clone()));
    assert_eq!(plan.decide("apply", &FaultTarget::Stack(stack)), None);
}

#[test]
fn a_disabled_plan_injects_nothing_and_counts_nothing() {
    let plan = FaultPlan::transient(1, 1.0);
    plan.fail_permanently(InfraLayer::Network);
    plan.inject_next(Fault::Reject);
    plan.set_enabled(false);
    for _ in 0..10 {
        assert_eq!(
            plan.decide("provision", &FaultTarget::Layer(InfraLayer::Network)),
            None
        );
    }
    assert_eq!(plan.calls(), 0);
    plan.set_enabled(true);
    assert_eq!(
        plan.decide("provision", &FaultTarget::Layer(InfraLayer::Network)),
        Some(Fault::Reject),
        "the scripted fault was kept"
    );
}

#[test]
fn probabilities_pick_every_fault_and_are_clamped() {
    let target = FaultTarget::Layer(InfraLayer::Cluster);
    let always = FaultPlan::seeded(3).with_throttle(7.0);
    assert!((0..50).all(|_| always.decide("provision", &target) == Some(Fault::Throttle)));
    let never = FaultPlan::seeded(3)
        .with_unavailable(f64::NAN)
        .with_lost_response(-1.0);
    assert!((0..50).all(|_| never.decide("provision", &target).is_none()));
    let mixed = FaultPlan::transient(5, 0.25);
    let faults: Vec<_> = (0..400)
        .filter_map(|_| mixed.decide("provision", &target))
        .collect();
    for fault in [Fault::Throttle, Fault::Unavailable, Fault::LostResponse] {
        let n = faults.iter().filter(|f| **f == fault).count();
        assert!((50..150).contains(&n), "{fault:?} hit {n} of 400 calls");
    }
}

#[test]
fn fault_errors_say_what_to_do() {
    let plan = FaultPlan::none().with_retry_after(Duration::from_secs(3));
    let target = FaultTarget::Layer(InfraLayer::Cluster);
    assert!(matches!(
        plan.error("svc", Fault::Throttle, &target),
        Error::Throttled { retry_after: Some(d), .. } if d == Duration::from_secs(3)
    ));
    assert!(
        plan.error("svc", Fault::Unavailable, &target)
            .is_transient()
    );
    assert!(is_lost_error(&plan.error(
        "svc",
        Fault::LostResponse,
        &target
    )));
    assert!(matches!(
        plan.error("svc", Fault::Reject, &target),
        Error::Rejected { .. }
    ));
}

// ---------------------------------------------------------------------------
// The fake cloud API
// ---------------------------------------------------------------------------

#[test]
fn the_audit_reports_two_live_resources_for_one_intent() {
    let clock = ManualClock::new(Timestamp::EPOCH);
    let api = CloudApi::new(Arc::new(clock.clone()));
    let tags = ResourceTags::new(
        ws("acme-prod"),
        InfraLayer::Cluster,
        "cogrion-acme-prod-cluster",
    );
    let first = api
        .create("cluster", tags.clone(), Attributes::new(), &[])
        .unwrap();
    assert!(api.duplicates().is_empty());
    // Deleted, then created again: never two at once.
    api.delete(&first).unwrap();
    let second = api
        .create("cluster", tags.clone(), Attributes::new(), &[])
        .unwrap();
    assert!(api.duplicates().is_empty());
    // Created twice: two at once.
    let third = api
        .create("cluster", tags.clone(), Attributes::new(), &[])
        .unwrap();
    assert_ne!(second, third);
    assert_eq!(api.duplicates(), [tags.intent()]);
    assert_eq!(api.find_by_name(&tags.workspace, &tags.name).len(), 2);
    assert_eq!(api.calls().creates_of("cluster"), 3);
}

#[test]
fn the_fake_cloud_takes_time_and_enforces_dependencies() {
    let clock = ManualClock::new(Timestamp::EPOCH);
    let api = CloudApi::new(Arc::new(clock.clone()));
    api.set_latency(InfraLayer::Network, Duration::from_secs(5));
    let w = ws("acme-prod");
    let vpc = api
        .create(
            "vpc",
            ResourceTags::new(w.clone(), InfraLayer::Network, "vpc"),
            Attributes::new(),
            &[],
        )
        .unwrap();
    let status = api.get(&vpc).unwrap().status;
    assert!(matches!(status, ResourceStatus::Creating { .. }));
    assert!(
        matches!(api.delete(&vpc), Err(ApiError::InUse { retry_after, .. }) if retry_after == Duration::from_secs(5))
    );
    clock.advance(Duration::from_secs(5));
    assert_eq!(api.get(&vpc).unwrap().status, ResourceStatus::Active);
    let subnet = api
        .create(
            "subnet",
            ResourceTags::new(w.clone(), InfraLayer::Network, "subnet"),
            Attributes::new(),
            std::slice::from_ref(&vpc),
        )
        .unwrap();
    clock.advance(Duration::from_secs(5));
    assert!(matches!(
        api.delete(&vpc),
        Err(ApiError::DependencyViolation { dependents, .. }) if dependents == [subnet.clone()]
    ));
    api.delete(&subnet).unwrap();
    api.delete(&subnet).unwrap(); // already deleting: nothing changes
    clock.advance(Duration::from_secs(5));
    assert!(api.get(&subnet).is_none());
    assert!(matches!(
        api.delete(&subnet),
        Err(ApiError::NotFound { .. })
    ));
    api.delete(&vpc).unwrap();
    assert_eq!(api.all_live(), 1, "the VPC is still being deleted");
    clock.advance(Duration::from_secs(5));
    assert_eq!(api.all_live(), 0);
    let orphan = api.create(
        "subnet",
        ResourceTags::new(w, InfraLayer::Network, "subnet"),
        Attributes::new(),
        &[vpc],
    );
    assert!(matches!(orphan, Err(ApiError::NotFound { .. })));
}

// ---------------------------------------------------------------------------
// The provisioner
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_lost_cluster_create_replayed_with_a_fresh_checkpoint_creates_no_second_cluster() {
    let faults = FaultPlan::none();
    let (cloud, clock) = cloud_with([0, 4, 0], faults.clone());
    let w = ws("acme-prod");
    let spec = spec();
    let network = layer_request(&w, &spec, InfraLayer::Network, 1, &MemoryCheckpoint::new());
    ready(&clock, async || cloud.provision(network.clone()).await).await;

    faults.inject_next_for(InfraLayer::Cluster, Fault::LostResponse);
    let lost_checkpoint = MemoryCheckpoint::new();
    let request = layer_request(&w, &spec, InfraLayer::Cluster, 1, &lost_checkpoint);
    let first = cloud.provision(request.clone()).await;
    assert!(is_lost(&first), "{first:?}");
    // The cluster exists, but the call never got to save its id.
    assert_eq!(cloud.api_calls().creates_of("cluster"), 1);
    assert_eq!(lost_checkpoint.load().await.unwrap(), None);
    let live: Vec<_> = cloud
        .live_resources(&w)
        .into_iter()
        .filter(|r| r.layer == InfraLayer::Cluster)
        .collect();
    assert_eq!(live.len(), 1);

    // A crash: the step runs again with its key and a fresh checkpoint.
    let fresh = MemoryCheckpoint::new();
    let replay = layer_request(&w, &spec, InfraLayer::Cluster, 1, &fresh);
    let state = ready(&clock, async || cloud.provision(replay.clone()).await).await;
    assert_eq!(state.resources, live);
    assert_eq!(
        state.cluster.as_ref().map(|c| c.name.clone()),
        Some(SimulatedCloud::cluster_name(&w))
    );
    assert_eq!(cloud.api_calls().creates_of("cluster"), 1);
    assert!(cloud.duplicates().is_empty());
    assert!(
        fresh.load().await.unwrap().is_some(),
        "the adopted id is saved"
    );
    let description = cloud.describe(&w, &spec).await.unwrap();
    assert_eq!(
        description
            .resources
            .iter()
            .filter(|r| r.kind == "cluster")
            .count(),
        1
    );
    assert_eq!(description.cluster, state.cluster);
}

#[tokio::test]
async fn lost_responses_of_every_change_never_duplicate() {
    // Lose the answer of the first change of every call: each call makes one
    // change at most, and the next one must adopt it.
    let faults = FaultPlan::seeded(0).with_lost_response(1.0);
    let (cloud, clock) = cloud_with([1, 1, 1], faults.clone());
    let w = ws("acme-prod");
    let spec = spec();
    for layer in InfraLayer::BUILD_ORDER {
        let request = layer_request(&w, &spec, layer, 1, &MemoryCheckpoint::new());
        let mut done = false;
        for _ in 0..50 {
            match cloud.provision(request.clone()).await {
                Ok(Progress::Ready(_)) => unreachable!("every answer is lost"),
                Ok(Progress::InProgress { .. }) => unreachable!("every answer is lost"),
                Err(e) if is_lost_error(&e) => clock.advance(Duration::from_secs(1)),
                Err(e) => panic!("{e}"),
                Ok(Progress::AwaitCommand(_)) => unreachable!(),
            }
            if cloud
                .live_resources(&w)
                .iter()
                .filter(|r| r.layer == layer)
                .count()
                == if layer == InfraLayer::Network { 3 } else { 1 }
            {
                done = true;
                break;
            }
        }
        assert!(done, "layer {layer} was never fully created");
    }
    faults.set_enabled(false);
    let states = provision_all(&cloud, &clock, &w, &spec).await;
    assert_eq!(states.iter().map(|s| s.resources.len()).sum::<usize>(), 5);
    assert_eq!(cloud.api_calls().total_creates(), 5);
    assert!(cloud.duplicates().is_empty());
}

#[tokio::test]
async fn a_permanent_failure_is_rejected_until_cleared() {
    let faults = FaultPlan::none();
    let (cloud, clock) = cloud_with([0, 0, 0], faults.clone());
    let w = ws("acme-prod");
    let spec = spec();
    let network = layer_request(&w, &spec, InfraLayer::Network, 1, &MemoryCheckpoint::new());
    ready(&clock, async || cloud.provision(network.clone()).await).await;

    faults.fail_permanently(InfraLayer::Cluster);
    let request = layer_request(&w, &spec, InfraLayer::Cluster, 1, &MemoryCheckpoint::new());
    for _ in 0..3 {
        let outcome = cloud.provision(request.clone()).await;
        assert!(
            matches!(outcome, Err(Error::Rejected { .. })),
            "{outcome:?}"
        );
        let outcome = cloud.destroy(request.clone()).await;
        assert!(
            matches!(outcome, Err(Error::Rejected { .. })),
            "{outcome:?}"
        );
    }
    assert_eq!(cloud.api_calls().creates_of("cluster"), 0);
    // Other layers are not affected.
    assert!(matches!(
        cloud.provision(network.clone()).await,
        Ok(Progress::Ready(_))
    ));

    assert!(faults.clear_permanent(InfraLayer::Cluster));
    let state = ready(&clock, async || cloud.provision(request.clone()).await).await;
    assert_eq!(state.resources.len(), 1);
}

#[tokio::test]
async fn latency_makes_calls_in_progress_until_the_clock_passes() {
    let (cloud, clock) = cloud_with([2, 4, 3], FaultPlan::none());
    let w = ws("acme-prod");
    let spec = spec();
    let network = layer_request(&w, &spec, InfraLayer::Network, 1, &MemoryCheckpoint::new());
    let secs = Duration::from_secs;
    // The VPC first, then its subnets.
    for (advance, expected) in [(0, 2), (1, 1), (1, 2), (2, 0)] {
        clock.advance(secs(advance));
        match cloud.provision(network.clone()).await.unwrap() {
            Progress::InProgress { poll_after, .. } => assert_eq!(poll_after, secs(expected)),
            Progress::Ready(state) => {
                assert_eq!(expected, 0, "ready too early");
                assert_eq!(state.resources.len(), 3);
            }
            other => panic!("{other:?}"),
        }
    }
    let cluster = layer_request(&w, &spec, InfraLayer::Cluster, 1, &MemoryCheckpoint::new());
    assert_eq!(
        cloud.provision(cluster.clone()).await.unwrap(),
        Progress::in_progress_with(secs(4), "cluster CREATING, 4 s left")
    );
    // No cluster access while it is being created.
    assert_eq!(cloud.describe(&w, &spec).await.unwrap().cluster, None);
    clock.advance(Duration::from_millis(3_999));
    assert_eq!(
        cloud.provision(cluster.clone()).await.unwrap(),
        Progress::in_progress_with(Duration::from_millis(1), "cluster CREATING, 1 s left")
    );
    clock.advance(Duration::from_millis(1));
    let state = cloud.provision(cluster).await.unwrap().ready().unwrap();
    let access = state.cluster.expect("the cluster layer gives its access");
    assert_eq!(
        access.endpoint,
        format!("https://{}.sim.cogrion.invalid", access.name)
    );
    assert_eq!(access.ca_bundle_pem, SIM_CA_BUNDLE_PEM);
    assert_eq!(
        cloud.describe(&w, &spec).await.unwrap().cluster,
        Some(access)
    );
    assert_eq!(cloud.api_calls().total_creates(), 4);
}

#[tokio::test]
async fn destroy_with_latency_waits_for_deletion_and_then_converges() {
    let (cloud, clock) = cloud_with([2, 4, 3], FaultPlan::none());
    let w = ws("acme-prod");
    let spec = spec();
    provision_all(&cloud, &clock, &w, &spec).await;
    assert_eq!(cloud.live_resources(&w).len(), 5);

    let pools = layer_request(
        &w,
        &spec,
        InfraLayer::NodePools,
        2,
        &MemoryCheckpoint::new(),
    );
    assert_eq!(
        cloud.destroy(pools.clone()).await.unwrap(),
        Progress::in_progress_with(Duration::from_secs(3), "node-pools DELETING, 3 s left")
    );
    // Still listed while it is being deleted.
    assert_eq!(cloud.describe(&w, &spec).await.unwrap().resources.len(), 5);
    assert_eq!(
        cloud.destroy(pools.clone()).await.unwrap(),
        Progress::in_progress_with(Duration::from_secs(3), "node-pools DELETING, 3 s left"),
        "a replay does not delete twice"
    );
    assert_eq!(cloud.api_calls().deletes_of("node-pool"), 1);
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        cloud.destroy(pools.clone()).await.unwrap(),
        Progress::Ready(())
    );
    assert_eq!(cloud.live_resources(&w).len(), 4);

    for layer in [InfraLayer::Cluster, InfraLayer::Network] {
        let request = layer_request(&w, &spec, layer, 2, &MemoryCheckpoint::new());
        ready(&clock, async || cloud.destroy(request.clone()).await).await;
    }
    let description = cloud.describe(&w, &spec).await.unwrap();
    assert!(description.resources.is_empty());
    assert_eq!(description.cluster, None);
    assert_eq!(cloud.all_live(), 0);
    // Destroying what is gone succeeds at once.
    for layer in InfraLayer::BUILD_ORDER {
        let request = layer_request(&w, &spec, layer, 3, &MemoryCheckpoint::new());
        assert_eq!(cloud.destroy(request).await.unwrap(), Progress::Ready(()));
    }
}

#[tokio::test]
async fn destroy_waits_for_a_creation_still_running() {
    let (cloud, clock) = cloud_with([0, 4, 0], FaultPlan::none());
    let w = ws("acme-prod");
    let spec = spec();
    let network = layer_request(&w, &spec, InfraLayer::Network, 1, &MemoryCheckpoint::new());
    ready(&clock, async || cloud.provision(network.clone()).await).await;
    let cluster = layer_request(&w, &spec, InfraLayer::Cluster, 1, &MemoryCheckpoint::new());
    assert!(matches!(
        cloud.provision(cluster.clone()).await,
        Ok(Progress::InProgress { .. })
    ));
    // The engine crashed; the tenant destroys the half-built workspace.
    let destroy = layer_request(&w, &spec, InfraLayer::Cluster, 2, &MemoryCheckpoint::new());
    assert_eq!(
        cloud.destroy(destroy.clone()).await.unwrap(),
        Progress::in_progress_with(Duration::from_secs(4), "cluster CREATING, 4 s left")
    );
    assert_eq!(cloud.api_calls().deletes_of("cluster"), 0);
    ready(&clock, async || cloud.destroy(destroy.clone()).await).await;
    assert_eq!(cloud.api_calls().deletes_of("cluster"), 1);
    assert!(
        cloud
            .live_resources(&w)
            .iter()
            .all(|r| r.layer == InfraLayer::Network)
    );
}

#[tokio::test]
async fn layers_are_built_and_torn_down_in_order() {
    let (cloud, clock) = cloud_with([0, 0, 0], FaultPlan::none());
    let w = ws("acme-prod");
    let spec = spec();
    let pools = layer_request(
        &w,
        &spec,
        InfraLayer::NodePools,
        1,
        &MemoryCheckpoint::new(),
    );
    let outcome = cloud.provision(pools).await;
    assert!(
        matches!(&outcome, Err(Error::Rejected { detail, .. }) if detail.contains("provision layer cluster first")),
        "{outcome:?}"
    );
    provision_all(&cloud, &clock, &w, &spec).await;
    let network = layer_request(&w, &spec, InfraLayer::Network, 2, &MemoryCheckpoint::new());
    let outcome = cloud.destroy(network).await;
    assert!(
        matches!(&outcome, Err(Error::Rejected { detail, .. }) if detail.contains("cluster")),
        "{outcome:?}"
    );
    assert_eq!(cloud.live_resources(&w).len(), 5, "nothing was deleted");
}

#[tokio::test]
async fn updates_resize_add_and_remove_node_pools_and_change_the_version() {
    let (cloud, clock) = cloud_with([0, 5, 2], FaultPlan::none());
    let w = ws("acme-prod");
    let before = spec_with(serde_json::json!([
        { "name": "general", "instance_type": "sim-small", "size": { "min": 1, "desired": 2, "max": 3 } },
        { "name": "batch", "instance_type": "sim-large", "size": { "min": 0, "desired": 1, "max": 4 } }
    ]));
    let states = provision_all(&cloud, &clock, &w, &before).await;
    let general_id = states[2].resources[0].id.clone();

    let mut after = spec_with(serde_json::json!([
        { "name": "general", "instance_type": "sim-small", "size": { "min": 1, "desired": 3, "max": 3 } },
        { "name": "gpu", "instance_type": "sim-gpu", "size": { "min": 0, "desired": 1, "max": 2 } }
    ]));
    after.kubernetes_version = "1.35".parse().unwrap();
    let update = |layer| {
        layer_request(&w, &after, layer, 2, &MemoryCheckpoint::new()).updating_from(before.clone())
    };
    let pools = update(InfraLayer::NodePools);
    let state = ready(&clock, async || cloud.update(pools.clone()).await).await;
    assert_eq!(state.resources.len(), 2);
    let names: Vec<String> = cloud
        .api()
        .list(&w)
        .into_iter()
        .filter(|r| r.tags.layer == InfraLayer::NodePools)
        .map(|r| r.tags.name)
        .collect();
    assert_eq!(
        names,
        [
            "cogrion-acme-prod-nodes-general",
            "cogrion-acme-prod-nodes-gpu"
        ]
    );
    let general = cloud
        .api()
        .get(&ResourceId::new(general_id.clone()))
        .expect("resized in place");
    assert_eq!(general.attrs["desired_size"], "3");
    let calls = cloud.api_calls();
    assert_eq!(calls.updates_of("node-pool"), 1);
    assert_eq!(calls.deletes_of("node-pool"), 1);
    assert_eq!(calls.creates_of("node-pool"), 3);

    let cluster = update(InfraLayer::Cluster);
    assert_eq!(
        cloud.update(cluster.clone()).await.unwrap(),
        Progress::in_progress_with(Duration::from_secs(5), "cluster UPDATING, 5 s left")
    );
    assert!(
        cloud.describe(&w, &after).await.unwrap().cluster.is_some(),
        "an updating cluster is reachable"
    );
    let state = ready(&clock, async || cloud.update(cluster.clone()).await).await;
    let id = ResourceId::new(state.resources[0].id.clone());
    assert_eq!(cloud.api().get(&id).unwrap().attrs["version"], "1.35");
    // Replaying the update changes nothing.
    ready(&clock, async || cloud.update(cluster.clone()).await).await;
    assert_eq!(cloud.api_calls().updates_of("cluster"), 1);
    // A no-op update of the network makes no call.
    let network = update(InfraLayer::Network);
    ready(&clock, async || cloud.update(network.clone()).await).await;
    assert_eq!(cloud.api_calls().total_updates(), 2);
    assert!(cloud.duplicates().is_empty());
}

#[tokio::test]
async fn a_resource_deleted_behind_the_provisioners_back_is_created_again() {
    let (cloud, clock) = cloud_with([0, 0, 0], FaultPlan::none());
    let w = ws("acme-prod");
    let spec = spec();
    let checkpoint = MemoryCheckpoint::new();
    let network = layer_request(&w, &spec, InfraLayer::Network, 1, &checkpoint);
    let first = ready(&clock, async || cloud.provision(network.clone()).await).await;
    let subnet = first.resources.iter().find(|r| r.kind == "subnet").unwrap();
    cloud
        .api()
        .delete(&ResourceId::new(subnet.id.clone()))
        .unwrap();
    let again = ready(&clock, async || cloud.provision(network.clone()).await).await;
    assert_eq!(again.resources.len(), 3);
    assert!(!again.resources.contains(subnet));
    assert_eq!(cloud.api_calls().creates_of("subnet"), 3);
    assert!(cloud.duplicates().is_empty());
}

#[tokio::test]
async fn same_seed_and_calls_make_the_same_fault_decisions() {
    type Run = (
        Vec<InjectedFault>,
        ApiCallCounts,
        Vec<crate::provider::CloudResource>,
        Vec<String>,
    );
    async fn run(seed: u64) -> Run {
        let faults = FaultPlan::transient(seed, 0.25);
        let (cloud, clock) = cloud_with([1, 2, 1], faults.clone());
        let w = ws("acme-prod");
        let spec = spec();
        let mut log = Vec::new();
        for (operation, layer) in InfraLayer::BUILD_ORDER
            .into_iter()
            .map(|l| (1, l))
            .chain([(2, InfraLayer::NodePools), (2, InfraLayer::Cluster)])
        {
            let request = layer_request(&w, &spec, layer, operation, &MemoryCheckpoint::new());
            for _ in 0..200 {
                let outcome = if operation == 1 {
                    cloud
                        .provision(request.clone())
                        .await
                        .map(|p| p.ready().is_some())
                } else {
                    cloud
                        .destroy(request.clone())
                        .await
                        .map(|p| p.ready().is_some())
                };
                log.push(format!("{outcome:?}"));
                match outcome {
                    Ok(true) => break,
                    Ok(false) | Err(_) => clock.advance(Duration::from_millis(700)),
                }
            }
        }
        assert!(cloud.duplicates().is_empty());
        let live = cloud.live_resources(&w);
        (faults.injected(), cloud.api_calls(), live, log)
    }
    let a = run(99).await;
    let b = run(99).await;
    assert!(!a.0.is_empty());
    assert_eq!(a, b);
    let c = run(100).await;
    assert_ne!(a.0, c.0, "another seed decides otherwise");
}

// ---------------------------------------------------------------------------
// The cluster world
// ---------------------------------------------------------------------------

fn handle_one(
    cluster: &SimulatedCluster,
    w: &WorkspaceId,
    kind: &str,
    payload: serde_json::Value,
) -> CommandResult {
    let command = Command::new(
        "c1".parse().unwrap(),
        CommandSeq(1),
        CommandKind::new(kind).unwrap(),
        payload,
    )
    .unwrap();
    cluster.handle(w, &command)
}

fn failed_for_good(result: &CommandResult) -> bool {
    matches!(
        result.outcome,
        CommandOutcome::Failed {
            retryable: false,
            ..
        }
    )
}

#[test]
fn the_cluster_answers_unknown_kinds_and_bad_payloads_with_permanent_failures() {
    let cluster = SimulatedCluster::new();
    let w = ws("acme-prod");
    let unknown = handle_one(&cluster, &w, "helm.rollback", serde_json::json!({}));
    assert!(failed_for_good(&unknown));
    assert!(
        matches!(&unknown.outcome, CommandOutcome::Failed { message, .. } if message.contains("unsupported command kind"))
    );
    assert!(failed_for_good(&handle_one(
        &cluster,
        &w,
        SimulatedCluster::APPLY,
        serde_json::json!({ "name": "web" })
    )));
    assert!(failed_for_good(&handle_one(
        &cluster,
        &w,
        SimulatedCluster::STATUS,
        serde_json::json!({ "name": "Web" })
    )));
    let mut stack = manifests_stack("web", "web-config");
    if let crate::ExecutorSpec::Manifests { documents } = &mut stack.executor {
        documents.push(serde_json::json!({ "apiVersion": "v1", "kind": "Secret" }));
    }
    let bad = handle_one(
        &cluster,
        &w,
        SimulatedCluster::APPLY,
        serde_json::json!({ "stack": stack }),
    );
    assert!(failed_for_good(&bad));
    assert!(cluster.installed(&w).is_empty());
    assert_eq!(cluster.commands_handled().values().sum::<u64>(), 4);
}

#[test]
fn the_cluster_is_idempotent() {
    let cluster = SimulatedCluster::new();
    let w = ws("acme-prod");
    let helm = helm_stack("ingress");
    let web = manifests_stack("web", "web-config");
    for _ in 0..2 {
        for stack in [&helm, &web] {
            let result = handle_one(
                &cluster,
                &w,
                SimulatedCluster::APPLY,
                serde_json::json!({ "stack": stack }),
            );
            assert_eq!(result.outcome, CommandOutcome::Succeeded);
        }
    }
    let expected: Vec<(StackName, u64, Vec<String>)> = vec![
        (
            "ingress".parse().unwrap(),
            2,
            vec!["release/ingress".to_owned()],
        ),
        (
            "web".parse().unwrap(),
            1,
            vec![
                "ConfigMap/web-config".to_owned(),
                "Deployment/web".to_owned(),
            ],
        ),
    ];
    assert_eq!(
        cluster.installed(&w),
        expected,
        "Helm upgrades bump the revision; unchanged manifests do not"
    );
    let status = handle_one(
        &cluster,
        &w,
        SimulatedCluster::STATUS,
        serde_json::json!({ "name": "web" }),
    );
    let status: StackStatus = serde_json::from_value(status.output).unwrap();
    assert_eq!(status, cluster.status(&w, &"web".parse().unwrap()));
    for _ in 0..2 {
        let result = handle_one(
            &cluster,
            &w,
            SimulatedCluster::DESTROY,
            serde_json::json!({ "name": "web" }),
        );
        assert_eq!(result.outcome, CommandOutcome::Succeeded);
        assert_eq!(result.output, serde_json::json!({ "status": "absent" }));
    }
    assert_eq!(cluster.installed(&w).len(), 1);
    assert!(cluster.installed(&ws("other-ws")).is_empty());
    assert!(cluster.duplicates().is_empty());
}

#[test]
fn the_cluster_audit_reports_an_object_held_by_two_stacks() {
    let cluster = SimulatedCluster::new();
    let w = ws("acme-prod");
    for stack in [
        manifests_stack("web", "shared"),
        manifests_stack("api", "shared"),
    ] {
        handle_one(
            &cluster,
            &w,
            SimulatedCluster::APPLY,
            serde_json::json!({ "stack": stack }),
        );
    }
    assert_eq!(cluster.duplicates(), ["acme-prod/ConfigMap/shared"]);
}

// ---------------------------------------------------------------------------
// The executors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn agent_executors_derive_stable_command_ids_and_read_the_results() {
    let cluster = SimulatedCluster::new();
    let helm = SimulatedExecutor::new(ExecutorKind::Helm, cluster.clone(), FaultPlan::none());
    let w = ws("acme-prod");
    let stack = helm_stack("ingress");
    let request = stack_request(&w, &stack, 1);
    let Progress::AwaitCommand(first) = helm.apply(request.clone()).await.unwrap() else {
        panic!("Helm runs in the agent");
    };
    let Progress::AwaitCommand(again) = helm.apply(request.clone()).await.unwrap() else {
        panic!("Helm runs in the agent");
    };
    assert_eq!(first, again, "a replay names the same command");
    assert_eq!(first.kind.as_str(), SimulatedCluster::APPLY);
    let Progress::AwaitCommand(destroy) = helm.destroy(request.clone()).await.unwrap() else {
        panic!("Helm runs in the agent");
    };
    assert_ne!(first.id, destroy.id);
    assert!(cluster.installed(&w).is_empty(), "nothing ran yet");

    let retryable = CommandResult::new(
        first.id.clone(),
        CommandOutcome::Failed {
            message: "timeout".into(),
            retryable: true,
        },
        serde_json::Value::Null,
    )
    .unwrap();
    let outcome = helm
        .apply(request.clone().with_command_result(retryable))
        .await;
    assert!(
        matches!(outcome, Err(Error::Unavailable { .. })),
        "{outcome:?}"
    );
    let permanent = CommandResult::new(
        first.id.clone(),
        CommandOutcome::Failed {
            message: "chart not found".into(),
            retryable: false,
        },
        serde_json::Value::Null,
    )
    .unwrap();
    let outcome = helm
        .apply(request.clone().with_command_result(permanent))
        .await;
    assert!(
        matches!(outcome, Err(Error::Rejected { .. })),
        "{outcome:?}"
    );
    // A result for another command: ask for ours again.
    let other = CommandResult::new(
        destroy.id.clone(),
        CommandOutcome::Succeeded,
        serde_json::Value::Null,
    )
    .unwrap();
    assert_eq!(
        helm.apply(request.clone().with_command_result(other))
            .await
            .unwrap(),
        Progress::AwaitCommand(first.clone())
    );

    let status = through_agent(&cluster, &request, async |r| helm.apply(r).await)
        .await
        .unwrap();
    assert!(matches!(status, StackStatus::Installed { .. }));
    assert_eq!(cluster.installed(&w).len(), 1);
    through_agent(&cluster, &stack_request(&w, &stack, 2), async |r| {
        helm.destroy(r).await
    })
    .await
    .unwrap();
    assert!(cluster.installed(&w).is_empty());
}

#[tokio::test]
async fn capital_letters_in_keys_give_distinct_valid_command_ids() {
    let manifests = SimulatedExecutor::new(
        ExecutorKind::Manifests,
        SimulatedCluster::new(),
        FaultPlan::none(),
    );
    let stack = manifests_stack("web", "web-config");
    let mut ids = Vec::new();
    for key in ["step-a", "Step-A"] {
        let request = StackRequest::new(
            ExecutionTarget::new(ws("acme-prod"), None),
            stack.clone(),
            IdempotencyKey::new(key).unwrap(),
            Arc::new(MemoryCheckpoint::new()),
        );
        match manifests.status(request).await.unwrap() {
            Progress::AwaitCommand(command) => ids.push(command.id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids[0].as_str(), "sim.status.step-a");
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn other_kinds_are_refused_before_any_fault_is_drawn() {
    let faults = FaultPlan::none();
    faults.inject_next(Fault::Throttle);
    let terraform = SimulatedExecutor::new(
        ExecutorKind::Terraform,
        SimulatedCluster::new(),
        faults.clone(),
    );
    let request = stack_request(&ws("acme-prod"), &helm_stack("ingress"), 1);
    assert!(matches!(
        terraform.apply(request.clone()).await,
        Err(Error::InvalidValue(_))
    ));
    assert!(matches!(
        terraform.destroy(request.clone()).await,
        Err(Error::InvalidValue(_))
    ));
    assert!(matches!(
        terraform.status(request).await,
        Err(Error::InvalidValue(_))
    ));
    assert_eq!(faults.calls(), 0);
    assert_eq!(faults.scripted_pending(), 1);
}

#[tokio::test]
async fn a_lost_terraform_apply_did_its_work_and_a_permanent_failure_lasts() {
    let faults = FaultPlan::none();
    let cluster = SimulatedCluster::new();
    let terraform =
        SimulatedExecutor::new(ExecutorKind::Terraform, cluster.clone(), faults.clone());
    let w = ws("acme-prod");
    let stack = terraform_stack("dns");
    let request = stack_request(&w, &stack, 1);
    faults.inject_next_for(stack.name.clone(), Fault::LostResponse);
    assert!(is_lost(&terraform.apply(request.clone()).await));
    let expected: Vec<(StackName, u64, Vec<String>)> =
        vec![("dns".parse().unwrap(), 1, vec!["terraform/dns".to_owned()])];
    assert_eq!(cluster.installed(&w), expected);
    // The replay finds it installed, at the same revision (nothing changed).
    let status = terraform
        .apply(request.clone())
        .await
        .unwrap()
        .ready()
        .unwrap();
    assert_eq!(
        status,
        StackStatus::Installed {
            revision: "1".into(),
            resources: vec!["terraform/dns".into()]
        }
    );

    faults.fail_permanently(stack.name.clone());
    for _ in 0..2 {
        assert!(matches!(
            terraform.destroy(request.clone()).await,
            Err(Error::Rejected { .. })
        ));
        assert!(matches!(
            terraform.status(request.clone()).await,
            Err(Error::Rejected { .. })
        ));
    }
    assert_eq!(cluster.installed(&w).len(), 1);
    faults.clear_permanent(stack.name.clone());
    assert_eq!(
        terraform.destroy(request.clone()).await.unwrap(),
        Progress::Ready(())
    );
    assert_eq!(
        terraform.status(request).await.unwrap(),
        Progress::Ready(StackStatus::Absent)
    );
}

/// A persistent cloud outlives its "process": reopened from its file, it still
/// has the resources being created, finishes them on time, and a provisioning
/// step replayed on it adopts them instead of creating duplicates.
#[tokio::test]
async fn a_persistent_cloud_reopened_from_its_file_keeps_its_resources() {
    let dir = std::env::temp_dir().join(format!("cogrion-sim-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cloud.json");
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let open = || {
        SimulatedCloud::builder()
            .clock(Arc::new(clock.clone()))
            .latency(InfraLayer::Cluster, Duration::from_secs(4))
            .build_persistent(&path)
            .expect("open the cloud's file")
    };
    let w = ws("acme-prod");
    let spec = spec();
    let checkpoint = MemoryCheckpoint::new();
    {
        let cloud = open();
        let network = layer_request(&w, &spec, InfraLayer::Network, 1, &checkpoint);
        ready(&clock, async || cloud.provision(network.clone()).await).await;
        let cluster = layer_request(&w, &spec, InfraLayer::Cluster, 1, &checkpoint);
        let first = cloud.provision(cluster).await.unwrap();
        assert!(matches!(first, Progress::InProgress { .. }), "{first:?}");
        // The process stops here, with the cluster being created.
    }
    let cloud = open();
    let live = cloud.live_resources(&w);
    assert_eq!(
        live.iter().filter(|r| r.kind == "cluster").count(),
        1,
        "the cluster being created survived the restart: {live:?}"
    );
    let cluster = layer_request(&w, &spec, InfraLayer::Cluster, 1, &checkpoint);
    ready(&clock, async || cloud.provision(cluster.clone()).await).await;
    assert_eq!(
        cloud.api_calls().creates_of("cluster"),
        0,
        "adopted, not created again"
    );
    assert!(cloud.duplicates().is_empty());
    assert_eq!(cloud.live_resources(&w).len(), live.len());

    // A file that is not a cloud is refused, not overwritten.
    std::fs::write(&path, b"{not json").unwrap();
    let err = SimulatedCloud::builder()
        .build_persistent(&path)
        .expect_err("a corrupt file");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(std::fs::read(&path).unwrap(), b"{not json");
    std::fs::remove_dir_all(&dir).ok();
}
