//! The tokio server: `serve(addr, handler)`, one handler call per connection.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::Notify;

use crate::auth::BasicAuth;
use crate::connection::{Info, Limits, Stream, TaskConn};
use crate::error::{Error, Result};
use crate::head::{Granted, RequestHead, ResponseHead};
use crate::options::Options;
use crate::proto::{self, CloseCode, Event, Protocol, Side};
use crate::reactor::net::StdListener;
use crate::routing::{Router, Table};
use crate::unix::SocketFile;
use crate::Connection;

/// The error type handlers return: any error, boxed. `?` converts [`Error`] and most others.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A `process_request` hook: sees the handshake request before it is accepted; returning a
/// response answers the request with it instead (health checks, authentication, ...).
pub type ProcessRequest = Arc<dyn Fn(&Request<()>) -> Option<Response<Bytes>> + Send + Sync>;

/// A `process_response` hook: may change the response (headers, cookies) before it is sent.
pub type ProcessResponse = Arc<dyn Fn(&Request<()>, &mut Response<Bytes>) + Send + Sync>;

/// An HTTP response to answer a handshake request with, for `process_request` hooks:
/// `text/plain` with this body, and `Connection: close`.
pub fn respond(status: StatusCode, body: &str) -> Response<Bytes> {
    let mut config = proto::Config::new();
    config.server_header(None);
    proto::handshake::reject(status, body, &config)
}

/// Logs a handshake answered without upgrading: a refusal at INFO (DESIGN §7), a page or a
/// health check served by `process_request` (2xx, 3xx) at DEBUG.
pub(crate) fn log_http_answer(path: &str, status: StatusCode) {
    if status.is_client_error() || status.is_server_error() {
        tracing::info!(target: "sockeye::server", "handshake rejected ({status})");
    } else {
        tracing::debug!(target: "sockeye::server", "answered {path} with {status} (no upgrade)");
    }
}

/// The handshake's own answer, asked for by [`Hooks`] once no hook answered: the core's
/// (servers that read the request themselves), or [`proto::handshake::answer`] on a request
/// that hyper parsed (the `hyper` feature).
pub(crate) trait Answer {
    /// A refusal with this status and plain-text body.
    fn reject(&self, status: StatusCode, body: &str) -> Response<Bytes>;
    /// 101, or the 4xx that the request's error calls for.
    fn accept(&mut self, request: &Request<()>) -> Response<Bytes>;
}

impl Answer for Protocol {
    fn reject(&self, status: StatusCode, body: &str) -> Response<Bytes> {
        Protocol::reject(self, status, body)
    }

    fn accept(&mut self, request: &Request<()>) -> Response<Bytes> {
        Protocol::accept(self, request)
    }
}

/// What a server does with a handshake request before accepting it, shared by the tokio and
/// blocking servers and the hyper upgrade: basic auth, the application's hooks, the router's
/// patterns.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) basic_auth: Option<Arc<BasicAuth>>,
    pub(crate) process_request: Option<ProcessRequest>,
    pub(crate) process_response: Option<ProcessResponse>,
    pub(crate) routes: Option<Arc<Table>>,
}

impl Hooks {
    /// The answer to a handshake request, and what the server granted it (its user, its
    /// route) if that answer accepts it.
    ///
    /// In order, the first that answers wins: 503 while the server closes, basic auth (401),
    /// `process_request`, the router (404 for no route), the handshake itself (101, or 4xx
    /// for a bad request). Then `process_response` sees the answer, whichever it is.
    pub(crate) fn answer(
        &self,
        proto: &mut impl Answer,
        request: &Request<()>,
        closing: bool,
    ) -> (Response<Bytes>, Option<Box<Granted>>) {
        let mut granted = Granted::default();
        let mut response = self.decide(proto, request, closing, &mut granted);
        if let Some(hook) = &self.process_response {
            hook(request, &mut response);
        }
        let granted = (response.status() == StatusCode::SWITCHING_PROTOCOLS
            && (granted.username.is_some() || granted.route.is_some()))
        .then(|| Box::new(granted));
        (response, granted)
    }

    /// What the connection keeps of the `101` it was answered with: the response when a
    /// `process_response` hook may have changed it, else only how to build it again
    /// ([`ResponseHead`]).
    pub(crate) fn kept_response(
        &self,
        response: Response<Bytes>,
        config: &Arc<proto::Config>,
    ) -> ResponseHead {
        if self.process_response.is_some() {
            let (parts, _) = response.into_parts();
            Response::from_parts(parts, ()).into()
        } else {
            ResponseHead::rebuilt(config.clone())
        }
    }

