//! sockeye: WebSockets for Rust, simple, correct and fast.
//!
//! A handler per connection, `recv()` and `send()`, the opening and closing handshakes,
//! pings and limits handled under the hood, safe defaults everywhere: the design of Python's
//! `websockets`, on tokio. Every protocol rule lives in [`proto`] (the sans-I/O core,
//! `sockeye-proto`), which this crate drives.
//!
//! A server's handlers are polled by sockeye's event loops (a thread per core, each owning
//! its connections: about 1.1 KB per idle connection), inside the tokio runtime that
//! started the server, so tokio's timers, channels and `spawn` work in them;
//! [`ServerBuilder::tasks`] gives each connection a tokio task instead (TLS servers use
//! tasks). The handler and its [`Connection`] are the same either way.
//!
//! # Server
//!
//! ```no_run
//! # async fn run() -> Result<(), sockeye::BoxError> {
//! // An echo server: the handler runs once per connection; returning closes it (1000).
//! let server = sockeye::serve("127.0.0.1:8765", |ws: sockeye::ServerConnection| async move {
//!     while let Some(msg) = ws.recv().await? {
//!         ws.send(msg).await?;
//!     }
//!     Ok(())
//! })
//! .await?;
//! server.serve_forever().await?;
//! # Ok(()) }
//! ```
//!
//! # Client
//!
//! ```no_run
//! # async fn run() -> Result<(), sockeye::BoxError> {
//! let ws = sockeye::connect("ws://127.0.0.1:8765").await?;
//! ws.send("Hello!").await?;
//! let reply = ws.recv().await?;
//! ws.close(sockeye::CloseCode::NORMAL, "").await?;
//! # Ok(()) }
//! ```
//!
//! # Reconnecting
//!
//! [`reconnecting`] (or [`ClientBuilder::reconnecting`]) is python-websockets'
//! `async for websocket in connect(uri)`: a stream of connections that reconnects after
//! network errors, timeouts and 5xx answers ([`is_retryable`]), with python-websockets'
//! [`Backoff`]. `sync::reconnecting` is its blocking twin, an iterator.
//!
//! # Redirects and proxies
//!
//! Clients follow redirects (301, 302, 303, 307, 308) to `ws://` or `wss://` locations, at
//! most 10 (`max_redirects`), never from `wss://` to `ws://`, and keep credentials to their
//! origin. They connect through the proxy the environment names (`HTTP_PROXY`,
//! `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`) unless told otherwise: see [`Proxy`] (HTTP
//! `CONNECT` and SOCKS5, with credentials). Both front ends, reconnecting clients too.
//!
//! ```no_run
//! # async fn run() -> Result<(), sockeye::BoxError> {
//! let ws = sockeye::ClientBuilder::default()
//!     .proxy(sockeye::Proxy::url("socks5h://127.0.0.1:1080")?)
//!     .max_redirects(3)
//!     .connect("wss://example.com/chat")
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//!
//! - Keepalive pings, pongs and the closing handshake run even while the application never
//!   calls `recv` (the event loop, or the connection's driver polled in the handler's task,
//!   does them).
//! - Backpressure both ways: reading pauses while `max_queue` messages wait; `send` waits
//!   while more than `write_limit` bytes wait to be written.
//! - Writes are corked: what the core produces while handling one batch of input, and what
//!   other tasks sent meanwhile, leaves in one write.
//! - A normal close is not an error: `recv` returns `Ok(None)`.
//!
//! # Pub/sub
//!
//! [`Hub`] maps topics to subscribed connections: [`Hub::new`] in memory, and with the
//! `redis` feature `Hub::redis(url)` shares topics among processes through Redis.
//!
//! # Authentication and routing
//!
//! [`auth`]: HTTP Basic authentication of the handshake (`basic_auth` on the server
//! builders; the handler reads [`Connection::username`]). [`routing`]: a [`Router`] of path
//! patterns (`/rooms/{id}`) to handlers, served by [`route`], with 404 for other paths; the
//! handler reads [`Connection::param`]. Both front ends.
//!
//! # Unix domain sockets and graceful shutdown
//!
//! `unix_serve(path, handler)` and `unix_connect(path, uri)` (Unix only; both front ends)
//! serve and connect over a Unix domain socket, with every option, hook, route and TLS
//! setting of their TCP twins. [`Server::close`] is the graceful shutdown to call on
//! SIGTERM/SIGINT: 503 to handshakes in progress, 1001 to open connections, then it waits for
//! the handlers (examples `graceful_shutdown`, `graceful_shutdown_sync`).
//!
//! # TLS
//!
//! With the `tls` feature (on by default), clients connect to `wss://` URIs and servers
//! serve TLS: see the `tls` module.
//!
//! # HTTP and WebSocket on one port
//!
//! With the `hyper` feature, `sockeye::hyper::Upgrader` turns a request that a hyper 1.x server
//! received into a sockeye connection; with `axum`, `sockeye::axum::WebSocketUpgrade` is the same
//! as an axum 0.8 extractor. The server's options, hooks and behaviour apply.
//!
//! # Cargo features
//!
//! - `tls` (default): `wss://` clients and TLS servers (rustls, ring).
//! - `native-roots`: `ClientBuilder::native_roots`, the system's trust store.
//! - `redis`: `Hub::redis` and [`hub`]`::RedisBuilder`, on the `redis` crate (tokio).
//! - `hyper`: `sockeye::hyper`, upgrades of requests served by hyper 1.x.
//! - `axum` (implies `hyper`): `sockeye::axum::WebSocketUpgrade`, an axum 0.8 extractor.
//!
//! Logs go through `tracing`, targets `sockeye::server`, `sockeye::client` and `sockeye::hub`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod addresses;
pub mod auth;
#[cfg(feature = "axum")]
pub mod axum;
mod client;
mod connection;
mod direct;
mod error;
mod handle;
mod head;
pub mod hub;
#[cfg(feature = "hyper")]
pub mod hyper;
mod options;
mod outgoing;
mod proxy;
mod queue;
pub mod reactor;
mod reconnect;
mod redirect;
pub mod routing;
mod server;
pub mod sync;
mod timer;
#[cfg(feature = "tls")]
pub mod tls;
mod unix;

/// The `bytes` crate, re-exported: payloads are `Bytes`.
pub use bytes;
/// The `http` crate, re-exported: handshake requests and responses are `http` types.
pub use http;
pub use sockeye_proto as proto;

#[cfg(unix)]
pub use client::unix_connect;
pub use client::{connect, ClientBuilder};
pub use error::{Closed, Error, Result};
pub use handle::{
    binary, broadcast, text, ClientConnection, Connection, Fragments, Pong, ServerConnection,
};
pub use hub::{Hub, Published};
pub use proto::{CloseCode, CloseFrame, Fragment, Message, MessageKind, State};
pub use proxy::{Proxy, ProxyError};
pub use reconnect::{is_retryable, reconnecting, Backoff, Delays, Reconnecting, RetryIf};
pub use redirect::RedirectError;
pub use routing::Router;
#[cfg(unix)]
pub use server::unix_serve;
pub use server::{
    respond, route, serve, BoxError, ProcessRequest, ProcessResponse, Server, ServerBuilder,
};
