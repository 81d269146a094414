//! The blocking server: `serve(addr, handler)`, a thread per connection.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http::StatusCode;

use super::connection::Connection;
use super::stream::{Socket, Transport};
use crate::connection::Info;
use crate::error::Result;
use crate::head::{RequestHead, ResponseHead};
use crate::options::Options;
use crate::proto::{self, CloseCode, Event, Protocol, Side};
use crate::routing::Routes;
use crate::server::{BoxError, Hooks};
use crate::unix::SocketFile;

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
    pub fn route<A: ToSocketAddrs>(self, addr: A, router: Router) -> Result<Server> {
        let (builder, handler) = self.routed(router);
        builder.serve(addr, handler)
    }

    /// The builder with `router`'s patterns, and the handler that dispatches to its routes.
    fn routed(
        mut self,
        router: Router,
    ) -> (
        Self,
        impl Fn(Connection) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    ) {
        let (routes, handlers) = router.routes.into_parts();
        self.hooks.routes = Some(routes);
        let handler = move |ws: Connection| {
            match ws.route().and_then(|i| handlers.get(i)) {
                Some(handler) => handler(ws),
                // Cannot happen: the handshake of a routed server grants every connection a route.
                None => Err("no route".into()),
            }
        };
        (self, handler)
    }

    /// Serves on a listener bound elsewhere.
    pub fn serve_listener<H>(self, listener: TcpListener, handler: H) -> Result<Server>
    where
        H: Fn(Connection) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    {
        let local_addr = listener.local_addr().ok();
        self.start(Listener::Tcp(listener), local_addr, None, handler)
    }

    /// Binds a Unix domain socket at `path` and serves on it, as [`serve`](Self::serve)
    /// does on TCP: the blocking twin of [`crate::ServerBuilder::unix_serve`], with the same
    /// rules for a file already at `path` (a stale socket is replaced; `AddrInUse` if a
    /// server listens there or the file is not a socket) and the same cleanup
    /// ([`Server::shutdown`] removes the socket file).
    #[cfg(unix)]
    pub fn unix_serve<H>(self, path: impl AsRef<std::path::Path>, handler: H) -> Result<Server>
    where
        H: Fn(Connection) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    {
        let (listener, file) = crate::unix::bind(path.as_ref())?;
        self.start(Listener::Unix(listener), None, Some(file), handler)
    }

    /// Binds a Unix domain socket at `path` and serves `router` on it. See
    /// [`unix_serve`](Self::unix_serve) and [`route`](Self::route).
    #[cfg(unix)]
    pub fn unix_route(self, path: impl AsRef<std::path::Path>, router: Router) -> Result<Server> {
        let (builder, handler) = self.routed(router);
        builder.unix_serve(path, handler)
    }

    /// Serves on a Unix domain socket listener bound elsewhere. Its socket file is the
    /// application's: [`Server::shutdown`] leaves it.
    #[cfg(unix)]
    pub fn unix_serve_listener<H>(
        self,
        listener: std::os::unix::net::UnixListener,
        handler: H,
    ) -> Result<Server>
    where
        H: Fn(Connection) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    {
        let file = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(SocketFile::not_owned));
        self.start(Listener::Unix(listener), None, file, handler)
    }

    /// Starts the accept thread on `listener`.
    fn start<H>(
        self,
        listener: Listener,
        local_addr: Option<SocketAddr>,
        unix: Option<SocketFile>,
        handler: H,
    ) -> Result<Server>
    where
        H: Fn(Connection) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    {
        #[cfg(feature = "tls")]
        let secure = self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let secure = false;
        crate::server::log_listening(local_addr, unix.as_ref(), secure);
        let inner = Arc::new(ServerInner {
            local_addr,
            unix,
            secure,
            connections: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            accept_thread: Mutex::new(None),
            closed: Latch::default(),
        });
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
            .spawn(move || accept_loop(listener, server, shared));
        let accept = match accept {
            Ok(thread) => thread,
            Err(e) => {
                // No server after all: a socket file it bound goes.
                if let Some(file) = &inner.unix {
                    file.remove();
                }
                return Err(e.into());
            }
        };
        *lock(&inner.accept_thread) = Some(accept);
        Ok(Server { inner })
    }
}

/// What the accept thread listens on.
enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener),
}

impl Listener {
    /// The next connection, and its remote address (`None` on a Unix socket).
    fn accept(&self) -> std::io::Result<(Socket, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept()?;
                let _ = s.set_nodelay(true);
                Ok((Socket::Tcp(s), Some(peer)))
            }
            #[cfg(unix)]
            Listener::Unix(l) => Ok((Socket::Unix(l.accept()?.0), None)),
        }
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
    /// The socket file of a server on a Unix domain socket.
    unix: Option<SocketFile>,
    /// Serving TLS (`wss://`).
    secure: bool,
    connections: Mutex<HashMap<u64, Connection>>,
    closing: AtomicBool,
    /// Connection threads (handshake, then handler), finished ones pruned as new ones start.
    threads: Mutex<Vec<JoinHandle<()>>>,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
    closed: Latch,
}

