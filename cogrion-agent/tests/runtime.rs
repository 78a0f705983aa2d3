//! The agent runtime against the real HTTPS endpoint on loopback (rustls mTLS),
//! on the real clock: bootstrap, commands, renewal across several certificate
//! lifetimes, restarts, and re-bootstrap after its certificate expired while it
//! was away.
//!
//! The control plane's store is the in-memory one, and the engine is stood in
//! for by a sink that ignores agent events (the engine's side is tested in the
//! facade's `tests/engine`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cogrion_agent::proto::{CommandId, CommandKind, CommandOutcome, CommandResult};
use cogrion_agent::{AgentConfig, AgentRuntime, Handlers};
use cogrion_core::ca::{CaConfig, CertificateAuthority};
use cogrion_core::conformance::sample_workspace_spec;
use cogrion_core::{
    Clock, SystemClock, WorkspaceId,
    agent::{
        AgentEvent, AgentEventSink, AgentGateway, AgentTransport, GatewayConfig,
        issue_bootstrap_token,
    },
    store::{
        CommandQueue, CommandStatus, CredentialStore, InMemoryStore, NewCommand, RecordStore,
        WorkspaceRecord, WorkspaceStore, WorkspaceWrite,
    },
};
use cogrion_providers::https::{AgentServer, AgentServerConfig};

mod support;

#[derive(Debug)]
struct Ignore;

#[async_trait]
impl AgentEventSink for Ignore {
    async fn on_agent_event(&self, _: AgentEvent) -> cogrion_core::Result<()> {
        Ok(())
    }
}

struct Plane {
    store: Arc<InMemoryStore>,
    ca: Arc<CertificateAuthority>,
    server: AgentServer,
    addr: std::net::SocketAddr,
    ws: WorkspaceId,
    dir: std::path::PathBuf,
    _stop: cogrion_providers::https::ServerHandle,
}

impl Plane {
    /// Queues a `count` command and wakes the agent's poll.
    async fn queue(&self, id: &str) {
        self.queue_as(id, "count").await;
    }

    /// Queues a command of `kind` and wakes the agent's poll.
    async fn queue_as(&self, id: &str, kind: &str) {
        queue(self.store.as_ref(), Some(&self.server), &self.ws, id, kind).await;
    }

    /// Runs the agent until command `id` is answered (within `limit`), then
    /// stops it.
    async fn run_agent_until_answered(&self, runs: &Arc<AtomicU64>, id: &str, limit: Duration) {
        let (stop, task) = spawn(self, runs.clone());
        self.wait_answered(&[id], limit).await;
        let _ = stop.send(());
        task.await.unwrap();
    }

    /// Waits until every one of `ids` is answered.
    async fn wait_answered(&self, ids: &[&str], limit: Duration) {
        wait_answered(self.store.as_ref(), &self.ws, ids, limit).await;
    }

    /// Queues the builtin `health` command as `id`, waits (within `limit`)
    /// for an agent to answer it, and returns the stored result.
    async fn health(&self, id: &str, limit: Duration) -> CommandResult {
        self.queue_as(id, "health").await;
        self.wait_answered(&[id], limit).await;
        match self
            .store
            .get_command(&self.ws, &CommandId::new(id).unwrap())
            .await
            .unwrap()
            .status
        {
            CommandStatus::Answered { result, .. } => result,
            other => panic!("{id} answered but stored as {other:?}"),
        }
    }

    async fn start(lifetime: Duration) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = Arc::new(InMemoryStore::new());
        let support::Endpoint {
            ca,
            server,
            addr,
            stop,
        } = support::endpoint(store.clone(), Arc::new(Ignore), lifetime).await;
        let ws: WorkspaceId = "acme-prod".parse().unwrap();
        store
            .commit(WorkspaceWrite::create(
                WorkspaceRecord::new(ws.clone(), sample_workspace_spec(), clock.now()),
                clock.now(),
            ))
            .await
            .unwrap();
        let dir = std::env::temp_dir().join(format!("cogrion-agent-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let plane = Self {
            store,
            ca,
            server,
            addr,
            ws,
            dir,
            _stop: stop,
        };
        plane.fresh_token().await;
        plane
    }