    fn decide(
        &self,
        proto: &mut impl Answer,
        request: &Request<()>,
        closing: bool,
        granted: &mut Granted,
    ) -> Response<Bytes> {
        if closing {
            return proto.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "Server is shutting down.\n",
            );
        }
        if let Some(auth) = &self.basic_auth {
            match auth.check(request) {
                Ok(user) => granted.username = Some(user.into_boxed_str()),
                Err(refused) => return *refused,
            }
        }
        if let Some(response) = self.process_request.as_ref().and_then(|h| h(request)) {
            return response;
        }
        if let Some(routes) = &self.routes {
            match routes.find(request.uri().path()) {
                Some((route, params)) => {
                    granted.route = Some(route);
                    granted.params = params;
                }
                None => return proto.reject(StatusCode::NOT_FOUND, "Not Found\n"),
            }
        }
        proto.accept(request)
    }
}

/// Builds a server with options other than the defaults.
///
/// Defaults follow python-websockets: ping_interval 20 s, ping_timeout 20 s, open_timeout
/// 10 s, close_timeout 10 s, max_size 1 MiB, max_queue 16, write_limit 32 KiB, compression on.
#[derive(Clone, Default)]
pub struct ServerBuilder {
    options: Options,
    hooks: Hooks,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
    /// A tokio task per connection rather than the event loops.
    tasks: bool,
    /// Event-loop threads (0: one per CPU).
    threads: usize,
}

crate::options::option_setters!(ServerBuilder);
crate::options::server_setters!(ServerBuilder);
#[cfg(feature = "tls")]
crate::options::tls_server_setters!(ServerBuilder);

impl ServerBuilder {
    /// Serves each connection in a tokio task of its own (the handler's future and the
    /// connection's driver, polled together) instead of on sockeye's event loops.
    ///
    /// By default a TCP server without TLS runs its connections on event loops, a few
    /// threads that each own their connections and poll their handlers' futures
    /// ([`threads`](Self::threads)): about 1.1 KB per idle connection, against 2.0 KB for a
    /// task per connection (`docs/benchmarks.md`). Handlers are the same `async fn`s and see
    /// the same [`Connection`]; tokio's timers, channels, `spawn` and `select!` work in
    /// them on both (the loops poll inside the runtime that started the server).
    ///
    /// Tasks are the choice when handlers may block their thread for a while (a loop's
    /// other connections wait meanwhile; tokio's work stealing moves them elsewhere), or
    /// use what needs a tokio worker thread (`tokio::task::block_in_place`, task-local
    /// budgets). TLS servers always run on tasks (for now); Unix domain sockets run on
    /// either.
    pub fn tasks(mut self, tasks: bool) -> Self {
        self.tasks = tasks;
        self
    }

