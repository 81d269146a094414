//! HTTP headers and cookies: authenticate the opening handshake in `process_request`, reject
//! it with `401 Unauthorized` when credentials are missing, and read them again in the
//! handler from the handshake request that the connection keeps (`ws.request()`).
//!
//! Browsers can't add headers to a WebSocket handshake but send their cookies, so this
//! accepts either a `session` cookie or an `Authorization: Bearer` header.
//!
//! ```text
//! cargo run -p sockeye --example headers_cookies            # listens on 127.0.0.1:8765
//! ```
//!
//! A client without credentials gets a 401; with `Cookie: session=alice` (or
//! `Authorization: Bearer alice`), it receives `Hello alice!`. (A real application would look
//! the session or token up rather than trust it as the user's name.)

use std::io::Write;

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, USER_AGENT};
use http::{Request, Response, StatusCode};
use sockeye::{BoxError, ServerConnection};

/// The credentials of a handshake request: the `session` cookie, else the bearer token.
fn user_of(request: &Request<()>) -> Option<String> {
    // There may be several `Cookie` headers, each with `name=value` pairs split by `;`.
    let from_cookie = request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "session")
        .map(|(_, value)| value.to_owned());
    let from_header = || {
        request
            .headers()
            .get(AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(str::to_owned)
    };
    from_cookie
        .or_else(from_header)
        .filter(|user| !user.is_empty())
}

/// Runs before the handshake: without credentials, answer 401 instead of opening the
/// connection.
fn authenticate(request: &Request<()>) -> Option<Response<Bytes>> {
    match user_of(request) {
        Some(_) => None,
        None => Some(sockeye::respond(
            StatusCode::UNAUTHORIZED,
            "Missing session cookie or bearer token.\n",
        )),
    }
}

async fn handler(ws: ServerConnection) -> Result<(), BoxError> {
    // The connection keeps the handshake request: its path, query and headers.
    let request = ws.request();
    // `authenticate` let this connection in, so the credentials are there.
    let user = user_of(request).ok_or("no credentials")?;
    let agent = request
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    println!("{user} connected with {agent}");
    ws.send(format!("Hello {user}!")).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let server = sockeye::Server::builder()
        .process_request(authenticate)
        .serve(addr, handler)
        .await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}
