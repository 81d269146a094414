//! Registration and broadcast: keep the set of connected clients, and relay every message
//! received to all of them, like a chat room.
//!
//! ```text
//! cargo run -p sockeye --example registration_broadcast            # listens on 127.0.0.1:8765
//! ```
//!
//! Connect several WebSocket clients: each receives `users: N` when someone joins or leaves,
//! and every message any of them sends.
//!
//! This keeps the clients in memory, which works within one process. If you only need the
//! open connections, [`sockeye::Server::connections`] already has them; registering your own
//! is for keeping more information about each client.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use sockeye::{BoxError, ServerConnection};

/// The connected clients, by connection id.
type Connected = Arc<Mutex<HashMap<u64, ServerConnection>>>;

/// Sends `message` to every connected client.
///
/// `sockeye::broadcast` doesn't wait: it queues the message on each connection and skips
/// those that are closing or too slow to keep up (more than `write_limit` bytes waiting), so
/// one slow client can't hold up the others. It is not `async`, so holding the lock is fine.
fn broadcast(connected: &Connected, message: impl Into<sockeye::Message>) {
    let connected = connected.lock().unwrap();
    let skipped = sockeye::broadcast(connected.values(), message);
    if !skipped.is_empty() {
        eprintln!("skipped {} connection(s)", skipped.len());
    }
}

/// Unregisters the client when dropped: at the end of the handler, whether it returns, fails
/// with `?`, or is cancelled (Rust's `try ... finally`).
struct Registration {
    connected: Connected,
    id: u64,
}

impl Registration {
    fn register(connected: &Connected, ws: &ServerConnection) -> Registration {
        connected.lock().unwrap().insert(ws.id(), ws.clone());
        announce(connected);
        Registration {
            connected: connected.clone(),
            id: ws.id(),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connected.lock().unwrap().remove(&self.id);
        announce(&self.connected);
    }
}

/// Tells everyone how many clients are connected.
fn announce(connected: &Connected) {
    let count = connected.lock().unwrap().len();
    broadcast(connected, format!("users: {count}"));
}

async fn handler(ws: ServerConnection, connected: Connected) -> Result<(), BoxError> {
    // Register.
    let _registration = Registration::register(&connected, &ws);
    // Implement logic here: relay every message to everyone, the sender included.
    while let Some(message) = ws.recv().await? {
        broadcast(&connected, message);
    }
    Ok(())
    // Unregister: `_registration` is dropped here.
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let connected = Connected::default();
    // Each connection gets its own handle on the shared set.
    let server = sockeye::serve(addr, move |ws| handler(ws, connected.clone())).await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}
