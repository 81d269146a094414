//! The event-loop front end: callbacks on a reactor sockeye owns, no task per connection.
//!
//! [`crate::serve`] gives every connection a handler that awaits `recv()`: python-websockets'
//! model, simple to write and to reason about; its handlers run on these event loops
//! (through [`ServerBuilder::serve_async`]'s machinery) unless told to use tokio tasks.
//! This module is also uWebSockets' model, for servers that hold very many connections or
//! echo very many small messages: a few threads (one by default per core), each an event loop (epoll through
//! `mio`) that owns its connections outright. A connection is the core's
//! [`Protocol`], its socket and the application's [`Handler`]: no
//! task, no waker, no lock, no shared state, no timer of its own (each loop keeps one heap of
//! deadlines for all its connections). The handler is called when something happens
//! (`on_open`, `on_message`, `on_drain`, `on_close`) and answers through a [`Socket`];
//! everything it sends while handling one read leaves in one write.
//!
//! The same core runs both front ends, so every protocol rule is the same: limits and their
//! close codes, keepalive pings and their timeout, the closing handshake and its timeout,
//! permessage-deflate, and the server options ([`ServerBuilder`] has the same setters and
//! defaults as [`crate::ServerBuilder`]; `max_queue` counts only for async handlers: a
//! callback is called for each message as it arrives, so nothing queues).
//!
//! python-websockets' model runs on the loops too: [`ServerBuilder::serve_async`] takes an
//! `async fn` of a [`Connection`](crate::Connection) (`recv().await`, `send().await`), whose future the loop
//! that owns the connection polls instead of a tokio task (about 1.1 KB per idle
//! connection, against 2.0 KB for a tokio task per connection). [`crate::serve`] runs on
//! this by default, with the `sockeye::Server` API (async `close`, `connections`).
//!
//! Outside the callbacks, a [`Handle`] (from [`Socket::handle`]; `Send`, cheap to clone)
//! sends to, closes or runs a closure on its connection from any thread, and
//! [`Server::broadcast`] sends one message, encoded once, to every open connection.
//!
//! Pub/sub is built in, as in uWebSockets: a connection [subscribes](Socket::subscribe) to
//! topics, and a message [published](Socket::publish) to a topic (from a callback, or from
//! any thread with [`Server::publish`]) reaches every subscriber on every loop thread,
//! encoded once; what a turn of the loop publishes leaves in one write per subscriber.
//! Each loop keeps its own subscribers, so subscribing takes no lock. (The tokio server's
//! [`crate::Hub`], with its Redis link between processes, is not shared with this one.)
//!
//! ```no_run
//! use sockeye::reactor::{Server, Socket};
//! use sockeye::Message;
//!
//! # fn main() -> sockeye::Result<()> {
//! // A chat relay: a client of ws://HOST/<room> gets what the others of <room> send.
//! struct Member(String);
//! impl sockeye::reactor::Handler for Member {
//!     fn on_open(&mut self, ws: &mut Socket<'_>) {
//!         ws.subscribe(&self.0);
//!     }
//!     fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
//!         ws.publish(&self.0, message);
//!     }
//! }
//! let server = Server::builder().serve("127.0.0.1:8765", |request| {
//!     Member(request.uri().path().to_owned())
//! })?;
//! server.publish("/lobby", "the server says hello"); // from any thread
//! # server.shutdown();
//! # Ok(()) }
//! ```
//!
//! What it does not have (yet): TLS, Unix sockets, and routing.
//!
//! ```no_run
//! use sockeye::reactor::{Server, Socket};
//! use sockeye::Message;
//!
//! # fn main() -> sockeye::Result<()> {
//! // An echo server: the factory makes each connection's handler (a closure here).
//! let server = Server::builder().serve("127.0.0.1:8765", |_request| {
//!     |ws: &mut Socket<'_>, message: Message| {
//!         let _ = ws.send(message);
//!     }
//! })?;
//! server.serve_forever();
//! # Ok(()) }
//! ```
//!
//! Backpressure: [`Socket::send`] never waits and never fails for a slow peer; what the
//! socket does not take at once waits in the connection ([`Socket::buffered_amount`]).
//! While more than `write_limit` bytes wait, the loop stops reading from that connection
//! (so an echo, or any handler that answers what it receives, holds at most about
//! `write_limit` plus one read), and calls [`Handler::on_drain`] once they are written.

