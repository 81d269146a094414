//! The producer pattern: get messages from `produce` and send them on the connection.
//!
//! ```text
//! cargo run -p sockeye --example producer            # listens on 127.0.0.1:8765
//! ```
//!
//! Connect with any WebSocket client: it receives `tick 1`, `tick 2`, ... every second.

use std::io::Write;
use std::time::Duration;

use sockeye::{BoxError, Error, ServerConnection};
use tokio::time::{interval, Interval};

/// Your business logic that makes the next message; here, a numbered tick every second.
async fn produce(ticks: &mut Interval, count: &mut u64) -> String {
    ticks.tick().await;
    *count += 1;
    format!("tick {count}")
}

async fn producer_handler(ws: ServerConnection) -> Result<(), BoxError> {
    let mut ticks = interval(Duration::from_secs(1));
    let mut count = 0;
    loop {
        let message = produce(&mut ticks, &mut count).await;
        // `send` fails with `ConnectionClosed` once the client is gone: that ends the loop
        // normally. Other errors are real failures, returned with `?`.
        match ws.send(message).await {
            Ok(()) => {}
            Err(Error::ConnectionClosed(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let server = sockeye::serve(addr, producer_handler).await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}
