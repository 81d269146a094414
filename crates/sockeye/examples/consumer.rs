//! The consumer pattern: receive every message of a connection and pass it to `consume`.
//!
//! ```text
//! cargo run -p sockeye --example consumer            # listens on 127.0.0.1:8765
//! ```
//!
//! Connect with any WebSocket client and send messages: the server prints them.

use std::io::Write;

use sockeye::{BoxError, Message, ServerConnection};

/// Your business logic for one message; here, print it.
async fn consume(message: Message) {
    match message.as_text() {
        Some(text) => println!("<<< {text}"),
        None => println!("<<< {} bytes", message.len()),
    }
}

/// WebSocket connections are long-lived: loop to handle every message, not only the first.
async fn consumer_handler(ws: ServerConnection) -> Result<(), BoxError> {
    // `recv` returns `Ok(None)` when the client closes the connection normally, which ends
    // the loop; any other end (a lost connection, a protocol error) is an `Err`, which `?`
    // returns.
    while let Some(message) = ws.recv().await? {
        consume(message).await;
    }
    println!("connection closed");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let server = sockeye::serve(addr, consumer_handler).await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}