mod event_loop;
pub(crate) mod net;
mod slab;
pub(crate) mod tasks;
mod topics;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use http::Request;

use crate::error::{Closed, Error, Result};
use crate::options::Options;
use crate::proto::{CloseCode, Message, PreparedMessage, Protocol, State};
use crate::server::Hooks;
use crate::sync::server::Latch;

/// What the application does with one connection: the loop calls it when something happens.
///
/// Each connection has its own handler, made by the server's factory when the handshake
/// request is accepted; it lives in the loop's thread for the connection's life, so it need
/// not be `Send` (an `Rc` is fine). Callbacks must not block: every connection of the loop
/// waits meanwhile. A callback that panics fails its connection with 1011 (logged at ERROR);
/// the loop and its other connections go on.
///
/// A closure `FnMut(&mut Socket<'_>, Message)` is a handler whose `on_message` it is.
pub trait Handler: 'static {
    /// The connection is open (the `101` response is queued; it leaves with what this sends).
    fn on_open(&mut self, ws: &mut Socket<'_>) {
        let _ = ws;
    }

    /// A message arrived (whole: fragments are joined, compressed messages inflated, text
    /// checked for UTF-8).
    fn on_message(&mut self, ws: &mut Socket<'_>, message: Message);

    /// Internal (the adapter of async handlers, whose `recv_streaming` hands out fragments
    /// as they arrive): the core runs in stream mode for this handler's connections, and
    /// the fragments of messages that come in several frames go to `on_fragment`.
    /// Callback handlers get whole messages.
    #[doc(hidden)]
    const STREAMS: bool = false;

    /// Internal: a fragment of a message, when [`STREAMS`](Self::STREAMS).
    #[doc(hidden)]
    fn on_fragment(&mut self, ws: &mut Socket<'_>, fragment: crate::proto::Fragment) {
        let _ = (ws, fragment);
    }

    /// What was waiting to be written went out after the connection had more than
    /// `write_limit` bytes waiting (reading resumes at the same time).
    fn on_drain(&mut self, ws: &mut Socket<'_>) {
        let _ = ws;
    }

    /// A pong arrived, with this payload: the answer to a keepalive ping or to
    /// [`Socket::ping`] (then [`Socket::latency`] has the round trip), or one the peer sent
    /// unasked.
    fn on_pong(&mut self, ws: &mut Socket<'_>, payload: &[u8]) {
        let _ = (ws, payload);
    }

    /// The closing handshake started: the peer's close frame arrived, or this side closed
    /// (`Socket::close`, a failure, a shutdown). Nothing can be sent from now on;
    /// [`on_close`](Self::on_close) follows when it is over. Not called for a connection
    /// that ends without a closing handshake (the peer vanished).
    fn on_closing(&mut self, ws: &mut Socket<'_>) {
        let _ = ws;
    }

    /// The connection is over (closing handshake done or timed out, peer gone, or failed):
    /// how it ended. Called once, for connections that opened.
    fn on_close(&mut self, closed: &Closed) {
        let _ = closed;
    }
}

impl<F> Handler for F
where
    F: FnMut(&mut Socket<'_>, Message) + 'static,
{
    fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
        self(ws, message)
    }
}

/// One connection, as its handler sees it during a callback: sends, closes, and what is
/// known about the connection.
pub struct Socket<'a> {
    proto: &'a mut Protocol,
    socket: &'a net::Stream,
    id: u64,
    /// The connection's loop: its mailbox (for [`Socket::handle`]), topics and publishes.
    local: &'a mut event_loop::Local,
    slot: usize,
    generation: u32,
}

impl std::fmt::Debug for Socket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.id)
            .field("state", &self.proto.state())
            .finish()
    }
}

