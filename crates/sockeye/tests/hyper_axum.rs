//! HTTP and WebSocket on one port: a hyper 1.x server and an axum 0.8 router on 127.0.0.1,
//! each serving a plain HTTP route and a WebSocket route, upgraded into sockeye connections
//! (features `hyper` and `axum`).
//!
//! Clients are sockeye clients, and raw `TcpStream`s for bad requests and for peers that do
//! not answer pings. Timeouts are failure guards only.
#![cfg(feature = "axum")]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sockeye::axum::WebSocketUpgrade;
use sockeye::hyper::{is_upgrade_request, Upgrader};
use sockeye::proto::frame::{Frame, OpCode};
use sockeye::proto::{CloseFrame, HandshakeError};
use sockeye::{ClientBuilder, CloseCode, Connection, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Failure guard for anything that should happen promptly.
const GUARD: Duration = Duration::from_secs(5);

async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

const HELLO: &str = "hello over HTTP\n";

/// What the WebSocket side of both servers does: echo, with a few commands.
async fn behave(ws: Connection) -> Result<(), sockeye::BoxError> {
    while let Some(msg) = ws.recv().await? {
        match msg.as_text() {
            Some("fail") => return Err("the handler failed on purpose".into()),
            Some("addr") => {
                let addr = ws
                    .remote_addr()
                    .map_or("none".to_owned(), |a| a.to_string());
                ws.send(addr).await?;
            }
            Some("latency") => {
                // Keepalive pings go out every 50 ms; wait (bounded) for one to be answered.
                let mut measured = None;
                for _ in 0..200 {
                    measured = ws.latency();
                    if measured.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ws.send(format!("latency {}", measured.is_some())).await?;
            }
            Some("path") => ws.send(ws.request().uri().path().to_owned()).await?,
            Some("user") => {
                ws.send(ws.username().unwrap_or("nobody").to_owned())
                    .await?
            }
            _ => ws.send(msg).await?,
        }
    }
    Ok(())
}

/// The options both servers use on `/ws`: small messages, fast keepalive.
fn upgrader() -> Upgrader {
    Upgrader::new()
        .max_size(1024)
        .ping_interval(Some(Duration::from_millis(50)))
        .ping_timeout(Some(Duration::from_millis(300)))
}

// ----- The servers ----------------------------------------------------------------------------

/// A hyper server: `/` answers HTTP, `/ws` upgrades with [`upgrader`], `/chat` with
/// subprotocols and an origin list, `/await` awaits the `Upgrading` itself.
async fn hyper_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let service = hyper::service::service_fn(move |req| hyper_service(req, peer));
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades(),
            );
        }
    });
    addr
}

async fn hyper_service(
    mut req: http::Request<Incoming>,
    peer: SocketAddr,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    if !is_upgrade_request(&req) {
        return Ok(http::Response::new(Full::new(Bytes::from(HELLO))));
    }
    let upgrader = match req.uri().path() {
        "/chat" => upgrader()
            .subprotocols(["chat.v2", "chat.v1"])
            .origins(Some(vec![Some("https://good.example".to_owned())])),
        "/private" => upgrader()
            .basic_auth(sockeye::auth::basic("hyper", [("alice", "s3cret")]))
            .process_request(|req| {
                (req.uri().query() == Some("busy"))
                    .then(|| sockeye::respond(http::StatusCode::SERVICE_UNAVAILABLE, "busy\n"))
            })
            .process_response(|_, response| {
                response
                    .headers_mut()
                    .insert("set-cookie", http::HeaderValue::from_static("seen=1"));
            }),
        _ => upgrader(),
    };
    let (response, upgrading) = upgrader.upgrade(&mut req);
    if let Some(upgrading) = upgrading {
        let upgrading = upgrading.remote_addr(peer);
        if req.uri().path() == "/await" {
            // The connection itself, its driver spawned: greet, then drop the last handle.
            tokio::spawn(async move {
                let ws = upgrading.await.expect("upgraded");
                ws.send("greetings from an awaited upgrade").await.unwrap();
            });
        } else {
            upgrading.on_upgrade(behave);
        }
    }
    Ok(response.map(Full::new))
}

async fn axum_ws(ws: WebSocketUpgrade) -> Response {
    ws.with(&upgrader()).on_upgrade(behave)
}

async fn axum_chat(ws: WebSocketUpgrade, State(shared): State<Upgrader>) -> Response {
    ws.with(&shared).on_upgrade(behave)
}

