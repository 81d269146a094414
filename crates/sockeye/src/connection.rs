//! A WebSocket connection on tokio: the handle applications use, and the driver that moves
//! bytes between the transport and the sans-I/O core.
//!
//! The driver is a hand-written future, polled by the connection's one task (beside the
//! server's handler, or spawned for a client). It owns the transport; handles share the
//! [`Protocol`] behind a mutex held only for short, non-blocking sections. What the driver
//! does each time it is woken:
//!
//! 1. fire the core's timers (keepalive, close timeout) when their deadline passed;
//! 2. read what the transport has, unless `max_queue` messages wait (backpressure), into a
//!    per-thread buffer (no read buffer per connection while idle), and feed it to the core;
//! 3. take everything the core has to send (echoes, pongs, messages sent by other tasks) and
//!    write it in as few writes as the transport allows: writes are corked;
//! 4. close the transport when the core says so.
//!
//! Every protocol rule lives in the core; this module only moves bytes and wakes tasks.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::futures::Notified;
use tokio::sync::{oneshot, Notify};

use crate::timer::Timer;

use crate::error::{Closed, Error, Result};
use crate::head::{RequestHead, ResponseHead};
use crate::proto::{
    self, CloseCode, Event, Fragment, Message, MessageKind, PingId, PreparedMessage, Protocol,
    Side, State,
};
use crate::queue::{FragmentsState, Inbox, Item, Sender};

/// The transport of a tokio connection: TCP or a Unix domain socket, each bare or under TLS,
/// or a connection hyper upgraded. One type, so that the driver is compiled once; the TLS
/// variants are boxed so that a plain connection stays as small as a bare `TcpStream` (a
/// rustls session is over a kilobyte even while idle). The Unix and upgraded variants are
/// boxed too: a third unboxed variant would take the niche that lets the enum be as small
/// as a `TcpStream` (40 → 48 bytes, measured).
pub(crate) enum Stream {
    /// TCP, while opening (boxed: the open connection holds `Direct`).
    Plain(Box<tokio::net::TcpStream>),
    /// TCP, shared with the publishers that write to an idle connection directly
    /// ([`crate::direct`]): what an open plain connection's driver holds.
    Direct(crate::direct::SharedTcp),
    /// TLS over TCP, handshake done.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::TlsStream<tokio::net::TcpStream>>),
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(Box<tokio::net::UnixStream>),
    /// TLS over a Unix domain socket, handshake done.
    #[cfg(all(unix, feature = "tls"))]
    UnixTls(Box<tokio_rustls::TlsStream<tokio::net::UnixStream>>),
    /// A connection that hyper served and handed over after a 101 (see [`crate::hyper`]).
    #[cfg(feature = "hyper")]
    Upgraded(Box<hyper_util::rt::TokioIo<::hyper::upgrade::Upgraded>>),
}

/// Runs `$body` with `$s` bound to the `Pin` of whichever transport `$stream` holds.
macro_rules! each_stream {
    ($stream:expr, $s:ident => $body:expr) => {
        match $stream {
            Stream::Plain(s) => {
                let $s = Pin::new(&mut **s);
                $body
            }
            Stream::Direct(s) => {
                let $s = Pin::new(s);
                $body
            }
            #[cfg(feature = "tls")]
            Stream::Tls(s) => {
                let $s = Pin::new(&mut **s);
                $body
            }
            #[cfg(unix)]
            Stream::Unix(s) => {
                let $s = Pin::new(&mut **s);
                $body
            }
            #[cfg(all(unix, feature = "tls"))]
            Stream::UnixTls(s) => {
                let $s = Pin::new(&mut **s);
                $body
            }
            #[cfg(feature = "hyper")]
            Stream::Upgraded(s) => {
                let $s = Pin::new(&mut **s);
                $body
            }
        }
    };
}