impl Socket<'_> {
    /// Queues a message; it is written when the callback returns, with everything else the
    /// loop's current batch produced for this connection. Never waits: see
    /// [`buffered_amount`](Self::buffered_amount) for backpressure.
    ///
    /// Fails with [`Error::ConnectionClosed`] once the connection is closing or closed.
    pub fn send(&mut self, message: impl Into<Message>) -> Result<()> {
        let message = message.into();
        self.check_open()?;
        self.proto.send(&message).map_err(Error::from)
    }

    /// [`send`](Self::send) of a text message from a `&str` (no allocation for the message).
    pub fn send_text(&mut self, text: &str) -> Result<()> {
        self.check_open()?;
        self.proto.send_text(text).map_err(Error::from)
    }

    /// [`send`](Self::send) of a binary message from a slice.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<()> {
        self.check_open()?;
        self.proto.send_binary(data).map_err(Error::from)
    }

    /// [`send`](Self::send) of a message encoded once for many connections (see
    /// [`PreparedMessage`]).
    pub fn send_prepared(&mut self, message: &PreparedMessage) -> Result<()> {
        self.check_open()?;
        self.proto.send_prepared(message).map_err(Error::from)
    }

    /// Sends a ping with `payload` (at most 125 bytes). The pong updates
    /// [`latency`](Self::latency).
    pub fn ping(&mut self, payload: &[u8]) -> Result<()> {
        self.check_open()?;
        self.proto.send_ping(payload).map(drop).map_err(Error::from)
    }

    /// Starts the closing handshake with `code` and `reason`; [`Handler::on_close`] follows
    /// when it is over (or after `close_timeout`).
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<()> {
        self.proto.close(code, reason).map_err(Error::from)
    }

    /// Bytes waiting to be written (the socket did not take them yet, or the callback
    /// queued them). Over `write_limit`, the loop stops reading from this connection until
    /// they are written, then calls [`Handler::on_drain`].
    pub fn buffered_amount(&self) -> usize {
        self.proto.pending_output_len()
    }

    /// A number that identifies this connection in logs, unique within the process (one
    /// numbering for every front end).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The state of the connection.
    pub fn state(&self) -> State {
        self.proto.state()
    }

    /// The peer's address (asked of the socket: not kept per connection).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_addr()
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr()
    }

    /// The subprotocol negotiated in the handshake, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.proto.subprotocol()
    }

    /// The round-trip time measured by the latest ping answered (keepalive or
    /// [`ping`](Self::ping)), if any.
    pub fn latency(&self) -> Option<Duration> {
        self.proto.latency()
    }

    /// A [`Handle`] to this connection, for reaching it from outside its callbacks (another
    /// thread, a timer, a pub/sub system). Keeping one costs the connection nothing.
    pub fn handle(&self) -> Handle {
        Handle {
            mailbox: self.local.mailbox.clone(),
            slot: self.slot,
            generation: self.generation,
            id: self.id,
        }
    }

    /// Subscribes this connection to `topic` (any string: a path, a room name); `false` if
    /// it already was. It leaves all its topics when it ends.
    ///
    /// Topics are the server's: a message published to one (by [`Socket::publish`] or
    /// [`Server::publish`]) reaches its subscribers on every loop thread.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        self.local.topics.subscribe(self.slot, topic)
    }

    /// Unsubscribes this connection from `topic`; `false` if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        self.local.topics.unsubscribe(self.slot, topic)
    }

    /// Whether this connection is subscribed to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.local.topics.is_subscribed(self.slot, topic)
    }

    /// Sends `message` to every subscriber of `topic` but this connection (as a relay
    /// does; subscribed or not, this connection does not get it: send it here too if it
    /// should), on every loop thread. The message is encoded once ([`PreparedMessage`];
    /// connections that compress encode it themselves).
    ///
    /// Never waits: it is delivered once this callback returns (on the other loops, as soon
    /// as they get to it), with everything else published meanwhile, and each subscriber
    /// gets one write for all of it. Messages
    /// published by one connection reach each subscriber in order. A subscriber with more
    /// than `write_limit` bytes waiting does not get it and stays subscribed (the policy of
    /// [`crate::Hub`] and [`crate::broadcast`]: a slow subscriber never holds up the others,
    /// and the memory it can pin is bounded).
    pub fn publish(&mut self, topic: &str, message: impl Into<Message>) {
        let (topic, message) = post_publish(&self.local.peers, topic, message);
        self.local.outbox.push(event_loop::Publish {
            topic,
            message,
            except: Some(self.slot),
        });
    }

    fn check_open(&self) -> Result<()> {
        if self.proto.state() == State::Open {
            Ok(())
        } else {
            Err(Error::ConnectionClosed(closed_of(self.proto)))
        }
    }
}

