//! An HTTP API and WebSockets on one port, with axum (feature `axum`).
//!
//! - `GET /` describes the routes;
//! - `GET /api/listeners` answers how many WebSocket clients listen;
//! - `POST /api/announce` sends its body to every WebSocket client;
//! - `GET /ws` upgrades to a WebSocket (sockeye's options: 64 KiB messages, keepalive every
//!   10 s) that joins the announcements and echoes what it receives.
//!
//! ```text
//! cargo run -p sockeye --features axum --example axum_app   # listens on 127.0.0.1:8765
//! sockeye connect ws://127.0.0.1:8765/ws                    # in another terminal
//! curl -d 'Hello, everyone!' http://127.0.0.1:8765/api/announce
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use sockeye::axum::WebSocketUpgrade;
use sockeye::{BoxError, Connection, Hub};

const TOPIC: &str = "announcements";

/// The WebSocket route: the extractor checked the request; set options, then say what runs
/// on the connection. A bad handshake never reaches this function (it gets its 4xx).
async fn websocket(ws: WebSocketUpgrade, State(hub): State<Hub>) -> Response {
    ws.max_size(64 * 1024)
        .ping_interval(Some(Duration::from_secs(10)))
        .on_upgrade(move |ws: Connection| async move {
            hub.subscribe(&ws, TOPIC);
            ws.send("welcome: you will receive announcements").await?;
            while let Some(message) = ws.recv().await? {
                ws.send(message).await?;
            }
            // Closing unsubscribes it: the hub watches its connections.
            Ok::<(), BoxError>(())
        })
}

async fn listeners(State(hub): State<Hub>) -> String {
    format!("{}\n", hub.subscribers(TOPIC))
}

async fn announce(State(hub): State<Hub>, body: String) -> String {
    let published = hub.publish(TOPIC, body);
    format!("sent to {}\n", published.delivered)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let app = axum::Router::new()
        .route(
            "/",
            get(|| async { "GET /api/listeners, POST /api/announce, WebSocket at /ws\n" }),
        )
        .route("/api/listeners", get(listeners))
        .route("/api/announce", post(announce))
        .route("/ws", get(websocket))
        .with_state(Hub::new());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on ws://{}/", listener.local_addr()?);
    std::io::stdout().flush()?;
    // With ConnectInfo, connections know their peer's address (`Connection::remote_addr`).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
