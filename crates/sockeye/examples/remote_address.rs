//! The client's IP address and port: `ws.remote_addr()`. The server sends each client the
//! address it sees it connecting from, and prints it.
//!
//! ```text
//! cargo run -p sockeye --example remote_address            # listens on 127.0.0.1:8765
//! ```
//!
//! Behind a reverse proxy this is the proxy's address; the client's is then in a header the
//! proxy adds, such as `X-Forwarded-For`, readable with `ws.request().headers()`.

use std::io::Write;

use sockeye::{BoxError, ServerConnection};

async fn handler(ws: ServerConnection) -> Result<(), BoxError> {
    // A `SocketAddr`: `.ip()` for the IP address alone.
    let remote = ws.remote_addr().ok_or("the transport has no address")?;
    println!("connection from {} (port {})", remote.ip(), remote.port());
    ws.send(format!("you are {remote}")).await?;
    Ok(())
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