    /// Issues a token and writes it where the agent reads it (the mounted secret).
    async fn fresh_token(&self) {
        let token = issue_bootstrap_token(
            self.store.as_ref(),
            &self.ws,
            SystemClock.now(),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        cogrion_agent::write_token_file(&self.dir.join("token"), token.expose()).unwrap();
    }

    fn config(&self) -> AgentConfig {
        AgentConfig::new(
            self.addr,
            "localhost",
            self.ca.certificate_pem(),
            self.ws.clone(),
            self.dir.join("token"),
            self.dir.join("state"),
        )
        .with_poll_wait(1)
    }
}

/// Queues a command of `kind` for `ws`'s agent and wakes its held poll, if a
/// server is up.
async fn queue(
    store: &dyn WorkspaceStore,
    server: Option<&AgentServer>,
    ws: &WorkspaceId,
    id: &str,
    kind: &str,
) {
    let current = store.get_workspace(ws).await.unwrap();
    store
        .commit(
            WorkspaceWrite::update(current.value, current.revision, SystemClock.now()).command(
                NewCommand {
                    id: CommandId::new(id).unwrap(),
                    kind: CommandKind::new(kind).unwrap(),
                    payload: serde_json::json!({}),
                },
            ),
        )
        .await
        .unwrap();
    if let Some(server) = server {
        server.notify(ws).await.unwrap();
    }
}

/// Waits until every command of `ids` has its result stored.
async fn wait_answered(
    store: &dyn WorkspaceStore,
    ws: &WorkspaceId,
    ids: &[&str],
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    for id in ids {
        loop {
            let status = store
                .get_command(ws, &CommandId::new(*id).unwrap())
                .await
                .unwrap()
                .status;
            if matches!(status, CommandStatus::Answered { .. }) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} was not answered in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The builtin handlers plus `count`, which counts its runs.
fn handlers(ws: &WorkspaceId, runs: Arc<AtomicU64>) -> Handlers {
    let mut handlers = Handlers::builtin(ws);
    handlers.register(
        "count",
        Arc::new(move |c| {
            runs.fetch_add(1, Ordering::SeqCst);
            CommandResult {
                id: c.id.clone(),
                outcome: CommandOutcome::Succeeded,
                output: serde_json::Value::Null,
            }
        }),
    );
    handlers
}

/// Runs an agent until the returned sender is dropped or fired.
fn spawn(
    plane: &Plane,
    runs: Arc<AtomicU64>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<AgentRuntime>,
) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
    let mut agent = AgentRuntime::new(plane.config(), handlers(&plane.ws, runs)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        agent
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        agent
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_commands_once_and_renews_across_several_lifetimes() {
    let lifetime = Duration::from_secs(4);
    let plane = Plane::start(lifetime).await;
    let runs = Arc::new(AtomicU64::new(0));
    let (stop, task) = spawn(&plane, runs.clone());
    let mut ids = Vec::new();
    for i in 0..8 {
        let id = format!("c{i}");
        plane.queue(&id).await;
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    plane.wait_answered(&ids, Duration::from_secs(20)).await;
    let _ = stop.send(());
    let agent = task.await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 8, "each command ran once");
    assert_eq!(agent.executed(), 8);
    // 8 s of 4 s certificates, renewed at two thirds: several renewals, no gap
    // (every command above was answered).
    let credentials = plane.store.list_credentials(&plane.ws).await.unwrap();
    assert!(
        credentials.len() >= 3,
        "bootstrap then renewals: {}",
        credentials.len()
    );
    let _ = std::fs::remove_dir_all(&plane.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_keeps_its_identity_and_gets_what_was_queued_meanwhile() {
    let plane = Plane::start(Duration::from_secs(3600)).await;
    let runs = Arc::new(AtomicU64::new(0));
    plane.queue("before").await;
    plane
        .run_agent_until_answered(&runs, "before", Duration::from_secs(10))
        .await;

    // Queued while the agent is down.
    plane.queue("meanwhile").await;
    let key = std::fs::metadata(plane.dir.join("state").join("identity.key")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            key.permissions().mode() & 0o777,
            0o600,
            "the key file is private"
        );
    }
    plane
        .run_agent_until_answered(&runs, "meanwhile", Duration::from_secs(10))
        .await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "nothing ran twice, nothing was lost"
    );
    assert_eq!(
        plane.store.list_credentials(&plane.ws).await.unwrap().len(),
        1,
        "the restarted agent used its stored identity, without a new token"
    );
    let _ = std::fs::remove_dir_all(&plane.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_away_past_its_certificate_bootstraps_again_with_a_fresh_token() {
    let plane = Plane::start(Duration::from_secs(2)).await;
    let runs = Arc::new(AtomicU64::new(0));
    plane.queue("first").await;
    plane
        .run_agent_until_answered(&runs, "first", Duration::from_secs(10))
        .await;

    // Away longer than the certificate lives; meanwhile the control plane issues
    // a fresh token into the agent's secret.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    plane.fresh_token().await;
    plane.queue("after").await;
    plane
        .run_agent_until_answered(&runs, "after", Duration::from_secs(15))
        .await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let credentials = plane.store.list_credentials(&plane.ws).await.unwrap();
    assert!(
        credentials.len() >= 2,
        "a second bootstrap: {credentials:?}"
    );
    let _ = std::fs::remove_dir_all(&plane.dir);
}

/// Every file under `dir`, read as bytes.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// What the agent's state holds before its first bootstrap answer: the
/// key it made for `token` (written before the CSR left), and the token's hash.
fn pending_state(dir: &std::path::Path, token: &str, key: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("pending.key"), key).unwrap();
    let hash = cogrion_core::agent::BootstrapToken::parse(token)
        .unwrap()
        .hash();
    let state = serde_json::json!({
        "done": {}, "finished": [], "renew_at_ms": 0, "not_after_ms": 0, "counter": 0,
        "pending_token_sha256": hash.to_string(),
    });
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
}

/// Issue 14, item 1: the agent stored its key, sent its CSR, and the answer
/// was lost (here the exchange is made with its stored key before it starts).
/// It sends the same token with the same key again, gets the certificate
/// already issued (one credential in all), and works. It never keeps the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_bootstrap_answer_was_lost_gets_the_certificate_issued() {
    let plane = Plane::start(Duration::from_secs(3600)).await;
    let token = std::fs::read_to_string(plane.dir.join("token")).unwrap();
    let key = cogrion_providers::https::new_key_pem().unwrap();
    pending_state(&plane.dir.join("state"), &token, &key);
    // The exchange the agent never heard the answer of.
    cogrion_providers::https::AgentClient::new(plane.addr, "localhost", plane.ca.certificate_pem())
        .unwrap()
        .bootstrap_with_key(&plane.ws, &token, "0.1.0", &key)
        .await
        .unwrap();
    let issued = plane.store.list_credentials(&plane.ws).await.unwrap();
    assert_eq!(issued.len(), 1);

    let runs = Arc::new(AtomicU64::new(0));
    plane.queue("after-loss").await;
    plane
        .run_agent_until_answered(&runs, "after-loss", Duration::from_secs(10))
        .await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let credentials = plane.store.list_credentials(&plane.ws).await.unwrap();
    let serials = |c: &[cogrion_core::store::AgentCredential]| -> Vec<_> {
        c.iter()
            .map(|c| (c.serial.clone(), c.revoked.is_some()))
            .collect()
    };
    assert_eq!(
        serials(&credentials),
        serials(&issued),
        "the replay got the credential already issued, nothing new"
    );
    assert!(credentials[0].first_poll_at.is_some(), "and polled with it");
    let state = plane.dir.join("state");
    assert!(
        !state.join("pending.key").exists(),
        "the pending key became the identity"
    );
    for (path, bytes) in files_under(&state) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(token.trim()),
            "{} holds the token",
            path.display()
        );
    }
    let _ = std::fs::remove_dir_all(&plane.dir);
}

/// A command the control plane gave up on after handing it out (here: the
/// delivery was lost on the way, so the agent never saw it) reaches the
/// agent as a cancel request over the real endpoint: the agent answers it as
/// cancelled and never runs it, and the next command runs as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_asked_to_cancel_a_command_answers_it_and_never_runs_it() {
    let plane = Plane::start(Duration::from_secs(3600)).await;
    let runs = Arc::new(AtomicU64::new(0));
    plane.queue("lost").await;
    let handed = plane
        .store
        .deliver(&plane.ws, 0, SystemClock.now())
        .await
        .unwrap();
    assert_eq!(handed.len(), 1, "handed out, never received");
    let lost = CommandId::new("lost").unwrap();
    assert!(matches!(
        plane
            .store
            .withdraw(&plane.ws, &lost, SystemClock.now())
            .await
            .unwrap(),
        CommandStatus::Cancelling { .. }
    ));
    plane.queue("after").await;
    plane
        .run_agent_until_answered(&runs, "after", Duration::from_secs(10))
        .await;
    match plane
        .store
        .get_command(&plane.ws, &lost)
        .await
        .unwrap()
        .status
    {
        CommandStatus::Answered { result, .. } => assert!(
            matches!(
                &result.outcome,
                CommandOutcome::Failed { message, retryable: true } if message.contains("cancelled")
            ),
            "{result:?}"
        ),
        other => panic!("the cancel request was not answered: {other:?}"),
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the cancelled command never ran; the next one did"
    );
    let _ = std::fs::remove_dir_all(&plane.dir);
}

/// A state written by an agent that kept its spent token (before 0.2) keeps
/// only its hash once read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_token_in_an_old_state_is_kept_as_its_hash() {
    let plane = Plane::start(Duration::from_secs(3600)).await;
    let token = std::fs::read_to_string(plane.dir.join("token")).unwrap();
    let state = plane.dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let old = serde_json::json!({
        "done": {}, "finished": [], "renew_at_ms": 0, "not_after_ms": 0, "counter": 0,
        "spent_token": token.trim(),
    });
    std::fs::write(state.join("state.json"), old.to_string()).unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    AgentRuntime::new(plane.config(), handlers(&plane.ws, runs)).unwrap();
    let written = std::fs::read_to_string(state.join("state.json")).unwrap();
    assert!(!written.contains(token.trim()), "{written}");
    let hash = cogrion_core::agent::BootstrapToken::parse(&token)
        .unwrap()
        .hash();
    assert!(written.contains(&hash.to_string()), "{written}");
    let _ = std::fs::remove_dir_all(&plane.dir);
}

