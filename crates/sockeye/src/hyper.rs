//! HTTP and WebSocket on the same port: a request that hyper 1.x received becomes a sockeye
//! [`Connection`] (feature `hyper`; see [`crate::axum`] for axum).
//!
//! An HTTP server built on hyper answers its own routes; when a request asks for a WebSocket
//! ([`is_upgrade_request`]), [`Upgrader::upgrade`] validates it with the core's handshake
//! functions and returns the response to send: `101 Switching Protocols` (with the
//! permessage-deflate and subprotocol negotiated under the upgrader's options) or the 4xx that
//! the request calls for (400 for a missing key, 426 for a wrong version, 403 for a refused
//! origin, ...). With a 101 comes an [`Upgrading`]: once hyper has written the response and
//! handed the socket over, it becomes a [`Connection`] driven exactly as a served one: the
//! same driver, keepalive pings, limits, compression, close rules and `tracing` spans.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use http_body_util::Full;
//! use hyper::body::{Bytes, Incoming};
//! use hyper::{Request, Response};
//! use sockeye::hyper::{is_upgrade_request, Upgrader};
//!
//! async fn service(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     if !is_upgrade_request(&req) {
//!         return Ok(Response::new(Full::new(Bytes::from("Hello, HTTP!\n"))));
//!     }
//!     let (response, upgrading) = Upgrader::new().max_size(64 * 1024).upgrade(&mut req);
//!     if let Some(upgrading) = upgrading {
//!         // Runs in its own task once hyper hands the connection over, as `serve` would.
//!         upgrading.on_upgrade(|ws: sockeye::Connection| async move {
//!             while let Some(msg) = ws.recv().await? {
//!                 ws.send(msg).await?;
//!             }
//!             Ok(())
//!         });
//!     }
//!     Ok(response.map(Full::new))
//! }
//! ```
//!
//! Serve hyper's HTTP/1 connections with `.with_upgrades()` (hyper-util's auto builder:
//! `serve_connection_with_upgrades`), or hyper never hands the socket over and the upgrade
//! fails: logged, and the client sees the connection end (1006) right after the 101. tokio
//! only: hyper and axum are async, so there is no `sockeye::sync` twin.
//!
//! # What is the same as [`serve`](crate::serve), and what is not
//!
//! - **Options**: [`Upgrader`] has the server builder's setters (`max_size`, `max_queue`,
//!   `write_limit`, `ping_interval`, `ping_timeout`, `close_timeout`, `compression`,
//!   `subprotocols`, `origins`, `server_header`) and its hooks (`basic_auth`,
//!   `process_request`, `process_response`), applied in the same order.
//! - **Handler**: [`Upgrading::on_upgrade`] runs it beside the connection's driver in one
//!   task, as the server does: returning closes with 1000, an error closes with 1011 and is
//!   logged at ERROR. Awaiting the [`Upgrading`] instead gives the [`Connection`] itself, its
//!   driver spawned (as a client's): it closes with 1000 when its last handle is dropped.
//! - **HTTP limits**: hyper parsed the request, so its limits (header count, head size)
//!   apply, not `max_handshake_size`. `open_timeout` bounds the wait for hyper to hand the
//!   connection over.
//! - **HTTP/1.1 only**: an HTTP/2 request (RFC 8441 extended CONNECT) gets 405.
//! - **Addresses**: hyper does not tell the peer's address; pass it with
//!   [`Upgrading::remote_addr`] (axum: taken from `ConnectInfo` when the app is served with
//!   `into_make_service_with_connect_info::<SocketAddr>()`). Otherwise
//!   [`Connection::remote_addr`] is `None`.
//! - **No server registry**: the connections do not belong to a [`Server`](crate::Server):
//!   no `connections()`, no graceful close with 1001. Keep them yourself (a [`Hub`](crate::Hub),
//!   a map) and close them when the HTTP server shuts down.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ::hyper::upgrade::OnUpgrade;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tracing::Instrument;

use crate::connection::{Driver, Info, Limits, Stream, TaskConn};
use crate::error::{Error, Result};
use crate::head::RequestHead;
use crate::options::Options;
use crate::proto::handshake::{self, ServerAccept};
use crate::proto::{Config, DeflateParams, HandshakeError, Protocol, Side};
use crate::server::{Answer, BoxError, Hooks};
use crate::Connection;

/// Does this request ask to become a WebSocket (its `Upgrade` header lists `websocket`)?
///
/// Send such requests to [`Upgrader::upgrade`] even if they look wrong otherwise: it answers
/// a malformed one with the right 4xx. Nothing else is checked here.
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    handshake::is_upgrade_request(req.headers())
}