impl Stream {
    /// The local and remote addresses of a TCP transport; `None` for a Unix socket, and for
    /// a hyper upgrade (hyper does not say; [`crate::hyper::Upgrading`] takes them).
    pub(crate) fn addresses(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let tcp = match self {
            Stream::Plain(s) => s,
            Stream::Direct(s) => s.tcp(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.get_ref().0,
            #[allow(unreachable_patterns)]
            _ => return (None, None),
        };
        (tcp.local_addr().ok(), tcp.peer_addr().ok())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_stream!(self.get_mut(), s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_stream!(self.get_mut(), s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_stream!(self.get_mut(), s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Direct(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Stream::Unix(s) => s.is_write_vectored(),
            #[cfg(all(unix, feature = "tls"))]
            Stream::UnixTls(s) => s.is_write_vectored(),
            #[cfg(feature = "hyper")]
            Stream::Upgraded(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self.get_mut(), s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self.get_mut(), s => s.poll_shutdown(cx))
    }
}

/// Per-connection settings that belong to the front end rather than the core.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_queue: usize,
    pub(crate) write_limit: usize,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A new number, unique within the process: connection ids and ping payloads (both front
/// ends).
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What is known about a connection once it is open.
#[derive(Debug)]
pub(crate) struct Info {
    pub(crate) id: u64,
    pub(crate) side: Side,
    pub(crate) addresses: crate::addresses::Addresses,
    pub(crate) request: RequestHead,
    pub(crate) response: ResponseHead,
    pub(crate) subprotocol: Option<Box<str>>,
}

/// What a connection knows about itself, from its [`Info`]: the accessors of the tokio and
/// blocking connections (field `inner.info`).
macro_rules! info_accessors {
    ($connection:ty) => {
        impl $connection {
            /// A number that identifies this connection in logs, unique within the process
            /// (one numbering for both front ends).
            pub fn id(&self) -> u64 {
                self.inner.info.id
            }

            /// Which side of the connection this is.
            pub fn side(&self) -> crate::proto::Side {
                self.inner.info.side
            }

            /// The local address of the transport, if it has one.
            pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
                self.inner.info.addresses.local()
            }

            /// The remote address of the transport, if it has one.
            pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
                self.inner.info.addresses.remote()
            }

            /// The handshake request (received by a server, sent by a client).
            pub fn request(&self) -> &http::Request<()> {
                self.inner.info.request.get()
            }

            /// The handshake response (sent by a server, received by a client).
            pub fn response(&self) -> &http::Response<()> {
                let info = &self.inner.info;
                info.response
                    .get(info.request.get(), info.subprotocol.as_deref())
            }

            /// The subprotocol negotiated, if any.
            pub fn subprotocol(&self) -> Option<&str> {
                self.inner.info.subprotocol.as_deref()
            }

            /// The user that the server's basic auth authenticated (see [`crate::auth`]);
            /// `None` without basic auth, and on the client side.
            pub fn username(&self) -> Option<&str> {
                self.inner.info.request.username()
            }

            /// The value of path parameter `name` of the route that matched (see
            /// [`crate::routing`]), percent-decoded: `ws.param("id")` for `/rooms/{id}`.
            pub fn param(&self, name: &str) -> Option<&str> {
                self.inner.info.request.param(name)
            }

            /// The path parameters of the route that matched, `(name, value)` in the
            /// pattern's order; none without routing.
            pub(crate) fn params_slice(&self) -> &[(std::sync::Arc<str>, Box<str>)] {
                self.inner.info.request.params()
            }

            /// The index of the route that matched, for the router's dispatch.
            pub(crate) fn route(&self) -> Option<usize> {
                self.inner.info.request.route()
            }
        }
    };
}

pub(crate) use info_accessors;

info_accessors!(TaskConn);

struct Shared {
    proto: Protocol,
    queue: Inbox,
    /// The `send_fragmented` call whose message is being sent: other senders wait for it.
    fragmented_sender: Option<u64>,
    /// `ping()` waiters and close hooks: boxed, allocated when there is one (most
    /// connections have none), freed when there are none left.
    waiters: Option<Box<Waiters>>,
    /// Bytes the driver took from the core and has not written yet.
    inflight: usize,
    done: bool,
    /// The driver took the hooks to run them: later ones run at once.
    hooks_taken: bool,
    /// The `recv` (or `recv_streaming`) waiting for the queue: woken by the driver when it
    /// queues something or the connection ends.
    recv_waker: Option<Waker>,
    /// The socket of a plain TCP connection, for publishers to write to directly while the
    /// connection has nothing else to write ([`TaskConn::try_send_prepared`]); dropped
    /// when the connection is over, so that the driver's drop closes the socket.
    direct: Option<Arc<tokio::net::tcp::OwnedWriteHalf>>,
}

/// What a few connections wait for (see [`Shared::waiters`]).
#[derive(Default)]
struct Waiters {
    pings: Vec<(PingId, oneshot::Sender<Duration>)>,
    /// Run once when the connection is over (the hub's automatic unsubscribe).
    close_hooks: Vec<Box<dyn FnOnce() + Send>>,
}

struct Inner {
    shared: Mutex<Shared>,
    /// send() and close() waiters: output drained, or the connection ended.
    writers: Notify,
    driver: AtomicWaker,
    /// Set by the process's timer when a deadline of this connection's came (see
    /// `timer.rs`); the driver checks its [`Timer`] only then.
    timer_fired: AtomicBool,
    recv_busy: AtomicBool,
    /// Live `TaskConn` handles; the last one dropped closes the connection.
    handles: AtomicUsize,
    limits: Limits,
    info: Info,
}

/// The timer's wake: flag it, then wake the driver.
impl Wake for Inner {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.timer_fired.store(true, Ordering::Release);
        self.driver.wake();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding this lock can only come from a bug in this module; the state
        // is still consistent (every section leaves it so), so go on with it.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the closing handshake without waiting for it.
    fn start_close(&self, code: CloseCode, reason: &str) -> Result<()> {
        {
            let mut sh = self.lock();
            sh.proto.handle_timeout(Instant::now());
            sh.proto.close(code, reason)?;
        }
        self.driver.wake();
        Ok(())
    }

    /// Fails the connection with this code (1011 when a handler fails).
    fn fail(&self, code: CloseCode, reason: &str) {
        {
            let mut sh = self.lock();
            sh.proto.handle_timeout(Instant::now());
            sh.proto.fail(code, reason);
        }
        self.driver.wake();
    }

    /// One handle fewer; the last one gone closes the connection with 1000.
    fn drop_handle(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut sh = self.lock();
            if !sh.done && sh.proto.state() == State::Open {
                sh.proto.handle_timeout(Instant::now());
                let _ = sh.proto.close(CloseCode::NORMAL, "");
                drop(sh);
                self.driver.wake();
            }
        }
    }
}

/// What the task that runs a server's handler keeps of the connection: it counts as a
/// handle (the connection stays open while the handler runs, whatever the handler does with
/// its own), and ends the connection when the handler returns. One pointer, where a
/// [`TaskConn`] is two: it lives in every connection's task.
pub(crate) struct Held(Arc<Inner>);

impl Held {
    /// The connection's id.
    pub(crate) fn id(&self) -> u64 {
        self.0.info.id
    }

    /// Starts the closing handshake (the handler returned).
    pub(crate) fn start_close(&self, code: CloseCode, reason: &str) -> Result<()> {
        self.0.start_close(code, reason)
    }

    /// Fails the connection with this code (the handler failed).
    pub(crate) fn fail(&self, code: CloseCode, reason: &str) {
        self.0.fail(code, reason)
    }
}

impl From<TaskConn> for Held {
    fn from(conn: TaskConn) -> Held {
        // The handle `conn` held passes to the `Held`.
        conn.inner.handles.fetch_add(1, Ordering::Relaxed);
        Held(conn.inner.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.drop_handle();
    }
}

/// A connection driven by a tokio task (the tokio server, clients, hyper and axum): the
/// back end of [`crate::Connection`] there, whose documentation describes the methods.
///
/// When the last handle is dropped, the connection closes with 1000 (the driver finishes the
/// closing handshake in the background).
pub(crate) struct TaskConn {
    inner: Arc<Inner>,
    /// What the `Stream` and `Sink` impls keep between polls, allocated on their first use:
    /// a handle that is only awaited (`recv`, `send`) stays two pointers wide, which counts
    /// because the connection's task and its handler each hold one for as long as it lives.
    /// In a `Mutex` only to be `Sync` without `unsafe`: it is reached through `&mut self`
    /// (`get_mut`), never locked.
    adapters: Option<Box<Mutex<Adapters>>>,
}

/// The `Stream`/`Sink` state of one [`TaskConn`] handle.
#[derive(Default)]
struct Adapters {
    /// The `recv` in progress when the connection is used as a `Stream`.
    stream_recv: Option<BoxFuture<Result<Option<Message>>>>,
    /// The `send` in progress when the connection is used as a `Sink`.
    sink_send: Option<BoxFuture<Result<()>>>,
    /// The stream ended (normal close, or after yielding the error of another end).
    stream_done: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn get<T>(m: &mut Mutex<T>) -> &mut T {
    m.get_mut().unwrap_or_else(|e| e.into_inner())
}

/// A reference to a connection kept by its server (for `Server::connections`): not a
/// handle, so it neither keeps the connection open nor costs a whole `TaskConn`.
pub(crate) struct TaskRegistration(Arc<Inner>);

impl TaskRegistration {
    /// [`TaskConn::try_send_prepared`] through the server's or the hub's reference.
    pub(crate) fn try_send_prepared(&self, message: &PreparedMessage) -> bool {
        try_send_prepared(&self.0, message)
    }

    /// A new handle to the connection.
    pub(crate) fn connection(&self) -> TaskConn {
        TaskConn::handle(&self.0)
    }
}

impl TaskConn {
    /// The server's reference to this connection.
    pub(crate) fn registration(&self) -> TaskRegistration {
        TaskRegistration(self.inner.clone())
    }
}

impl Clone for TaskConn {
    /// Another handle to the same connection (a `Stream`/`Sink` operation in progress on
    /// this handle is not shared).
    fn clone(&self) -> Self {
        TaskConn::handle(&self.inner)
    }
}

impl futures_core::Stream for TaskConn {
    type Item = Result<Message>;

    /// The messages received, as [`TaskConn::recv`] gives them; the stream ends after a
    /// normal close, or after yielding the error of any other end.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let inner = &this.inner;
        let adapters = get(this.adapters.get_or_insert_with(Box::default));
        if adapters.stream_done {
            return Poll::Ready(None);
        }
        let fut = adapters.stream_recv.get_or_insert_with(|| {
            let conn = TaskConn::handle(inner);
            Box::pin(async move { conn.recv().await })
        });
        let result = std::task::ready!(fut.as_mut().poll(cx));
        adapters.stream_recv = None;
        Poll::Ready(match result {
            Ok(Some(m)) => Some(Ok(m)),
            Ok(None) => {
                adapters.stream_done = true;
                None
            }
            // Another receiver holds the connection: this handle may try again later (the
            // event loop's stream behaves the same); any other error is the end.
            Err(Error::ConcurrentRecv) => Some(Err(Error::ConcurrentRecv)),
            Err(e) => {
                adapters.stream_done = true;
                Some(Err(e))
            }
        })
    }
}

impl futures_sink::Sink<Message> for TaskConn {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_pending_send(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<()> {
        let conn = self.clone();
        let message = item;
        self.adapters().sink_send = Some(Box::pin(async move { conn.send(message).await }));
        Ok(())
    }

    /// Completes the `send` in progress (the message is in the output buffer; the driver
    /// writes it as soon as the transport takes it).
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_pending_send(cx)
    }

    /// Completes the `send` in progress, then closes the connection with 1000.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        std::task::ready!(self.poll_pending_send(cx))?;
        if self.adapters().sink_send.is_none() {
            let conn = self.clone();
            self.adapters().sink_send =
                Some(Box::pin(
                    async move { conn.close(CloseCode::NORMAL, "").await },
                ));
        }
        self.poll_pending_send(cx)
    }
}

impl Drop for TaskConn {
    fn drop(&mut self) {
        self.inner.drop_handle();
    }
}

impl std::fmt::Debug for TaskConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskConn")
            .field("id", &self.inner.info.id)
            .field("side", &self.inner.info.side)
            .field("remote_addr", &self.inner.info.addresses.remote())
            .field("state", &self.state())
            .finish()
    }
}

impl TaskConn {
    fn from_inner(inner: Arc<Inner>) -> TaskConn {
        TaskConn {
            inner,
            adapters: None,
        }
    }

