//! A client that stays connected: python-websockets' `async for websocket in connect(uri)`.
//! It prints the messages it receives; when the connection ends (the server restarts, the
//! network drops), it connects again, retrying with backoff (a random delay up to 5 s, then
//! 3.1 s growing 1.618 times per failure, up to 90 s) while the errors are transient.
//!
//! ```text
//! cargo run -p sockeye --example reconnecting_client                        # for ever
//! cargo run -p sockeye --example reconnecting_client -- ws://127.0.0.1:8765/ 3
//! RUST_LOG=sockeye=info cargo run -p sockeye --example reconnecting_client  # see retries
//! ```
//!
//! The second argument, if any, is how many connections to go through before exiting.

use sockeye::BoxError;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let mut args = std::env::args().skip(1);
    let uri = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8765/".to_owned());
    let limit: Option<usize> = args.next().map(|n| n.parse()).transpose()?;

    // Nothing connects yet: each `next` does, retrying network errors, timeouts and 5xx
    // answers. Use `sockeye::ClientBuilder::default().backoff(...)` to change the delays.
    let mut connections = sockeye::reconnecting(&uri);
    let mut count = 0;
    while let Some(ws) = connections.next().await {
        // A fatal error (invalid URI, an answer such as 403 or 404) ends the stream.
        let ws = ws?;
        count += 1;
        println!("connected ({count})");
        loop {
            match ws.recv().await {
                Ok(Some(msg)) => println!("<<< {}", msg.as_text().unwrap_or("(binary)")),
                Ok(None) => {
                    println!("connection closed");
                    break;
                }
                Err(e) => {
                    println!("connection lost: {e}");
                    break;
                }
            }
        }
        if Some(count) == limit {
            break;
        }
        // The next `next` closes this connection (it already is) and connects again.
    }
    Ok(())
}