    /// How many event-loop threads serve the connections (each accepts and owns its own).
    /// Default: one per CPU this process may run on (`std::thread::available_parallelism`,
    /// which honours `taskset`). No effect with [`tasks`](Self::tasks).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Binds `addr` and serves: `handler` runs once per connection, and the connection
    /// closes (1000) when it returns, or fails (1011, logged at ERROR) when it returns an
    /// error. Connections run on event loops unless [`tasks`](Self::tasks) says
    /// otherwise (or TLS is configured).
    pub async fn serve<A, H, Fut>(self, addr: A, handler: H) -> Result<Server>
    where
        A: ToSocketAddrs,
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await?;
        self.serve_listener(listener, handler)
    }

    /// Binds `addr` and serves `router`: each connection goes to the handler of the route its
    /// path matches, and a request whose path matches none gets `404 Not Found` during the
    /// handshake. See [`crate::routing`].
    pub async fn route<A>(self, addr: A, router: Router) -> Result<Server>
    where
        A: ToSocketAddrs,
    {
        let (builder, handler) = self.routed(router);
        builder.serve(addr, handler).await
    }

    /// The builder with `router`'s patterns, and the handler that dispatches to its routes.
    fn routed(
        mut self,
        router: Router,
    ) -> (
        Self,
        impl Fn(Connection) -> crate::routing::BoxFuture + Send + Sync + 'static,
    ) {
        let (routes, handler) = router.into_parts();
        self.hooks.routes = Some(routes);
        (self, handler)
    }

    /// Serves on a listener bound elsewhere. Fails only if the event loops cannot start
    /// (out of file descriptors or threads).
    pub fn serve_listener<H, Fut>(self, listener: TcpListener, handler: H) -> Result<Server>
    where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    {
        let local_addr = listener.local_addr().ok();
        if self.on_tasks() {
            return Ok(self.start(Listener::Tcp(listener), local_addr, None, handler));
        }
        self.start_on_loops(StdListener::Tcp(listener.into_std()?), None, handler)
    }

    /// Whether connections run on tokio tasks: asked for, or TLS (the loops speak plain
    /// TCP and Unix domain sockets).
    fn on_tasks(&self) -> bool {
        #[cfg(feature = "tls")]
        let tls = self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let tls = false;
        self.tasks || tls
    }

    /// Starts the event loops on `listener` (they take it over, each registering a clone
    /// with its own poll).
    fn start_on_loops<H, Fut>(
        self,
        listener: StdListener,
        unix: Option<SocketFile>,
        handler: H,
    ) -> Result<Server>
    where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    {
        let builder =
            crate::reactor::ServerBuilder::from_parts(self.options, self.hooks, self.threads);
        let loops = match builder.serve_async_on(listener, handler) {
            Ok(loops) => loops,
            Err(e) => {
                if let Some(file) = unix {
                    file.remove();
                }
                return Err(e);
            }
        };
        // The loops end with the runtime that started them, as a task-per-connection server
        // does (their handlers need it): a task of that runtime, never done, shuts them down
        // when the runtime drops it.
        let server = Server::on_loops(loops, unix);
        let guard = EndWithRuntime(server.inner.clone());
        tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        Ok(server)
    }

    /// Binds a Unix domain socket at `path` and serves on it, as [`serve`](Self::serve) does
    /// on TCP: every option, hook and TLS setting applies. Clients connect with
    /// [`crate::unix_connect`]. Connections have no [`local_addr`](Connection::local_addr)
    /// nor [`remote_addr`](Connection::remote_addr); the path is [`Server::unix_path`].
    ///
    /// If a file is already at `path`: a stale socket (nothing listens there) is replaced; a
    /// socket a server listens on, or a file that is not a socket, is left alone and the
    /// error is `AddrInUse`. [`Server::close`] removes the socket file (if it is still the
    /// one this server bound).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sockeye::BoxError> {
    /// let server = sockeye::unix_serve("/tmp/echo.sock", |ws: sockeye::Connection| async move {
    ///     while let Some(msg) = ws.recv().await? {
    ///         ws.send(msg).await?;
    ///     }
    ///     Ok(())
    /// })
    /// .await?;
    /// let ws = sockeye::unix_connect("/tmp/echo.sock", "ws://localhost/").await?;
    /// # Ok(()) }
    /// ```
    #[cfg(unix)]
    pub async fn unix_serve<H, Fut>(
        self,
        path: impl AsRef<std::path::Path>,
        handler: H,
    ) -> Result<Server>
    where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    {
        let (listener, file) = crate::unix::bind(path.as_ref())?;
        if !self.on_tasks() {
            return self.start_on_loops(StdListener::Unix(listener), Some(file), handler);
        }
        let registered = listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(listener));
        match registered {
            Ok(listener) => Ok(self.start(Listener::Unix(listener), None, Some(file), handler)),
            Err(e) => {
                file.remove();
                Err(e.into())
            }
        }
    }

    /// Binds a Unix domain socket at `path` and serves `router` on it. See
    /// [`unix_serve`](Self::unix_serve) and [`route`](Self::route).
    #[cfg(unix)]
    pub async fn unix_route(
        self,
        path: impl AsRef<std::path::Path>,
        router: Router,
    ) -> Result<Server> {
        let (builder, handler) = self.routed(router);
        builder.unix_serve(path, handler).await
    }

    /// Serves on a Unix domain socket listener bound elsewhere. Its socket file is the
    /// application's: [`Server::close`] leaves it. Fails only if the event loops cannot start.
    #[cfg(unix)]
    pub fn unix_serve_listener<H, Fut>(
        self,
        listener: tokio::net::UnixListener,
        handler: H,
    ) -> Result<Server>
    where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    {
        let file = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(SocketFile::not_owned));
        if !self.on_tasks() {
            if let Ok(listener) = listener.into_std() {
                return self.start_on_loops(StdListener::Unix(listener), file, handler);
            }
            // (`into_std` fails only if the socket cannot be deregistered from tokio.)
            return Err(std::io::Error::other("cannot take the listener from tokio").into());
        }
        Ok(self.start(Listener::Unix(listener), None, file, handler))
    }

    /// Starts the accept loop on `listener`.
    fn start<H, Fut>(
        self,
        listener: Listener,
        local_addr: Option<SocketAddr>,
        unix: Option<SocketFile>,
        handler: H,
    ) -> Server
    where
        H: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    {
        #[cfg(feature = "tls")]
        let secure = self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let secure = false;
        log_listening(local_addr, unix.as_ref(), secure);
        let inner = Arc::new(ServerInner::new(local_addr, unix, secure, None));
        let shared = Arc::new(Shared {
            config: Arc::new(self.options.config.clone()),
            options: self.options,
            hooks: self.hooks,
            #[cfg(feature = "tls")]
            tls: self.tls,
        });
        tokio::spawn(accept_loop(
            listener,
            inner.clone(),
            shared,
            Arc::new(handler),
        ));
        Server { inner }
    }
}

