//! Keepalive: sockeye pings each connection every `ping_interval` and closes it (1011) if no
//! pong comes back within `ping_timeout`; pings from the peer are answered automatically. The
//! round-trip time of the last ping is `ws.latency()`.
//!
//! ```text
//! cargo run -p sockeye --example keepalive            # listens on 127.0.0.1:8765
//! ```
//!
//! Send any message: the server answers with the connection's latency. The defaults are 20 s
//! and 20 s (like python-websockets); shorter intervals detect dead connections sooner, and
//! keep idle ones open through proxies that close them after 30 s or so. `None` turns them
//! off.

use std::io::Write;
use std::time::Duration;

use sockeye::{BoxError, ServerConnection};

async fn handler(ws: ServerConnection) -> Result<(), BoxError> {
    while ws.recv().await?.is_some() {
        // The latency measured by the last keepalive ping. Right after the connection opens,
        // no ping has been answered yet: send one and wait for its pong.
        let latency = match ws.latency() {
            Some(latency) => latency,
            None => ws.ping().await?.await?,
        };
        ws.send(format!("latency: {:.3} ms", latency.as_secs_f64() * 1000.0))
            .await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let server = sockeye::Server::builder()
        // Ping every 5 seconds; give up if the pong takes more than 10 seconds.
        .ping_interval(Some(Duration::from_secs(5)))
        .ping_timeout(Some(Duration::from_secs(10)))
        .serve(addr, handler)
        .await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}