/// The `cogrion-agent` binary, a separate process configured from its
/// environment, bootstraps and answers the builtin `health` command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_as_its_own_process() {
    let plane = Plane::start(Duration::from_secs(3600)).await;
    let ca_file = plane.dir.join("ca.pem");
    std::fs::write(&ca_file, plane.ca.certificate_pem()).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cogrion-agent"))
        .env("COGRION_ENDPOINT", plane.addr.to_string())
        .env("COGRION_SERVER_NAME", "localhost")
        .env("COGRION_CA_FILE", &ca_file)
        .env("COGRION_WORKSPACE", plane.ws.as_str())
        .env("COGRION_TOKEN_FILE", plane.dir.join("token"))
        .env("COGRION_STATE_DIR", plane.dir.join("state"))
        .env("COGRION_POLL_WAIT_SECS", "1")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let result = plane.health("h1", Duration::from_secs(20)).await;
    assert_eq!(result.outcome, CommandOutcome::Succeeded);
    assert_eq!(result.output, serde_json::json!({ "status": "ok" }));
    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&plane.dir);
}

/// The runtime stage of `cogrion-agent/Dockerfile`, applied to a copy of a
/// Debian bookworm minbase root filesystem (`scripts/peers/agent-image.sh`
/// makes it: no Docker engine runs here): its `RUN`s run chrooted, its `COPY`
/// of the agent takes this build's binary, and `USER`, `ENV`, `VOLUME` and
/// `ENTRYPOINT` say how the agent runs. An instruction it does not know fails
/// the test rather than being passed over.
struct Image {
    root: std::path::PathBuf,
    uid: u32,
    gid: u32,
    env: Vec<(String, String)>,
    entrypoint: Vec<String>,
    volumes: Vec<String>,
}

