//! [`ControlPlane`]: the embedded defaults wired in one builder.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cogrion_core::agent::{AgentGateway, AgentInstaller, AgentTransport, GatewayConfig, LateSink};
use cogrion_core::ca::{CaConfig, CaError, CertificateAuthority};
use cogrion_core::provider::{CloudProvisioner, Executor, ExecutorKind};
use cogrion_core::store::WorkspaceStore;
use cogrion_core::{
    Clock, CloudKind, Driver, DriverConfig, DriverHandle, Engine, EngineConfig, Error, HolderId,
    SystemClock,
};
use cogrion_providers::https::{AgentServer, AgentServerConfig, ServerHandle};
use cogrion_providers::sqlite::SqliteStore;

/// Where agents reach the control plane and what they trust: what an
/// [installer](ControlPlaneBuilder::installer) puts beside the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentEndpoint {
    /// The address the endpoint listens on.
    pub address: SocketAddr,
    /// The name agents verify the endpoint's certificate against.
    pub server_name: String,
    /// The URL agents dial (`https://<server name>:<port>`).
    pub url: String,
    /// The certificate authority agents trust (PEM).
    pub ca_pem: String,
    /// Where that certificate is on disk, when the control plane keeps its
    /// CA there.
    pub ca_file: Option<PathBuf>,
}

/// Why a [`ControlPlane`] could not be built. Nothing was started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No cloud provisioner was given: no workspace could be provisioned.
    #[error("no cloud provisioner was given (ControlPlaneBuilder::cloud)")]
    NoCloud,
    /// The host declared it serves a cloud it gave no provisioner for.
    #[error("the host serves {0} workspaces but gave no provisioner for them")]
    MissingProvisioner(CloudKind),
    /// The host declared it serves a stack kind it gave no executor for.
    #[error("the host serves {0:?} stacks but gave no executor for them")]
    MissingExecutor(ExecutorKind),
    /// An environment variable read by [`ControlPlaneBuilder::from_env`] has a
    /// value it cannot use.
    #[error("{var}={value:?}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The data directory could not be made.
    #[error("the data directory {path} cannot be used")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened (or migrated).
    #[error("the store cannot be opened")]
    Store(#[source] Error),
    /// The certificate authority could not be opened or created.
    #[error("the agents' certificate authority cannot be used")]
    Ca(#[source] CaError),
    /// The agents' endpoint could not listen.
    #[error("the agents' endpoint cannot listen on {address}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The engine refused its parts.
    #[error("the engine cannot be built")]
    Engine(#[source] Error),
}

/// A [`ControlPlaneBuilder`] without an installer yet: give one with
/// [`installer`](ControlPlaneBuilder::installer) before
/// [`build`](ControlPlaneBuilder::build) is available.
#[derive(Debug, Default)]
pub struct NoInstaller;

/// A [`ControlPlaneBuilder`] with its installer.
pub struct WithInstaller(InstallerFactory);

impl std::fmt::Debug for WithInstaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WithInstaller")
    }
}

type InstallerFactory = Box<dyn FnOnce(&AgentEndpoint) -> Arc<dyn AgentInstaller> + Send>;
type TransportFactory = Box<dyn FnOnce(AgentGateway) -> Arc<dyn AgentTransport> + Send>;

/// Builds a [`ControlPlane`]: every part has a default but the clouds, the
/// executors and the agent installer, which are the host's; every default
/// can be replaced.
///
/// | part | default | replace with |
/// |---|---|---|
/// | store | SQLite, `<data dir>/cogrion.db` | [`store`](Self::store) |
/// | agents' CA | `<data dir>/ca/` (created once, key 0600) | [`ca`](Self::ca) |
/// | agents' endpoint | HTTPS with mutual TLS on `127.0.0.1:8443`, certificate for `localhost` | [`agents_listen`](Self::agents_listen), [`agents_server_name`](Self::agents_server_name), [`agent_server_config`](Self::agent_server_config), or another transport: [`transport`](Self::transport) |
/// | gateway, engine, driver settings | their defaults, replica `cogrion` | [`gateway_config`](Self::gateway_config), [`engine_config`](Self::engine_config), [`driver_config`](Self::driver_config), [`without_driver`](Self::without_driver) |
/// | clock | the system's | [`clock`](Self::clock) |
///
/// The installer cannot be forgotten: `build` exists only once it is given.
///
/// ```compile_fail
/// # async fn f(cloud: std::sync::Arc<dyn cogrion::provider::CloudProvisioner>) {
/// let plane = cogrion::ControlPlane::builder()
///     .cloud(cogrion::CloudKind::Aws, cloud)
///     .build() // no installer: does not compile
///     .await;
/// # }
/// ```
pub struct ControlPlaneBuilder<I = NoInstaller> {
    data_dir: PathBuf,
    store: Option<Arc<dyn WorkspaceStore>>,
    ca: Option<Arc<CertificateAuthority>>,
    listen: SocketAddr,
    server_name: String,
    server_config: AgentServerConfig,
    transport: Option<TransportFactory>,
    gateway: GatewayConfig,
    engine: EngineConfig,
    driver: Option<DriverConfig>,
    clock: Arc<dyn Clock>,
    clouds: BTreeMap<CloudKind, Arc<dyn CloudProvisioner>>,
    executors: Vec<Arc<dyn Executor>>,
    serves_clouds: BTreeSet<CloudKind>,
    serves_stacks: BTreeSet<ExecutorKind>,
    installer: I,
}