    /// Another handle to the connection of `inner`.
    fn handle(inner: &Arc<Inner>) -> TaskConn {
        inner.handles.fetch_add(1, Ordering::Relaxed);
        TaskConn::from_inner(inner.clone())
    }

    /// The `Stream`/`Sink` state of this handle, allocated on first use.
    fn adapters(&mut self) -> &mut Adapters {
        get(self.adapters.get_or_insert_with(Box::default))
    }

    fn poll_pending_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let Some(adapters) = self.adapters.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let slot = &mut get(adapters).sink_send;
        match slot.as_mut() {
            None => Poll::Ready(Ok(())),
            Some(fut) => {
                let result = std::task::ready!(fut.as_mut().poll(cx));
                *slot = None;
                Poll::Ready(result)
            }
        }
    }

    /// Wraps an open protocol and its transport: returns the handle and the driver future,
    /// which must be polled (spawned, or joined with the handler) for anything to happen.
    pub(crate) fn new(
        proto: Protocol,
        stream: Stream,
        leftover: Vec<u8>,
        limits: Limits,
        mut info: Info,
    ) -> (TaskConn, Driver<Stream>) {
        let (stream, direct) = match stream {
            Stream::Plain(tcp) => {
                let (shared, writer) = crate::direct::SharedTcp::new(*tcp);
                (Stream::Direct(shared), Some(writer))
            }
            other => (other, None),
        };
        info.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut proto = proto;
        // Data frames come as fragments: `recv` joins them, `recv_streaming` hands them out.
        proto.set_stream_fragments(true);
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared {
                proto,
                queue: Inbox::default(),
                fragmented_sender: None,
                waiters: None,
                inflight: 0,
                done: false,
                hooks_taken: false,
                recv_waker: None,
                direct,
            }),
            writers: Notify::new(),
            driver: AtomicWaker::new(),
            timer_fired: AtomicBool::new(false),
            recv_busy: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
            limits,
            info,
        });
        let driver = Driver {
            inner: inner.clone(),
            stream,
            out: crate::outgoing::Outgoing::new(leftover),
            timer: Timer::new(Waker::from(inner.clone())),
            eof: false,
            finished: false,
            unflushed: false,
            lingering: false,
            flushing: false,
        };
        {
            let mut sh = inner.lock();
            sh.proto.handle_timeout(Instant::now());
            sh.inflight = driver.out.remaining();
            // Large payloads leave from the messages' own buffers (vectored writes).
            sh.proto.set_zero_copy(true);
            // Messages that arrived with the handshake (in the same read as the 101
            // response, or pipelined behind the request) are waiting in the core already.
            dispatch(sh);
        }
        (TaskConn::from_inner(inner), driver)
    }

    /// Receives the next message.
    ///
    /// Returns `Ok(None)` once the connection closed normally (1000 or 1001 both ways), and
    /// [`Error::ConnectionClosed`] with the close frames when it ended any other way. Messages
    /// that arrived before the close are returned first. Cancel-safe: a `recv` dropped before
    /// it completes loses no message.
    pub async fn recv(&self) -> Result<Option<Message>> {
        if self.inner.recv_busy.swap(true, Ordering::Acquire) {
            return Err(Error::ConcurrentRecv);
        }
        let _busy = BusyGuard(&self.inner.recv_busy);
        let got = self
            .next_item(|sh| sh.queue.take_message().map(|r| r.map_err(Error::from)))
            .await;
        match got {
            Ok(message) => message.map(Some),
            Err(closed) if closed.is_ok() => Ok(None),
            Err(closed) => Err(Error::ConnectionClosed(closed)),
        }
    }

    /// [`crate::Connection::recv_streaming`]: the fragments as their frames arrive.
    pub fn recv_streaming(&self) -> Result<TaskFragments<'_>> {
        if self.inner.recv_busy.swap(true, Ordering::Acquire) {
            return Err(Error::ConcurrentRecv);
        }
        Ok(TaskFragments {
            conn: self,
            _busy: BusyGuard(&self.inner.recv_busy),
            state: FragmentsState::Start,
        })
    }

    /// Waits until `take` finds what it wants in the queue (it runs under the lock each time
    /// the queue may have changed), or the connection is over with nothing left for `take`.
    /// Resumes reading when `take` brought the queue under `max_queue`.
    ///
    /// One receiver at a time (`recv_busy`), so the waiting one keeps its waker in the
    /// shared state (`recv_waker`), set under the lock the driver queues under: no wake is
    /// lost, and the future is a few pointers (a `Notify` registration made it 128 B, in
    /// every idle handler's future).
    fn next_item<'a, R: 'a>(
        &'a self,
        mut take: impl FnMut(&mut Shared) -> Option<R> + 'a,
    ) -> impl Future<Output = std::result::Result<R, Closed>> + 'a {
        std::future::poll_fn(move |cx| self.poll_next_item(cx, &mut take))
    }

    /// One attempt of [`next_item`](Self::next_item).
    fn poll_next_item<R>(
        &self,
        cx: &mut Context<'_>,
        take: &mut impl FnMut(&mut Shared) -> Option<R>,
    ) -> Poll<std::result::Result<R, Closed>> {
        let max_queue = self.inner.limits.max_queue;
        let mut sh = self.inner.lock();
        let before = sh.queue.len();
        let got = take(&mut sh);
        let resume = before >= max_queue && sh.queue.len() < max_queue;
        let result = match got {
            // Done waiting: a stale waker would make every message the driver queues wake
            // the task for nothing (the first version lost 4-7 % of pipelined throughput so).
            Some(r) => {
                sh.recv_waker = None;
                Poll::Ready(Ok(r))
            }
            None if sh.done => Poll::Ready(Err(closed_of(&sh))),
            None => {
                if !sh
                    .recv_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    sh.recv_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        };
        drop(sh);
        if resume {
            // Reading was paused for backpressure: resume it.
            self.inner.driver.wake();
        }
        result
    }

    /// Sends a message: text for `&str`/`String`, binary for `Vec<u8>`/`Bytes`/`&[u8]`.
    ///
    /// Waits while more than `write_limit` bytes are waiting to be written (backpressure).
    /// Takes part in tokio's cooperative scheduling, so a task that sends in a tight loop
    /// still lets the connection (and the runtime) make progress. Cancel-safe: a `send`
    /// dropped before it completes sent nothing.
    // Not an `async fn`: the future is the handler's for as long as the send waits, so its
    // size counts (an `async fn` would keep the message twice, and a state per layer).
    pub fn send(&self, message: impl Into<Message>) -> impl Future<Output = Result<()>> + '_ {
        let message = message.into();
        self.send_as(Sender::Message, move |sh| sh.proto.send(&message))
    }

    /// A fragmented message of `kind`, sent frame by frame (other messages wait for it).
    pub(crate) fn start_fragmented(&self, kind: MessageKind) -> FragmentedSend<'_> {
        FragmentedSend {
            conn: self,
            kind,
            owner: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            started: false,
        }
    }

    /// Runs `op` (which queues frames in the core) as `sender` once the connection may take
    /// them: a whole message waits while another task's fragmented message is being sent,
    /// control frames do not; all wait while more than `write_limit` bytes are queued.
    ///
    /// Tries once before registering with `writers`, so that a send under the write limit
    /// (the common case) costs one lock and no `Notify` registration. The registration is
    /// boxed: only a send that has to wait pays for it, and the future stays small (it lives
    /// in the caller's future, a handler's, for as long as the connection does).
    fn send_as<'a>(
        &'a self,
        sender: Sender,
        mut op: impl FnMut(&mut Shared) -> std::result::Result<(), proto::Error> + 'a,
    ) -> impl Future<Output = Result<()>> + 'a {
        let mut wait = SendWait::default();
        std::future::poll_fn(move |cx| wait.poll(self, cx, sender, &mut op))
    }

    /// [`send`](Self::send) as a poll, for [`crate::Connection::send`], which keeps the
    /// message and `wait` (both back ends' state in one small future).
    pub(crate) fn poll_send_message<'a>(
        &'a self,
        cx: &mut Context<'_>,
        message: &Message,
        wait: &mut SendWait<'a>,
    ) -> Poll<Result<()>> {
        wait.poll(self, cx, Sender::Message, &mut |sh| sh.proto.send(message))
    }

    /// [`recv`](Self::recv) as a poll, for [`crate::Connection::recv`] (which holds the
    /// receiving side, [`recv_flag`](Self::recv_flag)).
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>>> {
        let take = &mut |sh: &mut Shared| sh.queue.take_message().map(|r| r.map_err(Error::from));
        self.poll_next_item(cx, take).map(|got| match got {
            Ok(message) => message.map(Some),
            Err(closed) if closed.is_ok() => Ok(None),
            Err(closed) => Err(Error::ConnectionClosed(closed)),
        })
    }

    /// Set while a `recv` (or `recv_streaming`) holds the receiving side.
    pub(crate) fn recv_flag(&self) -> &AtomicBool {
        &self.inner.recv_busy
    }

    /// One attempt of [`send_as`](Self::send_as): `None` when it must wait (over the write
    /// limit, or another task's fragmented message goes first).
    fn try_send(
        &self,
        sender: Sender,
        op: &mut impl FnMut(&mut Shared) -> std::result::Result<(), proto::Error>,
    ) -> Option<Result<()>> {
        let mut sh = self.inner.lock();
        if sh.done {
            return Some(Err(Error::ConnectionClosed(closed_of(&sh))));
        }
        let pending = sh.proto.pending_output_len() + sh.inflight;
        if !sender.may_send(sh.fragmented_sender) || pending > self.inner.limits.write_limit {
            return None;
        }
        let was_idle = sh.proto.pending_output_len() == 0;
        if matches!(sender, Sender::Control) {
            // A ping records when it left, for `latency()`. Data frames need no clock:
            // the driver keeps the core's time for its timers.
            sh.proto.handle_timeout(Instant::now());
        }
        if let Err(e) = op(&mut sh) {
            return Some(Err(match e {
                proto::Error::ConnectionClosed => Error::ConnectionClosed(closed_of(&sh)),
                e => e.into(),
            }));
        }
        let fragmented_done =
            matches!(sender, Sender::Fragment(_)) && sh.fragmented_sender.is_none();
        drop(sh);
        if was_idle {
            self.inner.driver.wake();
        }
        if fragmented_done {
            // Senders waiting for the fragmented message to end may go.
            self.inner.writers.notify_waiters();
        }
        Some(Ok(()))
    }

    /// Sends a ping with a random payload. Await the returned [`TaskPong`] for the round-trip
    /// time.
    pub async fn ping(&self) -> Result<TaskPong> {
        let mut payload = [0u8; 4];
        loop {
            // Distinct from any ping still waiting; the core refuses duplicates.
            let n = NEXT_ID.fetch_add(1, Ordering::Relaxed) as u32 ^ 0x5a5a_5a5a;
            payload.copy_from_slice(&n.to_be_bytes());
            match self.ping_with(&payload).await {
                Err(Error::Misuse(_)) => continue,
                r => return r,
            }
        }
    }

    /// Sends a ping with this payload (at most 125 bytes).
    pub async fn ping_with(&self, payload: &[u8]) -> Result<TaskPong> {
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        // The waiter is registered under the same lock as the ping is queued, so the pong
        // cannot be processed in between.
        self.send_as(Sender::Control, |sh| {
            let id = sh.proto.send_ping(payload)?;
            if let Some(tx) = tx.take() {
                let waiters = sh.waiters.get_or_insert_with(Box::default);
                waiters.pings.push((id, tx));
            }
            Ok(())
        })
        .await?;
        Ok(TaskPong {
            rx,
            inner: self.inner.clone(),
        })
    }

    /// Closes the connection with this code and reason, and waits until the closing
    /// handshake is over and the transport closed (at most `close_timeout`). Closing a
    /// connection that is already closed does nothing.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<()> {
        self.start_close(code, reason)?;
        self.wait_closed().await;
        Ok(())
    }

    /// Starts the closing handshake without waiting for it.
    pub(crate) fn start_close(&self, code: CloseCode, reason: &str) -> Result<()> {
        self.inner.start_close(code, reason)
    }

    /// Waits until the connection is closed.
    pub async fn wait_closed(&self) {
        loop {
            let notified = self.inner.writers.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.lock().done {
                return;
            }
            notified.await;
        }
    }

    /// Runs `hook` once the connection is over (at once if it already is).
    pub fn on_close(&self, hook: impl FnOnce() + Send + 'static) {
        let mut sh = self.inner.lock();
        if sh.done || sh.hooks_taken {
            drop(sh);
            hook();
        } else {
            let waiters = sh.waiters.get_or_insert_with(Box::default);
            waiters.close_hooks.push(Box::new(hook));
        }
    }

    /// The state of the connection.
    pub fn state(&self) -> State {
        let sh = self.inner.lock();
        if sh.done {
            State::Closed
        } else {
            sh.proto.state()
        }
    }

    /// How the connection ended, once it has.
    pub fn closed(&self) -> Option<Closed> {
        let sh = self.inner.lock();
        sh.done.then(|| closed_of(&sh))
    }

    /// The peer's close code (1006 if none was received).
    pub fn close_code(&self) -> CloseCode {
        self.inner.lock().proto.close_code()
    }

    /// The peer's close reason (empty if none).
    pub fn close_reason(&self) -> String {
        self.inner.lock().proto.close_reason().to_owned()
    }

    /// The round-trip time measured by the last ping answered (keepalive pings included).
    pub fn latency(&self) -> Option<Duration> {
        self.inner.lock().proto.latency()
    }

    /// How many bytes wait to be written.
    pub fn buffered_amount(&self) -> usize {
        let sh = self.inner.lock();
        sh.proto.pending_output_len() + sh.inflight
    }

    /// Sends a message without waiting, for broadcast: refused (returns `false`) when the
    /// connection is not open or more than `write_limit` bytes already wait.
    pub(crate) fn try_send_prepared(&self, message: &PreparedMessage) -> bool {
        try_send_prepared(&self.inner, message)
    }
}