/// Debian's `chroot` (coreutils).
const CHROOT: &str = "/usr/sbin/chroot";
/// The `PATH` the Debian images set.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Image {
    fn build(base: &std::path::Path, binary: &std::path::Path) -> Self {
        let dockerfile =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in dockerfile.lines().map(str::trim) {
            if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(head) => {
                    current.push_str(head);
                    current.push(' ');
                }
                None => {
                    current.push_str(line);
                    instructions.push(std::mem::take(&mut current));
                }
            }
        }
        let last_from = instructions
            .iter()
            .rposition(|i| i.starts_with("FROM "))
            .expect("a FROM");
        assert_eq!(
            instructions[last_from], "FROM debian:bookworm-slim",
            "the emulation stands for debian:bookworm-slim"
        );
        let root = std::env::temp_dir().join(format!(
            "cogrion-agent-image-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&root).unwrap();
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(base.join("."))
            .arg(&root)
            .status()
            .unwrap();
        assert!(copied.success(), "copying the base root filesystem");
        let mut image = Image {
            root,
            uid: 0,
            gid: 0,
            env: Vec::new(),
            entrypoint: Vec::new(),
            volumes: Vec::new(),
        };
        for instruction in &instructions[last_from + 1..] {
            let (op, rest) = instruction.split_once(' ').expect("an argument");
            match op {
                "RUN" => {
                    let ran = std::process::Command::new(CHROOT)
                        .arg(&image.root)
                        .args(["/bin/sh", "-c", rest])
                        .env_clear()
                        .env(
                            "PATH",
                            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        )
                        .status()
                        .unwrap();
                    assert!(ran.success(), "RUN {rest}");
                }
                "COPY" => {
                    let args: Vec<&str> = rest.split_whitespace().collect();
                    match args.as_slice() {
                        ["--from=build", from, to] if from.ends_with("/cogrion-agent") => {
                            let to = image.path(to);
                            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                            std::fs::copy(binary, &to).unwrap();
                        }
                        other => panic!("the emulation does not know COPY {other:?}"),
                    }
                }
                "USER" => {
                    image.uid = rest.parse().expect("a numeric USER");
                    let passwd = std::fs::read_to_string(image.path("/etc/passwd")).unwrap();
                    image.gid = passwd
                        .lines()
                        .map(|l| l.split(':').collect::<Vec<_>>())
                        .find(|f| f.get(2) == Some(&rest))
                        .and_then(|f| f.get(3)?.parse().ok())
                        .expect("USER names a user of the image");
                }
                "ENV" => {
                    for pair in rest.split_whitespace() {
                        let (k, v) = pair.split_once('=').expect("ENV k=v");
                        image.env.push((k.into(), v.into()));
                    }
                }
                "VOLUME" => image.volumes.push(rest.into()),
                "ENTRYPOINT" => {
                    image.entrypoint = serde_json::from_str(rest).expect("ENTRYPOINT [..]")
                }
                other => panic!("the emulation does not know {other}"),
            }
        }
        image
    }

    /// `path` of the image, in the folder that holds it.
    fn path(&self, path: &str) -> std::path::PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Writes a secret into the image as Kubernetes mounts one: read-only,
    /// readable by the agent's user.
    fn secret(&self, path: &str, contents: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let at = self.path(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(&at, contents).unwrap();
        std::os::unix::fs::chown(&at, Some(self.uid), Some(self.gid)).unwrap();
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o400)).unwrap();
    }

    /// The entrypoint, chrooted into the image as its user, with the image's
    /// environment and `env`.
    fn command(&self, env: &[(&str, String)]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(CHROOT);
        command
            .arg(format!("--userspec={}:{}", self.uid, self.gid))
            .arg(format!("--groups={}", self.gid))
            .arg(&self.root)
            .args(&self.entrypoint)
            .env_clear()
            .env("PATH", IMAGE_PATH)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .kill_on_drop(true);
        command
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The agent's image, without Docker: the runtime stage of its Dockerfile
/// applied to a bookworm minbase root filesystem ([`Image`]), the agent
/// chrooted in it as the image's unprivileged user with the image's
/// environment, its CA bundle and token as mounted secrets. It bootstraps
/// against the control plane on loopback, answers `health`, and keeps its
/// identity in the image's state volume, owned by its user, the key private.
/// Not covered: the Dockerfile's build stage, and Docker itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_in_its_image() {
    let base = match std::env::var("COGRION_TEST_IMAGE_BASE") {
        Ok(base) => std::path::PathBuf::from(base),
        Err(_) if std::env::var("CI").is_ok() || std::env::var("COGRION_REQUIRE_IMAGE").is_ok() => {
            panic!(
                "COGRION_TEST_IMAGE_BASE is not set: run the tests with scripts/test.sh, which makes the image's base"
            )
        }
        Err(_) => {
            eprintln!(
                "NOT RUN: the_binary_runs_in_its_image needs COGRION_TEST_IMAGE_BASE (scripts/peers/agent-image.sh base)"
            );
            return;
        }
    };
    // This build's binary, or the one the Dockerfile's build stage made
    // (scripts/check-agent-image-build.sh).
    let binary = std::env::var_os("COGRION_TEST_IMAGE_AGENT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_cogrion-agent").into());
    let image = Image::build(&base, &binary);
    assert_ne!(image.uid, 0, "the agent does not run as root");
    let state = image
        .env
        .iter()
        .find(|(k, _)| k == "COGRION_STATE_DIR")
        .map(|(_, v)| v.clone())
        .expect("the image says where the agent's state lives");
    assert!(
        image.volumes.contains(&state),
        "the state folder is a volume: {:?}",
        image.volumes
    );

    let plane = Plane::start(Duration::from_secs(3600)).await;
    image.secret(
        "/run/secrets/cogrion/ca.pem",
        plane.ca.certificate_pem().as_bytes(),
    );
    image.secret(
        "/run/secrets/cogrion/token",
        &std::fs::read(plane.dir.join("token")).unwrap(),
    );
    let mut child = image
        .command(&[
            ("COGRION_ENDPOINT", plane.addr.to_string()),
            ("COGRION_SERVER_NAME", "localhost".into()),
            ("COGRION_CA_FILE", "/run/secrets/cogrion/ca.pem".into()),
            ("COGRION_WORKSPACE", plane.ws.to_string()),
            ("COGRION_TOKEN_FILE", "/run/secrets/cogrion/token".into()),
            ("COGRION_POLL_WAIT_SECS", "1".into()),
        ])
        .spawn()
        .unwrap();
    let result = plane.health("img1", Duration::from_secs(30)).await;
    assert_eq!(result.outcome, CommandOutcome::Succeeded);
    child.kill().await.unwrap();
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let key = std::fs::metadata(image.path(&format!("{state}/identity.key")))
            .expect("the identity kept in the state volume");
        assert_eq!(key.uid(), image.uid, "written by the image's user");
        assert_eq!(key.permissions().mode() & 0o077, 0, "the key is private");
    }
    let _ = std::fs::remove_dir_all(&plane.dir);
}