/// Shuts the loops down when dropped (by a runtime shutting down), from a thread of its
/// own as the shutdown blocks until they end, and removes the server's Unix socket file (a
/// client would find it and wait for ever).
struct EndWithRuntime(Arc<ServerInner>);

impl Drop for EndWithRuntime {
    fn drop(&mut self) {
        if let Some(file) = &self.0.unix {
            file.remove();
        }
        if let Some(loops) = self.0.loops.clone() {
            let _ = std::thread::Builder::new()
                .name("sockeye-close".into())
                .spawn(move || loops.shutdown());
        }
    }
}

/// Logs where a server listens (both front ends).
pub(crate) fn log_listening(addr: Option<SocketAddr>, unix: Option<&SocketFile>, secure: bool) {
    let scheme = if secure { "wss" } else { "ws" };
    if let Some(addr) = addr {
        tracing::info!(target: "sockeye::server", "server listening on {addr} ({scheme}://)");
    } else if let Some(file) = unix {
        let path = file.path().display();
        tracing::info!(target: "sockeye::server", "server listening on unix:{path} ({scheme}://)");
    }
}

/// A connection's remote address in logs: the TCP address, or `unix` for a Unix socket
/// (whose clients are unnamed).
pub(crate) struct Remote(pub(crate) Option<SocketAddr>);

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unix"),
        }
    }
}

/// What the accept loop listens on.
enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// The next connection, and its remote address (`None` on a Unix socket).
    async fn accept(&self) -> std::io::Result<(Stream, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Plain(Box::new(s)), Some(peer)))
            }
            #[cfg(unix)]
            Listener::Unix(l) => Ok((Stream::Unix(Box::new(l.accept().await?.0)), None)),
        }
    }
}

struct Shared {
    options: Options,
    config: Arc<proto::Config>,
    hooks: Hooks,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
}

struct ServerInner {
    local_addr: Option<SocketAddr>,
    /// The socket file of a server on a Unix domain socket.
    unix: Option<SocketFile>,
    /// Serving TLS (`wss://`).
    secure: bool,
    /// The open connections, as references that do not count as handles (8 bytes each, not a
    /// whole `Connection`).
    connections: Mutex<HashMap<u64, crate::connection::TaskRegistration>>,
    closing: AtomicBool,
    stop_accepting: Notify,
    /// Handshakes and handlers running.
    active: AtomicUsize,
    idle: Notify,
    closed: AtomicBool,
    closed_notify: Notify,
    /// The event loops that serve the connections, unless each has a task of its own.
    loops: Option<crate::reactor::Server>,
}

impl ServerInner {
    fn new(
        local_addr: Option<SocketAddr>,
        unix: Option<SocketFile>,
        secure: bool,
        loops: Option<crate::reactor::Server>,
    ) -> ServerInner {
        ServerInner {
            local_addr,
            unix,
            secure,
            connections: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            stop_accepting: Notify::new(),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            closed: AtomicBool::new(false),
            closed_notify: Notify::new(),
            loops,
        }
    }
}

