//! The `cogrion-agent` binary: the Cluster Agent, configured from its
//! environment (see [`AgentConfig::from_env`]); it stops on SIGTERM or Ctrl-C.

use cogrion_agent::{AgentConfig, AgentRuntime, Handlers};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let config = match AgentConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cogrion-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let handlers = Handlers::builtin(&config.workspace);
    let mut agent = match AgentRuntime::new(config, handlers) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("cogrion-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    match agent.run(shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cogrion-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
