//! Agents without a network: an [`InProcessTransport`] and a fleet of
//! [`SimulatedAgents`] that bootstrap, poll and answer commands through the same
//! [`AgentGateway`] paths the HTTPS transport uses.
//!
//! The fleet is also the [`AgentInstaller`]: "installing" an agent hands it its
//! bootstrap token; uninstalling removes it. Agents are stepped explicitly with
//! [`SimulatedAgents::step_all`] (deterministic, for simulations) or run by a
//! background task with [`SimulatedAgents::run`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cogrion_agent_proto::{Command, CommandId, CommandOutcome, CommandResult};
use tokio::sync::Notify;

use crate::agent::{AgentGateway, AgentInstall, AgentInstaller, BootstrapToken};
use crate::checkpoint::Progress;
use crate::error::{Error, Result};
use crate::ids::WorkspaceId;
use crate::lock;
use crate::provisioner::ClusterAccess;
use crate::store::{CertSerial, KeyDigest};
use crate::transport::{AgentPresence, AgentTransport};

/// An [`AgentTransport`] for agents in the same process: notifications wake the
/// [`SimulatedAgents`] fleet, and disconnecting drops the agent's session.
#[derive(Debug, Clone, Default)]
pub struct InProcessTransport {
    gateway: Arc<Mutex<Option<AgentGateway>>>,
    notify: Arc<Notify>,
    disconnected: Arc<Mutex<Vec<WorkspaceId>>>,
    /// Workspaces with commands queued since their agent last polled.
    notified: Arc<Mutex<std::collections::HashSet<WorkspaceId>>>,
}

impl InProcessTransport {
    /// A transport; connect it to a gateway with [`attach`](Self::attach).
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes agent requests to `gateway`.
    pub fn attach(&self, gateway: AgentGateway) {
        *lock(&self.gateway) = Some(gateway);
    }

    fn gateway(&self) -> Result<AgentGateway> {
        lock(&self.gateway)
            .clone()
            .ok_or_else(|| Error::Unavailable {
                service: "in-process transport".into(),
                detail: "no gateway attached".into(),
                source: None,
            })
    }

    /// Waits until commands were queued for some agent (or `timeout` passed).
    pub async fn wait_for_commands(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }

    fn take_notified(&self) -> std::collections::HashSet<WorkspaceId> {
        std::mem::take(&mut *lock(&self.notified))
    }

    fn take_disconnects(&self) -> Vec<WorkspaceId> {
        std::mem::take(&mut *lock(&self.disconnected))
    }
}

#[async_trait]
impl AgentTransport for InProcessTransport {
    async fn notify(&self, workspace: &WorkspaceId) -> Result<()> {
        lock(&self.notified).insert(workspace.clone());
        self.notify.notify_waiters();
        Ok(())
    }

    async fn disconnect(&self, workspace: &WorkspaceId, reason: &str) -> Result<()> {
        tracing::info!(workspace = %workspace, reason, "disconnecting agent");
        lock(&self.disconnected).push(workspace.clone());
        if let Ok(g) = self.gateway() {
            g.forget(workspace);
        }
        Ok(())
    }

    async fn presence(&self, workspace: &WorkspaceId) -> Result<Option<AgentPresence>> {
        Ok(self.gateway()?.presence(workspace))
    }
}

/// How a simulated agent carries out a command: given its workspace and the
/// command, the result.
pub type CommandHandler = Arc<dyn Fn(&WorkspaceId, &Command) -> CommandResult + Send + Sync>;

/// One simulated Cluster Agent.
#[derive(Debug)]
struct Agent {
    token: Option<BootstrapToken>,
    serial: Option<CertSerial>,
    /// The digest of the key it asks certificates for (kept across a lost
    /// answer, as a real agent keeps its key on disk before it sends the CSR).
    key: KeyDigest,
    /// Answers to its bootstrap still to lose on the way back.
    lose_bootstraps: u32,
    /// Results of commands already run, by id: a redelivered command is answered
    /// again without being run twice.
    done: BTreeMap<CommandId, CommandResult>,
    /// Commands started and not finished yet (see
    /// [`SimulatedAgents::hold_commands`]).
    running: Vec<Running>,
    /// How many rounds each of the next `hold.1` commands it starts runs
    /// before it finishes (later ones finish in the round they start).
    hold: (u32, u32),
    executed: u64,
    cancelled: u64,
}

