//! The basic server, blocking: reads a name from the client, sends a greeting back, and
//! closes the connection. The same as `hello_server.rs`, with `sockeye::sync`.
//!
//! ```text
//! cargo run -p sockeye --example hello_server_sync            # listens on 127.0.0.1:8765
//! cargo run -p sockeye --example hello_server_sync -- 0.0.0.0:9000
//! ```
//!
//! Then run a client in another terminal:
//!
//! ```text
//! cargo run -p sockeye --example hello_client_sync -- ws://127.0.0.1:8765/ Alice
//! ```

use std::io::Write;

use sockeye::sync::Connection;
use sockeye::BoxError;

/// The connection handler: sockeye calls it once for each WebSocket connection, in the
/// connection's own thread, after the opening handshake. The connection is closed (code
/// 1000) when it returns.
fn hello(ws: Connection) -> Result<(), BoxError> {
    // `recv` returns `Ok(None)` when the client closed the connection normally before
    // sending anything: nothing to answer then.
    let Some(message) = ws.recv()? else {
        return Ok(());
    };
    let name = message.as_text().ok_or("expected a text message")?;
    println!("<<< {name}");

    let greeting = format!("Hello {name}!");
    ws.send(greeting.clone())?;
    println!(">>> {greeting}");
    Ok(())
}

fn main() -> Result<(), BoxError> {
    // Logs go to stderr so that stdout only carries what the example prints.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let server = sockeye::sync::serve(addr, hello)?;
    // With port 0 the OS picks a free port: print the real one.
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;

    // Blocks until `server.shutdown()` is called; here, until the process is stopped.
    server.serve_forever()?;
    Ok(())
}
