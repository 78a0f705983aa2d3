//! [`SuiteOptions`], shared by the provisioner and executor suites, and the loop
//! that follows `InProgress` and `AwaitCommand` answers the way the engine does.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cogrion_agent_proto::CommandResult;
use futures::future::BoxFuture;

use crate::checkpoint::Progress;
use crate::error::{Result, Retry};
use crate::store::NewCommand;

/// How a suite waits before calling again after [`Progress::InProgress`] (or a
/// transient error): given the delay asked for, a future that completes once it
/// has passed.
pub type SleepFn = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// A stand-in for the Cluster Agent: given the command an executor asked for with
/// [`Progress::AwaitCommand`], the agent's answer to it.
pub type AgentStandIn = Arc<dyn Fn(NewCommand) -> BoxFuture<'static, CommandResult> + Send + Sync>;

/// The delay before retrying a transient error that does not say how long to wait.
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How the conformance suites drive the implementation under test.
///
/// Build it with [`SuiteOptions::default`] and the `with_*` methods. The defaults
/// suit in-memory implementations: waits return at once, and no agent stand-in is
/// set (so a suite fails if an executor asks for a command).
///
/// ```
/// use std::time::Duration;
/// use cogrion_core::conformance::SuiteOptions;
/// use cogrion_core::proto::{CommandOutcome, CommandResult};
///
/// let options = SuiteOptions::default()
///     .with_max_polls(50)
///     // With tokio's `time` feature: `|d| Box::pin(tokio::time::sleep(d))`.
///     .with_sleep(|_delay: Duration| Box::pin(async {}))
///     .with_agent(|command| {
///         Box::pin(async move {
///             CommandResult::new(command.id, CommandOutcome::Succeeded, serde_json::Value::Null)
///                 .expect("a small result")
///         })
///     });
/// assert_eq!(options.max_polls, 50);
/// assert!(options.agent.is_some());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct SuiteOptions {
    /// How many unfinished answers to follow for one call before failing:
    /// [`Progress::InProgress`], [`Progress::AwaitCommand`] and transient errors
    /// ([`Error::is_transient`](crate::Error::is_transient)) each count as one.
    /// Default 1000.
    pub max_polls: u32,
    /// How to wait on `InProgress` and before retrying a transient error. Default:
    /// return at once (the suites depend on no async runtime).
    pub sleep: SleepFn,
    /// What answers the commands an executor asks for with
    /// [`Progress::AwaitCommand`]. Default `None`: an executor that asks for a
    /// command makes the suite panic.
    pub agent: Option<AgentStandIn>,
}

impl SuiteOptions {
    /// The default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`max_polls`](Self::max_polls).
    pub fn with_max_polls(mut self, max_polls: u32) -> Self {
        self.max_polls = max_polls;
        self
    }

    /// Sets [`sleep`](Self::sleep).
    pub fn with_sleep<F>(mut self, sleep: F) -> Self
    where
        F: Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    {
        self.sleep = Arc::new(sleep);
        self
    }

    /// Sets [`agent`](Self::agent).
    pub fn with_agent<F>(mut self, agent: F) -> Self
    where
        F: Fn(NewCommand) -> BoxFuture<'static, CommandResult> + Send + Sync + 'static,
    {
        self.agent = Some(Arc::new(agent));
        self
    }
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            max_polls: 1000,
            sleep: Arc::new(|_| Box::pin(futures::future::ready(()))),
            agent: None,
        }
    }
}

impl fmt::Debug for SuiteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuiteOptions")
            .field("max_polls", &self.max_polls)
            .field("sleep", &format_args!("<fn>"))
            .field("agent", &self.agent.as_ref().map(|_| format_args!("<fn>")))
            .finish()
    }
}

/// Calls `call` until it returns [`Progress::Ready`], as the engine would:
/// waiting on `InProgress` and transient errors, and — when `commands` is true —
/// running `AwaitCommand` commands through the agent stand-in and passing the
/// result to the next call. Returns the first non-transient error.
///
/// Panics, naming `who` and `what`, when the implementation does not finish within
/// `max_polls`, asks for a command when `commands` is false, or asks for one while
/// no agent stand-in is set.
pub(super) async fn follow<T, F, Fut>(
    options: &SuiteOptions,
    who: &str,
    what: &str,
    commands: bool,
    mut call: F,
) -> Result<T>
where
    F: FnMut(Option<CommandResult>) -> Fut,
    Fut: Future<Output = Result<Progress<T>>>,
{
    let mut result: Option<CommandResult> = None;
    let mut polls: u32 = 0;
    loop {
        let delay = match call(result.clone()).await {
            Ok(Progress::Ready(value)) => return Ok(value),
            Ok(Progress::InProgress { poll_after, .. }) => Some(poll_after),
            Ok(Progress::AwaitCommand(command)) => {
                if !commands {
                    panic!(
                        "{who} conformance: {what} returned Progress::AwaitCommand({:?}); \
                         cloud provisioners never return AwaitCommand (see Progress::AwaitCommand)",
                        command.id
                    );
                }
                let Some(agent) = options.agent.as_ref() else {
                    panic!(
                        "{who} conformance: {what} returned Progress::AwaitCommand({:?}) but \
                         no agent stand-in is set; pass one with SuiteOptions::with_agent",
                        command.id
                    );
                };
                let id = command.id.clone();
                let answer = agent(command).await;
                assert!(
                    answer.id == id,
                    "{who} conformance: the agent stand-in answered command {id:?} with a \
                     result for command {:?}; fix the stand-in passed to SuiteOptions::with_agent",
                    answer.id
                );
                result = Some(answer);
                None
            }
            Err(e) if e.is_transient() => match e.retry() {
                Retry::After(Some(d)) => Some(d),
                _ => Some(DEFAULT_RETRY_DELAY),
            },
            Err(e) => return Err(e),
        };
        polls += 1;
        assert!(
            polls <= options.max_polls,
            "{who} conformance: {what} did not finish after {} unfinished answers \
             (SuiteOptions::max_polls); a call must eventually return Ready",
            options.max_polls
        );
        if let Some(delay) = delay {
            (options.sleep)(delay).await;
        }
    }
}