/// A command a simulated agent is running.
#[derive(Debug)]
struct Running {
    command: Command,
    rounds_left: u32,
}

/// The step a command belongs to: its id without the engine's attempt suffix
/// (`.N`), so that two attempts of one step share it.
fn step_of(id: &CommandId) -> &str {
    let s = id.as_str();
    match s.rsplit_once('.') {
        Some((base, n)) if n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => s,
    }
}

impl Default for Agent {
    fn default() -> Self {
        Self {
            token: None,
            serial: None,
            key: KeyDigest(rand::random()),
            lose_bootstraps: 0,
            done: BTreeMap::new(),
            running: Vec::new(),
            hold: (0, 0),
            executed: 0,
            cancelled: 0,
        }
    }
}

/// A fleet of simulated Cluster Agents, one per installed workspace, and the
/// [`AgentInstaller`] that installs them.
#[derive(Clone)]
pub struct SimulatedAgents {
    transport: InProcessTransport,
    handler: CommandHandler,
    agents: Arc<Mutex<HashMap<WorkspaceId, Agent>>>,
    /// Workspaces whose agents stay silent (a network partition).
    unreachable: Arc<Mutex<Vec<WorkspaceId>>>,
    /// Commands executed by agents that were uninstalled since.
    retired: Arc<Mutex<HashMap<WorkspaceId, u64>>>,
    /// How many bootstrap answers every agent installed from now on loses.
    lost_on_install: Arc<std::sync::atomic::AtomicU32>,
    /// How long (rounds) and how many commands agents installed from now on
    /// hold.
    hold_on_install: Arc<Mutex<(u32, u32)>>,
    /// Pairs of commands of one step that ran at once: (running, started).
    overlaps: Arc<Mutex<Vec<(CommandId, CommandId)>>>,
    /// Whether agents ignore cancel requests.
    deaf_to_cancel: Arc<std::sync::atomic::AtomicBool>,
    /// Cancel requests answered by any agent, ever.
    cancels: Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for SimulatedAgents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedAgents")
            .field("agents", &lock(&self.agents).len())
            .finish()
    }
}

impl SimulatedAgents {
    /// A fleet speaking through `transport`, running commands with `handler`
    /// (besides the built-in `health` and `describe`).
    pub fn new(transport: InProcessTransport, handler: CommandHandler) -> Self {
        Self {
            transport,
            handler,
            agents: Arc::default(),
            unreachable: Arc::default(),
            retired: Arc::default(),
            lost_on_install: Arc::default(),
            hold_on_install: Arc::default(),
            overlaps: Arc::default(),
            deaf_to_cancel: Arc::default(),
            cancels: Arc::default(),
        }
    }

