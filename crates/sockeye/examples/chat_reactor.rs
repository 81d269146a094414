//! Chat rooms on the event-loop front end (`sockeye::reactor`), with its built-in topics:
//! the path names the room, `?name=` the user. The same behaviour as the `chat` example
//! (which uses a `Hub` on the tokio server): everyone in the room sees who joins and leaves
//! and every message, the author included.
//!
//! ```text
//! cargo run -p sockeye --example chat_reactor -- 127.0.0.1:9001
//! ```
//!
//! Then `sockeye connect 'ws://127.0.0.1:9001/lobby?name=ann'` in two terminals.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use sockeye::reactor::{Handler, Server, Socket};
use sockeye::{BoxError, Closed, Message};

struct Member {
    room: String,
    name: String,
    /// For `on_close`, which has no socket to publish with.
    server: Arc<OnceLock<Server>>,
}

impl Member {
    /// To everyone in the room: `publish` skips the author, who gets it directly.
    fn say(&self, ws: &mut Socket<'_>, line: String) {
        let _ = ws.send(line.as_str());
        ws.publish(&self.room, line);
    }
}

impl Handler for Member {
    fn on_open(&mut self, ws: &mut Socket<'_>) {
        // Subscribing is all it takes: the connection leaves the room when it ends.
        ws.subscribe(&self.room);
        self.say(ws, format!("* {} joined {}", self.name, self.room));
    }

    fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
        let line = match &message {
            Message::Text(text) => format!("{}: {text}", self.name),
            Message::Binary(bytes) => format!("{} sent {} bytes", self.name, bytes.len()),
        };
        self.say(ws, line);
    }

    fn on_close(&mut self, _closed: &Closed) {
        if let Some(server) = self.server.get() {
            server.publish(&self.room, format!("* {} left", self.name));
        }
    }
}

fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let cell = Arc::new(OnceLock::new());
    let for_members = cell.clone();
    let server = sockeye::reactor::serve(addr, move |request| {
        let uri = request.uri();
        let name = uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("name=")))
            .unwrap_or("guest");
        Member {
            room: uri.path().to_owned(),
            name: name.to_owned(),
            server: for_members.clone(),
        }
    })?;
    let _ = cell.set(server.clone());
    println!("listening on ws://{}/", server.local_addr());
    std::io::stdout().flush()?;
    server.serve_forever();
    Ok(())
}
