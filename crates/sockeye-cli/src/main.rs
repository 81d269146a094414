//! The `sockeye` command: `serve` (a relay or echo server), `connect` (a client) and `bench`
//! (a load generator).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod connect;
mod demo;
mod serve;

#[derive(Parser)]
#[command(name = "sockeye", version, about = "WebSocket server and client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server: a relay (a client at ws://ADDR/<path> joins topic <path> and what it
    /// sends goes to the other clients of that topic; GET / is a demo page), or an echo
    /// server with --echo.
    Serve(serve::ServeArgs),
    /// Connect to a server: an interactive client on a terminal, else stdin lines are sent.
    ///
    /// On a terminal, a `> ` prompt with line editing; otherwise each line of standard input
    /// is sent. Messages received are printed (`< TEXT`, binary as hex); lines starting with
    /// `/` are commands (/ping, /close, /binary, /help).
    Connect(connect::ConnectArgs),
    /// Load a server: echo round trips, handshakes or broadcast deliveries per second, with
    /// latency percentiles and (with --server-pid) whether the server was saturated.
    ///
    /// One thread, raw sockets and pre-encoded masked frames (one write per batch); pin it
    /// to its own core, e.g. `taskset -c 1 sockeye bench ...` with the server on CPU 0.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sockeye=info,sockeye::client=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let command = match cli.command {
        // Single-threaded and blocking: no runtime.
        Command::Bench(args) => return bench::run(args),
        command => command,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sockeye: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Serve(args) => serve::serve(args).await,
            Command::Connect(args) => connect::connect(args).await,
            Command::Bench(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sockeye: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. On Unix the handlers are installed by this call,
/// not when the future is first polled: a signal that arrives in between (a server told to
/// stop as soon as it printed its address) is caught rather than killing the process.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                // No handler for SIGTERM (or SIGINT): the other one, or Ctrl-C as tokio sees it.
                (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                    one.recv().await;
                }
                (Err(_), Err(_)) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
