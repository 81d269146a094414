//! The blocking server: `serve(addr, handler)`, a thread per connection.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};

use super::connection::Connection;
use super::stream::Transport;
use crate::connection::Info;
use crate::error::{Error, Result};
use crate::head::RequestHead;
use crate::options::Options;
use crate::proto::{self, CloseCode, Event, Protocol, Side};
use crate::routing::Routes;
use crate::server::{BoxError, Hooks};

/// The handler type of the blocking server, boxed.
type Handler = dyn Fn(Connection) -> std::result::Result<(), BoxError> + Send + Sync;

/// Builds a blocking server with options other than the defaults: the same options, with the
/// same defaults, as [`crate::ServerBuilder`].
#[derive(Clone, Default)]
pub struct ServerBuilder {
    options: Options,
    hooks: Hooks,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
}

crate::options::option_setters!(ServerBuilder);
crate::options::server_setters!(ServerBuilder);
#[cfg(feature = "tls")]
crate::options::tls_server_setters!(ServerBuilder);

impl ServerBuilder {
    /// Binds `addr` and serves in background threads: `handler` runs once per connection,
    /// in the connection's own thread, and the connection closes (1000) when it returns, or
    /// fails (1011, logged at ERROR) when it returns an error or panics.
    pub fn serve<A, H>(self, addr: A, handler: H) -> Result<Server>
    where
        A: ToSocketAddrs,
        H: Fn(Connection) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(addr)?;
        self.serve_listener(listener, handler)
    }

    /// Binds `addr` and serves `router`: each connection goes to the handler of the route its
    /// path matches, and a request whose path matches none gets `404 Not Found` during the
    /// handshake. See [`Router`].
    pub fn route<A: ToSocketAddrs>(mut self, addr: A, router: Router) -> Result<Server> {
        let (routes, handlers) = router.routes.into_parts();
        self.hooks.routes = Some(routes);
        self.serve(addr, move |ws: Connection| {
            match ws.route().and_then(|i| handlers.get(i)) {
                Some(handler) => handler(ws),
                // Cannot happen: the handshake of a routed server grants every connection a route.
                None => Err("no route".into()),
            }
        })
    }

    /// Serves on a listener bound elsewhere.
    pub fn serve_listener<H>(self, listener: TcpListener, handler: H) -> Result<Server>
    where
        H: Fn(Connection) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    {
        let local_addr = listener.local_addr().ok();
        #[cfg(feature = "tls")]
        let secure = self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let secure = false;
        let inner = Arc::new(ServerInner {
            local_addr,
            secure,
            connections: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            accept_thread: Mutex::new(None),
            closed: Mutex::new(false),
            closed_cond: Condvar::new(),
        });
        if let Some(addr) = local_addr {
            let scheme = if secure { "wss" } else { "ws" };
            tracing::info!(target: "sockeye::server", "server listening on {addr} ({scheme}://)");
        }
        let shared = Arc::new(Shared {
            config: Arc::new(self.options.config.clone()),
            options: self.options,
            hooks: self.hooks,
            #[cfg(feature = "tls")]
            tls: self.tls,
            handler: Box::new(handler),
        });
        let server = inner.clone();
        let accept = std::thread::Builder::new()
            .name("sockeye-accept".into())
            .spawn(move || accept_loop(listener, server, shared))?;
        *lock(&inner.accept_thread) = Some(accept);
        Ok(Server { inner })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Shared {
    options: Options,
    config: Arc<proto::Config>,
    hooks: Hooks,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Box<Handler>,
}

struct ServerInner {
    local_addr: Option<SocketAddr>,
    /// Serving TLS (`wss://`).
    secure: bool,
    connections: Mutex<HashMap<u64, Connection>>,
    closing: AtomicBool,
    /// Connection threads (handshake, then handler), finished ones pruned as new ones start.
    threads: Mutex<Vec<JoinHandle<()>>>,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
    closed: Mutex<bool>,
    closed_cond: Condvar,
}

/// A running blocking server. Dropping it does not stop it; call [`Server::shutdown`].
#[derive(Clone)]
pub struct Server {
    inner: Arc<ServerInner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.inner.local_addr)
            .field("tls", &self.inner.secure)
            .finish()
    }
}

