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

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