/// Without its settings the binary says which one is missing and exits 2.
#[tokio::test]
async fn the_binary_refuses_to_start_without_its_settings() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cogrion-agent"))
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("COGRION_ENDPOINT"));
}

/// A control plane that can crash and come back: its own tokio runtime (dropped
/// to crash: every connection dies mid-request), a SQLite store and a CA kept in
/// files.
struct Restartable {
    addr: std::net::SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    store: Arc<cogrion_providers::sqlite::SqliteStore>,
    server: Option<AgentServer>,
}

impl Drop for Restartable {
    fn drop(&mut self) {
        self.crash();
    }
}

impl Restartable {
    /// Queues a `count` command for `ws` and, while the server runs, wakes
    /// the agent's poll.
    async fn queue(&self, ws: &WorkspaceId, id: &str) {
        queue(self.store.as_ref(), self.server.as_ref(), ws, id, "count").await;
    }

    async fn start(dir: &std::path::Path, addr: std::net::SocketAddr) -> Self {
        let store = Arc::new(
            cogrion_providers::sqlite::SqliteStore::open(dir.join("cp.db"))
                .await
                .unwrap(),
        );
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let ca = Arc::new(
            CertificateAuthority::open_or_create(&dir.join("ca"), clock.now(), CaConfig::default())
                .unwrap(),
        );
        let server_cert = ca.issue_server(&["localhost"], clock.now()).unwrap();
        let gateway = AgentGateway::new(
            store.clone(),
            clock.clone(),
            Arc::new(Ignore),
            GatewayConfig::default(),
        );
        let server = AgentServer::new(
            gateway,
            ca,
            clock,
            &server_cert,
            AgentServerConfig::default(),
        )
        .unwrap();
        let listener = std::net::TcpListener::bind(addr).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        {
            let _inside = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let serving = server.clone();
            runtime.spawn(async move { serving.serve(listener, std::future::pending()).await });
        }
        Self {
            addr,
            runtime: Some(runtime),
            store,
            server: Some(server),
        }
    }