/// [`TaskConn::try_send_prepared`], for a handle or a [`TaskRegistration`].
fn try_send_prepared(inner: &Inner, message: &PreparedMessage) -> bool {
    let mut sh = inner.lock();
    if sh.done
        || sh.proto.state() != State::Open
        || sh.proto.pending_output_len() + sh.inflight > inner.limits.write_limit
    {
        return false;
    }
    let was_idle = sh.proto.pending_output_len() == 0;
    if sh.proto.send_prepared(message).is_err() {
        return false;
    }
    if was_idle && sh.inflight == 0 {
        // Nothing else waits to be written, in the core or in the driver: write it to the
        // socket here, in order, rather than wake the driver's task to do it (one wake-up
        // and one task poll less per subscriber). The driver only writes what it takes
        // from the core under this lock, and `inflight` counts it until it is written, so
        // nothing can be written between what it has and this.
        if let Some(tcp) = &sh.direct {
            let out = sh.proto.pending_output();
            // Spliced payloads (large messages) are the driver's to write.
            if out.len() == sh.proto.pending_output_len() {
                // A full socket (WouldBlock) or an error: the driver writes the rest, or
                // meets the error itself.
                if let Ok(n) = tcp.try_write(out) {
                    sh.proto.consume_output(n);
                }
            }
        }
    }
    let wake = was_idle && sh.proto.pending_output_len() > 0;
    drop(sh);
    if wake {
        inner.driver.wake();
    }
    true
}

