//! HTTP Basic authentication: only known users open a connection, and the handler knows who
//! they are (`ws.username()`). Others get `401 Unauthorized` with a `WWW-Authenticate`
//! challenge, during the handshake.
//!
//! ```text
//! cargo run -p sockeye --example basic_auth                   # listens on 127.0.0.1:8765
//! cargo run -p sockeye --example basic_auth -- 127.0.0.1:8765 --sync   # blocking server
//! cargo run -p sockeye-cli -- connect ws://alice:wonderland@127.0.0.1:8765/
//! ```
//!
//! Basic credentials are readable by anyone on the path: outside of loopback, serve them over
//! TLS (see the `tls_server` example).

use std::io::Write;

use sockeye::{auth, BoxError, ServerConnection};

/// The users and their passwords. A real application would keep hashes, and check them with
/// `auth::basic_with(realm, |user, password| ...)`.
const USERS: [(&str, &str); 2] = [("alice", "wonderland"), ("bob", "builder")];

/// Greets the user, then echoes what they send.
async fn greet(ws: ServerConnection) -> Result<(), BoxError> {
    // The server's basic auth let this connection in: there is a user.
    let user = ws.username().ok_or("no user")?.to_owned();
    println!("{user} connected");
    ws.send(format!("Hello {user}!")).await?;
    while let Some(message) = ws.recv().await? {
        ws.send(message).await?;
    }
    Ok(())
}

/// The same with the blocking front end.
fn greet_sync(ws: sockeye::sync::Connection) -> Result<(), BoxError> {
    let user = ws.username().ok_or("no user")?.to_owned();
    println!("{user} connected");
    ws.send(format!("Hello {user}!"))?;
    while let Some(message) = ws.recv()? {
        ws.send(message)?;
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    if args.next().as_deref() == Some("--sync") {
        return serve_blocking(&addr);
    }
    tokio::runtime::Runtime::new()?.block_on(serve(&addr))
}

async fn serve(addr: &str) -> Result<(), BoxError> {
    let server = sockeye::Server::builder()
        .basic_auth(auth::basic("example", USERS))
        .serve(addr, greet)
        .await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}

fn serve_blocking(addr: &str) -> Result<(), BoxError> {
    let server = sockeye::sync::Server::builder()
        .basic_auth(auth::basic("example", USERS))
        .serve(addr, greet_sync)?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever()?;
    Ok(())
}
