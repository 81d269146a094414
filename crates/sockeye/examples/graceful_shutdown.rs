//! Graceful shutdown: on SIGTERM (what `docker stop`, systemd and Kubernetes send) or SIGINT
//! (Ctrl-C), stop accepting connections, close the open ones with 1001 (going away), let
//! the handlers finish, and exit 0.
//!
//! ```text
//! cargo run -p sockeye --example graceful_shutdown            # listens on 127.0.0.1:8765
//! cargo run -p sockeye --example graceful_shutdown -- unix:/tmp/echo.sock
//! ```
//!
//! Connect a client (`sockeye connect ws://127.0.0.1:8765/`), then press Ctrl-C here or
//! `kill -TERM <pid>`: the client sees `Connection closed: 1001 (going away)`.

use std::io::Write;
use std::time::Duration;

use sockeye::{BoxError, ServerConnection};

/// An echo handler. When the server closes, `recv` returns `Ok(None)` (the 1001 closing
/// handshake is over), the loop ends, and whatever follows runs before `close` returns.
async fn echo(ws: ServerConnection) -> Result<(), BoxError> {
    while let Some(message) = ws.recv().await? {
        ws.send(message).await?;
    }
    // Per-connection cleanup goes here: it runs before `server.close()` returns.
    Ok(())
}

/// Installs the handlers of SIGINT (Ctrl-C) and SIGTERM now, and returns a future that
/// resolves with the name of the first of them to arrive. Installed before the server says
/// where it listens: a signal that comes early stops it gracefully rather than killing it.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let signal = shutdown_signal()?;
    let server = match addr.strip_prefix("unix:") {
        #[cfg(unix)]
        Some(path) => sockeye::unix_serve(path, echo).await?,
        _ => sockeye::serve(addr.as_str(), echo).await?,
    };
    match (server.local_addr(), server.unix_path()) {
        (Some(bound), _) => println!("listening on ws://{bound}/"),
        (_, Some(path)) => println!("listening on unix:{}", path.display()),
        _ => {}
    }
    std::io::stdout().flush()?;

    let name = signal.await;
    println!("shutting down ({name})");
    std::io::stdout().flush()?;
    // Stops accepting, answers handshakes in progress with 503, closes every connection
    // with 1001 and waits for the handlers (and removes the socket file of a Unix socket).
    // Bounded: a handler that ignores the close must not keep the process alive forever.
    if tokio::time::timeout(Duration::from_secs(30), server.close())
        .await
        .is_err()
    {
        println!("handlers still running after 30 s: exiting anyway");
    }
    println!("server closed");
    Ok(())
}
