//! [`AgentRuntime`]: bootstrap, poll, run, post, renew — with the state kept on
//! disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cogrion_agent_proto::v1::ErrorCode;
use cogrion_agent_proto::{Command, CommandId, CommandOutcome, CommandResult};
use cogrion_providers::core::{agent::BootstrapToken, store::TokenHash};
use cogrion_providers::https::{AgentClient, ClientError, new_key_pem};
use serde::{Deserialize, Serialize};

use crate::{AgentConfig, Handlers};

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The settings cannot be used.
    #[error("configuration: {0}")]
    Config(String),
    /// The state directory cannot be written.
    #[error("state directory {path}: {detail}")]
    State {
        /// The file.
        path: String,
        /// What failed.
        detail: String,
    },
}

/// One piece of a poll's work: a result to send back, or a command to run.
enum Work {
    Answer(CommandResult),
    Run(Command),
}

/// What the agent keeps in `state.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Results of commands run, by id (the most recent [`DONE_KEPT`]).
    done: BTreeMap<CommandId, (u64, CommandResult)>,
    /// Results acknowledged since the last poll: reported as finished on it.
    finished: Vec<CommandId>,
    /// When to renew the certificate (ms since the epoch; 0: no certificate).
    renew_at_ms: u64,
    /// When the certificate expires (ms since the epoch).
    not_after_ms: u64,
    /// The SHA-256 (hex) of the last token exchanged or refused, so a used
    /// token is not tried again. The token itself is never kept.
    #[serde(default)]
    spent_token_sha256: Option<TokenHash>,
    /// Written by agents before 0.2: the spent token itself. Read once, kept
    /// as its hash, never written again.
    #[serde(default, rename = "spent_token", skip_serializing)]
    legacy_spent_token: Option<String>,
    /// The SHA-256 (hex) of the token the key in `pending.key` was made for:
    /// a bootstrap whose answer was lost is sent again with that same key.
    #[serde(default)]
    pending_token_sha256: Option<TokenHash>,
    /// Orders `done` for pruning.
    counter: u64,
    /// Renew at this share of the certificate's life, in percent (from the
    /// bootstrap response).
    #[serde(default)]
    renew_percent: u32,
}

/// How many results the agent remembers.
const DONE_KEPT: usize = 4096;

/// What the agent keeps of a token: its hash, as the control plane keeps it.
/// `None` for text that is no token (the control plane would refuse it too).
fn token_hash(token: &str) -> Option<TokenHash> {
    BootstrapToken::parse(token).ok().map(|t| t.hash())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Exponential backoff with full jitter.
#[derive(Debug)]
struct Backoff {
    failures: u32,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max);
        self.failures += 1;
        Duration::from_millis(rand::random::<u64>() % (ceiling.as_millis() as u64 + 1))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What one turn of the loop asks for.
enum Pause {
    /// Try again after this long.
    For(Duration),
    /// Try again after a backoff.
    Backoff,
}

/// The Cluster Agent; see the [crate](crate) documentation.
pub struct AgentRuntime {
    config: AgentConfig,
    client: AgentClient,
    handlers: Handlers,
    state: State,
    executed: u64,
}

impl std::fmt::Debug for AgentRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRuntime")
            .field("workspace", &self.config.workspace)
            .field("handlers", &self.handlers)
            .finish_non_exhaustive()
    }
}

