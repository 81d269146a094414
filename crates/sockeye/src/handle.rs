//! [`Connection`]: one type for every connection of the async API, whichever back end
//! drives it.
//!
//! Two back ends drive a connection: a tokio task (`connection.rs`: the tokio server,
//! clients, hyper and axum upgrades) and an event loop (`reactor/tasks.rs`: the handlers
//! of [`reactor::ServerBuilder::serve_async`](crate::reactor::ServerBuilder::serve_async),
//! about half the memory per idle connection). A `Connection` is either, behind the same
//! methods, so that a handler, a helper or a test is written once for both. It stays two
//! pointers wide (the tokio handle's `Arc` gives the enum its tag for free).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};

use crate::connection::{
    BusyGuard, FragmentedSend, SendWait, TaskConn, TaskFragments, TaskPong, TaskRegistration,
};
use crate::error::{Closed, Error, Result};
use crate::proto::{CloseCode, Fragment, Message, MessageKind, PreparedMessage, Side, State};
use crate::reactor::tasks::{LoopConn, LoopFragmented, LoopFragments, LoopPong};

/// A WebSocket connection: the same type on the server (handed to the handler) and the
/// client (returned by [`connect`](crate::connect)), whether a tokio task drives it (the
/// tokio server, clients, hyper and axum) or an event loop
/// ([`reactor::ServerBuilder::serve_async`](crate::reactor::ServerBuilder::serve_async)).
///
/// Cheap to clone: clones are handles to one connection. `send`, `ping` and `close` may be
/// called from many tasks at once (frames never interleave); one task at a time may wait in
/// `recv` (a second gets [`Error::ConcurrentRecv`]). `recv` and `send` are cancel-safe.
///
/// When the last handle of a client's connection is dropped, the connection closes with
/// 1000 (the driver finishes the closing handshake in the background). A server's
/// connection closes when its handler returns.
pub struct Connection {
    repr: Repr,
}

enum Repr {
    Task(TaskConn),
    Loop(LoopConn),
}

/// Why `subscribe`, `unsubscribe` and `publish` fail off an event loop.
const OFF_LOOP: &str = "the topics of an event loop are for its own connections (use a Hub)";

/// The connection type handed to server handlers.
pub type ServerConnection = Connection;

/// The connection type returned by [`connect`](crate::connect).
pub type ClientConnection = Connection;

impl From<TaskConn> for Connection {
    fn from(conn: TaskConn) -> Self {
        Connection {
            repr: Repr::Task(conn),
        }
    }
}

impl From<LoopConn> for Connection {
    fn from(conn: LoopConn) -> Self {
        Connection {
            repr: Repr::Loop(conn),
        }
    }
}

/// Runs `$body` with `$c` bound to the back end's handle.
macro_rules! either {
    ($self:expr, $c:ident => $body:expr) => {
        match &$self.repr {
            Repr::Task($c) => $body,
            Repr::Loop($c) => $body,
        }
    };
}

impl Connection {
    /// A number that identifies this connection in logs, unique within the process (one
    /// numbering for every front end).
    pub fn id(&self) -> u64 {
        either!(self, c => c.id())
    }

    /// Which side of the connection this is.
    pub fn side(&self) -> Side {
        either!(self, c => c.side())
    }

