//! Cogrion's metrics in Prometheus's text format: a control plane on the
//! simulated world (in-process agents) provisions a workspace, deploys a
//! stack and destroys it; then what the exporter would serve on `/metrics`
//! is printed. A host serves `handle.render()` on its own HTTP server (or
//! turns on the exporter's `http-listener` feature).
//!
//! Run with `cargo run --example metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedWorld};
use cogrion::*;

const SPEC: &str = r#"{
  "tenant": "acme", "cloud": { "provider": "simulated" }, "region": "local-1",
  "kubernetes_version": "1.34", "network": { "cidr": "10.42.0.0/16" },
  "node_pools": [{ "name": "general", "instance_type": "sim-small",
                   "size": { "min": 1, "desired": 2, "max": 3 } }]
}"#;

async fn wait_for(engine: &Engine, id: &WorkspaceId, state: StateName) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.status(id).await?.state != state {
        if Instant::now() > deadline {
            return Err(Error::Unavailable {
                service: "metrics example".into(),
                detail: format!("{id} did not reach {state}"),
                source: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;

    let dir = std::env::temp_dir().join(format!("cogrion-metrics-{}", std::process::id()));
    let cloud = SimulatedCloud::builder()
        .latency_all(Duration::from_millis(50))
        .build();
    let world = SimulatedWorld::new(cloud, FaultPlan::none());
    let (transport, agents) = (world.transport.clone(), world.agents.clone());
    let mut builder = ControlPlane::builder()
        .data_dir(&dir)
        .cloud(CloudKind::Simulated, Arc::new(world.cloud.clone()))
        .transport(move |gateway| {
            transport.attach(gateway);
            Arc::new(transport)
        })
        .driver_config(DriverConfig::default().with_sweep_interval(Duration::from_millis(50)));
    for executor in world.executors() {
        builder = builder.executor(executor);
    }
    let plane = builder.installer(move |_| Arc::new(agents)).build().await?;
    let agents = world.agents.spawn(Duration::from_millis(20));

    let engine = plane.engine();
    let actor = Actor::Api {
        principal: "metrics-example".into(),
    };
    let id: WorkspaceId = "metrics-demo".parse()?;
    engine
        .create(id.clone(), WorkspaceSpec::from_json(SPEC)?, actor.clone())
        .await?;
    wait_for(engine, &id, StateName::Active).await?;
    let web = StackSpec {
        name: "web".parse()?,
        kind: StackKind::Application,
        executor: ExecutorSpec::Helm {
            source: "oci://registry.example/charts/web".into(),
            version: "1.0.0".into(),
            values: Default::default(),
        },
        depends_on: Default::default(),
    };
    engine.deploy_stack(&id, web, actor.clone()).await?;
    while engine.status(&id).await?.stacks.first().map(|s| s.state)
        != Some(StackStateName::Deployed)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.destroy(&id, actor).await?;
    wait_for(engine, &id, StateName::Destroyed).await?;
    plane.shutdown().await;
    agents.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    println!("{}", handle.render());
    Ok(())
}