/// A way into one connection from outside its callbacks: from any thread, a timer, a
/// pub/sub system. Cheap to clone (`Send + Sync`).
///
/// What it asks for runs in the connection's loop, in order, as soon as the loop gets to it;
/// nothing is done if the connection has ended by then (so nothing fails here: a handler
/// learns of the end from [`Handler::on_close`]).
#[derive(Clone)]
pub struct Handle {
    mailbox: Arc<Mailbox>,
    slot: usize,
    generation: u32,
    id: u64,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("reactor::Handle")
            .field("id", &self.id)
            .finish()
    }
}

impl Handle {
    /// The connection's [`Socket::id`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends `message` on the connection (see [`Socket::send`]); dropped if the connection
    /// is closing or over by then.
    pub fn send(&self, message: impl Into<Message>) {
        let message = message.into();
        self.post(move |ws| {
            let _ = ws.send(message);
        });
    }

    /// Starts the closing handshake (see [`Socket::close`]).
    pub fn close(&self, code: CloseCode, reason: &str) {
        let reason = reason.to_owned();
        self.post(move |ws| {
            let _ = ws.close(code, &reason);
        });
    }

    /// Runs `f` on the connection, in its loop (what it sends leaves with the loop's next
    /// write). Not run if the connection has ended by then. A panic in `f` fails the
    /// connection with 1011, as in a callback.
    pub fn post(&self, f: impl FnOnce(&mut Socket<'_>) + Send + 'static) {
        self.mailbox.push(Command::Post {
            slot: self.slot,
            generation: self.generation,
            f: Box::new(f),
        });
    }
}

/// Work for a loop from outside it: a queue and the `mio::Waker` that interrupts its poll.
struct Mailbox {
    /// `None` once the loop has ended: what comes then is dropped at once (a `Handle` kept
    /// after the server shut down must not pile up closures nobody will run).
    queue: Mutex<Option<Vec<Command>>>,
    waker: mio::Waker,
    /// The server's configuration, for what a connection builds again when asked (its
    /// `101` response).
    config: Arc<crate::proto::Config>,
    /// The loop's open async-handler connections, by slot, for [`Server::connections`]:
    /// a pointer per slot, written by the loop when one opens and when it ends.
    links: Mutex<Vec<std::sync::Weak<tasks::Link>>>,
}

impl Mailbox {
    fn new(waker: mio::Waker, config: Arc<crate::proto::Config>) -> Mailbox {
        Mailbox {
            queue: Mutex::new(Some(Vec::new())),
            waker,
            config,
            links: Mutex::new(Vec::new()),
        }
    }

    /// Keeps `link` (open in `slot`) for [`Server::connections`], or forgets the slot's.
    fn register(&self, slot: usize, link: Option<&Arc<tasks::Link>>) {
        let mut links = lock(&self.links);
        if links.len() <= slot {
            if link.is_none() {
                return;
            }
            links.resize_with(slot + 1, std::sync::Weak::new);
        }
        links[slot] = link.map_or_else(std::sync::Weak::new, Arc::downgrade);
    }

    fn push(&self, command: Command) {
        let mut queue = lock(&self.queue);
        let Some(commands) = queue.as_mut() else {
            drop(queue);
            drop(command); // outside the lock: it may hold anything
            return;
        };
        let was_empty = commands.is_empty();
        commands.push(command);
        drop(queue);
        // One wake-up per batch: the loop takes the whole queue at once.
        if was_empty {
            let _ = self.waker.wake();
        }
    }