/// An axum router: `/` and `/api/sum/{a}/{b}` answer HTTP, `/ws` and `/chat` upgrade;
/// served with `ConnectInfo`, so connections know their peer's address.
async fn axum_server() -> SocketAddr {
    let chat = upgrader()
        .subprotocols(["chat.v2", "chat.v1"])
        .origins(Some(vec![Some("https://good.example".to_owned())]));
    let app = axum::Router::new()
        .route("/", get(|| async { HELLO }))
        .route(
            "/api/sum/{a}/{b}",
            get(
                |axum::extract::Path((a, b)): axum::extract::Path<(u32, u32)>| async move {
                    format!("{}", a + b)
                },
            ),
        )
        .route("/ws", get(axum_ws))
        .route("/chat", get(axum_chat))
        .with_state(chat);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service).await.unwrap();
    });
    addr
}

// ----- Helpers --------------------------------------------------------------------------------

async fn connect(uri: &str) -> Connection {
    guard("connect", sockeye::connect(uri))
        .await
        .unwrap_or_else(|e| panic!("connect {uri}: {e}"))
}

async fn recv_text(ws: &Connection) -> String {
    let msg = guard("a message", ws.recv())
        .await
        .expect("recv failed")
        .expect("closed instead of a message");
    msg.as_text().expect("a text message").to_owned()
}

/// The status of the response that refuses the handshake.
async fn refused(builder: ClientBuilder, uri: &str) -> u16 {
    match guard("connect", builder.connect(uri)).await {
        Err(Error::Handshake(HandshakeError::UnexpectedStatus(r))) => r.status.as_u16(),
        other => panic!("expected a refusal: {other:?}"),
    }
}

