//! The basic server: reads a name from the client, sends a greeting back, and closes the
//! connection.
//!
//! ```text
//! cargo run -p sockeye --example hello_server            # listens on 127.0.0.1:8765
//! cargo run -p sockeye --example hello_server -- 0.0.0.0:9000
//! ```
//!
//! Then run the client in another terminal:
//!
//! ```text
//! cargo run -p sockeye --example hello_client -- ws://127.0.0.1:8765/ Alice
//! ```
//!
//! Set `RUST_LOG=sockeye=debug` to watch connections open and close.

use std::io::Write;

use sockeye::{BoxError, ServerConnection};

/// The connection handler: sockeye calls it once for each WebSocket connection, after the
/// opening handshake. The connection is closed (code 1000) when it returns.
async fn hello(ws: ServerConnection) -> Result<(), BoxError> {
    // `recv` returns `Ok(None)` when the client closed the connection normally before
    // sending anything: nothing to answer then.
    let Some(message) = ws.recv().await? else {
        return Ok(());
    };
    let name = message.as_text().ok_or("expected a text message")?;
    println!("<<< {name}");

    let greeting = format!("Hello {name}!");
    ws.send(greeting.clone()).await?;
    println!(">>> {greeting}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // sockeye logs through `tracing`; without a subscriber, handler errors would go nowhere.
    // Logs go to stderr so that stdout only carries what the example prints.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let server = sockeye::serve(addr, hello).await?;
    // With port 0 the OS picks a free port: print the real one.
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;

    // Runs until `server.close()` is called; here, until the process is stopped.
    server.serve_forever().await?;
    Ok(())
}
