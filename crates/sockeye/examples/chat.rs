//! Chat rooms on a [`Hub`]: the path names the room, `?name=` the user. In memory by default;
//! given a Redis URL (and built with the `redis` feature), the rooms are shared with every
//! other process started with the same URL: going from one process to many is an argument.
//!
//! ```text
//! cargo run -p sockeye --example chat -- 127.0.0.1:9001
//! ```
//!
//! Across two processes:
//!
//! ```text
//! redis-server --port 6379 --save '' --appendonly no &
//! cargo run -p sockeye --features redis --example chat -- 127.0.0.1:9001 redis://127.0.0.1:6379/
//! cargo run -p sockeye --features redis --example chat -- 127.0.0.1:9002 redis://127.0.0.1:6379/
//! ```
//!
//! Then connect to either (`sockeye connect 'ws://127.0.0.1:9001/lobby?name=ann'`). Everyone
//! in the room, on either server, sees who joins and leaves and every message, the author
//! included, in the same order for what one server relays.
//!
//! Stop Redis and start it again: the servers log the lost connection and their attempts to
//! reconnect (target `sockeye::hub`), and the chat between the two servers resumes once
//! Redis is back. Meanwhile each server's own clients can still talk to each other.

use std::io::Write;

use sockeye::{BoxError, Hub, Message, ServerConnection};

async fn chat(ws: ServerConnection, hub: Hub) -> Result<(), BoxError> {
    let room = ws.request().uri().path().to_owned();
    let name = ws
        .request()
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("name=")))
        .map_or_else(|| format!("guest{}", ws.id()), str::to_owned);
    // Subscribing is all it takes: the hub leaves the room when the connection closes.
    hub.subscribe(&ws, &room);
    hub.publish(&room, format!("* {name} joined {room}"));
    while let Some(message) = ws.recv().await? {
        let line = match &message {
            Message::Text(text) => format!("{name}: {text}"),
            Message::Binary(bytes) => format!("{name} sent {} bytes", bytes.len()),
        };
        // To everyone in the room, in every process; with Redis, `relayed` is false while
        // Redis is down.
        let published = hub.publish(&room, line);
        if hub.is_redis() && !published.relayed {
            ws.send("* (Redis is unreachable: only this server's users got that)")
                .await?;
        }
    }
    hub.publish(&room, format!("* {name} left"));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Show the hub's connection and reconnection logs unless RUST_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("sockeye::hub=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let hub = match args.next() {
        None => Hub::new(),
        // Fails at once, naming the URL, if Redis is not there.
        #[cfg(feature = "redis")]
        Some(url) => Hub::redis(&url).await?,
        #[cfg(not(feature = "redis"))]
        Some(url) => return Err(format!("{url}: build with --features redis").into()),
    };
    let shared = hub.is_redis();
    let server = sockeye::serve(addr, move |ws| chat(ws, hub.clone())).await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    if shared {
        eprintln!("rooms shared through Redis");
    }
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}
