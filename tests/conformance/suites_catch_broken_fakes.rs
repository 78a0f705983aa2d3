//! Tests of the conformance suites themselves: correct fakes must pass them, and
//! fakes that break one guarantee each must make them panic, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cogrion_core::conformance::{
    SuiteOptions, executor_suite, provisioner_suite, random_workspace_id,
};
use cogrion_core::proto::{CommandId, CommandKind, CommandOutcome, CommandResult};
use cogrion_core::{
    Error, Resource, Result, StackName, StackSpec, WorkspaceId, WorkspaceSpec,
    provider::{
        CloudProvisioner, CloudResource, ClusterAccess, ExecutionTarget, Executor, ExecutorKind,
        IdempotencyKey, InfraDescription, InfraLayer, LayerRequest, LayerState, Progress,
        StackRequest, StackStatus, check_kind,
    },
    store::NewCommand,
};
use futures::FutureExt;

// ---------------------------------------------------------------------------
// Cloud provisioner fakes
// ---------------------------------------------------------------------------

/// How a [`FakeCloud`] misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloudQuirk {
    /// None: the fake keeps every guarantee.
    None,
    /// Every provision call creates resources with new ids (not idempotent).
    NewIdEveryCall,
    /// Provision remembers what it built only in the step's checkpoint, so a
    /// replay with a fresh checkpoint (a crash before the save) builds again.
    OnlyCheckpointRemembers,
    /// Destroying a layer that is gone fails with `Error::NotFound`.
    NotFoundWhenGone,
    /// Provision never finishes: it answers `InProgress` for ever.
    NeverFinishes,
}

/// A fake [`CloudProvisioner`], used only to test the conformance suite itself.
///
/// It keeps each workspace's resources in memory, with ids derived from the
/// workspace, layer and node pool names, and answers `InProgress` to the first
/// provision call of each step (idempotency key) so that the suite's polling is
/// exercised. A [`CloudQuirk`] other than `None` makes it break one guarantee.
#[derive(Debug)]
struct FakeCloud {
    quirk: CloudQuirk,
    resources: Mutex<BTreeMap<(WorkspaceId, InfraLayer), Vec<CloudResource>>>,
    started: Mutex<BTreeSet<IdempotencyKey>>,
    serial: AtomicUsize,
}

impl FakeCloud {
    fn new(quirk: CloudQuirk) -> Self {
        Self {
            quirk,
            resources: Mutex::default(),
            started: Mutex::default(),
            serial: AtomicUsize::new(0),
        }
    }

    fn access(ws: &WorkspaceId) -> ClusterAccess {
        ClusterAccess {
            name: format!("{ws}-cluster"),
            endpoint: format!("https://{ws}.cluster.sim.invalid"),
            ca_bundle_pem: "-----BEGIN CERTIFICATE-----\nZmFrZQ==\n-----END CERTIFICATE-----\n"
                .into(),
        }
    }

    /// The resources `layer` of `ws` is made of under `spec`.
    fn wanted(
        &self,
        ws: &WorkspaceId,
        spec: &WorkspaceSpec,
        layer: InfraLayer,
    ) -> Vec<CloudResource> {
        let suffix = match self.quirk {
            CloudQuirk::NewIdEveryCall | CloudQuirk::OnlyCheckpointRemembers => {
                format!("-{}", self.serial.fetch_add(1, Ordering::SeqCst))
            }
            _ => String::new(),
        };
        let resource = |kind: &str, id: String| CloudResource {
            layer,
            kind: kind.into(),
            id: format!("{id}{suffix}"),
        };
        match layer {
            InfraLayer::Network => vec![
                resource("vpc", format!("{ws}-vpc")),
                resource("subnet", format!("{ws}-subnet-a")),
            ],
            InfraLayer::Cluster => vec![resource("cluster", format!("{ws}-cluster"))],
            InfraLayer::NodePools => spec
                .node_pools
                .iter()
                .map(|p| resource("node-pool", format!("{ws}-{}", p.name)))
                .collect(),
        }
    }

    fn state(
        &self,
        ws: &WorkspaceId,
        layer: InfraLayer,
        resources: Vec<CloudResource>,
    ) -> LayerState {
        let cluster = (layer == InfraLayer::Cluster).then(|| Self::access(ws));
        LayerState {
            layer,
            resources,
            cluster,
        }
    }