fn closed_of(sh: &Shared) -> Closed {
    Closed {
        received: sh.proto.close_received().cloned(),
        sent: sh.proto.close_sent().cloned(),
    }
}

/// Holds the receiving side of a connection (its `recv_busy` flag) until dropped.
pub(crate) struct BusyGuard<'a>(&'a AtomicBool);

impl<'a> BusyGuard<'a> {
    /// The receiving side of `flag`, unless another receiver holds it.
    pub(crate) fn claim(flag: &'a AtomicBool) -> Result<Self> {
        if flag.swap(true, Ordering::Acquire) {
            return Err(Error::ConcurrentRecv);
        }
        Ok(BusyGuard(flag))
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The fragments of one message, from [`TaskConn::recv_streaming`].
pub(crate) struct TaskFragments<'a> {
    conn: &'a TaskConn,
    _busy: BusyGuard<'a>,
    state: FragmentsState,
}

impl TaskFragments<'_> {
    /// The next fragment of the message, as soon as it arrives; `Ok(None)` after the last
    /// one (`fin`), or when the connection closed normally before another message began.
    /// A connection that ends in the middle of the message gives
    /// [`Error::ConnectionClosed`]. Cancel-safe.
    ///
    /// Dropping `TaskFragments` before the last fragment discards the rest of the message.
    pub async fn next(&mut self) -> Result<Option<Fragment>> {
        if self.state == FragmentsState::Done {
            return Ok(None);
        }
        let state = &mut self.state;
        let got = self
            .conn
            .next_item(|sh| sh.queue.take_fragment(state))
            .await;
        match got {
            Ok(fragment) => Ok(Some(fragment)),
            Err(closed) if closed.is_ok() && self.state == FragmentsState::Start => Ok(None),
            Err(closed) => Err(Error::ConnectionClosed(closed)),
        }
    }
}