    fn take(&self) -> Vec<Command> {
        lock(&self.queue)
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The loop has ended: drops what waits, and whatever comes later.
    fn close(&self) {
        let left = lock(&self.queue).take();
        drop(left);
    }
}

/// A closure to run on a connection, boxed.
type Posted = Box<dyn FnOnce(&mut Socket<'_>) + Send>;

enum Command {
    /// [`Handle::post`] (and `send`, `close`).
    Post {
        slot: usize,
        generation: u32,
        f: Posted,
    },
    /// [`Server::broadcast`]: to every open connection of the loop.
    Broadcast(Arc<PreparedMessage>),
    /// A publish ([`Socket::publish`] in another loop, [`Server::publish`]): to the loop's
    /// subscribers of `topic`.
    Publish {
        topic: Arc<str>,
        message: Arc<PreparedMessage>,
    },
    /// An async handler's connection was woken, or its handles queued something, from
    /// another thread.
    Work(tasks::Work),
}

/// Encodes a publish once and posts it to `loops`; gives back what it made.
fn post_publish(
    loops: &[Arc<Mailbox>],
    topic: &str,
    message: impl Into<Message>,
) -> (Arc<str>, Arc<PreparedMessage>) {
    let topic: Arc<str> = Arc::from(topic);
    let message = Arc::new(PreparedMessage::new(message));
    for mailbox in loops {
        mailbox.push(Command::Publish {
            topic: topic.clone(),
            message: message.clone(),
        });
    }
    (topic, message)
}

/// How the connection of `proto` ended (or is ending).
fn closed_of(proto: &Protocol) -> Closed {
    Closed {
        received: proto.close_received().cloned(),
        sent: proto.close_sent().cloned(),
    }
}

/// Builds an event-loop server: the options and defaults of [`crate::ServerBuilder`]
/// (python-websockets': ping_interval 20 s, ping_timeout 20 s, open_timeout 10 s,
/// close_timeout 10 s, max_size 1 MiB, write_limit 32 KiB, compression on), the
/// `process_request`/`process_response` hooks, origins, subprotocols, basic auth, and the
/// number of loop threads.
#[derive(Clone, Default)]
pub struct ServerBuilder {
    options: Options,
    hooks: Hooks,
    threads: usize,
    /// `sockeye::Server`'s: shutting down waits for every handler.
    wait_for_handlers: bool,
}

crate::options::option_setters!(ServerBuilder);
crate::options::server_setters!(ServerBuilder);

impl ServerBuilder {
    /// A builder with these options and hooks (`crate::ServerBuilder` on the loops).
    pub(crate) fn from_parts(options: Options, hooks: Hooks, threads: usize) -> Self {
        ServerBuilder {
            options,
            hooks,
            threads,
            wait_for_handlers: true,
        }
    }

    /// How many loop threads serve (each accepts and owns its own connections). Default:
    /// one per CPU this process may run on (`std::thread::available_parallelism`, which
    /// honours `taskset`).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Binds `addr` and serves in background threads. `factory` runs once per accepted
    /// handshake, in the loop thread that owns the connection, with the request (its path,
    /// headers, cookies: take what the handler needs; the request is not kept); it returns
    /// the connection's [`Handler`]. Refuse requests with a `process_request` hook.
    pub fn serve<A, F, H>(self, addr: A, factory: F) -> Result<Server>
    where
        A: ToSocketAddrs,
        F: Fn(&Request<()>) -> H + Send + Sync + 'static,
        H: Handler,
    {
        let listener = TcpListener::bind(addr)?;
        self.serve_listener(listener, factory)
    }

    /// Binds `addr` and serves python-websockets' way: `handler` runs once per connection
    /// as an `async fn` of a [`Connection`](crate::Connection) (`recv().await`, `send().await`), and the
    /// connection closes when it returns (1000), or fails with 1011 and an ERROR log when it
    /// returns an error or panics. Its future is polled by the loop that owns the
    /// connection (it need not be `Send`), not by a tokio task: an idle connection costs
    /// about a kilobyte (`docs/benchmarks.md`).
    ///
    /// Called inside a tokio runtime, the loops poll handlers inside it: tokio's timers,
    /// channels, `spawn` and `select!` work in a handler. Like a callback, a handler must not
    /// block the thread: every connection of its loop waits meanwhile.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), sockeye::BoxError> {
    /// let server = sockeye::reactor::Server::builder().serve_async(
    ///     "127.0.0.1:8765",
    ///     |ws: sockeye::Connection| async move {
    ///         while let Some(message) = ws.recv().await? {
    ///             ws.send(message).await?;
    ///         }
    ///         Ok(())
    ///     },
    /// )?;
    /// # server.shutdown();
    /// # Ok(()) }
    /// ```
    pub fn serve_async<A, H, Fut>(self, addr: A, handler: H) -> Result<Server>
    where
        A: ToSocketAddrs,
        H: Fn(crate::Connection) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<(), crate::BoxError>> + 'static,
    {
        let listener = TcpListener::bind(addr)?;
        self.serve_async_listener(listener, handler)
    }

    /// [`serve_async`](Self::serve_async) on a listener bound already.
    pub fn serve_async_listener<H, Fut>(self, listener: TcpListener, handler: H) -> Result<Server>
    where
        H: Fn(crate::Connection) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<(), crate::BoxError>> + 'static,
    {
        self.serve_async_on(net::StdListener::Tcp(listener), handler)
    }

    /// Async handlers on any listener the loops take (`sockeye::unix_serve` on the loops).
    pub(crate) fn serve_async_on<H, Fut>(
        self,
        listener: net::StdListener,
        handler: H,
    ) -> Result<Server>
    where
        H: Fn(crate::Connection) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<(), crate::BoxError>> + 'static,
    {
        let handler: Arc<tasks::HandlerFn> =
            Arc::new(move |ws| Box::pin(handler(ws)) as tasks::TaskFuture);
        self.serve_on(listener, move |_: &Request<()>| {
            tasks::AsyncConn::Start(handler.clone())
        })
    }

    /// [`serve`](Self::serve) on a listener bound already.
    pub fn serve_listener<F, H>(self, listener: TcpListener, factory: F) -> Result<Server>
    where
        F: Fn(&Request<()>) -> H + Send + Sync + 'static,
        H: Handler,
    {
        self.serve_on(net::StdListener::Tcp(listener), factory)
    }

    /// Starts the loops on `listener`.
    fn serve_on<F, H>(self, listener: net::StdListener, factory: F) -> Result<Server>
    where
        F: Fn(&Request<()>) -> H + Send + Sync + 'static,
        H: Handler,
    {
        listener.set_nonblocking()?;
        let local_addr = listener.local_addr()?;
        let threads = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut prepared = Vec::with_capacity(threads);
        let mut mailboxes = Vec::with_capacity(threads);
        let config = Arc::new(self.options.config);
        for _ in 0..threads {
            let mut listener = listener.for_loop()?;
            let (poll, waker) = event_loop::Loop::<F, H>::prepare(&mut listener)?;
            mailboxes.push(Arc::new(Mailbox::new(waker, config.clone())));
            prepared.push((poll, listener));
        }
        let shared = Arc::new(event_loop::Shared {
            config,
            write_limit: self.options.limits.write_limit,
            hooks: self.hooks,
            factory,
            control: Arc::new(Control::default()),
            mailboxes: mailboxes.clone(),
            max_queue: self.options.limits.max_queue,
            runtime: tokio::runtime::Handle::try_current().ok(),
            wait_for_handlers: self.wait_for_handlers,
        });
        let mut loops = Vec::with_capacity(threads);
        for (i, (poll, listener)) in prepared.into_iter().enumerate() {
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sockeye-loop-{i}"))
                .spawn(move || event_loop::Loop::run(poll, listener, i, shared))?;
            loops.push(thread);
        }
        let place = local_addr.map_or_else(|| "a Unix socket".to_owned(), |a| a.to_string());
        tracing::info!(target: "sockeye::server", "event-loop server listening on {place} ({threads} threads)");
        Ok(Server {
            inner: Arc::new(ServerInner {
                local_addr,
                control: shared.control.clone(),
                mailboxes,
                threads: Mutex::new(loops),
                closed: Latch::default(),
            }),
        })
    }
}

/// What the loops and the [`Server`] handle share.
#[derive(Default)]
struct Control {
    /// Shutting down: stop accepting, close connections with 1001, 503 to handshakes.
    closing: AtomicBool,
    /// Open connections (handshake done, not closed yet), all loops together.
    open: AtomicUsize,
}

struct ServerInner {
    /// `None` on a Unix socket.
    local_addr: Option<SocketAddr>,
    control: Arc<Control>,
    mailboxes: Vec<Arc<Mailbox>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: Latch,
}

/// A running event-loop server. Cheap to clone. Dropping it does not stop it; call
/// [`Server::shutdown`].
#[derive(Clone)]
pub struct Server {
    inner: Arc<ServerInner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("reactor::Server")
            .field("local_addr", &self.inner.local_addr)
            .field("threads", &self.inner.mailboxes.len())
            .finish()
    }
}

impl Server {
    /// A builder, to change options.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        // Only `sockeye::unix_serve` starts loops on a Unix socket, and it does not ask.
        (self.inner.local_addr).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The address the server listens on; `None` on a Unix socket.
    pub(crate) fn tcp_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr
    }