    fn build(&self, request: &LayerRequest) -> LayerState {
        let wanted = self.wanted(&request.workspace, &request.spec, request.layer);
        let mut all = self.resources.lock().unwrap();
        let held = all
            .entry((request.workspace.clone(), request.layer))
            .or_default();
        if matches!(
            self.quirk,
            CloudQuirk::NewIdEveryCall | CloudQuirk::OnlyCheckpointRemembers
        ) {
            held.extend(wanted.iter().cloned());
        } else {
            *held = wanted.clone();
        }
        self.state(&request.workspace, request.layer, wanted)
    }
}

#[async_trait]
impl CloudProvisioner for FakeCloud {
    async fn provision(&self, request: LayerRequest) -> Result<Progress<LayerState>> {
        let first_call = self
            .started
            .lock()
            .unwrap()
            .insert(request.idempotency_key.clone());
        if first_call || self.quirk == CloudQuirk::NeverFinishes {
            return Ok(Progress::in_progress(Duration::from_millis(5)));
        }
        if self.quirk == CloudQuirk::OnlyCheckpointRemembers {
            if let Some(saved) = request.checkpoint.load().await? {
                let state = serde_json::from_value(saved).expect("the fake's own checkpoint");
                return Ok(Progress::Ready(state));
            }
            let state = self.build(&request);
            let saved = serde_json::to_value(&state).expect("layer states serialise");
            request.checkpoint.save(saved).await?;
            return Ok(Progress::Ready(state));
        }
        Ok(Progress::Ready(self.build(&request)))
    }

    async fn update(&self, request: LayerRequest) -> Result<Progress<LayerState>> {
        Ok(Progress::Ready(self.build(&request)))
    }

    async fn destroy(&self, request: LayerRequest) -> Result<Progress<()>> {
        let removed = self
            .resources
            .lock()
            .unwrap()
            .remove(&(request.workspace.clone(), request.layer));
        if removed.is_none() && self.quirk == CloudQuirk::NotFoundWhenGone {
            return Err(Error::NotFound(Resource::Provider(format!(
                "{} of workspace {}",
                request.layer, request.workspace
            ))));
        }
        Ok(Progress::Ready(()))
    }

    async fn describe(
        &self,
        workspace: &WorkspaceId,
        _spec: &WorkspaceSpec,
    ) -> Result<InfraDescription> {
        let all = self.resources.lock().unwrap();
        let mut resources: Vec<CloudResource> = all
            .iter()
            .filter(|((ws, _), _)| ws == workspace)
            .flat_map(|(_, r)| r.iter().cloned())
            .collect();
        resources.sort();
        let cluster = all
            .contains_key(&(workspace.clone(), InfraLayer::Cluster))
            .then(|| Self::access(workspace));
        Ok(InfraDescription { resources, cluster })
    }
}

// ---------------------------------------------------------------------------
// Executor fakes
// ---------------------------------------------------------------------------

/// How a [`FakeManifests`] misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExecutorQuirk {
    /// None: the fake keeps every guarantee.
    None,
    /// Destroy answers `Ready` but leaves the stack installed.
    KeepsStackOnDestroy,
    /// Stacks of other kinds are not refused.
    IgnoresKind,
}

/// A fake manifests [`Executor`], used only to test the conformance suite itself.
///
/// Like the real one, it asks the agent to do the work: `apply` and `destroy`
/// first answer [`Progress::AwaitCommand`], and finish when called again with a
/// successful command result. What is installed is kept in memory.
#[derive(Debug)]
struct FakeManifests {
    quirk: ExecutorQuirk,
    installed: Mutex<BTreeMap<(WorkspaceId, StackName), StackStatus>>,
}

impl FakeManifests {
    fn new(quirk: ExecutorQuirk) -> Self {
        Self {
            quirk,
            installed: Mutex::default(),
        }
    }