impl std::fmt::Debug for TaskFragments<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFragments")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// What a send that may have to wait keeps: whether it took its share of tokio's
/// cooperative budget, and its registration with `writers` once it had to wait (boxed: only
/// a send that waits pays for it, and a handler's future stays small).
#[derive(Default)]
pub(crate) struct SendWait<'a> {
    budgeted: bool,
    waiting: Option<Pin<Box<Notified<'a>>>>,
}

impl<'a> SendWait<'a> {
    fn poll(
        &mut self,
        conn: &'a TaskConn,
        cx: &mut Context<'_>,
        sender: Sender,
        op: &mut impl FnMut(&mut Shared) -> std::result::Result<(), proto::Error>,
    ) -> Poll<Result<()>> {
        if !self.budgeted {
            // tokio's cooperative budget: a task that sends in a tight loop yields now and
            // then (consume_budget, without its future).
            std::task::ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
            self.budgeted = true;
        }
        loop {
            if let Some(notified) = self.waiting.as_mut() {
                std::task::ready!(notified.as_mut().poll(cx));
            }
            if let Some(done) = conn.try_send(sender, op) {
                return Poll::Ready(done);
            }
            // A new registration, in the box of the one that fired if there is one (one
            // allocation per send that waits, however often it wakes).
            let registration = conn.inner.writers.notified();
            let notified = match self.waiting.as_mut() {
                Some(notified) => {
                    notified.set(registration);
                    notified
                }
                None => self.waiting.insert(Box::pin(registration)),
            };
            notified.as_mut().enable();
            // Registered: look again, for what changed before the registration.
            if let Some(done) = conn.try_send(sender, op) {
                return Poll::Ready(done);
            }
        }
    }
}

/// A fragmented message being sent: other senders wait until its last frame. Dropped before
/// that (its sender cancelled), it fails the connection, since the message can never end.
pub(crate) struct FragmentedSend<'a> {
    conn: &'a TaskConn,
    kind: MessageKind,
    owner: u64,
    started: bool,
}

impl FragmentedSend<'_> {
    /// Sends the next frame of the message (`fin` for the last).
    pub(crate) async fn send(&mut self, data: &[u8], fin: bool) -> Result<()> {
        let (kind, owner) = (self.kind, self.owner);
        self.conn
            .send_as(Sender::Fragment(owner), |sh| {
                sh.proto.send_fragment(kind, data, fin)?;
                sh.fragmented_sender = (!fin).then_some(owner);
                Ok(())
            })
            .await?;
        self.started = !fin;
        Ok(())
    }
}

impl Drop for FragmentedSend<'_> {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        {
            let mut sh = self.conn.inner.lock();
            if sh.fragmented_sender == Some(self.owner) {
                sh.fragmented_sender = None;
            }
        }
        self.conn
            .inner
            .fail(CloseCode::INTERNAL_ERROR, "fragmented message interrupted");
        self.conn.inner.writers.notify_waiters();
    }
}

/// The answer to a ping: resolves to the round-trip time when the pong arrives, or to
/// [`Error::ConnectionClosed`] if the connection ends first.
pub(crate) struct TaskPong {
    rx: oneshot::Receiver<Duration>,
    inner: Arc<Inner>,
}