    /// The local address of the transport, if it has one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        either!(self, c => c.local_addr())
    }

    /// The remote address of the transport, if it has one.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        either!(self, c => c.remote_addr())
    }

    /// The handshake request (received by a server, sent by a client).
    pub fn request(&self) -> &Request<()> {
        either!(self, c => c.request())
    }

    /// The handshake response (sent by a server, received by a client).
    pub fn response(&self) -> &Response<()> {
        either!(self, c => c.response())
    }

    /// The subprotocol negotiated in the handshake, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        either!(self, c => c.subprotocol())
    }

    /// The user name the client authenticated with, when the server checks HTTP Basic
    /// credentials (`basic_auth`); `None` otherwise, and on clients.
    pub fn username(&self) -> Option<&str> {
        either!(self, c => c.username())
    }

    /// The value of path parameter `name` of the route that matched (`/rooms/{room}`);
    /// `None` without routing.
    pub fn param(&self, name: &str) -> Option<&str> {
        either!(self, c => c.param(name))
    }

    /// Every path parameter of the route that matched, as `(name, value)`, in the
    /// pattern's order; none without routing.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        let params = either!(self, c => c.params_slice());
        params.iter().map(|(n, v)| (&**n, &**v))
    }

    /// The index of the route that matched, for the router's dispatch.
    pub(crate) fn route(&self) -> Option<usize> {
        either!(self, c => c.route())
    }

    /// Receives the next message.
    ///
    /// Returns `Ok(None)` once the connection closed normally (1000 or 1001 both ways), and
    /// [`Error::ConnectionClosed`] with the close frames when it ended any other way. Messages
    /// that arrived before the close are returned first. Cancel-safe: a `recv` dropped before
    /// it completes loses no message.
    ///
    /// While `max_queue` messages wait, the connection stops reading (the peer's sends back
    /// up); it reads again once `recv` takes them down.
    // Not an `async fn`, as `send`: one small future over both back ends (an idle
    // handler waits in it).
    pub fn recv(&self) -> impl Future<Output = Result<Option<Message>>> + '_ {
        let mut busy: Option<BusyGuard<'_>> = None;
        std::future::poll_fn(move |cx| {
            if busy.is_none() {
                busy = Some(BusyGuard::claim(either!(self, c => c.recv_flag()))?);
            }
            let polled = either!(self, c => c.poll_recv(cx));
            if polled.is_ready() {
                // The receiving side is free as soon as this `recv` is done, not when the
                // future is dropped.
                busy = None;
            }
            polled
        })
    }

    /// Receives the next message fragment by fragment, as its frames arrive, instead of
    /// waiting for all of it (python-websockets' `recv_streaming`).
    ///
    /// Holds the receiving side like [`recv`](Self::recv) (a concurrent `recv` gets
    /// [`Error::ConcurrentRecv`]) until the returned [`Fragments`] is dropped. Fragments of a
    /// text message may end inside a character; together they are valid UTF-8. `max_size`
    /// still bounds the whole message. If a cancelled `recv` had received part of the
    /// message, that part comes first, as one fragment.
    ///
    /// On an event loop's connection a message is joined before the handler sees it: it
    /// comes as one fragment.
    ///
    /// ```no_run
    /// # async fn f(ws: sockeye::Connection) -> sockeye::Result<()> {
    /// let mut fragments = ws.recv_streaming()?;
    /// while let Some(fragment) = fragments.next().await? {
    ///     println!("{} bytes, last: {}", fragment.data.len(), fragment.fin);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn recv_streaming(&self) -> Result<Fragments<'_>> {
        let inner = match &self.repr {
            Repr::Task(c) => FragmentsRepr::Task(c.recv_streaming()?),
            Repr::Loop(c) => FragmentsRepr::Loop(c.recv_streaming()?),
        };
        Ok(Fragments { inner })
    }

    /// Sends a message: text for `&str`/`String`, binary for `Vec<u8>`/`Bytes`/`&[u8]`.
    ///
    /// Waits while more than `write_limit` bytes are waiting to be written (backpressure).
    /// Takes part in tokio's cooperative scheduling, so a task that sends in a tight loop
    /// still lets the connection (and the runtime) make progress. Cancel-safe: a `send`
    /// dropped before it completes sent nothing. Fails with [`Error::ConnectionClosed`]
    /// once the connection is closed.
    // Not an `async fn`: the future is the handler's for as long as the send waits, so its
    // size counts: the message, and what a tokio task's send keeps when it must wait.
    pub fn send(&self, message: impl Into<Message>) -> impl Future<Output = Result<()>> + '_ {
        let mut message = Some(message.into());
        let mut wait = SendWait::default();
        std::future::poll_fn(move |cx| match &self.repr {
            Repr::Task(c) => {
                let m = message.as_ref().expect("polled after completion");
                let sent = std::task::ready!(c.poll_send_message(cx, m, &mut wait));
                message = None;
                Poll::Ready(sent)
            }
            Repr::Loop(c) => c.poll_send(cx, &mut message),
        })
    }

    /// Sends a message in fragments (RFC 6455 §5.4), one frame per item of `fragments`.
    ///
    /// Other messages sent meanwhile (from other tasks) wait until this one is complete;
    /// pings and pongs may go between fragments. Text may be cut anywhere, even inside a
    /// character, as long as the whole is valid UTF-8. If this future is dropped before the
    /// last fragment is sent, the message can never be completed: the connection fails with
    /// 1011.
    pub async fn send_fragmented<I, B>(&self, kind: MessageKind, fragments: I) -> Result<()>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let mut sending = self.start_fragmented(kind);
        let mut iter = fragments.into_iter();
        // One item ahead, so that the last item goes in the last frame.
        let mut current = iter.next();
        loop {
            let following = if current.is_some() { iter.next() } else { None };
            let fin = following.is_none();
            sending
                .send(current.as_ref().map_or(&[], |b| b.as_ref()), fin)
                .await?;
            if fin {
                return Ok(());
            }
            current = following;
        }
    }

    /// Sends a message in fragments taken from a [`Stream`](futures_core::Stream), one frame
    /// per item, each as soon as the stream yields it (a file read in chunks, tokens as a
    /// model produces them, ...); an empty last frame ends the message when the stream ends.
    /// The message stays open while the stream waits; otherwise the same rules as
    /// [`send_fragmented`](Self::send_fragmented).
    pub async fn send_fragmented_stream<S, B>(&self, kind: MessageKind, fragments: S) -> Result<()>
    where
        S: futures_core::Stream<Item = B>,
        B: AsRef<[u8]>,
    {
        let mut fragments = std::pin::pin!(fragments);
        let mut sending = self.start_fragmented(kind);
        loop {
            let item = std::future::poll_fn(|cx| fragments.as_mut().poll_next(cx)).await;
            let fin = item.is_none();
            sending
                .send(item.as_ref().map_or(&[], |b| b.as_ref()), fin)
                .await?;
            if fin {
                return Ok(());
            }
        }
    }

    fn start_fragmented(&self, kind: MessageKind) -> Fragmented<'_> {
        match &self.repr {
            Repr::Task(c) => Fragmented::Task(c.start_fragmented(kind)),
            Repr::Loop(c) => Fragmented::Loop(c.start_fragmented(kind)),
        }
    }

    /// Sends a ping with a random payload. Await the returned [`Pong`] for the round-trip
    /// time.
    pub async fn ping(&self) -> Result<Pong> {
        let inner = match &self.repr {
            Repr::Task(c) => PongRepr::Task(c.ping().await?),
            Repr::Loop(c) => PongRepr::Loop(c.ping(None)?),
        };
        Ok(Pong { inner })
    }

    /// Sends a ping with this payload (at most 125 bytes).
    pub async fn ping_with(&self, payload: &[u8]) -> Result<Pong> {
        let inner = match &self.repr {
            Repr::Task(c) => PongRepr::Task(c.ping_with(payload).await?),
            Repr::Loop(c) => PongRepr::Loop(c.ping(Some(payload))?),
        };
        Ok(Pong { inner })
    }

    /// Closes the connection with this code and reason, and waits until the closing
    /// handshake is over and the transport closed (at most `close_timeout`). Closing a
    /// connection that is already closed does nothing. Messages that arrive meanwhile can
    /// still be received.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<()> {
        self.start_close(code, reason)?;
        self.wait_closed().await;
        Ok(())
    }

    /// Starts the closing handshake without waiting for it.
    pub(crate) fn start_close(&self, code: CloseCode, reason: &str) -> Result<()> {
        either!(self, c => c.start_close(code, reason))
    }

    /// Waits until the connection is closed.
    pub async fn wait_closed(&self) {
        match &self.repr {
            Repr::Task(c) => c.wait_closed().await,
            Repr::Loop(c) => c.wait_closed().await,
        }
    }

    /// Runs `hook` once the connection is over (at once if it already is).
    pub fn on_close(&self, hook: impl FnOnce() + Send + 'static) {
        either!(self, c => c.on_close(hook))
    }

    /// The state of the connection.
    pub fn state(&self) -> State {
        either!(self, c => c.state())
    }

    /// How the connection ended, once it has.
    pub fn closed(&self) -> Option<Closed> {
        either!(self, c => c.closed())
    }

    /// The peer's close code (1006 if none was received).
    pub fn close_code(&self) -> CloseCode {
        either!(self, c => c.close_code())
    }

    /// The peer's close reason (empty if none).
    pub fn close_reason(&self) -> String {
        either!(self, c => c.close_reason())
    }

    /// The round-trip time measured by the last ping answered (keepalive pings included).
    pub fn latency(&self) -> Option<Duration> {
        either!(self, c => c.latency())
    }

    /// How many bytes wait to be written.
    pub fn buffered_amount(&self) -> usize {
        either!(self, c => c.buffered_amount())
    }

    /// Sends a message without waiting, for broadcast: refused (returns `false`) when the
    /// connection is not open or more than `write_limit` bytes already wait.
    pub(crate) fn try_send_prepared(&self, message: &Arc<PreparedMessage>) -> bool {
        either!(self, c => c.try_send_prepared(message))
    }

    /// A reference to the connection that does not keep it open (the hub's, a server's).
    pub(crate) fn registration(&self) -> Registration {
        match &self.repr {
            Repr::Task(c) => Registration::Task(c.registration()),
            Repr::Loop(c) => Registration::Loop(c.clone()),
        }
    }

    /// Subscribes this connection to `topic` of its event loop's pub/sub (the topics of
    /// [`reactor::Socket::subscribe`](crate::reactor::Socket::subscribe) and
    /// [`reactor::Server::publish`](crate::reactor::Server::publish)), in order with what
    /// this handle sends. It leaves all its topics when it ends.
    ///
    /// For connections on an event loop; on others (a tokio server's, a client's) it fails:
    /// a [`Hub`](crate::Hub) gives them pub/sub (and event-loop connections too).
    pub fn subscribe(&self, topic: &str) -> Result<()> {
        self.on_loop(OFF_LOOP)?.subscribe(topic);
        Ok(())
    }

    /// Unsubscribes this connection from `topic` of its event loop's pub/sub; fails as
    /// [`subscribe`](Self::subscribe) off an event loop.
    pub fn unsubscribe(&self, topic: &str) -> Result<()> {
        self.on_loop(OFF_LOOP)?.unsubscribe(topic);
        Ok(())
    }

    /// Publishes `message` to every subscriber of `topic` but this connection, on every loop
    /// thread of its server, encoded once (see
    /// [`reactor::Socket::publish`](crate::reactor::Socket::publish): slow subscribers are
    /// skipped, each gets one write per turn). Never waits. Works after the connection has
    /// closed too ("Bob left" from a chat handler's end), in order with what it published
    /// before. Fails as [`subscribe`](Self::subscribe) off an event loop.
    pub fn publish(&self, topic: &str, message: impl Into<Message>) -> Result<()> {
        self.on_loop(OFF_LOOP)?.publish(topic, message.into());
        Ok(())
    }

    fn on_loop(&self, what: &'static str) -> Result<&LoopConn> {
        match &self.repr {
            Repr::Loop(c) => Ok(c),
            Repr::Task(_) => Err(Error::Misuse(what)),
        }
    }
}