/// Upgrades requests that hyper received into sockeye connections, with options other than
/// the defaults (those of [`ServerBuilder`](crate::ServerBuilder)).
///
/// Build one and share it among requests (behind an `Arc`, or cloned: a clone copies the
/// options).
///
/// ```
/// use std::time::Duration;
///
/// let upgrader = sockeye::hyper::Upgrader::new()
///     .max_size(64 * 1024)
///     .ping_interval(Some(Duration::from_secs(5)))
///     .subprotocols(["chat.v1"]);
/// # let _ = upgrader;
/// ```
#[derive(Clone, Default)]
pub struct Upgrader {
    options: Options,
    hooks: Hooks,
}

crate::options::option_setters!(Upgrader);
crate::options::server_setters!(Upgrader);

impl std::fmt::Debug for Upgrader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrader")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Upgrader {
    /// An upgrader with the default options.
    pub fn new() -> Upgrader {
        Upgrader::default()
    }

    /// Answers the handshake request `req`: returns the response to send, and with a `101`
    /// the [`Upgrading`] that becomes the connection once hyper hands the socket over.
    ///
    /// Without an `Upgrading`, the response refuses the request: the handshake's own 4xx
    /// (405 not GET, 400 missing or bad key, 426 wrong version or no `Upgrade: websocket`,
    /// 403 origin refused, 400 no subprotocol in common), 401 from basic auth, whatever
    /// `process_request` answered, or 500 when hyper cannot upgrade this connection (the
    /// request does not come from a hyper HTTP/1 connection). Each is logged as the server
    /// logs refusals.
    ///
    /// Takes the request by `&mut` to take hyper's upgrade handle out of its extensions;
    /// the request is otherwise left as it is.
    pub fn upgrade<B>(&self, req: &mut Request<B>) -> (Response<Bytes>, Option<Upgrading>) {
        let on_upgrade = req.extensions_mut().remove::<OnUpgrade>();
        let head = head_of(req.method(), req.uri(), req.version(), req.headers());
        answer(&self.options, &self.hooks, head, on_upgrade, None)
    }

    /// The options, for the axum extractor.
    #[cfg(feature = "axum")]
    pub(crate) fn parts(&self) -> (&Options, &Hooks) {
        (&self.options, &self.hooks)
    }
}

/// A request's head, without its body: what the handshake checks and the connection keeps.
pub(crate) fn head_of(
    method: &http::Method,
    uri: &http::Uri,
    version: http::Version,
    headers: &http::HeaderMap,
) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = method.clone();
    *head.uri_mut() = uri.clone();
    *head.version_mut() = version;
    *head.headers_mut() = headers.clone();
    head
}

/// The handshake's own answer on a request hyper parsed, remembering the outcome.
struct Deciding<'a> {
    config: &'a Config,
    accepted: Option<std::result::Result<ServerAccept, HandshakeError>>,
}

impl Answer for Deciding<'_> {
    fn reject(&self, status: StatusCode, body: &str) -> Response<Bytes> {
        handshake::reject(status, body, self.config)
    }

    fn accept(&mut self, request: &Request<()>) -> Response<Bytes> {
        let (response, result) = handshake::answer(request, self.config, None);
        self.accepted = Some(result);
        response
    }
}

/// [`Upgrader::upgrade`] on a request head (the axum extractor has parts, not a request).
pub(crate) fn answer(
    options: &Options,
    hooks: &Hooks,
    head: Request<()>,
    on_upgrade: Option<OnUpgrade>,
    remote_addr: Option<SocketAddr>,
) -> (Response<Bytes>, Option<Upgrading>) {
    let config = Arc::new(options.config.clone());
    let mut deciding = Deciding {
        config: &config,
        accepted: None,
    };
    // No server here to be closing: the HTTP server's shutdown is the application's.
    let (response, granted) = hooks.answer(&mut deciding, &head, false);
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        crate::server::log_http_answer(head.uri().path(), status);
        return (response, None);
    }
    let failed = |why: &str| {
        tracing::error!(target: "sockeye::server", "cannot upgrade {}: {why}", head.uri().path());
        let body = "Internal Server Error\n";
        (
            handshake::reject(StatusCode::INTERNAL_SERVER_ERROR, body, &config),
            None,
        )
    };
    let Some(Ok(accept)) = deciding.accepted else {
        return failed("a process_request hook answered 101 itself");
    };
    let Some(on_upgrade) = on_upgrade else {
        return failed("the request has no hyper upgrade (not from a hyper HTTP/1 connection?)");
    };
    let mut kept = Response::new(());
    *kept.status_mut() = status;
    *kept.headers_mut() = response.headers().clone();
    let upgrading = Upgrading {
        on_upgrade,
        open: Box::new(Open {
            config: config.clone(),
            subprotocol: accept.subprotocol,
            deflate: accept.deflate.map(|(params, _)| params),
            request: RequestHead::new(head, granted),
            response: kept,
            limits: options.limits,
            open_timeout: options.config_open_timeout(),
            local_addr: None,
            remote_addr,
        }),
    };
    (response, Some(upgrading))
}