impl Future for TaskPong {
    type Output = Result<Duration>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(d)) => Poll::Ready(Ok(d)),
            Poll::Ready(Err(_)) => {
                let sh = self.inner.lock();
                Poll::Ready(Err(Error::ConnectionClosed(closed_of(&sh))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

// ----- The driver ---------------------------------------------------------------------------

const READ_BUF: usize = 64 * 1024;

thread_local! {
    // One read buffer per runtime thread, not per connection: an idle connection holds none.
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF]);
}

/// Frames with at least this much still to come are read straight into the core's buffer.
const DIRECT_READ: usize = 16 * 1024;

/// The largest write buffer the driver keeps once a timer fires with nothing to write.
const KEEP_WBUF: usize = 16 * 1024;

/// Reads this many times at most before letting other tasks run.
const READS_PER_POLL: usize = 16;

/// Moves bytes between the transport and the core. Completes when the transport is closed.
pub(crate) struct Driver<S> {
    inner: Arc<Inner>,
    stream: S,
    /// Taken from the core, not written yet.
    out: crate::outgoing::Outgoing,
    /// The core's next deadline, or the bound on flushing or lingering: one slot in the
    /// process's timer, not a timer of its own (`timer.rs`).
    timer: Timer,
    eof: bool,
    finished: bool,
    /// A batch was written and the transport not flushed since (TLS buffers records it
    /// could not write at once; TCP's flush does nothing).
    unflushed: bool,
    /// The connection is over and the writing side shut down; what the peer still sends is
    /// read and discarded until it closes its side or `timer` fires
    /// ([`proto::Protocol::linger_timeout`]).
    lingering: bool,
    /// The transport is to close but output is still unwritten: written until `timer`
    /// fires ([`proto::Protocol::flush_timeout`]), then dropped.
    flushing: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    /// Feeds the core with what one read gives; returns `Ready(Ok(n))`, 0 at end of stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let missing = self.inner.lock().proto.frame_bytes_missing();
        if missing >= DIRECT_READ {
            return self.poll_read_direct(cx);
        }
        let inner = &self.inner;
        let stream = &mut self.stream;
        READ_BUFFER.with(|buf| {
            let mut buf = buf.borrow_mut();
            let mut rb = ReadBuf::new(&mut buf[..]);
            match Pin::new(stream).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let data = rb.filled();
                    let n = data.len();
                    let mut sh = inner.lock();
                    sh.proto.handle_timeout(Instant::now());
                    let result = if n == 0 {
                        sh.proto.receive_eof()
                    } else {
                        sh.proto.receive_data(data)
                    };
                    if let Err(e) = result {
                        tracing::debug!(target: "sockeye", id = inner.info.id, "connection failed: {e}");
                    }
                    dispatch(sh);
                    Poll::Ready(Ok(n))
                }
            }
        })
    }

    /// [`poll_read`](Self::poll_read) for the rest of a large frame: straight into the core's
    /// receive buffer, which has room for the whole frame (no copy from the read buffer, and
    /// one read takes as much as the transport has, not 64 KiB at a time). The buffer is
    /// taken out of the core while the transport is polled, so that the lock is not held
    /// across a system call; only the driver touches it.
    fn poll_read_direct(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut buf = std::mem::take(self.inner.lock().proto.receive_buffer());
        let result = tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut buf);
        let mut sh = self.inner.lock();
        *sh.proto.receive_buffer() = buf;
        let n = match result {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(n)) => n,
        };
        sh.proto.handle_timeout(Instant::now());
        let result = if n == 0 {
            sh.proto.receive_eof()
        } else {
            sh.proto.receive_buffered()
        };
        if let Err(e) = result {
            tracing::debug!(target: "sockeye", id = self.inner.info.id, "connection failed: {e}");
        }
        dispatch(sh);
        Poll::Ready(Ok(n))
    }

    /// Lingering: reads and discards until the peer's end of stream, an error, or the
    /// deadline in `timer`; then the driver is done and the transport is closed.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.driver.register(cx.waker());
        if self.timer_due() {
            return Poll::Ready(());
        }
        let stream = &mut self.stream;
        for _ in 0..READS_PER_POLL {
            let ended = READ_BUFFER.with(|buf| {
                let mut buf = buf.borrow_mut();
                let mut rb = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(_)) => Poll::Ready(true),
                    Poll::Ready(Ok(())) => Poll::Ready(rb.filled().is_empty()),
                }
            });
            match ended {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(true) => return Poll::Ready(()),
                Poll::Ready(false) => {}
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Whether the deadline in `timer` has passed: looked at only after the timer woke us.
    fn timer_due(&mut self) -> bool {
        self.inner.timer_fired.load(Ordering::Relaxed)
            && self.inner.timer_fired.swap(false, Ordering::Acquire)
            && self.timer.fired()
    }

    /// The transport failed (reading, writing or flushing): the peer is gone as far as the
    /// core is concerned, and the connection is over.
    fn transport_failed(&mut self, e: io::Error) {
        {
            let mut sh = self.inner.lock();
            let _ = sh.proto.receive_eof();
        }
        self.finish(Some(e));
    }

    fn finish(&mut self, error: Option<io::Error>) {
        self.finished = true;
        // Close hooks run before the connection reports itself closed, so that whoever
        // waits for the close (wait_closed, recv) sees their effects.
        let hooks = {
            let mut sh = self.inner.lock();
            sh.hooks_taken = true;
            (sh.waiters.as_mut()).map_or_else(Vec::new, |w| std::mem::take(&mut w.close_hooks))
        };
        for hook in hooks {
            hook();
        }
        {
            let mut sh = self.inner.lock();
            sh.done = true;
            sh.inflight = 0;
            sh.direct = None;
            if let Some(e) = error {
                // The application sees the connection closed (1006); the cause is logged.
                tracing::debug!(target: "sockeye", id = self.inner.info.id, "transport failed: {e}");
            }
            // `ping()` waiters get `ConnectionClosed`.
            sh.waiters = None;
            let code = sh.proto.close_code();
            match self.inner.info.side {
                Side::Server => {
                    tracing::info!(target: "sockeye::server", id = self.inner.info.id, "connection closed ({})", code)
                }
                Side::Client => {
                    tracing::info!(target: "sockeye::client", id = self.inner.info.id, "connection closed ({})", code)
                }
            }
        }
        let reader = self.inner.lock().recv_waker.take();
        if let Some(reader) = reader {
            reader.wake();
        }
        self.inner.writers.notify_waiters();
    }
}