impl Clone for Connection {
    /// Another handle to the same connection (a `Stream`/`Sink` operation in progress on
    /// this handle is not shared).
    fn clone(&self) -> Self {
        match &self.repr {
            Repr::Task(c) => c.clone().into(),
            Repr::Loop(c) => c.clone().into(),
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id())
            .field("side", &self.side())
            .field("remote_addr", &self.remote_addr())
            .field("state", &self.state())
            .finish()
    }
}

impl futures_core::Stream for Connection {
    type Item = Result<Message>;

    /// The messages received, as [`Connection::recv`] gives them (python-websockets'
    /// `async for message in websocket`); the stream ends after a normal close, or after
    /// yielding the error of any other end. Polled while a `recv` waits on another handle, it
    /// yields [`Error::ConcurrentRecv`] and may be polled again later.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().repr {
            Repr::Task(c) => Pin::new(c).poll_next(cx),
            Repr::Loop(c) => Pin::new(c).poll_next(cx),
        }
    }
}

impl futures_sink::Sink<Message> for Connection {
    type Error = Error;

    /// Ready once at most `write_limit` bytes wait (as [`Connection::send`] waits).
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.get_mut().repr {
            Repr::Task(c) => Pin::new(c).poll_ready(cx),
            Repr::Loop(c) => Pin::new(c).poll_ready(cx),
        }
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        match &mut self.get_mut().repr {
            Repr::Task(c) => Pin::new(c).start_send(item),
            Repr::Loop(c) => Pin::new(c).start_send(item),
        }
    }

    /// Completes the `send` in progress (the message is queued; it is written as soon as the
    /// transport takes it).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.get_mut().repr {
            Repr::Task(c) => Pin::new(c).poll_flush(cx),
            Repr::Loop(c) => Pin::new(c).poll_flush(cx),
        }
    }

    /// Completes the `send` in progress, then closes the connection with 1000.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.get_mut().repr {
            Repr::Task(c) => Pin::new(c).poll_close(cx),
            Repr::Loop(c) => Pin::new(c).poll_close(cx),
        }
    }
}