impl Server {
    /// A builder, to change options.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr
    }

    /// Whether the server serves TLS (`wss://` URIs) rather than plain TCP (`ws://`).
    pub fn is_tls(&self) -> bool {
        self.inner.secure
    }

    /// The open connections.
    pub fn connections(&self) -> Vec<Connection> {
        lock(&self.inner.connections).values().cloned().collect()
    }

    /// Blocks until [`Server::shutdown`] is called (from another thread) and has finished.
    pub fn serve_forever(&self) -> Result<()> {
        let mut closed = lock(&self.inner.closed);
        while !*closed {
            closed = self
                .inner
                .closed_cond
                .wait(closed)
                .unwrap_or_else(|e| e.into_inner());
        }
        Ok(())
    }

    /// Shuts the server down gracefully: stops accepting connections, answers handshakes in
    /// progress with 503, closes open connections with 1001 (going away), and waits for
    /// every handler to return and every connection thread to end.
    pub fn shutdown(&self) {
        if self.inner.closing.swap(true, Ordering::AcqRel) {
            // Another thread is shutting down: wait for it.
            let _ = self.serve_forever();
            return;
        }
        // `accept` cannot be interrupted in std: wake it with a connection of our own.
        let mut woken = false;
        if let Some(addr) = self.inner.local_addr {
            let mut wake = addr;
            if wake.ip().is_unspecified() {
                wake.set_ip(match addr {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            woken = TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok();
        }
        // Without the wake-up connection the accept thread ends at the next connection
        // (which it drops); do not wait for it then.
        if let Some(accept) = lock(&self.inner.accept_thread).take() {
            if woken {
                let _ = accept.join();
            }
        }
        for c in self.connections() {
            let _ = c.start_close(CloseCode::GOING_AWAY, "");
        }
        let threads = std::mem::take(&mut *lock(&self.inner.threads));
        for t in threads {
            let _ = t.join();
        }
        *lock(&self.inner.closed) = true;
        self.inner.closed_cond.notify_all();
        tracing::info!(target: "sockeye::server", "server closed");
    }
}

/// Starts a blocking server with the default options. See [`ServerBuilder::serve`].
pub fn serve<A, H>(addr: A, handler: H) -> Result<Server>
where
    A: ToSocketAddrs,
    H: Fn(Connection) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
{
    ServerBuilder::default().serve(addr, handler)
}

/// Starts a blocking server with the default options that routes connections by path (404
/// for paths that match no route). See [`ServerBuilder::route`].
pub fn route<A: ToSocketAddrs>(addr: A, router: Router) -> Result<Server> {
    ServerBuilder::default().route(addr, router)
}

/// Path patterns and their handlers, for [`route`]: the blocking twin of
/// [`crate::Router`], with the same patterns (see [`crate::routing`]).
///
/// ```no_run
/// # fn run() -> Result<(), sockeye::BoxError> {
/// use sockeye::sync::{Connection, Router};
///
/// let router = Router::new()
///     .route("/", |ws: Connection| Ok(ws.send("the lobby")?))
///     .route("/rooms/{id}", |ws: Connection| {
///         let room = ws.param("id").unwrap_or_default();
///         ws.send(format!("room {room}"))?;
///         Ok(())
///     });
/// sockeye::sync::route("127.0.0.1:8765", router)?.serve_forever()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Router {
    routes: Routes<Box<Handler>>,
}

impl Router {
    /// A router without routes (every path gets 404).
    pub fn new() -> Self {
        Router::default()
    }

    /// Routes connections whose path matches `pattern` to `handler`.
    ///
    /// # Panics
    /// If `pattern` is not a valid pattern (see [`crate::Router::route`]).
    pub fn route<H>(mut self, pattern: &str, handler: H) -> Self
    where
        H: Fn(Connection) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    {
        self.routes.add(pattern, Box::new(handler));
        self
    }
}

fn accept_loop(listener: TcpListener, server: Arc<ServerInner>, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if server.closing.load(Ordering::Acquire) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                let srv = server.clone();
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("sockeye-conn".into())
                    .spawn(move || {
                        let span =
                            tracing::info_span!(target: "sockeye::server", "conn", remote = %peer);
                        let _enter = span.enter();
                        handle_connection(stream, peer, &srv, &shared);
                    });
                match spawned {
                    Ok(t) => {
                        let mut threads = lock(&server.threads);
                        threads.retain(|t| !t.is_finished());
                        threads.push(t);
                    }
                    Err(e) => {
                        tracing::error!(target: "sockeye::server", "cannot start a connection thread: {e}");
                    }
                }
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS...: the listener is fine, the process is out of
                // something. Log and wait a little instead of spinning on the error.
                tracing::error!(target: "sockeye::server", "accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle_connection(tcp: TcpStream, peer: SocketAddr, server: &Arc<ServerInner>, shared: &Shared) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let mut proto = Protocol::server(shared.config.clone());
    // Stream mode from the start, as the connections built on it run (see `queue.rs`).
    proto.set_stream_fragments(true);
    // The core's open timeout counts from here: TLS and WebSocket handshakes together.
    let start = Instant::now();
    proto.handle_timeout(start);
    let deadline = shared.options.config_open_timeout().map(|t| start + t);
    let mut stream = match accept_transport(tcp, shared, deadline) {
        Ok(s) => s,
        Err(e) => {
            // A scanner, a plain-HTTP client, a client that does not trust us: not our
            // problem, and not the accept loop's.
            tracing::debug!(target: "sockeye::server", "TLS handshake failed: {e}");
            return;
        }
    };
    let (request, response) = match server_handshake(&mut stream, &mut proto, shared, server) {
        Ok(Some(pair)) => pair,
        Ok(None) => return,
        Err(e) => {
            tracing::info!(target: "sockeye::server", "opening handshake failed: {e}");
            return;
        }
    };
    let info = Info {
        id: 0,
        side: Side::Server,
        local_addr: local,
        remote_addr: Some(peer),
        subprotocol: proto.subprotocol().map(str::to_owned),
        request,
        response: response.into(),
    };
    let conn = match Connection::new(proto, stream, shared.options.limits, info) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target: "sockeye::server", "cannot start the connection: {e}");
            return;
        }
    };
    let id = conn.id();
    tracing::info!(target: "sockeye::server", id, "connection open");
    lock(&server.connections).insert(id, conn.clone());
    if server.closing.load(Ordering::Acquire) {
        let _ = conn.start_close(CloseCode::GOING_AWAY, "");
    }
    let handler_conn = conn.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (shared.handler)(handler_conn)
    }));
    match result {
        Ok(Ok(())) => {
            let _ = conn.start_close(CloseCode::NORMAL, "");
        }
        Ok(Err(e)) => {
            let closed = matches!(e.downcast_ref::<Error>(), Some(Error::ConnectionClosed(_)));
            if !closed {
                tracing::error!(target: "sockeye::server", id, "connection handler failed: {e}");
            }
            conn.fail(CloseCode::INTERNAL_ERROR, "");
        }
        Err(_) => {
            tracing::error!(target: "sockeye::server", id, "connection handler panicked");
            conn.fail(CloseCode::INTERNAL_ERROR, "");
        }
    }
    // The closing handshake runs here (its timeout fired by this wait), then the I/O thread
    // ends: when this thread ends, the connection is over.
    conn.wait_closed();
    conn.join_io_thread();
    lock(&server.connections).remove(&id);
}

