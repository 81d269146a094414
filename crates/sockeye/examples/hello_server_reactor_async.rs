//! The basic server, python-websockets' way, on the event-loop front end: an async handler
//! reads a name from the client, sends a greeting back, and returns, which closes the
//! connection. The same code as `hello_server.rs`; the handler's future is polled by the
//! loop that owns the connection (`reactor::ServerBuilder::serve_async`) instead of a tokio
//! task, for about 1.3 KB per idle connection instead of 2.3 KB.
//!
//! ```text
//! cargo run -p sockeye --example hello_server_reactor_async            # 127.0.0.1:8765
//! cargo run -p sockeye --example hello_server_reactor_async -- 0.0.0.0:9000
//! ```
//!
//! Then run a client in another terminal:
//!
//! ```text
//! cargo run -p sockeye --example hello_client -- ws://127.0.0.1:8765/ Alice
//! ```

use std::io::Write;

use sockeye::BoxError;
use sockeye::Connection;

async fn hello(ws: Connection) -> Result<(), BoxError> {
    let Some(message) = ws.recv().await? else {
        return Ok(()); // the client left without a word
    };
    let name = message.as_text().ok_or("expected a text message")?;
    println!("<<< {name}");
    let greeting = format!("Hello {name}!");
    ws.send(greeting.as_str()).await?;
    println!(">>> {greeting}");
    // Returning closes the connection with 1000; the greeting and the close frame leave in
    // one write.
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Logs go to stderr so that stdout only carries what the example prints.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    // Started inside the runtime: handlers may use tokio's timers, channels and `spawn`.
    let server = sockeye::reactor::Server::builder().serve_async(addr, hello)?;
    // With port 0 the OS picks a free port: print the real one.
    println!("listening on ws://{}/", server.local_addr());
    std::io::stdout().flush()?;

    // The loops serve in their own threads; wait for them without holding a tokio worker.
    tokio::task::spawn_blocking(move || server.serve_forever()).await?;
    Ok(())
}
