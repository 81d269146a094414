//! The `sockeye` command: `serve` (a relay or echo server) and `connect` (a client).
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use http::StatusCode;
use sockeye::{CloseCode, Connection, Message};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser)]
#[command(name = "sockeye", version, about = "WebSocket server and client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server: a relay (a client at ws://ADDR/<path> joins topic <path> and what it
    /// sends goes to the other clients of that topic), or an echo server with --echo.
    Serve {
        /// Address to listen on.
        #[arg(default_value = "127.0.0.1:8765")]
        addr: String,
        /// Echo every message back instead of relaying it.
        #[arg(long)]
        echo: bool,
        /// With --echo: run the blocking echo server (`sockeye::sync`, a thread per
        /// connection) instead of the tokio one.
        #[arg(long, requires = "echo")]
        sync: bool,
        /// Largest message accepted, in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        max_size: usize,
        /// Largest number of frames in one message.
        #[arg(long, default_value_t = 1 << 16)]
        max_fragments: usize,
        /// Turn permessage-deflate off.
        #[arg(long)]
        no_compression: bool,
        /// Seconds between keepalive pings (0: none).
        #[arg(long, default_value_t = 20.0)]
        ping_interval: f64,
    },
    /// Connect to a server: each line of standard input is sent as a text message, each
    /// message received is printed (`< TEXT`, binary as hex).
    Connect {
        /// The URI, ws://HOST[:PORT]/PATH.
        uri: String,
        /// Extra header for the handshake, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sockeye=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sockeye: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                addr,
                echo,
                sync,
                max_size,
                max_fragments,
                no_compression,
                ping_interval,
            } => {
                let interval = (ping_interval > 0.0)
                    .then(|| std::time::Duration::from_secs_f64(ping_interval));
                if sync {
                    let builder = sockeye::sync::Server::builder()
                        .max_size(max_size)
                        .max_fragments(max_fragments)
                        .compression(!no_compression)
                        .ping_interval(interval);
                    return serve_sync_echo(builder, &addr).await;
                }
                let builder = sockeye::Server::builder()
                    .max_size(max_size)
                    .max_fragments(max_fragments)
                    .compression(!no_compression)
                    .ping_interval(interval);
                serve(builder, &addr, echo).await
            }
            Command::Connect { uri, headers } => connect(&uri, &headers).await,
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

async fn serve(
    builder: sockeye::ServerBuilder,
    addr: &str,
    echo: bool,
) -> Result<ExitCode, sockeye::BoxError> {
    let builder = builder.process_request(|request| {
        (request.uri().path() == "/healthz").then(|| sockeye::respond(StatusCode::OK, "OK\n"))
    });
    let server = if echo {
        builder
            .serve(addr, |ws| async move {
                while let Some(message) = ws.recv().await? {
                    ws.send(message).await?;
                }
                Ok(())
            })
            .await?
    } else {
        let hub = sockeye::Hub::new();
        builder
            .serve(addr, move |ws| relay(ws, hub.clone()))
            .await?
    };
    let mode = if echo { "echo" } else { "relay" };
    if let Some(addr) = server.local_addr() {
        eprintln!("sockeye {mode} server on ws://{addr}/ (Ctrl-C to stop)");
    }
    shutdown_signal().await;
    eprintln!("shutting down");
    server.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The blocking echo server (`serve --echo --sync`): its threads serve; this task waits for
/// the signal to stop.
async fn serve_sync_echo(
    builder: sockeye::sync::ServerBuilder,
    addr: &str,
) -> Result<ExitCode, sockeye::BoxError> {
    let server = builder
        .process_request(|request| {
            (request.uri().path() == "/healthz").then(|| sockeye::respond(StatusCode::OK, "OK\n"))
        })
        .serve(addr, |ws| {
            while let Some(message) = ws.recv()? {
                ws.send(message)?;
            }
            Ok(())
        })?;
    if let Some(addr) = server.local_addr() {
        eprintln!("sockeye echo server (blocking) on ws://{addr}/ (Ctrl-C to stop)");
    }
    shutdown_signal().await;
    eprintln!("shutting down");
    tokio::task::spawn_blocking(move || server.shutdown()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The relay: a client at `/<path>` joins topic `<path>`; what it sends goes to the other
/// clients of the topic. Closed connections leave their topic by themselves.
async fn relay(ws: Connection, hub: sockeye::Hub) -> Result<(), sockeye::BoxError> {
    let topic = ws.request().uri().path().to_owned();
    hub.subscribe(&ws, &topic);
    while let Some(message) = ws.recv().await? {
        hub.publish_except(&topic, message, &ws);
    }
    Ok(())
}

async fn shutdown_signal() {
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

fn show(message: &Message) -> String {
    match message {
        Message::Text(t) => format!("< {t}"),
        Message::Binary(b) => {
            let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("< (binary) {}", hex.join(" "))
        }
    }
}

async fn connect(uri: &str, headers: &[String]) -> Result<ExitCode, sockeye::BoxError> {
    let mut builder = sockeye::ClientBuilder::default();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("invalid header {h:?}: expected 'Name: value'"))?;
        builder = builder.header(name.trim(), value.trim())?;
    }
    let ws = builder.connect(uri).await?;
    let interactive = std::io::stdin().is_terminal();
    eprintln!("Connected to {uri}.");
    let printer = {
        let ws = ws.clone();
        tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            loop {
                match ws.recv().await {
                    Ok(Some(m)) => {
                        let line = format!("{}\n", show(&m));
                        let _ = stdout.write_all(line.as_bytes()).await;
                        let _ = stdout.flush().await;
                    }
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
        })
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        match lines.next_line().await {
            Ok(Some(line)) => {
                if ws.send(line).await.is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    // End of input: start the closing handshake; the printer shows what still arrives.
    let _ = ws.close(CloseCode::NORMAL, "").await;
    let clean = printer.await.unwrap_or(false);
    let code = ws.close_code();
    let reason = ws.close_reason();
    if reason.is_empty() {
        eprintln!("Connection closed: {code}.");
    } else {
        eprintln!("Connection closed: {code} {reason}.");
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
