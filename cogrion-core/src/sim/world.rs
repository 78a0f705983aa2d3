//! [`SimulatedWorld`]: the simulated cloud, cluster, executors and agents, wired
//! to an engine in one call.

use std::sync::Arc;

use super::inproc::{InProcessTransport, SimulatedAgents};
use super::{FaultPlan, SimulatedCloud, SimulatedCluster, SimulatedExecutor};
use crate::agent::{AgentGateway, GatewayConfig};
use crate::clock::Clock;
use crate::engine::{CloudKind, Engine, EngineBuilder, EngineConfig};
use crate::error::Result;
use crate::executor::{Executor, ExecutorKind};
use crate::store::WorkspaceStore;

/// Everything an engine needs besides a store, simulated: a cloud, the in-cluster
/// world with an executor for every stack kind, and Cluster Agents on an
/// in-process transport. The quickstart, the tests and the benchmarks run on it.
///
/// ```
/// use std::sync::Arc;
/// use cogrion_core::*;
/// use cogrion_core::store::InMemoryStore;
/// use cogrion_core::sim::{FaultPlan, SimulatedCloud, SimulatedWorld};
/// let world = SimulatedWorld::new(SimulatedCloud::new(), FaultPlan::none());
/// let engine = world
///     .engine(Arc::new(InMemoryStore::new()), Arc::new(SystemClock), EngineConfig::new("cp-0".parse().unwrap()))
///     .unwrap();
/// # let _ = engine;
/// ```
#[derive(Debug, Clone)]
pub struct SimulatedWorld {
    /// The cloud.
    pub cloud: SimulatedCloud,
    /// What the agents act on.
    pub cluster: SimulatedCluster,
    /// How the agents reach the control plane.
    pub transport: InProcessTransport,
    /// The agents (also the engine's agent installer).
    pub agents: SimulatedAgents,
    faults: FaultPlan,
}

impl SimulatedWorld {
    /// A world around `cloud`, whose executors inject `faults`.
    pub fn new(cloud: SimulatedCloud, faults: FaultPlan) -> Self {
        let cluster = SimulatedCluster::new();
        let transport = InProcessTransport::new();
        let handler = cluster.clone();
        let agents = SimulatedAgents::new(
            transport.clone(),
            Arc::new(move |ws, cmd| handler.handle(ws, cmd)),
        );
        Self {
            cloud,
            cluster,
            transport,
            agents,
            faults,
        }
    }

    /// An engine builder over `store` with every simulated piece in place; change
    /// any of them before building, then [`attach`](Self::attach) the engine.
    pub fn engine_builder(
        &self,
        store: Arc<dyn WorkspaceStore>,
        clock: Arc<dyn Clock>,
    ) -> EngineBuilder {
        let mut builder = Engine::builder(store)
            .clock(clock)
            .cloud(CloudKind::Simulated, Arc::new(self.cloud.clone()))
            .agent_installer(Arc::new(self.agents.clone()))
            .transport(Arc::new(self.transport.clone()));
        for executor in self.executors() {
            builder = builder.executor(executor);
        }
        builder
    }

    /// A simulated executor of every stack kind, deploying into the world's
    /// cluster.
    pub fn executors(&self) -> Vec<Arc<dyn Executor>> {
        [
            ExecutorKind::Helm,
            ExecutorKind::Manifests,
            ExecutorKind::Terraform,
        ]
        .into_iter()
        .map(|kind| {
            Arc::new(SimulatedExecutor::new(
                kind,
                self.cluster.clone(),
                self.faults.clone(),
            )) as Arc<dyn Executor>
        })
        .collect()
    }

    /// Routes the agents' requests to `engine` (through a gateway on its store and
    /// clock). Attach a new engine after a simulated restart.
    pub fn attach(&self, engine: &Engine) {
        self.transport.attach(AgentGateway::new(
            engine.store().clone(),
            engine.clock().clone(),
            Arc::new(engine.clone()),
            GatewayConfig::default(),
        ));
    }

    /// A built and attached engine over `store`.
    pub fn engine(
        &self,
        store: Arc<dyn WorkspaceStore>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Result<Engine> {
        let engine = self.engine_builder(store, clock).config(config).build()?;
        self.attach(&engine);
        Ok(engine)
    }
}