impl<I> std::fmt::Debug for ControlPlaneBuilder<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneBuilder")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("clouds", &self.clouds.keys().collect::<Vec<_>>())
            .field("executors", &self.executors.len())
            .finish_non_exhaustive()
    }
}

impl ControlPlaneBuilder<NoInstaller> {
    fn new() -> Self {
        Self {
            data_dir: PathBuf::from("cogrion-data"),
            store: None,
            ca: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            server_name: "localhost".into(),
            server_config: AgentServerConfig::default(),
            transport: None,
            gateway: GatewayConfig::default(),
            engine: EngineConfig::new("cogrion".parse().expect("a valid replica name")),
            driver: Some(DriverConfig::default()),
            clock: Arc::new(SystemClock),
            clouds: BTreeMap::new(),
            executors: Vec::new(),
            serves_clouds: BTreeSet::new(),
            serves_stacks: BTreeSet::new(),
            installer: NoInstaller,
        }
    }

    /// The defaults, with what the environment says:
    ///
    /// | variable | sets |
    /// |---|---|
    /// | `COGRION_DATA_DIR` | [`data_dir`](Self::data_dir) |
    /// | `COGRION_AGENTS_LISTEN` | [`agents_listen`](Self::agents_listen) (`host:port`) |
    /// | `COGRION_AGENTS_SERVER_NAME` | [`agents_server_name`](Self::agents_server_name) |
    /// | `COGRION_REPLICA` | this replica's name ([`EngineConfig::holder`]) |
    ///
    /// # Errors
    /// [`ConfigError::Env`] for a value that cannot be used.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|var| std::env::var(var).ok())
    }

    /// [`from_env`](Self::from_env) from `var` (a variable's value, if set).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut builder = Self::new();
        let bad = |var: &'static str, value: &str, reason: String| ConfigError::Env {
            var,
            value: value.to_owned(),
            reason,
        };
        if let Some(dir) = var("COGRION_DATA_DIR") {
            if dir.is_empty() {
                return Err(bad("COGRION_DATA_DIR", &dir, "empty".into()));
            }
            builder.data_dir = dir.into();
        }
        if let Some(listen) = var("COGRION_AGENTS_LISTEN") {
            builder.listen = listen
                .parse()
                .map_err(|e| bad("COGRION_AGENTS_LISTEN", &listen, format!("{e}")))?;
        }
        if let Some(name) = var("COGRION_AGENTS_SERVER_NAME") {
            if name.is_empty() || name.contains(['/', ':', ' ']) {
                return Err(bad(
                    "COGRION_AGENTS_SERVER_NAME",
                    &name,
                    "not a host name or address".into(),
                ));
            }
            builder.server_name = name;
        }
        if let Some(replica) = var("COGRION_REPLICA") {
            let holder: HolderId = replica
                .parse()
                .map_err(|e| bad("COGRION_REPLICA", &replica, format!("{e}")))?;
            builder.engine.holder = holder;
        }
        Ok(builder)
    }

    /// Installs Cluster Agents with what `make` returns, given where agents
    /// reach this control plane and what they trust (known once the
    /// endpoint listens; with another [`transport`](ControlPlaneBuilder::transport),
    /// `url` is empty and `address` is the configured one). Required:
    /// [`build`](ControlPlaneBuilder::build) exists only once it is given.
    pub fn installer<F>(self, make: F) -> ControlPlaneBuilder<WithInstaller>
    where
        F: FnOnce(&AgentEndpoint) -> Arc<dyn AgentInstaller> + Send + 'static,
    {
        ControlPlaneBuilder {
            data_dir: self.data_dir,
            store: self.store,
            ca: self.ca,
            listen: self.listen,
            server_name: self.server_name,
            server_config: self.server_config,
            transport: self.transport,
            gateway: self.gateway,
            engine: self.engine,
            driver: self.driver,
            clock: self.clock,
            clouds: self.clouds,
            executors: self.executors,
            serves_clouds: self.serves_clouds,
            serves_stacks: self.serves_stacks,
            installer: WithInstaller(Box::new(make)),
        }
    }
}