/// A fragmented message being sent, on either back end: other senders wait until its last
/// frame; dropped before that, it fails the connection (1011).
enum Fragmented<'a> {
    Task(FragmentedSend<'a>),
    Loop(LoopFragmented<'a>),
}

impl Fragmented<'_> {
    async fn send(&mut self, data: &[u8], fin: bool) -> Result<()> {
        match self {
            Fragmented::Task(s) => s.send(data, fin).await,
            Fragmented::Loop(s) => s.send(data, fin).await,
        }
    }
}

/// The fragments of one message, from [`Connection::recv_streaming`].
pub struct Fragments<'a> {
    inner: FragmentsRepr<'a>,
}

enum FragmentsRepr<'a> {
    Task(TaskFragments<'a>),
    Loop(LoopFragments<'a>),
}

impl Fragments<'_> {
    /// The next fragment of the message, as soon as it arrives; `Ok(None)` after the last
    /// one (`fin`), or when the connection closed normally before another message began.
    /// A connection that ends in the middle of the message gives
    /// [`Error::ConnectionClosed`]. Cancel-safe.
    ///
    /// Dropping `Fragments` before the last fragment discards the rest of the message.
    pub async fn next(&mut self) -> Result<Option<Fragment>> {
        match &mut self.inner {
            FragmentsRepr::Task(f) => f.next().await,
            FragmentsRepr::Loop(f) => f.next().await,
        }
    }
}

