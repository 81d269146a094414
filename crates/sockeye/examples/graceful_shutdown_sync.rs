//! Graceful shutdown of the blocking server: on SIGTERM or SIGINT (Ctrl-C), a thread that
//! waits for the signal calls `server.shutdown()` (the server is `Clone`, and `shutdown`
//! works from any thread) while the main thread sits in `serve_forever()`, which returns once
//! every connection was closed with 1001 (going away) and every handler returned. The same
//! as `graceful_shutdown.rs`, with `sockeye::sync`.
//!
//! ```text
//! cargo run -p sockeye --example graceful_shutdown_sync       # listens on 127.0.0.1:8765
//! ```
//!
//! No async runtime: the signals are blocked in every thread and one thread takes them with
//! `sigwait` (the `nix` crate), the usual way for a threaded program on Unix.

use std::io::Write;

use sockeye::sync::Connection;
use sockeye::BoxError;

/// An echo handler: when the server shuts down, `recv` returns `Ok(None)`.
fn echo(ws: Connection) -> Result<(), BoxError> {
    while let Some(message) = ws.recv()? {
        ws.send(message)?;
    }
    Ok(())
}

#[cfg(unix)]
fn main() -> Result<(), BoxError> {
    use nix::sys::signal::{SigSet, Signal};

    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    // Block SIGINT and SIGTERM before any thread starts: threads inherit the mask, so no
    // thread dies of them, and the signal thread below takes them with `sigwait`.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;

    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let server = sockeye::sync::serve(addr, echo)?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;

    let closer = server.clone();
    std::thread::spawn(move || {
        let name = match signals.wait() {
            Ok(signal) => signal.as_str(),
            Err(_) => "sigwait failed",
        };
        println!("shutting down ({name})");
        let _ = std::io::stdout().flush();
        // Stops accepting, closes every connection with 1001, waits for the handlers.
        closer.shutdown();
    });

    // Returns when `shutdown` is over.
    server.serve_forever()?;
    println!("server closed");
    Ok(())
}

#[cfg(not(unix))]
fn main() {
    eprintln!("this example uses Unix signals");
}
