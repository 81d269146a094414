//! A health check: answer `GET /healthz` with `200 OK` for load balancers and monitoring,
//! and serve WebSocket connections (an echo) on every other path.
//!
//! ```text
//! cargo run -p sockeye --example health_check            # listens on 127.0.0.1:8765
//! curl -i http://127.0.0.1:8765/healthz
//! ```

use std::io::Write;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use sockeye::{BoxError, ServerConnection};

/// Sees each request before the WebSocket handshake. Returning a response answers the request
/// with it (and closes the TCP connection); returning `None` goes on with the handshake.
fn health_check(request: &Request<()>) -> Option<Response<Bytes>> {
    if request.uri().path() == "/healthz" {
        return Some(sockeye::respond(StatusCode::OK, "OK\n"));
    }
    None
}

async fn echo(ws: ServerConnection) -> Result<(), BoxError> {
    while let Some(message) = ws.recv().await? {
        ws.send(message).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let server = sockeye::Server::builder()
        .process_request(health_check)
        .serve(addr, echo)
        .await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}
