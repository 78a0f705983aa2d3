//! [`SimulatedExecutor`]: an [`Executor`] of each kind on the
//! [`SimulatedCluster`].

use async_trait::async_trait;
use cogrion_agent_proto::{CommandId, CommandKind, CommandOutcome, CommandResult};

use super::cluster::{ApplyPayload, SimulatedCluster, StackRef};
use super::faults::{CallFaults, FaultPlan, FaultTarget};
use crate::checkpoint::Progress;
use crate::error::{Error, Result};
use crate::executor::{Executor, ExecutorKind, StackRequest, StackStatus, check_kind};
use crate::ids::IdempotencyKey;
use crate::store::NewCommand;

/// A simulated [`Executor`] of one [`ExecutorKind`], deploying into a
/// [`SimulatedCluster`].
///
/// - **Helm and manifests** stacks are run by the Cluster Agent in the real
///   product, so `apply`, `destroy` and `status` answer
///   [`Progress::AwaitCommand`] with a command of kind
///   [`SimulatedCluster::APPLY`], [`DESTROY`](SimulatedCluster::DESTROY) or
///   [`STATUS`](SimulatedCluster::STATUS) — whatever answers it (a simulated
///   agent, a test's stand-in) passes it to [`SimulatedCluster::handle`]. The
///   command id is derived from the request's idempotency key and the method
///   (`sim.apply.<key>`, `sim.destroy.<key>`, `sim.status.<key>`, with a hash
///   appended when the key has capitals), so a replayed step names the same
///   command. Called again with the command's result, the executor finishes:
///   `Succeeded` is `Ready` with the status from the result's output; `Failed`
///   is [`Error::Unavailable`] if the agent marked it retryable,
///   [`Error::Rejected`] otherwise. A result for another command id is ignored
///   and the executor's own command is asked for again.
/// - **Terraform** stacks run on the control-plane side in the real product: the
///   executor acts on the [`SimulatedCluster`] itself and answers `Ready`.
///
/// Every call first refuses a stack of another kind
/// ([`check_kind`], [`Error::InvalidValue`]) — before any fault is drawn — then
/// asks the [`FaultPlan`] once, with the target
/// [`FaultTarget::Stack`](super::FaultTarget::Stack). A lost response of a
/// Terraform apply or destroy is lost after the change was made.
///
/// ```
/// use cogrion_core::{provider::{Executor, ExecutorKind}};
/// use cogrion_core::sim::{FaultPlan, SimulatedCluster, SimulatedExecutor};
///
/// let cluster = SimulatedCluster::new();
/// let helm = SimulatedExecutor::new(ExecutorKind::Helm, cluster.clone(), FaultPlan::none());
/// assert_eq!(helm.kind(), ExecutorKind::Helm);
/// ```
#[derive(Debug, Clone)]
pub struct SimulatedExecutor {
    kind: ExecutorKind,
    cluster: SimulatedCluster,
    faults: FaultPlan,
}

/// The three methods, as commands name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Apply,
    Destroy,
    Status,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "apply",
            Self::Destroy => "destroy",
            Self::Status => "status",
        }
    }

    fn command_kind(self) -> &'static str {
        match self {
            Self::Apply => SimulatedCluster::APPLY,
            Self::Destroy => SimulatedCluster::DESTROY,
            Self::Status => SimulatedCluster::STATUS,
        }
    }
}

impl SimulatedExecutor {
    /// An executor of `kind` deploying into `cluster`, failing as `faults` says.
    pub fn new(kind: ExecutorKind, cluster: SimulatedCluster, faults: FaultPlan) -> Self {
        Self {
            kind,
            cluster,
            faults,
        }
    }

    /// The cluster world it deploys into.
    pub fn cluster(&self) -> &SimulatedCluster {
        &self.cluster
    }

    /// The fault plan (a handle: changes apply to the running executor).
    pub fn faults(&self) -> &FaultPlan {
        &self.faults
    }

    /// The id of the command `verb` asks for under `key`.
    fn command_id(key: &IdempotencyKey, verb: Verb) -> Result<CommandId> {
        let key = key.as_str();
        let lower = key.to_ascii_lowercase();
        let id = if lower == key {
            format!("sim.{}.{lower}", verb.as_str())
        } else {
            // Keys differing only in case must not share a command.
            format!("sim.{}.{lower}.{:016x}", verb.as_str(), fnv1a_64(key))
        };
        Ok(CommandId::new(id)?)
    }