    /// How many connections are open (handshake done, not closed yet).
    pub fn connection_count(&self) -> usize {
        self.inner.control.open.load(Ordering::Acquire)
    }

    /// The open connections of async handlers ([`ServerBuilder::serve_async`]), every loop
    /// together (callback handlers have none: use [`Server::broadcast`] or a
    /// [`Handle`]).
    pub fn connections(&self) -> Vec<crate::Connection> {
        let mut all = Vec::new();
        for mailbox in &self.inner.mailboxes {
            let links = lock(&mailbox.links);
            let open = links.iter().filter_map(std::sync::Weak::upgrade);
            all.extend(open.map(|link| tasks::LoopConn::from(link).into()));
        }
        all
    }

    /// Sends `message` to every open connection, from any thread: encoded once
    /// ([`PreparedMessage`]; connections that compress encode it themselves), sent by each
    /// loop to its connections. Like [`crate::broadcast`], it never waits: a connection
    /// with more than `write_limit` bytes waiting is skipped.
    pub fn broadcast(&self, message: impl Into<Message>) {
        let message = Arc::new(PreparedMessage::new(message));
        for mailbox in &self.inner.mailboxes {
            mailbox.push(Command::Broadcast(message.clone()));
        }
    }

    /// Sends `message` to every subscriber of `topic` (see [`Socket::subscribe`]), from any
    /// thread: encoded once, delivered by each loop to its subscribers, never waiting (a
    /// subscriber over `write_limit` does not get it, as with [`Socket::publish`]).
    pub fn publish(&self, topic: &str, message: impl Into<Message>) {
        post_publish(&self.inner.mailboxes, topic, message);
    }

    /// Blocks until [`Server::shutdown`] is called (from another thread) and has finished.
    pub fn serve_forever(&self) {
        self.inner.closed.wait();
    }

    /// Shuts the server down gracefully: stops accepting, answers handshakes in progress
    /// with 503, closes open connections with 1001 (going away), and returns once every
    /// connection is over (each closing handshake bounded by `close_timeout`) and the loop
    /// threads have ended.
    pub fn shutdown(&self) {
        if self.inner.control.closing.swap(true, Ordering::AcqRel) {
            self.serve_forever();
            return;
        }
        for mailbox in &self.inner.mailboxes {
            let _ = mailbox.waker.wake();
        }
        let threads = std::mem::take(&mut *lock(&self.inner.threads));
        for t in threads {
            let _ = t.join();
        }
        self.inner.closed.set();
        tracing::info!(target: "sockeye::server", "server closed");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts an event-loop server with the default options. See [`ServerBuilder::serve`].
pub fn serve<A, F, H>(addr: A, factory: F) -> Result<Server>
where
    A: ToSocketAddrs,
    F: Fn(&Request<()>) -> H + Send + Sync + 'static,
    H: Handler,
{
    ServerBuilder::default().serve(addr, factory)
}