    /// Every task and connection of the control plane dies at once.
    fn crash(&mut self) {
        self.server = None;
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The control plane crashes with the agent connected and commands in flight,
/// more are queued while it is down, and it comes back on the same store and
/// CA: the agent reconnects by itself, and every command runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_crash_loses_no_command_and_runs_none_twice() {
    let dir = std::env::temp_dir().join(format!("cogrion-cp-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut plane = Restartable::start(&dir, "127.0.0.1:0".parse().unwrap()).await;
    let ws: WorkspaceId = "acme-prod".parse().unwrap();
    plane
        .store
        .commit(WorkspaceWrite::create(
            WorkspaceRecord::new(ws.clone(), sample_workspace_spec(), SystemClock.now()),
            SystemClock.now(),
        ))
        .await
        .unwrap();
    let token = issue_bootstrap_token(
        plane.store.as_ref(),
        &ws,
        SystemClock.now(),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    cogrion_agent::write_token_file(&dir.join("token"), token.expose()).unwrap();
    let ca_pem = std::fs::read_to_string(dir.join("ca").join("ca.pem")).unwrap();
    let config = AgentConfig::new(
        plane.addr,
        "localhost",
        ca_pem,
        ws.clone(),
        dir.join("token"),
        dir.join("agent"),
    )
    .with_poll_wait(5);
    let runs = Arc::new(AtomicU64::new(0));
    let mut agent = AgentRuntime::new(config, handlers(&ws, runs.clone())).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        agent
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        agent
    });

    for id in ["a1", "a2"] {
        plane.queue(&ws, id).await;
    }
    wait_answered(
        plane.store.as_ref(),
        &ws,
        &["a1", "a2"],
        Duration::from_secs(10),
    )
    .await;
    // The agent is in a held poll now; a command lands, and the control plane
    // crashes at once.
    plane.queue(&ws, "a3").await;
    plane.crash();
    // Queued while the control plane is down (straight into its store).
    for id in ["b1", "b2"] {
        plane.queue(&ws, id).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let addr = plane.addr;
    let plane = Restartable::start(&dir, addr).await;
    wait_answered(
        plane.store.as_ref(),
        &ws,
        &["a3", "b1", "b2"],
        Duration::from_secs(30),
    )
    .await;
    let _ = stop.send(());
    let agent = task.await.unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        5,
        "every command ran exactly once"
    );
    assert_eq!(agent.executed(), 5);
    assert_eq!(
        plane.store.list_credentials(&ws).await.unwrap().len(),
        1,
        "no re-bootstrap was needed"
    );
    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent's files are its own — mode 0600, whatever the mode of a stale
/// temporary file a crash left — and it refuses a token file every user of
/// the host can read, until the file is made private. (Before issue 16 the
/// state, with the spent token's hash, was written with the default mode, a
/// stale temporary file's mode was kept, and the token file's never checked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_files_are_its_own_and_an_exposed_token_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let plane = Plane::start(Duration::from_secs(3600)).await;
    let token = plane.dir.join("token");
    assert_eq!(
        std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600,
        "write_token_file writes it private"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state = plane.dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    for stale in ["state.tmp", "identity.tmp", "pending.tmp"] {
        std::fs::write(state.join(stale), b"stale").unwrap();
        std::fs::set_permissions(state.join(stale), std::fs::Permissions::from_mode(0o666))
            .unwrap();
    }
    let runs = Arc::new(AtomicU64::new(0));
    let (stop, task) = spawn(&plane, runs.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        plane
            .store
            .list_credentials(&plane.ws)
            .await
            .unwrap()
            .is_empty(),
        "a token every user can read is not used"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let result = plane.health("private1", Duration::from_secs(30)).await;
    assert_eq!(result.outcome, CommandOutcome::Succeeded);
    let _ = stop.send(());
    task.await.unwrap();
    let files = files_under(&state);
    assert!(files.iter().any(|(p, _)| p.ends_with("identity.key")));
    for (path, _) in files {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        if path.extension().is_some_and(|e| e == "tmp") {
            continue; // stale ones the agent had no reason to write
        }
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    let _ = std::fs::remove_dir_all(&plane.dir);
}
