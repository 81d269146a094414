//! The basic client: sends a name to the server of `hello_server.rs`, prints its greeting.
//!
//! ```text
//! cargo run -p sockeye --example hello_client            # ws://127.0.0.1:8765/, "World"
//! cargo run -p sockeye --example hello_client -- ws://127.0.0.1:8765/ Alice
//! ```

use sockeye::{BoxError, CloseCode};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let uri = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8765/".to_owned());
    let name = args.next().unwrap_or_else(|| "World".to_owned());

    // `connect` opens the TCP connection and runs the opening handshake.
    let ws = sockeye::connect(&uri).await?;

    ws.send(name.clone()).await?;
    println!(">>> {name}");

    // The server answers with one message, then closes the connection.
    match ws.recv().await? {
        Some(greeting) => println!("<<< {}", greeting.as_text().unwrap_or("(binary)")),
        None => println!("the server closed the connection without answering"),
    }

    // Always close: this runs the closing handshake and waits for it (at most
    // `close_timeout`). Closing a connection the server already closed does nothing.
    ws.close(CloseCode::NORMAL, "").await?;
    Ok(())
}
