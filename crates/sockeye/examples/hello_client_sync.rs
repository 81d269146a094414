//! The basic client, blocking: sends a name to the server of `hello_server_sync.rs` (or
//! `hello_server.rs`), prints its greeting. The same as `hello_client.rs`, with
//! `sockeye::sync`.
//!
//! ```text
//! cargo run -p sockeye --example hello_client_sync            # ws://127.0.0.1:8765/, "World"
//! cargo run -p sockeye --example hello_client_sync -- ws://127.0.0.1:8765/ Alice
//! ```

use sockeye::{BoxError, CloseCode};

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let uri = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8765/".to_owned());
    let name = args.next().unwrap_or_else(|| "World".to_owned());

    // `connect` opens the TCP connection and runs the opening handshake.
    let ws = sockeye::sync::connect(&uri)?;

    ws.send(name.clone())?;
    println!(">>> {name}");

    // The server answers with one message, then closes the connection.
    match ws.recv()? {
        Some(greeting) => println!("<<< {}", greeting.as_text().unwrap_or("(binary)")),
        None => println!("the server closed the connection without answering"),
    }

    // Always close: this runs the closing handshake and waits for it (at most
    // `close_timeout`). Closing a connection the server already closed does nothing.
    ws.close(CloseCode::NORMAL, "")?;
    Ok(())
}