    fn service(&self) -> &'static str {
        match self.kind {
            ExecutorKind::Helm => "sim-helm",
            ExecutorKind::Manifests => "sim-manifests",
            ExecutorKind::Terraform => "sim-terraform",
        }
    }

    /// Refuses other kinds, then draws the call's fault.
    fn begin(&self, request: &StackRequest, verb: Verb) -> Result<CallFaults> {
        check_kind(self.kind, &request.stack)?;
        let target = FaultTarget::Stack(request.stack.name.clone());
        CallFaults::begin(&self.faults, self.service(), verb.as_str(), &target)
    }

    /// One call of an agent-run executor: ask for the command, or read its result.
    fn through_agent(&self, request: &StackRequest, verb: Verb) -> Result<Progress<StackStatus>> {
        let id = Self::command_id(&request.idempotency_key, verb)?;
        match &request.command_result {
            Some(result) if result.id == id => self.read_result(result, verb).map(Progress::Ready),
            _ => {
                let payload = match verb {
                    Verb::Apply => serde_json::to_value(ApplyPayload {
                        stack: request.stack.clone(),
                    }),
                    Verb::Destroy | Verb::Status => serde_json::to_value(StackRef {
                        name: request.stack.name.clone(),
                    }),
                }
                .map_err(|e| Error::Rejected {
                    service: self.service().into(),
                    detail: format!("the stack cannot be put in a command: {e}"),
                    source: None,
                })?;
                Ok(Progress::AwaitCommand(NewCommand {
                    id,
                    kind: CommandKind::new(verb.command_kind())?,
                    payload,
                }))
            }
        }
    }

    /// What the agent's answer to the `verb` command means.
    fn read_result(&self, result: &CommandResult, verb: Verb) -> Result<StackStatus> {
        let service = self.service();
        match &result.outcome {
            CommandOutcome::Failed {
                message,
                retryable: true,
            } => Err(Error::Unavailable {
                service: service.into(),
                detail: format!("command {} failed: {message}", result.id),
                source: None,
            }),
            CommandOutcome::Failed {
                message,
                retryable: false,
            } => Err(Error::Rejected {
                service: service.into(),
                detail: format!("command {} failed: {message}", result.id),
                source: None,
            }),
            CommandOutcome::Succeeded => {
                let status: StackStatus =
                    serde_json::from_value(result.output.clone()).map_err(|e| Error::Rejected {
                        service: service.into(),
                        detail: format!(
                            "command {} succeeded but its output is not a stack status: {e}",
                            result.id
                        ),
                        source: None,
                    })?;
                let expected = match verb {
                    Verb::Apply => matches!(status, StackStatus::Installed { .. }),
                    Verb::Destroy => status == StackStatus::Absent,
                    Verb::Status => true,
                };
                if !expected {
                    return Err(Error::Rejected {
                        service: service.into(),
                        detail: format!(
                            "command {} succeeded but reports the stack {status:?} after {}",
                            result.id,
                            verb.as_str()
                        ),
                        source: None,
                    });
                }
                Ok(status)
            }
        }
    }

    /// One call of the control-plane executor (Terraform).
    fn directly(
        &self,
        request: &StackRequest,
        verb: Verb,
        call: &mut CallFaults,
    ) -> Result<StackStatus> {
        let ws = &request.target.workspace;
        match verb {
            Verb::Apply => {
                let status = self
                    .cluster
                    .apply_stack(ws, &request.stack)
                    .map_err(|detail| Error::Rejected {
                        service: self.service().into(),
                        detail,
                        source: None,
                    })?;
                call.changed()?;
                Ok(status)
            }
            Verb::Destroy => {
                let status = self.cluster.remove_stack(ws, &request.stack.name);
                call.changed()?;
                Ok(status)
            }
            Verb::Status => Ok(self.cluster.status(ws, &request.stack.name)),
        }
    }

    async fn run(&self, request: StackRequest, verb: Verb) -> Result<Progress<StackStatus>> {
        let mut call = self.begin(&request, verb)?;
        let result = match self.kind {
            ExecutorKind::Helm | ExecutorKind::Manifests => self.through_agent(&request, verb),
            ExecutorKind::Terraform => self
                .directly(&request, verb, &mut call)
                .map(Progress::Ready),
        };
        call.finish(result)
    }
}

#[async_trait]
impl Executor for SimulatedExecutor {
    fn kind(&self) -> ExecutorKind {
        self.kind
    }

    async fn apply(&self, request: StackRequest) -> Result<Progress<StackStatus>> {
        self.run(request, Verb::Apply).await
    }

    async fn destroy(&self, request: StackRequest) -> Result<Progress<()>> {
        Ok(match self.run(request, Verb::Destroy).await? {
            Progress::Ready(_) => Progress::Ready(()),
            Progress::InProgress {
                poll_after,
                message,
            } => Progress::InProgress {
                poll_after,
                message,
            },
            Progress::AwaitCommand(command) => Progress::AwaitCommand(command),
        })
    }

    async fn status(&self, request: StackRequest) -> Result<Progress<StackStatus>> {
        self.run(request, Verb::Status).await
    }
}

fn fnv1a_64(s: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    s.bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}