/// A flag others can wait for: a server's end, for `serve_forever` (the blocking and the
/// event-loop servers).
#[derive(Default)]
pub(crate) struct Latch {
    set: Mutex<bool>,
    cond: Condvar,
}

impl Latch {
    /// Blocks until [`Latch::set`].
    pub(crate) fn wait(&self) {
        let mut set = lock(&self.set);
        while !*set {
            set = self.cond.wait(set).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub(crate) fn set(&self) {
        *lock(&self.set) = true;
        self.cond.notify_all();
    }
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

    /// The path of the Unix domain socket the server listens on, for a server started by
    /// [`ServerBuilder::unix_serve`] or [`ServerBuilder::unix_serve_listener`]; `None` on
    /// TCP (where [`local_addr`](Self::local_addr) is the address).
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        self.inner.unix.as_ref().map(SocketFile::path)
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
        self.inner.closed.wait();
        Ok(())
    }

    /// Shuts the server down gracefully: stops accepting connections, answers handshakes in
    /// progress with 503, closes open connections with 1001 (going away), and waits for
    /// every handler to return and every connection thread to end. A server that bound a
    /// Unix socket ([`ServerBuilder::unix_serve`]) removes its socket file.
    ///
    /// Call it from any thread: the server is `Clone`, so a signal-handling thread can hold a
    /// clone while the main thread sits in [`serve_forever`](Self::serve_forever), which
    /// returns once the shutdown is over (see `examples/graceful_shutdown_sync.rs`).
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
        #[cfg(unix)]
        if let Some(file) = &self.inner.unix {
            woken = std::os::unix::net::UnixStream::connect(file.path()).is_ok();
        }
        // Without the wake-up connection the accept thread ends at the next connection
        // (which it drops); do not wait for it then.
        if let Some(accept) = lock(&self.inner.accept_thread).take() {
            if woken {
                let _ = accept.join();
            }
        }
        if let Some(file) = &self.inner.unix {
            file.remove();
        }
        let open = self.connections();
        for c in &open {
            let _ = c.start_close(CloseCode::GOING_AWAY, "");
        }
        // Waiting here fires each closing handshake's timeout, and then gives up on output
        // a peer does not read (`Protocol::flush_timeout`), even while the connection's own
        // threads are blocked in a write or a long read.
        for c in &open {
            c.wait_closed();
        }
        let threads = std::mem::take(&mut *lock(&self.inner.threads));
        for t in threads {
            let _ = t.join();
        }
        self.inner.closed.set();
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

/// Starts a blocking server on the Unix domain socket at `path`, with the default options.
/// See [`ServerBuilder::unix_serve`].
#[cfg(unix)]
pub fn unix_serve<H>(path: impl AsRef<std::path::Path>, handler: H) -> Result<Server>
where
    H: Fn(Connection) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
{
    ServerBuilder::default().unix_serve(path, handler)
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

fn accept_loop(listener: Listener, server: Arc<ServerInner>, shared: Arc<Shared>) {
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
                        let span = tracing::debug_span!(target: "sockeye::server", "conn", remote = %crate::server::Remote(peer));
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

fn handle_connection(
    socket: Socket,
    peer: Option<SocketAddr>,
    server: &Arc<ServerInner>,
    shared: &Shared,
) {
    let (local, _) = socket.addresses();
    let mut proto = Protocol::server(shared.config.clone());
    // Stream mode from the start, as the connections built on it run (see `queue.rs`).
    proto.set_stream_fragments(true);
    // The core's open timeout counts from here: TLS and WebSocket handshakes together.
    let start = Instant::now();
    proto.handle_timeout(start);
    let deadline = shared.options.config_open_timeout().map(|t| start + t);
    let mut stream = match accept_transport(socket, shared, deadline) {
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
        addresses: crate::addresses::Addresses::new(local, peer),
        subprotocol: proto.subprotocol().map(Box::from),
        request,
        response,
    };
    let conn = match Connection::new(proto, stream, shared.options.limits, info) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target: "sockeye::server", "cannot start the connection: {e}");
            return;
        }
    };
    let id = conn.id();
    tracing::info!(target: "sockeye::server", id, remote = %crate::server::Remote(conn.remote_addr()), "connection open");
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
            crate::server::log_handler_error(id, &e);
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
fn accept_transport(tcp: Socket, shared: &Shared, deadline: Option<Instant>) -> Result<Transport> {
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
) -> Result<Option<(RequestHead, ResponseHead)>> {
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
    let response = shared.hooks.kept_response(response, &shared.config);
    let request = RequestHead::new(*request, granted);
    Ok(Some((request, response)))
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