/// The error that ended the connection (after skipping messages).
async fn closed_with(ws: &Connection) -> sockeye::Closed {
    loop {
        match guard("the close", ws.recv()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("closed normally"),
            Err(Error::ConnectionClosed(closed)) => return closed,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}

/// Sends `request` on a new TCP connection and reads the response until the server closes:
/// (status, head, body).
async fn raw_http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = guard("an HTTP response", exchange).await.unwrap();
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("incomplete response {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A plain GET on the same port, answered by the HTTP side.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, _, body) = raw_http(addr, &request).await;
    (status, body)
}

/// A handshake request to `/ws` with `version` and `key` (when given), and `extra` headers.
fn handshake_request(addr: SocketAddr, method: &str, version: &str, key: Option<&str>) -> String {
    let key = key.map_or(String::new(), |k| format!("Sec-WebSocket-Key: {k}\r\n"));
    format!(
        "{method} /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         {key}Sec-WebSocket-Version: {version}\r\n\r\n"
    )
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Bad handshakes get their 4xx (never a panic, never a page), and the port still serves
/// HTTP afterwards.
async fn bad_upgrades_are_refused(addr: SocketAddr) {
    let (status, head, body) =
        raw_http(addr, &handshake_request(addr, "GET", "8", Some(KEY))).await;
    assert_eq!(status, 426, "{head}\n{body}");
    assert!(head.contains("sec-websocket-version: 13"), "{head}");
    assert!(body.contains("unsupported WebSocket version"), "{body}");

    let (status, _, body) = raw_http(addr, &handshake_request(addr, "GET", "13", None)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Sec-WebSocket-Key"), "{body}");

    let bad_key = handshake_request(addr, "GET", "13", Some("c2hvcnQ="));
    let (status, _, body) = raw_http(addr, &bad_key).await;
    assert_eq!(status, 400, "{body}");

    let no_connection = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let (status, _, body) = raw_http(addr, &no_connection).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Connection"), "{body}");

    assert_eq!(http_get(addr, "/").await, (200, HELLO.to_owned()));
}

/// Echo, compression, the path, keepalive answered both ways, 1009, 1011, a clean 1000, and
/// HTTP before and after on the same port.
async fn websocket_behaves_as_served(addr: SocketAddr) {
    assert_eq!(http_get(addr, "/").await, (200, HELLO.to_owned()));

    let ws = connect(&format!("ws://{addr}/ws")).await;
    let extensions = ws.response().headers()["sec-websocket-extensions"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(extensions.contains("permessage-deflate"), "{extensions}");
    ws.send("Hello, κόσμε!").await.unwrap();
    assert_eq!(recv_text(&ws).await, "Hello, κόσμε!");
    ws.send(sockeye::binary(vec![0u8; 1000])).await.unwrap();
    let echoed = guard("binary echo", ws.recv()).await.unwrap().unwrap();
    assert_eq!(echoed.as_bytes(), &[0u8; 1000][..]);
    ws.send("path").await.unwrap();
    assert_eq!(recv_text(&ws).await, "/ws");
    // Our pings are answered; the server's keepalive pings are sent and answered.
    let rtt = guard("pong", async { ws.ping().await.unwrap().await }).await;
    assert!(rtt.is_ok(), "{rtt:?}");
    ws.send("latency").await.unwrap();
    assert_eq!(recv_text(&ws).await, "latency true");
    ws.send("addr").await.unwrap();
    // The server knows the client's address (hyper: passed in; axum: ConnectInfo).
    let remote = recv_text(&ws).await;
    assert_eq!(
        remote.parse::<SocketAddr>().ok(),
        ws.local_addr(),
        "{remote}"
    );
    guard("close", ws.close(CloseCode::NORMAL, "bye"))
        .await
        .unwrap();
    let closed = ws.closed().expect("closed");
    assert!(closed.is_ok(), "{closed}");

    // max_size 1024 on the server: 2000 bytes fail the connection with 1009.
    let ws = connect(&format!("ws://{addr}/ws")).await;
    ws.send(sockeye::binary(vec![7u8; 2000])).await.unwrap();
    assert_eq!(closed_with(&ws).await.code(), CloseCode::MESSAGE_TOO_BIG);

    // A handler error closes with 1011.
    let ws = connect(&format!("ws://{addr}/ws")).await;
    ws.send("fail").await.unwrap();
    assert_eq!(closed_with(&ws).await.code(), CloseCode::INTERNAL_ERROR);

    // Without compression offered, none is used; the handler's return closes with 1000.
    let ws = guard(
        "connect",
        ClientBuilder::default()
            .compression(false)
            .connect(&format!("ws://{addr}/ws")),
    )
    .await
    .unwrap();
    assert!(!ws
        .response()
        .headers()
        .contains_key("sec-websocket-extensions"));
    ws.send("plain").await.unwrap();
    assert_eq!(recv_text(&ws).await, "plain");
    drop(ws);

    assert_eq!(http_get(addr, "/").await, (200, HELLO.to_owned()));
}

/// Subprotocol chosen by the server's preference; an origin not listed gets 403; a client
/// whose subprotocols the server does not speak gets 400.
async fn options_apply_to_the_handshake(addr: SocketAddr) {
    let uri = format!("ws://{addr}/chat");
    let ws = guard(
        "connect",
        ClientBuilder::default()
            .subprotocols(["chat.v1", "chat.v2"])
            .origin("https://good.example")
            .unwrap()
            .connect(&uri),
    )
    .await
    .unwrap();
    assert_eq!(ws.subprotocol(), Some("chat.v2"));
    ws.send("echo").await.unwrap();
    assert_eq!(recv_text(&ws).await, "echo");
    guard("close", ws.close(CloseCode::NORMAL, ""))
        .await
        .unwrap();

    let evil = ClientBuilder::default()
        .subprotocols(["chat.v1"])
        .origin("https://evil.example")
        .unwrap();
    assert_eq!(refused(evil, &uri).await, 403);
    let other_protocols = ClientBuilder::default()
        .subprotocols(["mqtt"])
        .origin("https://good.example")
        .unwrap();
    assert_eq!(refused(other_protocols, &uri).await, 400);
}

/// A peer that completes the handshake by hand and never answers pings: the server's
/// keepalive pings it, then closes with 1011 after `ping_timeout`.
async fn keepalive_times_out_a_silent_peer(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = handshake_request(addr, "GET", "13", Some(KEY));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = guard("the 101", stream.read_buf(&mut buf)).await.unwrap();
        assert!(n > 0, "EOF during the handshake");
    };
    let head = String::from_utf8_lossy(&buf.split_to(end)).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    let mut pings = 0;
    let close = loop {
        let frame = loop {
            if let Some(frame) = Frame::decode(&mut buf, usize::MAX).unwrap() {
                break frame;
            }
            let n = guard("a frame", stream.read_buf(&mut buf)).await.unwrap();
            assert!(n > 0, "EOF before a close frame");
        };
        match frame.opcode {
            OpCode::Ping => pings += 1,
            OpCode::Close => break CloseFrame::parse(&frame.payload).unwrap().unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(pings >= 1, "no keepalive ping before the close");
    assert_eq!(close.code, CloseCode::INTERNAL_ERROR);
}

// ----- hyper ----------------------------------------------------------------------------------

#[tokio::test]
async fn hyper_serves_http_and_websocket_on_one_port() {
    let addr = hyper_server().await;
    websocket_behaves_as_served(addr).await;
}

#[tokio::test]
async fn hyper_refuses_bad_upgrades_with_their_status() {
    let addr = hyper_server().await;
    bad_upgrades_are_refused(addr).await;
    // Not GET: 405, from the handshake (hyper routed it here for its Upgrade header).
    let (status, _, _) = raw_http(addr, &handshake_request(addr, "POST", "13", Some(KEY))).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn hyper_upgrader_options_apply() {
    let addr = hyper_server().await;
    options_apply_to_the_handshake(addr).await;
}

#[tokio::test]
async fn hyper_upgrader_hooks_run_as_the_servers_do() {
    let addr = hyper_server().await;
    // Basic auth first: 401 without credentials, whatever the query.
    let uri = format!("ws://{addr}/private?busy");
    assert_eq!(refused(ClientBuilder::default(), &uri).await, 401);
    // Then process_request.
    let uri = format!("ws://alice:s3cret@{addr}/private?busy");
    assert_eq!(refused(ClientBuilder::default(), &uri).await, 503);
    // Accepted: process_response added its cookie; the handler knows the user.
    let ws = connect(&format!("ws://alice:s3cret@{addr}/private")).await;
    assert_eq!(ws.response().headers()["set-cookie"], "seen=1");
    ws.send("user").await.unwrap();
    assert_eq!(recv_text(&ws).await, "alice");
    guard("close", ws.close(CloseCode::NORMAL, ""))
        .await
        .unwrap();
}

#[tokio::test]
async fn hyper_keepalive_times_out_a_silent_peer() {
    let addr = hyper_server().await;
    keepalive_times_out_a_silent_peer(addr).await;
}

#[tokio::test]
async fn hyper_awaited_upgrade_gives_the_connection() {
    let addr = hyper_server().await;
    let ws = connect(&format!("ws://{addr}/await")).await;
    assert_eq!(recv_text(&ws).await, "greetings from an awaited upgrade");
    // The server's last handle was dropped: it closes with 1000.
    assert!(guard("the close", ws.recv()).await.unwrap().is_none());
    assert_eq!(ws.closed().unwrap().code(), CloseCode::NORMAL);
}

#[tokio::test]
async fn upgrade_of_a_request_hyper_did_not_serve_is_a_500() {
    // No hyper connection behind it: nothing can be upgraded, and it says so.
    let mut req = http::Request::builder()
        .uri("/ws")
        .header("host", "example.com")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", KEY)
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    assert!(is_upgrade_request(&req));
    let (response, upgrading) = Upgrader::new().upgrade(&mut req);
    assert_eq!(response.status(), 500);
    assert!(upgrading.is_none());
}

// ----- axum -----------------------------------------------------------------------------------

#[tokio::test]
async fn axum_serves_http_and_websocket_on_one_port() {
    let addr = axum_server().await;
    assert_eq!(
        http_get(addr, "/api/sum/2/40").await,
        (200, "42".to_owned())
    );
    websocket_behaves_as_served(addr).await;
}

#[tokio::test]
async fn axum_rejects_bad_upgrades_with_their_status() {
    let addr = axum_server().await;
    bad_upgrades_are_refused(addr).await;
    // A plain GET of the WebSocket route: 426, naming what is missing.
    let (status, body) = http_get(addr, "/ws").await;
    assert_eq!(status, 426, "{body}");
    assert!(body.contains("Upgrade"), "{body}");
}

#[tokio::test]
async fn axum_upgrader_options_apply() {
    let addr = axum_server().await;
    options_apply_to_the_handshake(addr).await;
}

#[tokio::test]
async fn axum_keepalive_times_out_a_silent_peer() {
    let addr = axum_server().await;
    keepalive_times_out_a_silent_peer(addr).await;
}

#[tokio::test]
async fn hyper_without_upgrades_ends_the_connection_at_once() {
    // A hyper connection served without `with_upgrades()`: hyper sends the 101 but never
    // hands the socket over. The upgrade fails (logged) and the client sees the connection
    // end (1006) at once, rather than waiting for a handler that never runs.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let service = hyper::service::service_fn(move |req| hyper_service(req, peer));
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    let ws = connect(&format!("ws://{addr}/ws")).await;
    ws.send("anyone?").await.unwrap();
    assert_eq!(closed_with(&ws).await.code(), CloseCode::ABNORMAL);
}