impl<I> ControlPlaneBuilder<I> {
    /// Where the default store and CA live (default `./cogrion-data`).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// This store instead of the SQLite file (PostgreSQL for replicas).
    pub fn store(mut self, store: Arc<dyn WorkspaceStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// This CA for the agents instead of the one in the data directory.
    pub fn ca(mut self, ca: Arc<CertificateAuthority>) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Where the agents' endpoint listens (default `127.0.0.1:8443`; port 0:
    /// any free port, see [`ControlPlane::agent_endpoint`]).
    pub fn agents_listen(mut self, address: SocketAddr) -> Self {
        self.listen = address;
        self
    }

    /// The name (DNS or IP) agents reach the endpoint by, in its certificate
    /// (default `localhost`).
    pub fn agents_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// The endpoint's deadlines and caps.
    pub fn agent_server_config(mut self, config: AgentServerConfig) -> Self {
        self.server_config = config;
        self
    }

    /// Another transport instead of the HTTPS endpoint, made from the
    /// gateway agents' requests must reach (the simulated world's in-process
    /// transport, in tests).
    pub fn transport<F>(mut self, make: F) -> Self
    where
        F: FnOnce(AgentGateway) -> Arc<dyn AgentTransport> + Send + 'static,
    {
        self.transport = Some(Box::new(make));
        self
    }

    /// The gateway's settings (token and certificate lifetimes, renewal).
    pub fn gateway_config(mut self, config: GatewayConfig) -> Self {
        self.gateway = config;
        self
    }

    /// The engine's settings (this replica's name, deadlines, retries).
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// The built-in driver's settings.
    pub fn driver_config(mut self, config: DriverConfig) -> Self {
        self.driver = Some(config);
        self
    }

    /// No built-in driver: the host calls [`Engine::advance`] itself.
    pub fn without_driver(mut self) -> Self {
        self.driver = None;
        self
    }

    /// This clock instead of the system's.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Provisions `cloud` workspaces with `provisioner`.
    pub fn cloud(mut self, cloud: CloudKind, provisioner: Arc<dyn CloudProvisioner>) -> Self {
        self.clouds.insert(cloud, provisioner);
        self
    }

    /// Deploys stacks of the executor's kind with it.
    pub fn executor(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executors.push(executor);
        self
    }

    /// Declares that the host serves workspaces on these clouds:
    /// [`build`](ControlPlaneBuilder::build) fails unless each has a
    /// provisioner.
    pub fn serves_clouds(mut self, clouds: impl IntoIterator<Item = CloudKind>) -> Self {
        self.serves_clouds.extend(clouds);
        self
    }

    /// Declares that the host deploys stacks of these kinds:
    /// [`build`](ControlPlaneBuilder::build) fails unless each has an
    /// executor.
    pub fn serves_stacks(mut self, kinds: impl IntoIterator<Item = ExecutorKind>) -> Self {
        self.serves_stacks.extend(kinds);
        self
    }

    /// What can be known before anything starts.
    fn check(&self) -> Result<(), ConfigError> {
        if self.clouds.is_empty() {
            return Err(ConfigError::NoCloud);
        }
        if let Some(cloud) = self
            .serves_clouds
            .iter()
            .find(|c| !self.clouds.contains_key(c))
        {
            return Err(ConfigError::MissingProvisioner(*cloud));
        }
        let kinds: BTreeSet<ExecutorKind> = self.executors.iter().map(|e| e.kind()).collect();
        if let Some(kind) = self.serves_stacks.iter().find(|k| !kinds.contains(k)) {
            return Err(ConfigError::MissingExecutor(*kind));
        }
        Ok(())
    }
}

impl ControlPlaneBuilder<WithInstaller> {
    /// Checks the configuration, opens the store and the CA, starts the
    /// agents' endpoint and the driver, and returns the running control
    /// plane.
    ///
    /// # Errors
    /// A [`ConfigError`]: what is missing or cannot be used. Nothing is left
    /// running.
    pub async fn build(self) -> Result<ControlPlane, ConfigError> {
        self.check()?;
        let needs_dir = self.store.is_none() || self.ca.is_none();
        if needs_dir {
            std::fs::create_dir_all(&self.data_dir).map_err(|source| ConfigError::DataDir {
                path: self.data_dir.clone(),
                source,
            })?;
        }
        let store: Arc<dyn WorkspaceStore> = match self.store {
            Some(store) => store,
            None => Arc::new(
                SqliteStore::open(self.data_dir.join("cogrion.db"))
                    .await
                    .map_err(ConfigError::Store)?,
            ),
        };
        let ca_dir = self.data_dir.join("ca");
        let (ca, ca_file) = match self.ca {
            Some(ca) => (ca, None),
            None => (
                Arc::new(
                    CertificateAuthority::open_or_create(
                        &ca_dir,
                        self.clock.now(),
                        CaConfig::default(),
                    )
                    .map_err(ConfigError::Ca)?,
                ),
                Some(ca_dir.join("ca.pem")),
            ),
        };
        let sink = Arc::new(LateSink::new());
        let gateway = AgentGateway::new(
            store.clone(),
            self.clock.clone(),
            sink.clone(),
            self.gateway,
        );
        let (transport, endpoint, serving): (Arc<dyn AgentTransport>, _, _) = match self.transport {
            Some(make) => (make(gateway), None, None),
            None => {
                let certificate = ca
                    .issue_server(&[self.server_name.as_str()], self.clock.now())
                    .map_err(ConfigError::Ca)?;
                let server = AgentServer::new(
                    gateway,
                    ca.clone(),
                    self.clock.clone(),
                    &certificate,
                    self.server_config,
                )
                .map_err(ConfigError::Engine)?;
                let listen = |source| ConfigError::Listen {
                    address: self.listen,
                    source,
                };
                let listener = tokio::net::TcpListener::bind(self.listen)
                    .await
                    .map_err(listen)?;
                let address = listener.local_addr().map_err(listen)?;
                let endpoint = AgentEndpoint {
                    address,
                    url: format!("https://{}:{}", self.server_name, address.port()),
                    server_name: self.server_name.clone(),
                    ca_pem: ca.certificate_pem().to_owned(),
                    ca_file,
                };
                let handle = server.spawn(listener);
                (Arc::new(server), Some(endpoint), Some(handle))
            }
        };
        let installer_endpoint = endpoint.clone().unwrap_or_else(|| AgentEndpoint {
            address: self.listen,
            url: String::new(),
            server_name: self.server_name.clone(),
            ca_pem: ca.certificate_pem().to_owned(),
            ca_file: None,
        });
        let installer = (self.installer.0)(&installer_endpoint);
        let mut builder = Engine::builder(store)
            .clock(self.clock)
            .config(self.engine)
            .agent_installer(installer)
            .transport(transport);
        for (cloud, provisioner) in self.clouds {
            builder = builder.cloud(cloud, provisioner);
        }
        for executor in self.executors {
            builder = builder.executor(executor);
        }
        let engine = match builder.build() {
            Ok(engine) => engine,
            Err(e) => {
                if let Some(handle) = serving {
                    handle.stop().await;
                }
                return Err(ConfigError::Engine(e));
            }
        };
        sink.set(Arc::new(engine.clone()));
        let driver = self
            .driver
            .map(|config| Driver::spawn(engine.clone(), config));
        Ok(ControlPlane {
            engine,
            driver,
            serving,
            endpoint,
            ca,
        })
    }
}

/// A running control plane: the [`Engine`] a host calls, driven by the
/// built-in driver, with the agents' endpoint serving. Made by
/// [`ControlPlane::builder`] or [`ControlPlane::from_env`].
///
/// ```no_run
/// # use std::sync::Arc;
/// # use cogrion::{ControlPlane, CloudKind};
/// # async fn host(
/// #     cloud: Arc<dyn cogrion::provider::CloudProvisioner>,
/// #     installer: Arc<dyn cogrion::agent::AgentInstaller>,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// let plane = ControlPlane::from_env()?
///     .cloud(CloudKind::Aws, cloud)
///     .installer(move |_endpoint| installer)
///     .build()
///     .await?;
/// let status = plane.engine().status(&"acme-prod".parse()?).await;
/// # let _ = status;
/// plane.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ControlPlane {
    engine: Engine,
    driver: Option<DriverHandle>,
    serving: Option<ServerHandle>,
    endpoint: Option<AgentEndpoint>,
    ca: Arc<CertificateAuthority>,
}

impl ControlPlane {
    /// A builder with the embedded defaults.
    pub fn builder() -> ControlPlaneBuilder<NoInstaller> {
        ControlPlaneBuilder::new()
    }

    /// A builder with the embedded defaults and the environment's settings
    /// ([`ControlPlaneBuilder::from_env`]).
    pub fn from_env() -> Result<ControlPlaneBuilder<NoInstaller>, ConfigError> {
        ControlPlaneBuilder::from_env()
    }

    /// The engine: create, update, destroy, status, list, watch.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where agents reach this control plane (`None` with another transport).
    pub fn agent_endpoint(&self) -> Option<&AgentEndpoint> {
        self.endpoint.as_ref()
    }

    /// The agents' certificate authority.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// Stops the driver (after its calls in flight) and the agents' endpoint.
    /// Returns how many times the driver advanced a workspace.
    pub async fn shutdown(self) -> u64 {
        let advances = match self.driver {
            Some(driver) => driver.shutdown().await.advances,
            None => 0,
        };
        if let Some(serving) = self.serving {
            serving.stop().await;
        }
        advances
    }
}