    /// The command to queue for `request`, or `None` once the agent answered it.
    fn command(request: &StackRequest, verb: &str) -> Result<Option<NewCommand>> {
        match &request.command_result {
            Some(result) => match &result.outcome {
                CommandOutcome::Succeeded => Ok(None),
                CommandOutcome::Failed { message, .. } => Err(Error::Rejected {
                    service: "fake agent".into(),
                    detail: message.clone(),
                    source: None,
                }),
            },
            None => Ok(Some(NewCommand {
                id: CommandId::new(format!(
                    "{}.{verb}",
                    request.idempotency_key.as_str().to_lowercase()
                ))?,
                kind: CommandKind::new(format!("manifests.{verb}"))?,
                payload: serde_json::to_value(&request.stack.executor).expect("specs serialise"),
            })),
        }
    }

    fn check_kind(&self, stack: &StackSpec) -> Result<()> {
        if self.quirk != ExecutorQuirk::IgnoresKind {
            check_kind(self.kind(), stack)?;
        }
        Ok(())
    }

    fn resources(stack: &StackSpec) -> Vec<String> {
        match &stack.executor {
            cogrion_core::ExecutorSpec::Manifests { documents } => documents
                .iter()
                .map(|d| {
                    format!(
                        "{}/{}",
                        d["kind"].as_str().unwrap_or("?"),
                        d["metadata"]["name"].as_str().unwrap_or("?")
                    )
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[async_trait]
impl Executor for FakeManifests {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Manifests
    }

    async fn apply(&self, request: StackRequest) -> Result<Progress<StackStatus>> {
        self.check_kind(&request.stack)?;
        if let Some(command) = Self::command(&request, "apply")? {
            return Ok(Progress::AwaitCommand(command));
        }
        let status = StackStatus::Installed {
            revision: format!(
                "{:x}",
                serde_json::to_string(&request.stack.executor)
                    .unwrap()
                    .len()
            ),
            resources: Self::resources(&request.stack),
        };
        self.installed.lock().unwrap().insert(
            (request.target.workspace.clone(), request.stack.name.clone()),
            status.clone(),
        );
        Ok(Progress::Ready(status))
    }

    async fn destroy(&self, request: StackRequest) -> Result<Progress<()>> {
        self.check_kind(&request.stack)?;
        if let Some(command) = Self::command(&request, "delete")? {
            return Ok(Progress::AwaitCommand(command));
        }
        if self.quirk != ExecutorQuirk::KeepsStackOnDestroy {
            self.installed
                .lock()
                .unwrap()
                .remove(&(request.target.workspace.clone(), request.stack.name.clone()));
        }
        Ok(Progress::Ready(()))
    }

    async fn status(&self, request: StackRequest) -> Result<Progress<StackStatus>> {
        self.check_kind(&request.stack)?;
        let installed = self.installed.lock().unwrap();
        Ok(Progress::Ready(
            installed
                .get(&(request.target.workspace.clone(), request.stack.name.clone()))
                .cloned()
                .unwrap_or(StackStatus::Absent),
        ))
    }
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

fn workspace_spec() -> WorkspaceSpec {
    cogrion_core::conformance::sample_workspace_spec()
}

fn manifests_stack() -> StackSpec {
    serde_json::from_value(serde_json::json!({
        "name": "web",
        "kind": "application",
        "executor": {
            "type": "manifests",
            "documents": [
                { "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "web-config" } },
                { "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web" } }
            ]
        }
    }))
    .expect("a valid stack spec")
}

fn target() -> ExecutionTarget {
    ExecutionTarget::new(random_workspace_id("conf"), None)
}

/// An agent stand-in that runs every command successfully, counting them.
fn agent_options(commands: Arc<AtomicUsize>) -> SuiteOptions {
    SuiteOptions::default().with_agent(move |command: NewCommand| {
        commands.fetch_add(1, Ordering::SeqCst);
        async move {
            CommandResult::new(command.id, CommandOutcome::Succeeded, serde_json::json!({}))
                .unwrap()
        }
        .boxed()
    })
}

/// Runs `suite`, expecting it to panic with a message containing `expected`.
async fn expect_panic(suite: impl Future<Output = ()>, expected: &str) {
    let Err(panic) = AssertUnwindSafe(suite).catch_unwind().await else {
        panic!("the suite passed; it should have failed with {expected:?}");
    };
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        message.contains(expected),
        "the suite failed with {message:?}; expected a message containing {expected:?}"
    );
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn correct_provisioner_passes_and_polling_uses_the_sleep_option() {
    let sleeps = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sleeps);
    let options = SuiteOptions::default().with_sleep(move |_delay| {
        counter.fetch_add(1, Ordering::SeqCst);
        futures::future::ready(()).boxed()
    });
    let cloud = FakeCloud::new(CloudQuirk::None);
    provisioner_suite(&cloud, &workspace_spec(), &options).await;
    assert!(
        sleeps.load(Ordering::SeqCst) > 0,
        "the fake answers InProgress; the suite must have waited"
    );
}

#[tokio::test]
async fn non_idempotent_provisioner_fails() {
    let cloud = FakeCloud::new(CloudQuirk::NewIdEveryCall);
    expect_panic(
        provisioner_suite(&cloud, &workspace_spec(), &SuiteOptions::default()),
        "guarantee \"Idempotent and resumable\" broken",
    )
    .await;
}

#[tokio::test]
async fn provisioner_relying_on_its_checkpoint_alone_fails() {
    let cloud = FakeCloud::new(CloudQuirk::OnlyCheckpointRemembers);
    expect_panic(
        provisioner_suite(&cloud, &workspace_spec(), &SuiteOptions::default()),
        "a fresh checkpoint (a crash before the checkpoint was saved) returned other resources",
    )
    .await;
}

#[tokio::test]
async fn provisioner_failing_to_destroy_what_is_gone_fails() {
    let cloud = FakeCloud::new(CloudQuirk::NotFoundWhenGone);
    expect_panic(
        provisioner_suite(&cloud, &workspace_spec(), &SuiteOptions::default()),
        "guarantee \"Destroy converges\" broken",
    )
    .await;
}

#[tokio::test]
async fn provisioner_that_never_finishes_fails_after_max_polls() {
    let cloud = FakeCloud::new(CloudQuirk::NeverFinishes);
    let options = SuiteOptions::default().with_max_polls(3);
    expect_panic(
        provisioner_suite(&cloud, &workspace_spec(), &options),
        "SuiteOptions::max_polls",
    )
    .await;
}

#[tokio::test]
async fn correct_executor_passes_with_an_agent_stand_in() {
    let commands = Arc::new(AtomicUsize::new(0));
    let executor = FakeManifests::new(ExecutorQuirk::None);
    executor_suite(
        &executor,
        &target(),
        &manifests_stack(),
        &agent_options(Arc::clone(&commands)),
    )
    .await;
    assert!(
        commands.load(Ordering::SeqCst) > 0,
        "the fake asks for commands; the stand-in must have run them"
    );
}

#[tokio::test]
async fn executor_whose_status_survives_destroy_fails() {
    let executor = FakeManifests::new(ExecutorQuirk::KeepsStackOnDestroy);
    let options = agent_options(Arc::new(AtomicUsize::new(0)));
    expect_panic(
        executor_suite(&executor, &target(), &manifests_stack(), &options),
        "guarantee \"Truthful status\" broken",
    )
    .await;
}

#[tokio::test]
async fn executor_accepting_other_kinds_fails() {
    let executor = FakeManifests::new(ExecutorQuirk::IgnoresKind);
    let options = agent_options(Arc::new(AtomicUsize::new(0)));
    expect_panic(
        executor_suite(&executor, &target(), &manifests_stack(), &options),
        "guarantee \"Own kind only\" broken",
    )
    .await;
}

#[tokio::test]
async fn executor_asking_for_a_command_without_a_stand_in_fails_clearly() {
    let executor = FakeManifests::new(ExecutorQuirk::None);
    expect_panic(
        executor_suite(
            &executor,
            &target(),
            &manifests_stack(),
            &SuiteOptions::default(),
        ),
        "SuiteOptions::with_agent",
    )
    .await;
}

#[tokio::test]
async fn executor_suite_refuses_a_stack_of_another_kind() {
    let executor = FakeManifests::new(ExecutorQuirk::None);
    let mut stack = manifests_stack();
    stack.executor = cogrion_core::ExecutorSpec::Helm {
        source: "oci://registry.invalid/charts/web".into(),
        version: "1.0.0".into(),
        values: Default::default(),
    };
    let options = agent_options(Arc::new(AtomicUsize::new(0)));
    expect_panic(
        executor_suite(&executor, &target(), &stack, &options),
        "pass a stack of the executor's kind",
    )
    .await;
}