/// A handshake answered with 101, waiting for hyper to hand the connection over.
///
/// [`on_upgrade`](Self::on_upgrade) runs a handler on the connection, as a server does; or
/// `.await` it for the [`Connection`] itself. Dropping it drops the connection once hyper
/// hands it over (the peer sees it close without a close frame).
pub struct Upgrading {
    on_upgrade: OnUpgrade,
    open: Box<Open>,
}

/// What the connection is built from once upgraded.
struct Open {
    config: Arc<Config>,
    subprotocol: Option<String>,
    deflate: Option<DeflateParams>,
    request: RequestHead,
    response: Response<()>,
    limits: Limits,
    open_timeout: Option<Duration>,
    local_addr: Option<SocketAddr>,
    remote_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Upgrading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrading")
            .field("path", &self.open.request.get().uri().path())
            .field("subprotocol", &self.open.subprotocol)
            .field("compression", &self.open.deflate.is_some())
            .field("remote_addr", &self.open.remote_addr)
            .finish_non_exhaustive()
    }
}

impl Upgrading {
    /// The peer's address, for [`Connection::remote_addr`] and the logs (hyper does not
    /// tell it: take it from your accept loop).
    pub fn remote_addr(mut self, addr: SocketAddr) -> Self {
        self.open.remote_addr = Some(addr);
        self
    }

    /// The local address, for [`Connection::local_addr`].
    pub fn local_addr(mut self, addr: SocketAddr) -> Self {
        self.open.local_addr = Some(addr);
        self
    }

    /// The subprotocol negotiated, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.open.subprotocol.as_deref()
    }

    /// Runs `handler` on the connection once hyper hands it over, in a task of its own,
    /// exactly as [`serve`](crate::serve) runs its handler: the connection's driver is
    /// polled beside it (pings answered, keepalive, closing handshake, whether or not the
    /// handler calls `recv`); returning closes the connection with 1000; an error closes it
    /// with 1011 and is logged at ERROR. If the upgrade fails (the client left, hyper served
    /// the connection without upgrades, `open_timeout`), it is logged at INFO and the
    /// handler never runs.
    pub fn on_upgrade<H, Fut>(self, handler: H)
    where
        H: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    {
        let span = self.span();
        // Boxed and freed once open (as the server's opening): the task keeps only what
        // runs the connection.
        let opening = Box::pin(self.open());
        tokio::spawn(
            async move {
                let running = {
                    let (conn, driver) = match opening.await {
                        Ok(opened) => opened,
                        Err(e) => {
                            tracing::info!(target: "sockeye::server", "upgrade failed: {e}");
                            return;
                        }
                    };
                    let handling = handler(conn.clone().into());
                    crate::server::run_handler(conn, driver, handling, ())
                };
                running.await;
            }
            .instrument(span),
        );
    }

    fn span(&self) -> tracing::Span {
        match self.open.remote_addr {
            Some(peer) => tracing::debug_span!(target: "sockeye::server", "conn", remote = %peer),
            None => tracing::debug_span!(target: "sockeye::server", "conn"),
        }
    }

    /// Waits for hyper to hand the connection over (within `open_timeout`), and builds the
    /// connection on it: the core starts open, with what the handshake negotiated.
    async fn open(self) -> Result<(TaskConn, Driver<Stream>)> {
        let Upgrading { on_upgrade, open } = self;
        let upgraded = match open.open_timeout {
            Some(t) => tokio::time::timeout(t, on_upgrade)
                .await
                .map_err(|_| Error::OpenTimeout)?,
            None => on_upgrade.await,
        }
        .map_err(|e| Error::from(std::io::Error::other(e)))?;
        let Open {
            config,
            subprotocol,
            deflate,
            request,
            response,
            limits,
            open_timeout: _,
            local_addr,
            remote_addr,
        } = *open;
        let proto = Protocol::open(Side::Server, config, subprotocol.clone(), deflate);
        let info = Info {
            id: 0,
            side: Side::Server,
            addresses: crate::addresses::Addresses::new(local_addr, remote_addr),
            subprotocol: subprotocol.as_deref().map(Box::from),
            request,
            response: response.into(),
        };
        let stream = Stream::Upgraded(Box::new(hyper_util::rt::TokioIo::new(upgraded)));
        let (conn, driver) = TaskConn::new(proto, stream, Vec::new(), limits, info);
        tracing::info!(target: "sockeye::server", id = conn.id(), remote = %crate::server::Remote(conn.remote_addr()), "connection open");
        Ok((conn, driver))
    }
}

impl IntoFuture for Upgrading {
    type Output = Result<Connection>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Connection>> + Send>>;

    /// The connection, once hyper hands it over; its driver is spawned (as a client's), and
    /// it closes with 1000 when its last handle is dropped.
    fn into_future(self) -> Self::IntoFuture {
        let span = self.span();
        Box::pin(async move {
            let (conn, driver) = self.open().await?;
            tokio::spawn(driver.instrument(span));
            Ok(conn.into())
        })
    }
}