    /// Makes every agent ignore cancel requests (`true`), as an agent that
    /// predates them would, or honour them again.
    pub fn ignore_cancels(&self, ignore: bool) {
        self.deaf_to_cancel
            .store(ignore, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes every agent installed from now on run each of the first `count`
    /// commands it starts for `rounds` of its rounds before it answers (the
    /// default: none; every command is answered in the round it arrives): slow
    /// commands, which a short command deadline gives up on while they run.
    /// The agent honours cancel requests: a running command is stopped and
    /// answered as failed.
    pub fn hold_commands(&self, rounds: u32, count: u32) {
        *lock(&self.hold_on_install) = (rounds, count);
    }

    /// Pairs of commands of one step (two attempts) that ran at the same time
    /// on an agent: (the one running, the one started beside it). Empty when
    /// no command ever ran next to its retry.
    pub fn overlaps(&self) -> Vec<(CommandId, CommandId)> {
        lock(&self.overlaps).clone()
    }

    /// How many commands `workspace`'s current agent stopped (or never ran)
    /// on a cancel request.
    pub fn cancelled(&self, workspace: &WorkspaceId) -> u64 {
        lock(&self.agents).get(workspace).map_or(0, |a| a.cancelled)
    }

    /// How many cancel requests the fleet's agents answered, all told (those
    /// answered with a result they had included).
    pub fn cancel_requests_answered(&self) -> u64 {
        self.cancels.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Makes `workspace`'s agent silent (`true`) or reachable again.
    pub fn set_unreachable(&self, workspace: &WorkspaceId, unreachable: bool) {
        let mut u = lock(&self.unreachable);
        u.retain(|w| w != workspace);
        if unreachable {
            u.push(workspace.clone());
        }
    }

    /// Whether `workspace` has an installed agent.
    pub fn is_installed(&self, workspace: &WorkspaceId) -> bool {
        lock(&self.agents).contains_key(workspace)
    }

    /// How many commands `workspace`'s agents have executed, including agents
    /// uninstalled since (not counting redeliveries answered from memory).
    pub fn executed(&self, workspace: &WorkspaceId) -> u64 {
        let live = lock(&self.agents).get(workspace).map_or(0, |a| a.executed);
        live + lock(&self.retired).get(workspace).copied().unwrap_or(0)
    }

    /// Adds `workspace`'s agent as one that already holds the certificate
    /// `serial`: an agent that kept running in its cluster while the control
    /// plane was replaced (restarted, upgraded). It polls from its next round.
    pub fn resume(&self, workspace: WorkspaceId, serial: CertSerial) {
        let mut agents = lock(&self.agents);
        let agent = agents.entry(workspace).or_default();
        agent.serial = Some(serial);
        agent.token = None;
    }

    /// Makes every agent installed (or re-installed with a new token) from
    /// now on lose the answers to its first `count` bootstraps on their way
    /// back (the exchange happened; the agent never heard): it keeps its
    /// token and key and asks again, as a real agent does.
    pub fn lose_bootstrap_answers(&self, count: u32) {
        self.lost_on_install
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }

    /// Forgets every agent's memory of finished commands, as a restarted agent
    /// process would (the control plane's queue still redelivers what is not
    /// answered).
    pub fn restart_all(&self) {
        for agent in lock(&self.agents).values_mut() {
            agent.done.clear();
            agent.running.clear();
            agent.serial = None;
        }
    }

    /// One round for every installed, reachable agent: bootstrap if needed, poll,
    /// run what was delivered, post the results. Returns how many requests failed
    /// (they are retried on the next round).
    pub async fn step_all(&self) -> usize {
        self.step(None, 1).await
    }

    /// One round for the agents that have something to do — those still to
    /// bootstrap and those whose workspace was notified of new commands — as long
    /// polls would: an idle agent costs nothing.
    pub async fn step_due(&self) -> usize {
        self.step(Some(self.due()), 1).await
    }

    /// The agents with something to do: those whose workspace was notified
    /// of new commands, those still to bootstrap and those running commands.
    fn due(&self) -> std::collections::HashSet<WorkspaceId> {
        let mut due = self.transport.take_notified();
        due.extend(
            lock(&self.agents)
                .iter()
                .filter(|(_, a)| (a.serial.is_none() && a.token.is_some()) || !a.running.is_empty())
                .map(|(w, _)| w.clone()),
        );
        due
    }

    /// One round (every agent, or only the `due` ones), `parallel` agents at
    /// a time: real agents are separate processes whose requests overlap.
    async fn step(
        &self,
        only: Option<std::collections::HashSet<WorkspaceId>>,
        parallel: usize,
    ) -> usize {
        for w in self.transport.take_disconnects() {
            if let Some(a) = lock(&self.agents).get_mut(&w) {
                a.serial = None;
            }
        }
        let Ok(gateway) = self.transport.gateway() else {
            return 0;
        };
        let workspaces: Vec<WorkspaceId> = match only {
            Some(due) => due
                .into_iter()
                .filter(|w| lock(&self.agents).contains_key(w))
                .collect(),
            None => lock(&self.agents).keys().cloned().collect(),
        };
        use futures::StreamExt;
        let gateway = &gateway;
        futures::stream::iter(workspaces)
            .filter(|ws| std::future::ready(!lock(&self.unreachable).contains(ws)))
            .map(|ws| async move {
                let failed = self.step_one(gateway, &ws).await;
                if let Err(e) = &failed {
                    tracing::debug!(workspace = %ws, error = %e, "simulated agent request failed");
                }
                usize::from(failed.is_err())
            })
            .buffer_unordered(parallel.max(1))
            .fold(0, |failures, failed| std::future::ready(failures + failed))
            .await
    }

    async fn step_one(&self, gateway: &AgentGateway, ws: &WorkspaceId) -> Result<()> {
        let (token, serial, key) = match lock(&self.agents).get(ws) {
            Some(a) => (a.token.clone(), a.serial.clone(), a.key),
            None => return Ok(()),
        };
        let serial = match (serial, token) {
            (Some(serial), _) => serial,
            (None, Some(token)) => {
                let credential = gateway.bootstrap(ws, &token, key).await?;
                if let Some(a) = lock(&self.agents).get_mut(ws) {
                    if a.lose_bootstraps > 0 {
                        // The answer is lost on the way back: the agent keeps
                        // its token and key and asks again next round.
                        a.lose_bootstraps -= 1;
                        return Err(Error::Unavailable {
                            service: "simulated network".into(),
                            detail: "the bootstrap answer was lost".into(),
                            source: None,
                        });
                    }
                    a.serial = Some(credential.serial.clone());
                    a.token = None; // used once
                }
                credential.serial
            }
            (None, None) => return Ok(()),
        };
        let delivery = match gateway.poll(&serial).await {
            Ok(d) => d,
            Err(
                e @ (Error::CredentialRevoked { .. }
                | Error::CredentialExpired { .. }
                | Error::NotFound(_)),
            ) => {
                if let Some(a) = lock(&self.agents).get_mut(ws) {
                    a.serial = None;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        // Cancel requests first: answered with the result if the agent has
        // one, otherwise the run (or the command, never run) is stopped.
        let cancel = if self
            .deaf_to_cancel
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            Vec::new()
        } else {
            delivery.cancel
        };
        for id in cancel {
            let result = {
                let mut agents = lock(&self.agents);
                let Some(a) = agents.get_mut(ws) else {
                    return Ok(());
                };
                match a.done.get(&id) {
                    Some(r) => r.clone(),
                    None => {
                        a.running.retain(|r| r.command.id != id);
                        a.cancelled += 1;
                        let r = CommandResult {
                            id: id.clone(),
                            outcome: CommandOutcome::Failed {
                                message: "cancelled by the control plane".into(),
                                retryable: true,
                            },
                            output: serde_json::Value::Null,
                        };
                        a.done.insert(id, r.clone());
                        r
                    }
                }
            };
            gateway.post_result(&serial, result).await?;
            self.cancels
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let mut finished = Vec::new();
        for command in delivery.commands {
            let mut agents = lock(&self.agents);
            let Some(a) = agents.get_mut(ws) else {
                return Ok(());
            };
            if let Some(r) = a.done.get(&command.id) {
                finished.push(r.clone());
                continue;
            }
            if a.running.iter().any(|r| r.command.id == command.id) {
                continue; // still running: a redelivery
            }
            // Another attempt of the same step's command still running: two
            // commands of one step at once.
            let step = step_of(&command.id);
            for r in &a.running {
                if step_of(&r.command.id) == step {
                    lock(&self.overlaps).push((r.command.id.clone(), command.id.clone()));
                }
            }
            a.executed += 1;
            let rounds_left = if a.hold.1 > 0 {
                a.hold.1 -= 1;
                a.hold.0
            } else {
                0
            };
            a.running.push(Running {
                command,
                rounds_left,
            });
        }
        // Commands run for their rounds; those done now are answered.
        let due: Vec<Command> = {
            let mut agents = lock(&self.agents);
            let Some(a) = agents.get_mut(ws) else {
                return Ok(());
            };
            let mut due = Vec::new();
            a.running.retain_mut(|r| {
                if r.rounds_left == 0 {
                    due.push(r.command.clone());
                    false
                } else {
                    r.rounds_left -= 1;
                    true
                }
            });
            due
        };
        for command in due {
            let r = self.execute(ws, &command);
            if let Some(a) = lock(&self.agents).get_mut(ws) {
                a.done.insert(command.id.clone(), r.clone());
            }
            finished.push(r);
        }
        for result in finished {
            gateway.post_result(&serial, result).await?;
        }
        Ok(())
    }

    fn execute(&self, ws: &WorkspaceId, command: &Command) -> CommandResult {
        match command.kind.as_str() {
            "health" => CommandResult {
                id: command.id.clone(),
                outcome: CommandOutcome::Succeeded,
                output: serde_json::json!({ "status": "ok" }),
            },
            "describe" => CommandResult {
                id: command.id.clone(),
                outcome: CommandOutcome::Succeeded,
                output: serde_json::json!({ "agent": "simulated", "workspace": ws.as_str() }),
            },
            _ => (self.handler)(ws, command),
        }
    }

    /// Runs the fleet until `shutdown` completes: the agents with something to do
    /// whenever commands are queued and at least every `interval`, and every agent
    /// once a second (a long poll's renewal). Up to 256 agents' requests are in
    /// flight at once, as a real fleet's would overlap (the rounds of
    /// [`step_all`](Self::step_all) and [`step_due`](Self::step_due) take one
    /// agent at a time, for tests that replay a seed).
    pub async fn run(&self, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        self.run_renewing(interval, Duration::from_secs(1), shutdown)
            .await
    }

    /// [`run`](Self::run) in a task of its own (on the current Tokio
    /// runtime) until the returned handle is stopped.
    pub fn spawn(&self, interval: Duration) -> RunningAgents {
        self.spawn_renewing(interval, Duration::from_secs(1))
    }

    /// [`run_renewing`](Self::run_renewing) in a task of its own (on the
    /// current Tokio runtime) until the returned handle is stopped.
    pub fn spawn_renewing(&self, interval: Duration, renewal: Duration) -> RunningAgents {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agents = self.clone();
        let task = tokio::spawn(async move {
            agents
                .run_renewing(interval, renewal, async {
                    let _ = stopped.await;
                })
                .await
        });
        RunningAgents { stop, task }
    }

    /// [`run`](Self::run), with every agent polling again each `renewal`
    /// rather than each second — as a fleet whose long polls are held that
    /// long would (the HTTPS endpoint holds one for up to 30 s). Benchmarks
    /// use it: 10,000 agents renewing every second are 10,000 credential
    /// reads a second, which would measure the simulation, not the engine.
    pub async fn run_renewing(
        &self,
        interval: Duration,
        renewal: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        const PARALLEL: usize = 256;
        tokio::pin!(shutdown);
        let mut last_full = std::time::Instant::now();
        loop {
            if last_full.elapsed() >= renewal {
                last_full = std::time::Instant::now();
                self.step(None, PARALLEL).await;
            } else {
                self.step(Some(self.due()), PARALLEL).await;
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.transport.wait_for_commands(interval) => {}
            }
        }
    }
}

#[async_trait]
impl AgentInstaller for SimulatedAgents {
    async fn install(&self, request: AgentInstall) -> Result<Progress<()>> {
        let mut agents = lock(&self.agents);
        let agent = agents.entry(request.workspace).or_default();
        agent.token = Some(request.token);
        agent.serial = None;
        // A new token, a new key (the agent's state for the old one is gone).
        agent.key = KeyDigest(rand::random());
        agent.lose_bootstraps = self
            .lost_on_install
            .load(std::sync::atomic::Ordering::SeqCst);
        agent.hold = *lock(&self.hold_on_install);
        // The old agent process is replaced, and what it ran with it.
        agent.running.clear();
        Ok(Progress::Ready(()))
    }

    async fn uninstall(
        &self,
        workspace: &WorkspaceId,
        _cluster: &ClusterAccess,
    ) -> Result<Progress<()>> {
        if lock(&self.unreachable).contains(workspace) {
            return Err(Error::Unavailable {
                service: "cluster".into(),
                detail: "the cluster's API cannot be reached".into(),
                source: None,
            });
        }
        if let Some(agent) = lock(&self.agents).remove(workspace) {
            *lock(&self.retired).entry(workspace.clone()).or_default() += agent.executed;
        }
        Ok(Progress::Ready(()))
    }
}

/// A fleet of [`SimulatedAgents`] running in a task of its own
/// ([`SimulatedAgents::spawn`]).
#[derive(Debug)]
pub struct RunningAgents {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningAgents {
    /// Stops the fleet and waits for its last round to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