fn state_error(path: &Path, e: impl std::fmt::Display) -> AgentError {
    AgentError::State {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// Writes `contents` to `path` through a temporary file, synced, then
/// renamed over it. Every file the agent keeps (its key, its state with the
/// spent token's hash, its certificate) is its own only: the temporary file
/// is created anew with mode 0600 (a stale one left by a crash is removed
/// first, so no mode is inherited from it), and the rename carries the mode.
fn write_file(path: &Path, contents: &[u8]) -> Result<(), AgentError> {
    write_private(path, contents).map_err(|(at, e)| state_error(&at, e))
}

/// [`write_file`], with the path that failed.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), (std::path::PathBuf, std::io::Error)> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err((tmp, e)),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(|e| (tmp.clone(), e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| (tmp.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| (path.to_owned(), e))
}

/// Writes a bootstrap token where an agent will read it
/// ([`AgentConfig::token_file`](crate::AgentConfig)), as an installer should:
/// mode 0600, atomically (a temporary file created with that mode, renamed
/// over the old token). The agent refuses a token file that every user of the
/// host may read.
pub fn write_token_file(path: &Path, token: &str) -> std::io::Result<()> {
    write_private(path, token.as_bytes()).map_err(|(_, e)| e)
}

/// Why the token file may not be used: readable by others (its mode lets
/// any user of the host read a credential). `None` when it may be.
#[cfg(unix)]
fn token_file_exposed(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "mode {:o} lets every user of the host read the bootstrap token; make it 0600 or 0640 \
             (a Kubernetes secret volume: defaultMode 0400)",
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn token_file_exposed(_path: &Path) -> Option<String> {
    None
}

impl AgentRuntime {
    /// An agent with `handlers`, resuming the identity and results kept in the
    /// state directory, if any.
    pub fn new(config: AgentConfig, handlers: Handlers) -> Result<Self, AgentError> {
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| state_error(&config.state_dir, e))?;
        let client = AgentClient::new(config.endpoint, &config.server_name, &config.ca_pem)
            .map_err(|e| AgentError::Config(e.to_string()))?;
        let dir = config.state_dir.clone();
        let mut state: State = match std::fs::read(dir.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| state_error(&dir.join("state.json"), e))?,
            Err(_) => State::default(),
        };
        let legacy = state.legacy_spent_token.take();
        if let (Ok(chain), Ok(key)) = (
            std::fs::read_to_string(dir.join("identity.pem")),
            std::fs::read_to_string(dir.join("identity.key")),
        ) {
            client
                .set_identity(&chain, &key)
                .map_err(|e| state_error(&dir.join("identity.pem"), e))?;
        }
        let mut runtime = Self {
            config,
            client,
            handlers,
            state,
            executed: 0,
        };
        if let Some(token) = legacy {
            // A state written before tokens were kept as hashes: rewrite it.
            runtime.state.spent_token_sha256 = token_hash(&token);
            runtime.save()?;
        }
        Ok(runtime)
    }

    /// How many commands this process ran (not counting stored results sent
    /// again).
    pub fn executed(&self) -> u64 {
        self.executed
    }

    /// Runs until `shutdown` completes.
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let mut backoff = Backoff {
            failures: 0,
            min: Duration::from_millis(200),
            max: Duration::from_secs(30),
        };
        loop {
            let pause = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                turn = self.turn() => turn?,
            };
            let wait = match pause {
                None => {
                    backoff.reset();
                    continue;
                }
                Some(Pause::For(d)) => d,
                Some(Pause::Backoff) => backoff.next(),
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn save(&self) -> Result<(), AgentError> {
        let bytes =
            serde_json::to_vec(&self.state).map_err(|e| AgentError::Config(e.to_string()))?;
        write_file(&self.config.state_dir.join("state.json"), &bytes)
    }

    fn save_identity(&mut self, not_after_ms: u64, renew_percent: u32) -> Result<(), AgentError> {
        let Some((chain, key)) = self.client.identity_pem() else {
            return Ok(());
        };
        let dir = &self.config.state_dir;
        write_file(&dir.join("identity.key"), key.as_bytes())?;
        write_file(&dir.join("identity.pem"), chain.as_bytes())?;
        let now = now_ms();
        self.state.not_after_ms = not_after_ms;
        self.state.renew_at_ms =
            now + not_after_ms.saturating_sub(now) * u64::from(renew_percent) / 100;
        self.save()
    }

    fn drop_identity(&mut self, why: &str) -> Result<(), AgentError> {
        tracing::warn!(workspace = %self.config.workspace, why, "dropping the agent's certificate");
        self.client.clear_identity();
        for file in ["identity.pem", "identity.key"] {
            let _ = std::fs::remove_file(self.config.state_dir.join(file));
        }
        self.state.renew_at_ms = 0;
        self.save()
    }

    /// What to do about a refusal or a connection failure.
    fn pause_for(&mut self, e: ClientError) -> Result<Option<Pause>, AgentError> {
        match e {
            ClientError::Refused { error, .. } => match error.code {
                ErrorCode::Overloaded | ErrorCode::RateLimited => Ok(Some(Pause::For(
                    Duration::from_secs(u64::from(error.retry_after_secs.unwrap_or(1))),
                ))),
                ErrorCode::CertificateExpired
                | ErrorCode::CertificateRevoked
                | ErrorCode::Unauthenticated => {
                    self.drop_identity(&error.message)?;
                    Ok(None)
                }
                _ => {
                    tracing::warn!(code = ?error.code, reason = %error.message, "request refused");
                    Ok(Some(Pause::Backoff))
                }
            },
            ClientError::Connect(reason) => {
                tracing::info!(%reason, "control plane unreachable");
                Ok(Some(Pause::Backoff))
            }
            other => {
                tracing::warn!(error = %other, "unexpected answer");
                Ok(Some(Pause::Backoff))
            }
        }
    }

    /// One turn: make sure of an identity, renew if due, poll, run, post.
    /// `None`: go on at once; `Some`: pause first.
    async fn turn(&mut self) -> Result<Option<Pause>, AgentError> {
        if self.client.identity_pem().is_none() {
            return self.bootstrap().await;
        }
        if self.state.not_after_ms != 0 && now_ms() >= self.state.not_after_ms {
            self.drop_identity("the certificate expired")?;
            return Ok(None);
        }
        if self.state.renew_at_ms != 0 && now_ms() >= self.state.renew_at_ms {
            match self.client.renew().await {
                Ok(renewed) => {
                    tracing::info!(not_after_ms = renewed.not_after_ms, "certificate renewed");
                    let percent = if self.state.renew_percent == 0 {
                        66
                    } else {
                        self.state.renew_percent
                    };
                    self.save_identity(renewed.not_after_ms, percent)?;
                }
                Err(e) => return self.pause_for(e),
            }
        }
        let finished = std::mem::take(&mut self.state.finished);
        let poll = match self
            .client
            .poll(finished.clone(), self.config.poll_wait_secs)
            .await
        {
            Ok(poll) => poll,
            Err(e) => {
                self.state.finished = finished;
                return self.pause_for(e);
            }
        };
        // An idle poll writes nothing: the state changed only if results were
        // reported or commands arrived.
        let changed = !finished.is_empty() || !poll.commands.is_empty() || !poll.cancel.is_empty();
        // Cancel requests: commands the control plane gave up waiting for.
        // Handlers run one at a time between polls, so none is running now:
        // one with a result is answered with it; one without was never run
        // here (or its run died with an earlier process) and is answered as
        // cancelled — and never run after that.
        let cancels = poll
            .cancel
            .into_iter()
            .map(|id| match self.state.done.get(&id) {
                Some((_, result)) => result.clone(),
                None => {
                    let result = CommandResult {
                        id: id.clone(),
                        outcome: CommandOutcome::Failed {
                            message: "cancelled by the control plane before it ran".into(),
                            retryable: true,
                        },
                        output: serde_json::Value::Null,
                    };
                    self.remember(result.clone());
                    result
                }
            });
        let cancels: Vec<CommandResult> = cancels.collect();
        if !cancels.is_empty() {
            self.save()?;
        }
        let commands = poll.commands.into_iter().map(Work::Run);
        for work in cancels.into_iter().map(Work::Answer).chain(commands) {
            let result = match work {
                Work::Answer(result) => result,
                // Delivered again: the stored result, not a second run.
                Work::Run(command) if self.state.done.contains_key(&command.id) => {
                    self.state.done[&command.id].1.clone()
                }
                Work::Run(command) => {
                    let result = self.handlers.run(&command);
                    self.executed += 1;
                    self.remember(result.clone());
                    // Stored before it is posted.
                    self.save()?;
                    result
                }
            };
            match self.client.post_result(result).await {
                Ok(ack) => self.state.finished.push(ack.id),
                Err(e) => return self.pause_for(e),
            }
        }
        if changed {
            self.save()?;
        }
        Ok(None)
    }

    /// Keeps a command's result (the most recent [`DONE_KEPT`]), so that a
    /// redelivery or a cancel request is answered with it.
    fn remember(&mut self, result: CommandResult) {
        self.state.counter += 1;
        self.state
            .done
            .insert(result.id.clone(), (self.state.counter, result));
        if self.state.done.len() > DONE_KEPT
            && let Some(oldest) = self
                .state
                .done
                .iter()
                .min_by_key(|(_, (n, _))| *n)
                .map(|(id, _)| id.clone())
        {
            self.state.done.remove(&oldest);
        }
    }

    async fn bootstrap(&mut self) -> Result<Option<Pause>, AgentError> {
        if let Some(why) = token_file_exposed(&self.config.token_file) {
            tracing::warn!(file = %self.config.token_file.display(), %why, "the bootstrap token file is refused");
            return Ok(Some(Pause::Backoff));
        }
        let token = match std::fs::read_to_string(&self.config.token_file) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => {
                tracing::warn!(file = %self.config.token_file.display(), error = %e, "no bootstrap token to read");
                return Ok(Some(Pause::Backoff));
            }
        };
        let Some(hash) = token_hash(&token) else {
            tracing::warn!(file = %self.config.token_file.display(), "the token file holds no bootstrap token");
            return Ok(Some(Pause::Backoff));
        };
        if self.state.spent_token_sha256 == Some(hash) {
            tracing::info!("waiting for a fresh bootstrap token");
            return Ok(Some(Pause::Backoff));
        }
        // The key is on disk before the CSR leaves: if the answer is lost,
        // the same token goes again with the same key and gets the
        // certificate already issued.
        let pending = self.config.state_dir.join("pending.key");
        let key = match std::fs::read_to_string(&pending) {
            Ok(key) if self.state.pending_token_sha256 == Some(hash) => key,
            _ => {
                let key = new_key_pem().map_err(|e| AgentError::Config(e.to_string()))?;
                write_file(&pending, key.as_bytes())?;
                self.state.pending_token_sha256 = Some(hash);
                self.save()?;
                key
            }
        };
        match self
            .client
            .bootstrap_with_key(
                &self.config.workspace,
                &token,
                env!("CARGO_PKG_VERSION"),
                &key,
            )
            .await
        {
            Ok(response) => {
                tracing::info!(workspace = %self.config.workspace, "bootstrapped");
                self.spend(hash);
                self.state.renew_percent = response.renewal.renew_at_percent;
                self.save_identity(response.not_after_ms, response.renewal.renew_at_percent)?;
                let _ = std::fs::remove_file(&pending);
                Ok(None)
            }
            Err(ClientError::Refused { error, .. })
                if matches!(
                    error.code,
                    ErrorCode::TokenUsed
                        | ErrorCode::TokenExpired
                        | ErrorCode::TokenInvalid
                        | ErrorCode::TokenWrongWorkspace
                ) =>
            {
                tracing::warn!(code = ?error.code, "bootstrap token refused; waiting for a fresh one");
                self.spend(hash);
                self.save()?;
                let _ = std::fs::remove_file(&pending);
                Ok(Some(Pause::Backoff))
            }
            Err(e) => self.pause_for(e),
        }
    }

    /// Remembers a token (by its hash) as spent; its pending key goes.
    fn spend(&mut self, hash: TokenHash) {
        self.state.spent_token_sha256 = Some(hash);
        self.state.pending_token_sha256 = None;
    }
}