/// A running server. Dropping it does not stop it; call [`Server::close`].
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

    /// The server of connections that run on the event loops `loops`.
    fn on_loops(loops: crate::reactor::Server, unix: Option<SocketFile>) -> Server {
        let local_addr = loops.tcp_addr();
        Server {
            inner: Arc::new(ServerInner::new(local_addr, unix, false, Some(loops))),
        }
    }

    /// Whether the connections run on event loops (the default), rather than in a task each
    /// ([`ServerBuilder::tasks`]).
    pub fn on_event_loops(&self) -> bool {
        self.inner.loops.is_some()
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
        if let Some(loops) = &self.inner.loops {
            return loops.connections();
        }
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| r.connection().into())
            .collect()
    }

    /// Runs until [`Server::close`] is called (from another task).
    pub async fn serve_forever(&self) -> Result<()> {
        self.wait_closed().await;
        Ok(())
    }

    /// Waits until the server is closed.
    pub async fn wait_closed(&self) {
        loop {
            let notified = self.inner.closed_notify.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.inner.closed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Closes the server gracefully: stops accepting connections, answers handshakes in
    /// progress with 503, closes open connections with 1001 (going away), and waits for
    /// every handler to return. A server that bound a Unix socket
    /// ([`ServerBuilder::unix_serve`]) removes its socket file.
    ///
    /// For a graceful shutdown on SIGINT/SIGTERM, call it when the signal arrives (see
    /// `examples/graceful_shutdown.rs` and the README's "Graceful shutdown").
    pub async fn close(&self) {
        if let Some(loops) = &self.inner.loops {
            // The loops do all of it; their shutdown blocks until they have ended, so it
            // runs in a thread of its own (handlers may need this runtime meanwhile; and
            // this needs no runtime context), which also marks the server closed: the
            // shutdown completes even if this future is dropped (a handler that closed its
            // own server, a `select!`).
            if !self.inner.closing.swap(true, Ordering::AcqRel) {
                if let Some(file) = &self.inner.unix {
                    file.remove();
                }
                let (loops, inner) = (loops.clone(), self.inner.clone());
                let shut = move || {
                    loops.shutdown();
                    inner.closed.store(true, Ordering::Release);
                    inner.closed_notify.notify_waiters();
                };
                let thread = std::thread::Builder::new().name("sockeye-close".into());
                if let Err(e) = thread.spawn(shut.clone()) {
                    tracing::warn!(target: "sockeye::server", "cannot start a thread to close the server ({e}): closing here");
                    shut();
                }
            }
            self.wait_closed().await;
            return;
        }
        self.inner.closing.store(true, Ordering::Release);
        self.inner.stop_accepting.notify_waiters();
        if let Some(file) = &self.inner.unix {
            file.remove();
        }
        for c in self.connections() {
            let _ = c.start_close(CloseCode::GOING_AWAY, "");
        }
        loop {
            let notified = self.inner.idle.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.inner.active.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
        self.inner.closed.store(true, Ordering::Release);
        self.inner.closed_notify.notify_waiters();
        tracing::info!(target: "sockeye::server", "server closed");
    }
}

/// Starts a server with the default options. See [`ServerBuilder::serve`].
pub async fn serve<A, H, Fut>(addr: A, handler: H) -> Result<Server>
where
    A: ToSocketAddrs,
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
{
    ServerBuilder::default().serve(addr, handler).await
}

/// Starts a server on the Unix domain socket at `path`, with the default options. See
/// [`ServerBuilder::unix_serve`] (what happens to a file already at `path`, and to the
/// socket file when the server closes).
#[cfg(unix)]
pub async fn unix_serve<H, Fut>(path: impl AsRef<std::path::Path>, handler: H) -> Result<Server>
where
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
{
    ServerBuilder::default().unix_serve(path, handler).await
}

/// Starts a server with the default options that routes connections by path (404 for
/// paths that match no route). See [`ServerBuilder::route`] and [`crate::routing`].
pub async fn route<A: ToSocketAddrs>(addr: A, router: Router) -> Result<Server> {
    ServerBuilder::default().route(addr, router).await
}

struct ActiveGuard(Arc<ServerInner>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

async fn accept_loop<H, Fut>(
    listener: Listener,
    server: Arc<ServerInner>,
    shared: Arc<Shared>,
    handler: Arc<H>,
) where
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
{
    loop {
        let stop = server.stop_accepting.notified();
        let mut stop = pin!(stop);
        stop.as_mut().enable();
        if server.closing.load(Ordering::Acquire) {
            return;
        }
        let accepted = tokio::select! {
            _ = stop => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                server.active.fetch_add(1, Ordering::AcqRel);
                let guard = ActiveGuard(server.clone());
                let span =
                    tracing::debug_span!(target: "sockeye::server", "conn", remote = %Remote(peer));
                // The opening (TLS, handshake: the core, buffers, parsed heads) is boxed and
                // freed when done; what the task keeps for the connection's life is only
                // `run_connection`'s future. Kept small on purpose: it is most of what an
                // idle connection costs.
                let opening = Box::pin(open_connection(
                    stream,
                    peer,
                    shared.clone(),
                    server.clone(),
                ));
                tokio::spawn(connection_task(guard, opening, handler.clone(), span));
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS...: the listener is fine, the process is out of
                // something. Log and wait a little instead of spinning on the error.
                tracing::error!(target: "sockeye::server", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The task of an accepted connection: its opening, then its life (handler and driver).
/// What it holds while the connection is open is most of what an idle connection costs
/// (`idle_size` test below).
fn connection_task<H, Fut, O>(
    guard: ActiveGuard,
    opening: O,
    handler: Arc<H>,
    span: tracing::Span,
) -> impl Future<Output = ()> + Send
where
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    O: Future<Output = Option<(TaskConn, crate::connection::Driver<Stream>)>> + Send + Unpin,
{
    InSpan::new(connection_future(guard, opening, handler), span)
}

/// What [`connection_task`] runs in its span: the opening, then the connection's life
/// ([`run_connection`]).
fn connection_future<H, Fut, O>(
    guard: ActiveGuard,
    opening: O,
    handler: Arc<H>,
) -> impl Future<Output = ()> + Send + Unpin
where
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    O: Future<Output = Option<(TaskConn, crate::connection::Driver<Stream>)>> + Send + Unpin,
{
    ConnectionFuture::new(opening, guard, handler, run_connection::<H, Fut>)
}

/// The two phases of a connection's task as one enum, written out rather than as an
/// `async` block: the compiler keeps an `async` block's locals of the opening (the guard,
/// the handler) beside the running connection, 24 bytes more for the task's whole life.
enum ConnectionFuture<O, H, S, R> {
    Opening {
        opening: O,
        /// `start` and what it takes besides the opened connection.
        then: Option<(ActiveGuard, Arc<H>, S)>,
    },
    Running(R),
    Done,
}

impl<O, H, S, R> ConnectionFuture<O, H, S, R>
where
    S: FnOnce(TaskConn, crate::connection::Driver<Stream>, ActiveGuard, &H) -> R,
{
    fn new(opening: O, guard: ActiveGuard, handler: Arc<H>, start: S) -> Self {
        ConnectionFuture::Opening {
            opening,
            then: Some((guard, handler, start)),
        }
    }
}

impl<O, H, S, R> Future for ConnectionFuture<O, H, S, R>
where
    O: Future<Output = Option<(TaskConn, crate::connection::Driver<Stream>)>> + Unpin,
    S: FnOnce(TaskConn, crate::connection::Driver<Stream>, ActiveGuard, &H) -> R + Unpin,
    R: Future<Output = ()> + Unpin,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        // Every field is `Unpin`: the enum is, and moves between phases freely.
        let this = &mut *self;
        loop {
            match this {
                ConnectionFuture::Opening { opening, then } => {
                    let opened = std::task::ready!(Pin::new(opening).poll(cx));
                    let (guard, handler, start) = then.take().expect("polled after opening");
                    *this = match opened {
                        Some((conn, driver)) => {
                            ConnectionFuture::Running(start(conn, driver, guard, &*handler))
                        }
                        None => ConnectionFuture::Done,
                    };
                }
                ConnectionFuture::Running(running) => {
                    std::task::ready!(Pin::new(running).poll(cx));
                    *this = ConnectionFuture::Done;
                }
                ConnectionFuture::Done => return Poll::Ready(()),
            }
        }
    }
}

/// A future run inside a tracing span, as `tracing::Instrument` does, but with the span
/// boxed, and not kept at all when it is disabled (no subscriber wants it): 8 bytes in every
/// connection's task instead of 40, which keeps the task in tokio's 256-byte cell (see
/// the `idle_size` test).
pub(crate) struct InSpan<F> {
    future: F,
    span: Option<Box<tracing::Span>>,
}

impl<F: Future + Unpin> InSpan<F> {
    pub(crate) fn new(future: F, span: tracing::Span) -> InSpan<F> {
        InSpan {
            future,
            span: (!span.is_disabled()).then(|| Box::new(span)),
        }
    }
}

impl<F: Future + Unpin> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _entered = this.span.as_deref().map(tracing::Span::enter);
        Pin::new(&mut this.future).poll(cx)
    }
}

/// Registers an open connection with its server and returns the future that runs it (the
/// handler and the driver, see [`run_handler`]), which leaves the server's map when done.
fn run_connection<H, Fut>(
    conn: TaskConn,
    driver: crate::connection::Driver<Stream>,
    guard: ActiveGuard,
    handler: &H,
) -> impl Future<Output = ()>
where
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
{
    let id = conn.id();
    tracing::info!(target: "sockeye::server", id, remote = %Remote(conn.remote_addr()), "connection open");
    let server = &guard.0;
    server
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, conn.registration());
    if server.closing.load(Ordering::Acquire) {
        let _ = conn.start_close(CloseCode::GOING_AWAY, "");
    }
    let handling = handler(conn.clone().into());
    run_handler(conn, driver, handling, guard)
}

/// What the task of a connection keeps besides the connection: told when the connection
/// is over (its future completes, or is dropped with the runtime).
pub(crate) trait Unregister: Send {
    /// The connection `id` is over.
    fn unregister(&self, id: u64);
}

/// Nothing to tell (the hyper integration has no server map).
impl Unregister for () {
    fn unregister(&self, _: u64) {}
}

/// A connection of a `Server` leaves the server's map, then stops counting as active (the
/// guard's own drop).
impl Unregister for ActiveGuard {
    fn unregister(&self, id: u64) {
        self.0
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// The connection and what to tell when it is over, kept together so that the id is not
/// kept twice.
struct Kept<K: Unregister> {
    conn: crate::connection::Held,
    keep: K,
}

impl<K: Unregister> Drop for Kept<K> {
    fn drop(&mut self) {
        self.keep.unregister(self.conn.id());
    }
}

/// The opening of an accepted connection: TLS if configured, then the WebSocket handshake.
/// `None` when it did not open (refused, failed, or answered by `process_request`).
async fn open_connection(
    socket: Stream,
    peer: Option<SocketAddr>,
    shared: Arc<Shared>,
    server: Arc<ServerInner>,
) -> Option<(TaskConn, crate::connection::Driver<Stream>)> {
    let (shared, server) = (&*shared, &server);
    let (local, _) = socket.addresses();
    let mut proto = Protocol::server(shared.config.clone());
    // Stream mode from the start, as the connections built on it run (see `queue.rs`).
    proto.set_stream_fragments(true);
    // The core's open timeout counts from here: TLS and WebSocket handshakes together.
    proto.handle_timeout(tokio::time::Instant::now().into_std());
    let mut stream = match accept_transport(socket, shared).await {
        Ok(s) => s,
        Err(e) => {
            // A scanner, a plain-HTTP client, a client that does not trust us: not our
            // problem, and not the accept loop's.
            tracing::debug!(target: "sockeye::server", "TLS handshake failed: {e}");
            return None;
        }
    };
    let opened = server_handshake(&mut stream, &mut proto, shared, server).await;
    let (request, response) = match opened {
        Ok(Some(pair)) => pair,
        Ok(None) => return None,
        Err(e) => {
            tracing::info!(target: "sockeye::server", "opening handshake failed: {e}");
            return None;
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
    let limits: Limits = shared.options.limits;
    Some(TaskConn::new(proto, stream, Vec::new(), limits, info))
}

/// The transport of an accepted connection: TLS over `socket` (TCP or Unix) when the server
/// has a TLS configuration (handshake within `open_timeout`), `socket` itself otherwise.
async fn accept_transport(socket: Stream, shared: &Shared) -> Result<Stream> {
    #[cfg(feature = "tls")]
    if let Some(config) = &shared.tls {
        let timeout = shared.options.config_open_timeout();
        // Boxed: the TLS session is kept by the stream afterwards, and a future holding it
        // inline would make every connection's task bigger, plain ones too.
        return match socket {
            Stream::Plain(tcp) => {
                let accept = Box::pin(crate::tls::accept_tokio(config, *tcp));
                Ok(Stream::Tls(Box::new(within(timeout, accept).await?)))
            }
            #[cfg(unix)]
            Stream::Unix(unix) => {
                let accept = Box::pin(crate::tls::accept_tokio(config, *unix));
                Ok(Stream::UnixTls(Box::new(within(timeout, accept).await?)))
            }
            // Accepted sockets are bare.
            other => Ok(other),
        };
    }
    let _ = shared;
    Ok(socket)
}

/// Runs `future` within `timeout` (none: no limit); running out is [`Error::OpenTimeout`].
pub(crate) async fn within<T>(
    timeout: Option<Duration>,
    future: impl Future<Output = Result<T>>,
) -> Result<T> {
    match timeout {
        Some(t) => tokio::time::timeout(t, future)
            .await
            .map_err(|_| Error::OpenTimeout)?,
        None => future.await,
    }
}

/// Polls the handler and the driver in one task: the connection keeps answering pings and
/// running the closing handshake whether or not the handler calls `recv`.
///
/// A plain future over its captures rather than an `async fn`, which would keep its arguments
/// twice (as arguments, and as the pinned locals they move into): a connection's task is
/// mostly this future, for as long as the connection lives. The handler's future is boxed so
/// that this one needs no pinning of its own (it is as big as the application makes it).
/// Logs a handler's error at ERROR, unless it is the connection's own end
/// (`ConnectionClosed`, which the handler only passed on). The connection fails with 1011
/// either way. Every server front end that runs handlers shares this rule.
pub(crate) fn log_handler_error(id: u64, e: &BoxError) {
    if !matches!(e.downcast_ref::<Error>(), Some(Error::ConnectionClosed(_))) {
        tracing::error!(target: "sockeye::server", id, "connection handler failed: {e}");
    }
}

pub(crate) fn run_handler<D, F, K>(
    conn: TaskConn,
    driver: D,
    handler: F,
    keep: K,
) -> impl Future<Output = ()>
where
    K: Unregister,
    D: Future<Output = ()> + Unpin,
    F: Future<Output = std::result::Result<(), BoxError>>,
{
    // The driver runs outside tokio's cooperative budget (it caps its own work per poll):
    // a handler that spends the budget sending in a tight loop must not stop its own
    // connection from writing. It is polled first for the same reason.
    // Dropped as soon as it completes: the socket closes and the connection's state goes
    // then, before this future (and the server's count of active connections, in `keep`)
    // ends, even when the handler outlives its connection.
    let mut driver = Some(tokio::task::coop::unconstrained(driver));
    // Dropped as soon as it returns: its state (buffers, clones of the connection) goes then,
    // while the driver may still have a closing handshake to finish.
    let mut handler = Some(Box::pin(handler));
    // Dropped with this future, when the connection is over.
    let kept = Kept {
        conn: crate::connection::Held::from(conn),
        keep,
    };
    std::future::poll_fn(move |cx| {
        let conn = &kept.conn;
        if driver
            .as_mut()
            .is_some_and(|d| Pin::new(d).poll(cx).is_ready())
        {
            driver = None;
        }
        if let Some(running) = handler.as_mut() {
            if let Poll::Ready(result) = running.as_mut().poll(cx) {
                handler = None;
                match result {
                    Ok(()) => {
                        let _ = conn.start_close(CloseCode::NORMAL, "");
                    }
                    Err(e) => {
                        log_handler_error(conn.id(), &e);
                        conn.fail(CloseCode::INTERNAL_ERROR, "");
                    }
                }
            }
        }
        let handler_done = handler.is_none();
        if handler_done
            && driver
                .as_mut()
                .is_some_and(|d| Pin::new(d).poll(cx).is_ready())
        {
            // Poll again after the handler ended: it may have started the close.
            driver = None;
        }
        if handler_done && driver.is_none() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// Runs the server side of the opening handshake. `Ok(None)`: answered without opening.
async fn server_handshake<S>(
    stream: &mut S,
    proto: &mut Protocol,
    shared: &Shared,
    server: &ServerInner,
) -> Result<Option<(RequestHead, ResponseHead)>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = match read_until_event(stream, proto).await? {
        Some(Event::Request(r)) => r,
        _ => return Ok(None),
    };
    let closing = server.closing.load(Ordering::Acquire);
    let (response, granted) = shared.hooks.answer(proto, &request, closing);
    let status = response.status();
    proto.send_response(&response)?;
    let mut out = Vec::new();
    proto.poll_transmit(&mut out);
    stream.write_all(&out).await?;
    if status != StatusCode::SWITCHING_PROTOCOLS {
        crate::server::log_http_answer(request.uri().path(), status);
        let _ = stream.shutdown().await;
        return Ok(None);
    }
    let response = shared.hooks.kept_response(response, &shared.config);
    let request = RequestHead::new(*request, granted);
    Ok(Some((request, response)))
}

/// Reads and feeds the core until it produces an event (the handshake request or response),
/// honouring the core's open timeout. Writes error responses the core queues.
pub(crate) async fn read_until_event<S>(
    stream: &mut S,
    proto: &mut Protocol,
) -> Result<Option<Event>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = [0u8; 4096];
    proto.handle_timeout(tokio::time::Instant::now().into_std());
    loop {
        if let Some(event) = proto.poll_event() {
            return Ok(Some(event));
        }
        let deadline = proto.poll_timeout().map(tokio::time::Instant::from_std);
        let read = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, stream.read(&mut buf)).await.ok(),
                None => Some(stream.read(&mut buf).await),
            }
        };
        let result = match read.await {
            None => {
                proto.handle_timeout(tokio::time::Instant::now().into_std());
                match proto.error() {
                    Some(e) => Err(e.clone()),
                    None => continue,
                }
            }
            Some(Ok(0)) => proto.receive_eof(),
            Some(Ok(n)) => proto.receive_data(&buf[..n]),
            Some(Err(e)) => return Err(e.into()),
        };
        if let Err(e) = result {
            // An HTTP error response may be queued: send it before closing.
            let mut out = Vec::new();
            proto.poll_transmit(&mut out);
            if !out.is_empty() {
                let _ = stream.write_all(&out).await;
            }
            let _ = stream.shutdown().await;
            return Err(e.into());
        }
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod idle_size {
    use super::*;

    /// tokio allocates a task as one cell (header, future, trailer) aligned to 128 bytes: a
    /// future of up to 152 bytes makes a 256-byte cell, one of 160 to 272 bytes a 384-byte
    /// cell, and more a 512-byte cell (measured with tokio 1.54). A connection's task lives as
    /// long as the connection, so its future must stay under the first step.
    #[test]
    fn the_connection_task_fits_tokios_256_byte_cell() {
        let handler = Arc::new(|ws: Connection| async move {
            while let Some(m) = ws.recv().await? {
                ws.send(m).await?;
            }
            Ok::<(), BoxError>(())
        });
        let server = Arc::new(ServerInner::new(None, None, false, None));
        server.active.store(1, Ordering::Release);
        let task = connection_task(
            ActiveGuard(server),
            Box::pin(std::future::ready(None)),
            handler,
            tracing::Span::none(),
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 152, "connection task future: {size} bytes");
    }
}