/// Delivers the core's events: messages to the queue, pongs to their waiters.
fn dispatch(mut sh: MutexGuard<'_, Shared>) {
    let mut wake_readers = false;
    while let Some(event) = sh.proto.poll_event() {
        match event {
            Event::Message(m) => {
                sh.queue.push(Item::Message(m));
                wake_readers = true;
            }
            Event::Pong {
                acked: Some(id), ..
            } => {
                let latency = sh.proto.latency().unwrap_or_default();
                if let Some(waiters) = sh.waiters.as_deref_mut() {
                    for (pid, tx) in std::mem::take(&mut waiters.pings) {
                        if pid <= id {
                            let _ = tx.send(latency);
                        } else {
                            waiters.pings.push((pid, tx));
                        }
                    }
                    if waiters.pings.is_empty() && waiters.close_hooks.is_empty() {
                        sh.waiters = None;
                    }
                }
            }
            Event::Close(_) => wake_readers = true,
            Event::Fragment(f) => {
                sh.queue.push(Item::Fragment(f));
                wake_readers = true;
            }
            Event::Ping(_) | Event::Pong { .. } | Event::Request(_) | Event::Response(_) => {}
        }
    }
    let reader = if wake_readers {
        sh.recv_waker.take()
    } else {
        None
    };
    drop(sh);
    if let Some(reader) = reader {
        reader.wake();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Driver<S> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.lingering {
            return this.poll_linger(cx);
        }
        if this.finished {
            return Poll::Ready(());
        }
        this.inner.driver.register(cx.waker());
        let mut reads = 0;
        loop {
            let mut progress = false;

            // 1. Timers.
            if this.timer_due() {
                if this.flushing {
                    // The peer did not take the output within the bound: drop it.
                    tracing::debug!(target: "sockeye", id = this.inner.info.id, "output not written within close_timeout: dropped");
                    this.finish(None);
                    return Poll::Ready(());
                }
                let mut sh = this.inner.lock();
                sh.proto.handle_timeout(Instant::now());
                // Buffers grown for large messages are kept while they are in use, and
                // given back here (the keepalive timer fires every ping_interval).
                sh.proto.release_memory();
                this.out.release(KEEP_WBUF);
                dispatch(sh);
                progress = true;
            }

            // 2. Read, unless max_queue messages wait or the peer is done sending.
            let want_read = !this.eof && {
                let sh = this.inner.lock();
                sh.queue.len() < this.inner.limits.max_queue
            };
            if want_read && reads < READS_PER_POLL {
                match this.poll_read(cx) {
                    Poll::Ready(Ok(0)) => {
                        this.eof = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        reads += 1;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        this.transport_failed(e);
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            } else if want_read {
                // Read budget spent: let other tasks run, then come back.
                cx.waker().wake_by_ref();
            }

            // 3. Take the output and write it.
            if this.out.is_drained() {
                let mut sh = this.inner.lock();
                this.out.refill(&mut sh.proto);
                sh.inflight = this.out.remaining();
            }
            let had_output = !this.out.is_drained();
            while !this.out.is_drained() {
                match this.out.poll_write(&mut this.stream, cx) {
                    Poll::Ready(Ok(0)) => {
                        this.finish(Some(io::ErrorKind::WriteZero.into()));
                        return Poll::Ready(());
                    }
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        this.transport_failed(e);
                        return Poll::Ready(());
                    }
                    Poll::Pending => break,
                }
            }
            let drained = this.out.is_drained();
            if had_output {
                this.unflushed = true;
            }
            if this.unflushed && drained {
                // One flush per batch: what TLS kept back leaves now.
                match Pin::new(&mut this.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => this.unflushed = false,
                    Poll::Ready(Err(e)) => {
                        this.transport_failed(e);
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            }
            if had_output && drained {
                // Kept, however large, for the next batch (`refill`); the timer branch gives
                // back a large buffer that is not in use.
                let mut sh = this.inner.lock();
                sh.inflight = 0;
                drop(sh);
                this.inner.writers.notify_waiters();
            } else if !drained {
                let mut sh = this.inner.lock();
                sh.inflight = this.out.remaining();
                let below =
                    sh.inflight + sh.proto.pending_output_len() <= this.inner.limits.write_limit;
                drop(sh);
                if below {
                    // A partial write brought the backlog under write_limit: senders may go.
                    this.inner.writers.notify_waiters();
                }
            }

            // 4. Close the transport when the core says so and everything is written.
            let (close_now, more_output, deadline) = {
                let sh = this.inner.lock();
                (
                    sh.proto.should_close_transport(),
                    sh.proto.pending_output_len() > 0,
                    sh.proto.poll_timeout(),
                )
            };
            if more_output && drained {
                continue;
            }
            if close_now && drained && !more_output {
                match Pin::new(&mut this.stream).poll_shutdown(cx) {
                    Poll::Ready(result) => {
                        // The core knows whether the peer has closed its side already.
                        let linger = match result {
                            Ok(()) => this.inner.lock().proto.linger_timeout(),
                            Err(_) => None,
                        };
                        this.finish(None);
                        if let Some(linger) = linger {
                            this.lingering = true;
                            this.timer.set(Some(Instant::now() + linger));
                            return this.poll_linger(cx);
                        }
                        return Poll::Ready(());
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }

            if close_now && !this.flushing {
                // Output is waiting and the core is done (its timers too): bound the wait
                // for a peer that does not read.
                this.flushing = true;
                let Some(bound) = this.inner.lock().proto.flush_timeout() else {
                    this.finish(None);
                    return Poll::Ready(());
                };
                this.timer.set(Some(Instant::now() + bound));
            }

            // 5. Sleep until the core's next deadline.
            if !this.flushing {
                this.timer.set(deadline);
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// An open plain connection's driver holds the two halves of its socket (16 bytes);
    /// every other variant is boxed, so the enum is no bigger than that plus its tag (a
    /// bare `TcpStream` inline would make it 40).
    #[test]
    fn stream_is_as_small_as_the_shared_socket() {
        let size = std::mem::size_of::<super::Stream>();
        eprintln!("Stream: {size} bytes");
        assert!(size <= 24, "Stream: {size} bytes");
    }
}

/// What an idle connection is made of: the handle, which the task and the handler each keep
/// for the connection's life, and the futures a handler waits in. Guards against growth
/// (docs/benchmarks.md, "Memory per idle connection"); 64-bit targets only.
#[cfg(all(test, target_pointer_width = "64"))]
mod idle_size {
    use std::mem::size_of;

    use super::{Inner, TaskConn};
    use crate::Message;

    fn future_size<F>(_: fn(&'static TaskConn) -> F) -> usize {
        size_of::<F>()
    }

    #[test]
    fn a_handle_is_two_pointers() {
        assert_eq!(size_of::<TaskConn>(), 16);
    }

    #[test]
    fn waiting_futures_stay_small() {
        let recv = future_size(|c| c.recv());
        let send = future_size(|c| c.send(Message::Text(Default::default())));
        assert!(recv <= 32, "recv future: {recv} bytes");
        assert!(send <= 80, "send future: {send} bytes");
        let echo = future_size(|c| async move {
            while let Some(m) = c.recv().await? {
                c.send(m).await?;
            }
            Ok::<(), crate::Error>(())
        });
        assert!(echo <= 208, "echo handler future: {echo} bytes");
    }

    #[test]
    fn the_shared_state_of_a_connection_does_not_grow() {
        let inner = size_of::<Inner>();
        assert!(inner <= 680, "Inner: {inner} bytes");
    }
}
