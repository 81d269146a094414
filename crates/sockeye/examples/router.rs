//! Routing: a handler per path, with parameters. `/` says what is there, `/echo` echoes,
//! `/rooms/{id}` tags what it echoes with the room. Any other path gets `404 Not Found`
//! during the handshake: no connection, no handler.
//!
//! ```text
//! cargo run -p sockeye --example router                       # listens on 127.0.0.1:8765
//! cargo run -p sockeye --example router -- 127.0.0.1:8765 --sync   # blocking server
//! cargo run -p sockeye-cli -- connect ws://127.0.0.1:8765/rooms/kitchen
//! ```

use std::io::Write;

use sockeye::{BoxError, Router, ServerConnection};

const WELCOME: &str = "routes: /echo, /rooms/{id}";

fn router() -> Router {
    Router::new()
        .route("/", |ws: ServerConnection| async move {
            ws.send(WELCOME).await?;
            Ok(())
        })
        .route("/echo", |ws: ServerConnection| async move {
            while let Some(message) = ws.recv().await? {
                ws.send(message).await?;
            }
            Ok(())
        })
        .route("/rooms/{id}", |ws: ServerConnection| async move {
            // Percent-decoded: /rooms/caf%C3%A9 is room "café".
            let room = ws.param("id").ok_or("no room")?.to_owned();
            println!("joined {room}");
            while let Some(message) = ws.recv().await? {
                let text = message.as_text().unwrap_or("(binary)");
                ws.send(format!("[{room}] {text}")).await?;
            }
            Ok(())
        })
}

/// The same routes with the blocking front end.
fn router_sync() -> sockeye::sync::Router {
    use sockeye::sync::Connection;
    sockeye::sync::Router::new()
        .route("/", |ws: Connection| Ok(ws.send(WELCOME)?))
        .route("/echo", |ws: Connection| {
            while let Some(message) = ws.recv()? {
                ws.send(message)?;
            }
            Ok(())
        })
        .route("/rooms/{id}", |ws: Connection| {
            let room = ws.param("id").ok_or("no room")?;
            println!("joined {room}");
            while let Some(message) = ws.recv()? {
                let text = message.as_text().unwrap_or("(binary)");
                ws.send(format!("[{room}] {text}"))?;
            }
            Ok(())
        })
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
    let server = sockeye::route(addr, router()).await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}

fn serve_blocking(addr: &str) -> Result<(), BoxError> {
    let server = sockeye::sync::route(addr, router_sync())?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever()?;
    Ok(())
}