impl std::fmt::Debug for Fragments<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            FragmentsRepr::Task(t) => t.fmt(f),
            FragmentsRepr::Loop(_) => f.debug_struct("Fragments").finish_non_exhaustive(),
        }
    }
}

/// The answer to a ping: resolves to the round-trip time when the pong arrives, or to
/// [`Error::ConnectionClosed`] if the connection ends first. Dropping it forgets the ping
/// (its pong, when it comes, still counts for [`Connection::latency`]).
pub struct Pong {
    inner: PongRepr,
}

enum PongRepr {
    Task(TaskPong),
    Loop(LoopPong),
}

impl Future for Pong {
    type Output = Result<Duration>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            PongRepr::Task(p) => Pin::new(p).poll(cx),
            PongRepr::Loop(p) => Pin::new(p).poll(cx),
        }
    }
}

impl std::fmt::Debug for Pong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pong").finish_non_exhaustive()
    }
}

/// A reference to a connection kept by a hub or a server: not a handle, so it neither
/// keeps the connection open nor costs a whole `Connection`.
pub(crate) enum Registration {
    Task(TaskRegistration),
    Loop(LoopConn),
}

impl Registration {
    /// [`Connection::try_send_prepared`] through the reference.
    pub(crate) fn try_send_prepared(&self, message: &Arc<PreparedMessage>) -> bool {
        match self {
            Registration::Task(r) => r.try_send_prepared(message),
            Registration::Loop(c) => c.try_send_prepared(message),
        }
    }
}

/// Sends `message` to every connection in `connections` without waiting (python-websockets'
/// `broadcast`): serialised once (a [`PreparedMessage`]) and queued in each connection's
/// output (connections that compress encode it themselves). Connections that are not open,
/// or have more than `write_limit` bytes waiting, are skipped; they are returned so the
/// caller can act on them.
///
/// ```no_run
/// # fn f(all: Vec<sockeye::Connection>) {
/// let slow = sockeye::broadcast(&all, "to everyone");
/// for conn in slow {
///     tracing::warn!("connection {} skipped: too slow", conn.id());
/// }
/// # }
/// ```
pub fn broadcast<'a, I>(connections: I, message: impl Into<Message>) -> Vec<Connection>
where
    I: IntoIterator<Item = &'a Connection>,
{
    let message = Arc::new(PreparedMessage::new(message));
    let mut skipped = Vec::new();
    for c in connections {
        if !c.try_send_prepared(&message) {
            skipped.push(c.clone());
        }
    }
    skipped
}

/// A text message.
pub fn text(s: impl Into<String>) -> Message {
    Message::Text(s.into().into())
}

/// A binary message payload.
pub fn binary(b: impl Into<Bytes>) -> Message {
    Message::Binary(b.into())
}
