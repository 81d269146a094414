//! The basic server on the event-loop front end (`sockeye::reactor`): reads a name from the
//! client, sends a greeting back, and closes the connection. The same as `hello_server.rs`,
//! written as callbacks instead of a handler that awaits.
//!
//! ```text
//! cargo run -p sockeye --example hello_server_reactor            # listens on 127.0.0.1:8765
//! cargo run -p sockeye --example hello_server_reactor -- 0.0.0.0:9000
//! ```
//!
//! Then run a client in another terminal:
//!
//! ```text
//! cargo run -p sockeye --example hello_client -- ws://127.0.0.1:8765/ Alice
//! ```

use std::io::Write;

use sockeye::reactor::{Handler, Socket};
use sockeye::{BoxError, CloseCode, Message};

/// One per connection, made by the factory passed to `serve`. It lives in the loop thread
/// that owns the connection; the loop calls it when something happens.
struct Hello;

impl Handler for Hello {
    fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
        let Some(name) = message.as_text() else {
            let _ = ws.close(CloseCode::UNSUPPORTED_DATA, "expected a text message");
            return;
        };
        println!("<<< {name}");
        let greeting = format!("Hello {name}!");
        // Queued: the greeting and the close frame leave together when this returns.
        let _ = ws.send(greeting.clone());
        println!(">>> {greeting}");
        let _ = ws.close(CloseCode::NORMAL, "");
    }
}

fn main() -> Result<(), BoxError> {
    // Logs go to stderr so that stdout only carries what the example prints.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    // The factory sees each handshake request (path, headers) and makes the handler.
    let server = sockeye::reactor::serve(addr, |_request| Hello)?;
    // With port 0 the OS picks a free port: print the real one.
    println!("listening on ws://{}/", server.local_addr());
    std::io::stdout().flush()?;

    // Blocks until `server.shutdown()` is called; here, until the process is stopped.
    server.serve_forever();
    Ok(())
}