/// The transport of an accepted connection: TLS over `tcp` when the server has a TLS
/// configuration (handshake until `deadline`), `tcp` itself otherwise.
fn accept_transport(
    tcp: TcpStream,
    shared: &Shared,
    deadline: Option<Instant>,
) -> Result<Transport> {
    #[cfg(feature = "tls")]
    if let Some(config) = &shared.tls {
        let mut tcp = tcp;
        let session = crate::tls::accept_sync(config, &mut tcp, deadline)?;
        return Ok(Transport::tls(session, tcp)?);
    }
    let _ = (shared, deadline);
    Ok(Transport::plain(tcp)?)
}

/// Runs the server side of the opening handshake. `Ok(None)`: answered without opening.
fn server_handshake(
    stream: &mut Transport,
    proto: &mut Protocol,
    shared: &Shared,
    server: &ServerInner,
) -> Result<Option<(RequestHead, Response<()>)>> {
    let request = match read_until_event(stream, proto)? {
        Some(Event::Request(r)) => r,
        _ => return Ok(None),
    };
    let closing = server.closing.load(Ordering::Acquire);
    let (response, granted) = shared.hooks.answer(proto, &request, closing);
    let status = response.status();
    proto.send_response(&response)?;
    let mut out = Vec::new();
    proto.poll_transmit(&mut out);
    stream.write_all(&out)?;
    if status != StatusCode::SWITCHING_PROTOCOLS {
        crate::server::log_http_answer(request.uri().path(), status);
        stream.shutdown(Shutdown::Write);
        return Ok(None);
    }
    let (parts, _) = response.into_parts();
    let request = RequestHead::new(*request, granted);
    Ok(Some((request, Response::from_parts(parts, ()))))
}

/// Reads and feeds the core until it produces an event (the handshake request or response),
/// with read timeouts at the core's deadline (its open timeout). Writes error responses the
/// core queues.
pub(crate) fn read_until_event(
    stream: &mut Transport,
    proto: &mut Protocol,
) -> Result<Option<Event>> {
    let mut buf = [0u8; 4096];
    proto.handle_timeout(Instant::now());
    loop {
        if let Some(event) = proto.poll_event() {
            stream.set_read_timeout(None)?;
            return Ok(Some(event));
        }
        let timeout = proto.poll_timeout().map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        stream.set_read_timeout(timeout)?;
        let result = match stream.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                proto.handle_timeout(Instant::now());
                match proto.error() {
                    Some(e) => Err(e.clone()),
                    None => continue,
                }
            }
            Err(e) => return Err(e.into()),
            Ok(0) => proto.receive_eof(),
            Ok(n) => proto.receive_data(&buf[..n]),
        };
        if let Err(e) = result {
            // An HTTP error response may be queued: send it before closing.
            let mut out = Vec::new();
            proto.poll_transmit(&mut out);
            if !out.is_empty() {
                let _ = stream.write_all(&out);
            }
            stream.shutdown(Shutdown::Write);
            return Err(e.into());
        }
    }
}
