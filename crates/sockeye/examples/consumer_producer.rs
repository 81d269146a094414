//! Consumer and producer on one connection: receive messages and send others at the same
//! time, and stop both as soon as either ends.
//!
//! ```text
//! cargo run -p sockeye --example consumer_producer            # listens on 127.0.0.1:8765
//! ```
//!
//! Connect with any WebSocket client: it receives `tick 1`, `tick 2`, ... every second, and
//! the server prints the messages it receives. When the client closes, the server prints
//! `consumer finished; producer cancelled`.

use std::io::Write;
use std::time::Duration;

use sockeye::{BoxError, Error, Message, ServerConnection};
use tokio::time::{interval, Interval};

async fn consume(message: Message) {
    match message.as_text() {
        Some(text) => println!("<<< {text}"),
        None => println!("<<< {} bytes", message.len()),
    }
}

async fn produce(ticks: &mut Interval, count: &mut u64) -> String {
    ticks.tick().await;
    *count += 1;
    format!("tick {count}")
}

/// Receives until the client closes the connection.
async fn consumer_handler(ws: &ServerConnection) -> Result<(), BoxError> {
    while let Some(message) = ws.recv().await? {
        consume(message).await;
    }
    Ok(())
}

/// Sends until the connection is closed.
async fn producer_handler(ws: &ServerConnection) -> Result<(), BoxError> {
    let mut ticks = interval(Duration::from_secs(1));
    let mut count = 0;
    loop {
        let message = produce(&mut ticks, &mut count).await;
        match ws.send(message).await {
            Ok(()) => {}
            Err(Error::ConnectionClosed(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

async fn handler(ws: ServerConnection) -> Result<(), BoxError> {
    // Run both loops concurrently, in this task. `select!` completes with whichever loop
    // finishes first and drops the other one, which cancels it: the producer doesn't keep
    // running after the client left, and vice versa. (`recv` and `send` are cancel-safe:
    // cancelling them loses no message.)
    //
    // `tokio::join!` would instead wait for both, like `asyncio.gather`.
    tokio::select! {
        result = consumer_handler(&ws) => {
            println!("consumer finished; producer cancelled");
            result
        }
        result = producer_handler(&ws) => {
            println!("producer finished; consumer cancelled");
            result
        }
    }
    // Returning closes the connection, if it isn't closed already.
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let server = sockeye::serve(addr, handler).await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}
