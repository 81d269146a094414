//! One loop thread: a `mio` poll over the listener and the connections this thread
//! accepted, a heap of deadlines for all of them, and one read buffer and one write buffer
//! lent to whichever connection is being served.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll as TaskPoll};
use std::time::{Duration, Instant};

use super::net::{Listener, Stream};
use http::{Request, StatusCode};
use mio::{Events, Interest, Poll, Token, Waker};

use super::slab::Slab;
use super::tasks::{self, Link, Out, Task, Work};
use super::topics::Topics;
use super::{closed_of, Command, Control, Handler, Mailbox, Socket};
use crate::proto::{CloseCode, Config, Event, PreparedMessage, Protocol, State};
use crate::server::Hooks;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);

/// The loop's read buffer: what one `read` may take.
const READ_BUF: usize = 64 * 1024;
/// Reads of one connection in a row before the others get their turn.
const READS_PER_TURN: usize = 16;
/// Rounds of `on_drain` (a producer refilling its buffer) in a row before the others get
/// their turn.
const DRAINS_PER_TURN: usize = 16;
/// The largest write buffer the loop keeps for the next connection.
const KEEP_SPARE: usize = 1 << 20;
/// The least a frame must still miss to be read straight into the core's buffer.
const DIRECT_READ: usize = 64 * 1024;
/// The smallest payload written without a copy (`Protocol::set_zero_copy_min`).
const ZERO_COPY_MIN: usize = 4 * 1024;
/// How long to wait before accepting again after `accept` failed (EMFILE...).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Connection flags.
const EOF: u8 = 1;
/// More than `write_limit` bytes wait: not reading; `on_drain` once under it.
const PAUSED: u8 = 2;
/// In the loop's ready list (input may be left unread: reads are edge-triggered).
const QUEUED: u8 = 4;
/// The writing side is shut down; input is read and discarded until the peer closes its
/// side or the deadline passes (see `Protocol::linger_timeout`).
const LINGER: u8 = 8;
/// The transport failed: nothing more is written.
const BROKEN: u8 = 16;
/// The peer's end of stream is queued (epoll said so): read until it, even after a short
/// read, since it will not make another edge.
const HUP: u8 = 32;
/// The transport is to close but output is still waiting: written until `deadline`
/// (`Protocol::flush_timeout`), then dropped.
const FLUSHING: u8 = 64;
/// In the loop's list of connections a publish gave output to (written once all the
/// publishes of this turn are delivered: one write for all of them).
const DIRTY: u8 = 128;
/// Rounds of polling woken async handlers in a row before the loop polls again.
const WORK_ROUNDS: usize = 16;

/// Rounds of delivering publishes and writing them in a row (a handler's `on_drain` may
/// publish again) before the loop polls again.
const SETTLE_ROUNDS: usize = 16;

/// What every loop of a server shares (read-only but for `control`).
pub(super) struct Shared<F> {
    pub(super) config: Arc<Config>,
    pub(super) write_limit: usize,
    pub(super) hooks: Hooks,
    pub(super) factory: F,
    pub(super) control: Arc<Control>,
    /// Every loop's mailbox, by loop index (publishes reach the other loops through them).
    pub(super) mailboxes: Vec<Arc<Mailbox>>,
    pub(super) max_queue: usize,
    /// The tokio runtime the server was started from, if any: the loops poll async
    /// handlers inside it (its timers, channels and `spawn` work there).
    pub(super) runtime: Option<tokio::runtime::Handle>,
    /// Shutting down waits for every async handler, however long (`sockeye::Server::close`
    /// promises it, as on tasks); else one still running `close_timeout` after the last
    /// connection closed is dropped.
    pub(super) wait_for_handlers: bool,
}

/// What a callback reaches of its loop besides its own connection: the way in from other
/// threads (for [`Socket::handle`]), the loop's topics, and the publishes made during this
/// turn, delivered once the callback has returned.
pub(super) struct Local {
    pub(super) mailbox: Arc<Mailbox>,
    /// The other loops' mailboxes: a publish goes to them at once (so that it keeps its
    /// place among the commands the same callback sends them through `Handle`s).
    pub(super) peers: Vec<Arc<Mailbox>>,
    pub(super) topics: Topics,
    pub(super) outbox: Vec<Publish>,
    /// The futures of async handlers (`ServerBuilder::serve_async`), by task slot.
    pub(super) tasks: Slab<Task>,
    pub(super) max_queue: usize,
    pub(super) write_limit: usize,
    /// The handshake request of the connection being opened, during `on_open`.
    pub(super) request: Option<Opening>,
    /// Set by a callback: stop reading from its connection (its inbox is full).
    pub(super) hold: bool,
    /// Set by a callback: read from its connection again.
    pub(super) resume: bool,
}

/// The handshake request of a connection being opened, and what the hooks granted it.
pub(super) type Opening = (Box<Request<()>>, Option<Box<crate::head::Granted>>);

/// A message published to a topic from a callback, to deliver to this loop's subscribers
/// once the callback returns.
pub(super) struct Publish {
    pub(super) topic: Arc<str>,
    pub(super) message: Arc<PreparedMessage>,
    /// The slot of the publishing connection, which does not get it.
    pub(super) except: Option<usize>,
}

/// One connection: all it costs while idle is this (in the loop's slab) and one entry in the
/// loop's timer heap.
struct Conn<H> {
    proto: Protocol,
    socket: Stream,
    /// `None` until the handshake is accepted, and again once `on_close` ran.
    handler: Option<H>,
    /// The earliest deadline this connection has in the timer heap.
    deadline: Option<Instant>,
    id: u64,
    /// Tells this connection's timer entries from those of an earlier one in the same slot.
    generation: u32,
    flags: u8,
    /// Not reading: `max_queue` messages wait for an async handler's `recv`.
    held: bool,
    /// `on_closing` was called.
    told_closing: bool,
}

impl<H> Conn<H> {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A loop thread's state.
pub(super) struct Loop<F, H> {
    poll: Poll,
    listener: Option<Listener>,
    conns: Slab<Conn<H>>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Connections to serve again this turn: input left unread, or reading resumed.
    ready: Vec<usize>,
    read_buf: Vec<u8>,
    /// The write buffer lent to the connection being served (it writes its frames into it),
    /// taken back once written: an idle connection holds no output buffer.
    spare: Vec<u8>,
    shared: Arc<Shared<F>>,
    local: Local,
    /// Connections a publish gave output to, to write (see `DIRTY`).
    dirty: Vec<usize>,
    next_generation: u32,
    closing: bool,
    accept_again: Option<Instant>,
    /// Work taken from the thread-local queue (kept for its allocation).
    work: Vec<Work>,
    /// Shutting down, once the last connection has closed: when to drop the async handlers
    /// still running.
    tasks_deadline: Option<Instant>,
}

impl<F, H> Loop<F, H>
where
    F: Fn(&Request<()>) -> H + Send + Sync + 'static,
    H: Handler,
{
    /// The loop's poll, with `listener` registered, and the waker that interrupts it.
    pub(super) fn prepare(listener: &mut Listener) -> io::Result<(Poll, Waker)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        poll.registry()
            .register(listener, LISTENER, Interest::READABLE)?;
        Ok((poll, waker))
    }

    /// Serves (in the loop's own thread: handlers need not be `Send`) until the server
    /// shuts down and the last connection is over.
    pub(super) fn run(poll: Poll, listener: Listener, index: usize, shared: Arc<Shared<F>>) {
        // However the loop ends, nobody takes commands any more: drop those left, and those
        // to come.
        let _closer = CloseOnDrop(shared.mailboxes[index].clone());
        // Async handlers run inside the server's tokio runtime, if it was started in one.
        let _runtime = shared.runtime.as_ref().map(|r| r.enter());
        tasks::enter_loop(&shared.mailboxes[index]);
        let peers = (shared.mailboxes.iter().enumerate())
            .filter(|(i, _)| *i != index)
            .map(|(_, m)| m.clone())
            .collect();
        Loop {
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            timers: BinaryHeap::new(),
            ready: Vec::new(),
            read_buf: vec![0; READ_BUF],
            spare: Vec::new(),
            local: Local {
                mailbox: shared.mailboxes[index].clone(),
                peers,
                topics: Topics::default(),
                outbox: Vec::new(),
                tasks: Slab::new(),
                max_queue: shared.max_queue,
                write_limit: shared.write_limit,
                request: None,
                hold: false,
                resume: false,
            },
            shared,
            dirty: Vec::new(),
            next_generation: 0,
            closing: false,
            accept_again: None,
            work: Vec::new(),
            tasks_deadline: None,
        }
        .serve();
    }

    fn serve(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            if !self.closing && self.shared.control.closing.load(Ordering::Acquire) {
                self.start_closing();
            }
            if self.closing && self.conns.is_empty() && self.tasks_done() {
                return;
            }
            let idle = self.ready.is_empty()
                && self.local.outbox.is_empty()
                && self.dirty.is_empty()
                && !tasks::has_work();
            let timeout = if idle {
                let next = self.timers.peek().map(|Reverse((t, _, _))| *t);
                let next = [next, self.accept_again, self.tasks_deadline]
                    .into_iter()
                    .flatten()
                    .min();
                next.map(|t| t.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(target: "sockeye::server", "event loop failed: {e}");
                    return;
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => self.run_commands(),
                    Token(k) => {
                        if event.is_read_closed() || event.is_error() {
                            if let Some(conn) = self.conns.get_mut(k) {
                                conn.flags |= HUP;
                            }
                        }
                        let _span = self.span(k);
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.turn(k);
                        } else if event.is_writable() {
                            self.service(k);
                        }
                    }
                }
            }
            self.run_work();
            self.settle();
            for k in std::mem::take(&mut self.ready) {
                if let Some(conn) = self.conns.get_mut(k) {
                    conn.flags &= !QUEUED;
                    let _span = self.span(k);
                    self.turn(k);
                }
            }
            self.run_work();
            self.settle();
            let now = Instant::now();
            self.fire_timers(now);
            self.run_work();
            self.settle();
            if self.accept_again.is_some_and(|t| t <= now) {
                self.accept_again = None;
                self.accept();
            }
        }
    }

    /// What other threads asked for through the mailbox.
    fn run_commands(&mut self) {
        for command in self.local.mailbox.take() {
            match command {
                Command::Post {
                    slot,
                    generation,
                    f,
                } => {
                    let Some(conn) = self.conns.get_mut(slot) else {
                        continue;
                    };
                    if conn.generation != generation || conn.handler.is_none() {
                        continue;
                    }
                    let _span = conn_span(conn.id, &conn.socket);
                    // Timers the closure arms (a close's timeout) count from now.
                    conn.proto.handle_timeout(Instant::now());
                    lend(&mut conn.proto, &mut self.spare);
                    call(conn, slot, &mut self.local, |_, ws| f(ws));
                    self.service(slot);
                }
                Command::Broadcast(message) => {
                    let limit = self.shared.write_limit;
                    for k in self.conns.keys() {
                        if let Some(conn) = self.conns.get_mut(k) {
                            offer(conn, k, &message, limit, &mut self.spare, &mut self.dirty);
                        }
                    }
                }
                Command::Publish { topic, message } => self.deliver(&topic, &message, None),
                // A flush in place, so that what other threads queued keeps its order with
                // the publishes and broadcasts of the same mailbox; a poll in `run_work`.
                Command::Work(Work::Flush(link)) => self.flush(&link),
                Command::Work(Work::Publish(topic, message)) => {
                    self.publish_orphan(&topic, message)
                }
                Command::Work(work) => tasks::push_local(work),
            }
        }
    }

    /// Shutting down with no connection left: whether the async handlers are done. One
    /// still running `close_timeout` after the last connection closed (waiting for
    /// something that never comes) is dropped then, so that shutdown always ends.
    fn tasks_done(&mut self) -> bool {
        if self.local.tasks.is_empty() {
            return true;
        }
        if self.shared.wait_for_handlers {
            return false;
        }
        let now = Instant::now();
        let bound = self.shared.config.close_timeout_value();
        let deadline = *self.tasks_deadline.get_or_insert(now + bound);
        if now < deadline {
            return false;
        }
        tracing::warn!(target: "sockeye::server", "{} connection handlers still running {bound:?} after their connections closed: dropped", self.local.tasks.len());
        for k in self.local.tasks.keys() {
            let task = self.local.tasks.remove(k);
            let _ = catch_unwind(AssertUnwindSafe(move || drop(task)));
        }
        true
    }

    /// Polls the async handlers that were woken and moves what their connections' handles
    /// queued into the connections, writing each once. Up to `WORK_ROUNDS` rounds (a
    /// future that wakes itself at once would hold the loop); the rest waits for the next
    /// turn of the loop, which then does not sleep.
    fn run_work(&mut self) {
        for _ in 0..WORK_ROUNDS {
            let mut work = std::mem::take(&mut self.work);
            tasks::take_work(&mut work);
            if work.is_empty() {
                self.work = work;
                return;
            }
            for item in work.drain(..) {
                match item {
                    Work::Poll(link) => {
                        {
                            let _span = link.span();
                            self.poll_task(&link);
                        }
                        self.flush(&link);
                    }
                    Work::Flush(link) => self.flush(&link),
                    Work::Publish(topic, message) => self.publish_orphan(&topic, message),
                }
            }
            self.work = work;
        }
    }

    /// Polls the handler future of `link`; when it is done, queues the close it calls for
    /// (1000 when it returned `Ok`, 1011 and an ERROR log when it failed or panicked).
    fn poll_task(&mut self, link: &Arc<Link>) {
        let Some(task) = self.local.tasks.get_mut(link.task as usize) else {
            return;
        };
        if !Arc::ptr_eq(&task.link, link) {
            return;
        }
        link.start_poll();
        let waker = std::task::Waker::from(link.clone());
        let mut cx = Context::from_waker(&waker);
        let polled = tasks::with_budget(|| {
            catch_unwind(AssertUnwindSafe(|| task.future.as_mut().poll(&mut cx)))
        });
        let out = match polled {
            Ok(TaskPoll::Pending) => return,
            Ok(TaskPoll::Ready(Ok(()))) => Out::Close(CloseCode::NORMAL, String::new()),
            Ok(TaskPoll::Ready(Err(e))) => {
                crate::server::log_handler_error(link.id, &e);
                Out::Fail(CloseCode::INTERNAL_ERROR)
            }
            Err(_) => {
                tracing::error!(target: "sockeye::server", id = link.id, "connection handler panicked");
                Out::Fail(CloseCode::INTERNAL_ERROR)
            }
        };
        // Its state goes now (a panic in a destructor is the handler's too).
        let task = self.local.tasks.remove(link.task as usize);
        let _ = catch_unwind(AssertUnwindSafe(move || drop(task)));
        link.finish(out);
    }

    /// A publish from a connection that has closed: to every loop's subscribers.
    fn publish_orphan(&mut self, topic: &str, message: crate::proto::Message) {
        let (topic, message) = super::post_publish(&self.local.peers, topic, message);
        self.local.outbox.push(Publish {
            topic,
            message,
            except: None,
        });
    }

    /// Moves what the handles of `link` queued into its connection and writes it; tells
    /// the link what is left to write.
    fn flush(&mut self, link: &Link) {
        let _span = link.span();
        let k = link.slot as usize;
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        if conn.id != link.id || conn.handler.is_none() {
            return;
        }
        conn.proto.handle_timeout(Instant::now());
        lend(&mut conn.proto, &mut self.spare);
        let held = conn.held;
        call(conn, k, &mut self.local, |_, ws| link.flush_into(ws));
        if held && !conn.held && !conn.has(QUEUED | EOF) {
            // Input may wait, with no new edge.
            conn.flags |= QUEUED;
            self.ready.push(k);
        }
        self.service(k);
        if let Some(conn) = self.conns.get_mut(k) {
            if conn.id == link.id && conn.handler.is_some() {
                link.written(conn.proto.pending_output_len());
            }
        }
    }

    /// Delivers what callbacks published to this loop's subscribers (the other loops got it
    /// through their mailboxes already), then writes to the connections that got output,
    /// once each however many messages they got. Repeats while that makes more (an
    /// `on_drain` that publishes), up to `SETTLE_ROUNDS`; the rest waits for the next turn
    /// of the loop, which then does not sleep.
    fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS {
            if self.local.outbox.is_empty() && self.dirty.is_empty() {
                return;
            }
            let mut outbox = std::mem::take(&mut self.local.outbox);
            for publish in outbox.drain(..) {
                self.deliver(&publish.topic, &publish.message, publish.except);
            }
            if self.local.outbox.is_empty() {
                self.local.outbox = outbox; // keeps its allocation
            }
            for k in std::mem::take(&mut self.dirty) {
                if let Some(conn) = self.conns.get_mut(k) {
                    conn.flags &= !DIRTY;
                    let _span = self.span(k);
                    self.service(k);
                }
            }
        }
    }

    /// Queues `message` for this loop's subscribers of `topic` but `except` (see
    /// [`offer`]); they are written by `settle`.
    fn deliver(&mut self, topic: &str, message: &PreparedMessage, except: Option<usize>) {
        let limit = self.shared.write_limit;
        for k in self.local.topics.members(topic) {
            if let (Some(conn), false) = (self.conns.get_mut(k), Some(k) == except) {
                offer(conn, k, message, limit, &mut self.spare, &mut self.dirty);
            }
        }
    }

    fn accept(&mut self) {
        if self.accept_again.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let socket = match listener.accept() {
                Ok(socket) => socket,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS...: the listener is fine, the process is out
                    // of something. Try again a little later instead of spinning.
                    tracing::error!(target: "sockeye::server", "accept failed: {e}");
                    self.accept_again = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            };
            let mut proto = Protocol::server(self.shared.config.clone());
            // Payloads of 4 KiB and more are written from where they were received or
            // built (the 16 KiB ping-pong: 63-68 k -> 84-103 k msgs/s, A/B 2026-12-04).
            proto.set_zero_copy_min(ZERO_COPY_MIN);
            // Async handlers take messages fragment by fragment too (`recv_streaming`).
            proto.set_stream_fragments(H::STREAMS);
            // The open timeout counts from here.
            proto.handle_timeout(Instant::now());
            let generation = self.next_generation;
            self.next_generation = self.next_generation.wrapping_add(1);
            let k = self.conns.insert(Conn {
                proto,
                socket,
                handler: None,
                deadline: None,
                id: 0,
                generation,
                flags: 0,
                held: false,
                told_closing: false,
            });
            let conn = self.conns.get_mut(k).expect("just inserted");
            // Edge-triggered, both ways, once for the connection's life: no system call to
            // change interests when output backs up.
            let registered = self.poll.registry().register(
                &mut conn.socket,
                Token(k),
                Interest::READABLE | Interest::WRITABLE,
            );
            if let Err(e) = registered {
                tracing::error!(target: "sockeye::server", "cannot register a connection: {e}");
                self.conns.remove(k);
                continue;
            }
            // Arms the open timeout; bytes already there are reported by the first poll.
            self.service(k);
        }
    }

    /// Connection `k`'s span, entered (see [`conn_span`]).
    fn span(&mut self, k: usize) -> tracing::span::EnteredSpan {
        match self.conns.get_mut(k) {
            Some(conn) => conn_span(conn.id, &conn.socket),
            None => tracing::Span::none().entered(),
        }
    }

    /// Reads what the connection has (up to a turn's worth), hands it to the core and the
    /// handler, then writes what they produced.
    fn turn(&mut self, k: usize) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        if conn.has(LINGER) {
            return self.linger(k);
        }
        if conn.has(EOF | PAUSED) || conn.held {
            return self.service(k);
        }
        let shared = &*self.shared;
        conn.proto.handle_timeout(Instant::now());
        lend(&mut conn.proto, &mut self.spare);
        let mut reads = 0;
        loop {
            if reads == READS_PER_TURN {
                // Let the other connections go first; come back in this turn of the loop.
                conn.flags |= QUEUED;
                self.ready.push(k);
                break;
            }
            // The rest of a large frame goes straight into the core's buffer (one read
            // takes as much of it as the socket has; no copy from the loop's buffer).
            let missing = conn.proto.frame_bytes_missing();
            let direct = missing >= DIRECT_READ;
            let (result, asked) = if direct {
                (
                    read_direct(&mut conn.socket, &mut conn.proto, missing),
                    missing,
                )
            } else {
                (conn.socket.read(&mut self.read_buf), self.read_buf.len())
            };
            match result {
                Ok(0) => {
                    conn.flags |= EOF;
                    let _ = conn.proto.receive_eof();
                    dispatch(conn, k, &mut self.local, shared);
                    break;
                }
                Ok(n) => {
                    reads += 1;
                    let received = if direct {
                        conn.proto.receive_buffered()
                    } else {
                        conn.proto.receive_data(&self.read_buf[..n])
                    };
                    if let Err(e) = received {
                        tracing::debug!(target: "sockeye::server", id = conn.id, "connection failed: {e}");
                    }
                    dispatch(conn, k, &mut self.local, shared);
                    if conn.proto.pending_output_len() > shared.write_limit {
                        conn.flags |= PAUSED;
                        break;
                    }
                    if conn.held {
                        break;
                    }
                    // A short read took all there was: more data makes a new edge, but an
                    // end of stream already reported does not.
                    let drained = n < asked && !conn.has(HUP);
                    if drained || conn.proto.should_close_transport() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(target: "sockeye::server", id = conn.id, "read failed: {e}");
                    conn.flags |= EOF | BROKEN;
                    let _ = conn.proto.receive_eof();
                    dispatch(conn, k, &mut self.local, shared);
                    break;
                }
            }
        }
        self.service(k);
    }

    /// Writes what the connection has to write, runs `on_drain` when a backlog is gone,
    /// closes the transport when the core says so, and keeps its deadline in the heap.
    fn service(&mut self, k: usize) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        if conn.has(LINGER) {
            return;
        }
        if !conn.told_closing && conn.handler.is_some() && conn.proto.state() != State::Open {
            conn.told_closing = true;
            call(conn, k, &mut self.local, |h, ws| h.on_closing(ws));
        }
        let shared = &*self.shared;
        let mut drains = 0;
        loop {
            write_out(conn);
            if conn.has(BROKEN) {
                // The peer is gone as far as the core is concerned.
                let _ = conn.proto.receive_eof();
                conn.flags |= EOF;
                return self.finish(k);
            }
            let pending = conn.proto.pending_output_len();
            if pending == 0 {
                reclaim(&mut conn.proto, &mut self.spare);
            }
            if !conn.has(PAUSED) {
                if pending > shared.write_limit {
                    conn.flags |= PAUSED;
                }
                break;
            }
            if pending > shared.write_limit {
                break;
            }
            // Under write_limit again: read again (input may wait, with no new edge), and
            // tell the handler.
            conn.flags &= !PAUSED;
            if !conn.has(QUEUED | EOF) {
                conn.flags |= QUEUED;
                self.ready.push(k);
            }
            if conn.proto.state() == State::Open {
                // Reached from a writable event too: timers it arms count from now.
                conn.proto.handle_timeout(Instant::now());
                lend(&mut conn.proto, &mut self.spare);
                call(conn, k, &mut self.local, |h, ws| h.on_drain(ws));
                if conn.proto.pending_output_len() > shared.write_limit {
                    conn.flags |= PAUSED;
                }
            }
            drains += 1;
            if drains == DRAINS_PER_TURN {
                // The producer's last output is not written yet, and the socket may have
                // room (no writable edge would come): serve it again after the others.
                if !conn.has(QUEUED) {
                    conn.flags |= QUEUED;
                    self.ready.push(k);
                }
                break;
            }
        }
        if conn.proto.should_close_transport() {
            if conn.proto.pending_output_len() == 0 {
                return self.finish(k);
            }
            if !conn.has(FLUSHING) {
                // The core is done (its timers too): bound the wait for a peer that does
                // not read.
                let Some(bound) = conn.proto.flush_timeout() else {
                    conn.flags |= BROKEN;
                    return self.finish(k);
                };
                conn.flags |= FLUSHING;
                let at = Instant::now() + bound;
                conn.deadline = Some(at);
                self.timers.push(Reverse((at, k, conn.generation)));
            }
            return;
        }
        let want = conn.proto.poll_timeout();
        self.arm(k, want);
    }

    /// Makes sure the connection's timer fires at `want` (or earlier: a timer that fires
    /// early finds nothing due and arms the next one).
    fn arm(&mut self, k: usize, want: Option<Instant>) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        if let Some(at) = want {
            if conn.deadline.is_none_or(|d| at < d) {
                conn.deadline = Some(at);
                self.timers.push(Reverse((at, k, conn.generation)));
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, k, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(k) else {
                continue;
            };
            if conn.generation != generation || conn.deadline != Some(at) {
                continue; // an entry superseded by an earlier one
            }
            conn.deadline = None;
            let _span = conn_span(conn.id, &conn.socket);
            if conn.has(LINGER) {
                self.remove(k);
                continue;
            }
            if conn.has(FLUSHING) {
                // The peer did not take the output within the bound: drop it.
                tracing::debug!(target: "sockeye::server", id = conn.id, "output not written within close_timeout: dropped");
                conn.flags |= BROKEN;
                self.finish(k);
                continue;
            }
            conn.proto.handle_timeout(now);
            // Buffers grown for large messages are given back here (every ping_interval).
            conn.proto.release_memory();
            dispatch(conn, k, &mut self.local, &self.shared);
            self.service(k);
        }
        if self.timers.len() > 64 && self.timers.len() > 4 * self.conns.len() {
            // Superseded entries pile up only if deadlines keep moving earlier; drop them.
            let conns = &mut self.conns;
            self.timers.retain(|Reverse((at, k, g))| {
                conns
                    .get_mut(*k)
                    .is_some_and(|c| c.generation == *g && c.deadline == Some(*at))
            });
        }
    }

    /// The connection is over for the core (its output written): `on_close`, then end the
    /// writing side and linger, or close.
    fn finish(&mut self, k: usize) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        close_handler(conn, &self.shared.control);
        self.local.topics.leave_all(k);
        // A handshake answered without opening (`process_request`, a refusal, 503) closes
        // at once, as on tokio: only a WebSocket connection lingers for the peer's close.
        let opened = conn.id != 0;
        let linger = if conn.has(BROKEN) {
            None
        } else if !opened {
            let _ = conn.socket.shutdown(Shutdown::Write);
            None
        } else {
            let _ = conn.socket.shutdown(Shutdown::Write);
            conn.proto.linger_timeout()
        };
        match linger {
            Some(linger) if !conn.has(EOF) => {
                conn.flags |= LINGER;
                let at = Instant::now() + linger;
                conn.deadline = Some(at);
                self.timers.push(Reverse((at, k, conn.generation)));
                // What the peer sent meanwhile (no new edge for it).
                self.linger(k);
            }
            _ => self.remove(k),
        }
    }

    /// Lingering: reads and drops what the peer sends, until its end of stream.
    fn linger(&mut self, k: usize) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        match discard_input(&mut conn.socket, &mut self.read_buf) {
            Discarded::Over => self.remove(k),
            // Edge-triggered: no new event comes for what is already there.
            Discarded::More if !conn.has(QUEUED) => {
                conn.flags |= QUEUED;
                self.ready.push(k);
            }
            Discarded::More | Discarded::AllForNow => {}
        }
    }

    fn remove(&mut self, k: usize) {
        if let Some(mut conn) = self.conns.remove(k) {
            close_handler(&mut conn, &self.shared.control);
            self.local.topics.leave_all(k);
            let _ = self.poll.registry().deregister(&mut conn.socket);
        }
    }

    /// Shutting down: no more accepting; open connections close with 1001; handshakes that
    /// arrive get 503 (`Hooks::answer`).
    fn start_closing(&mut self) {
        self.closing = true;
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for k in self.conns.keys() {
            let _span = self.span(k);
            if let Some(conn) = self.conns.get_mut(k) {
                if conn.proto.state() == State::Open {
                    conn.proto.handle_timeout(Instant::now());
                    let _ = conn.proto.close(CloseCode::GOING_AWAY, "");
                }
            }
            self.service(k);
        }
    }
}

/// Queues `message` for connection `k` if it is open and under `write_limit` (the policy of
/// `Hub` and `broadcast`: a slow subscriber never holds up the others), and marks it
/// `DIRTY` for `settle` to write once for everything the turn gave it. Over the limit with
/// what this turn gave it, the connection is first written to (the socket may take it
/// now): only what the socket does not take counts against it.
fn offer<H>(
    conn: &mut Conn<H>,
    k: usize,
    message: &PreparedMessage,
    limit: usize,
    spare: &mut Vec<u8>,
    dirty: &mut Vec<usize>,
) {
    if conn.handler.is_none() || conn.proto.state() != State::Open {
        return;
    }
    // The frame is logged when queued: in the connection's span.
    let _span = conn_span(conn.id, &conn.socket);
    let mut take = true;
    if conn.proto.pending_output_len() > limit {
        write_out(conn);
        take = conn.proto.pending_output_len() <= limit;
    }
    if take {
        lend(&mut conn.proto, spare);
        let _ = conn.proto.send_prepared(message);
    }
    // A write that failed is ended by `service` too.
    if (take || conn.has(BROKEN)) && !conn.has(DIRTY) {
        conn.flags |= DIRTY;
        dirty.push(k);
    }
}

/// Closes a loop's mailbox when the loop's thread leaves `Loop::run`, returning or not.
struct CloseOnDrop(Arc<Mailbox>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Reads into the core's receive buffer up to `missing` bytes of the frame it has started
/// (`Protocol::frame_bytes_missing`). Without `unsafe` the room must be zeroed first
/// (the frame's declared length, at most `max_size`, as a buffered frame would take);
/// still, the 1 MiB echo measured 0.40–0.45 → 0.32–0.37 CPU s/GB (A/B, 4 rounds): one
/// read takes what the socket has, and the kernel writes where the payload stays.
fn read_direct(socket: &mut Stream, proto: &mut Protocol, missing: usize) -> io::Result<usize> {
    let buf = proto.receive_buffer();
    let start = buf.len();
    buf.resize(start + missing, 0);
    let result = socket.read(&mut buf[start..]);
    buf.truncate(start + *result.as_ref().unwrap_or(&0));
    result
}

/// Writes what the connection has to write, as far as the socket takes it; a failed write
/// marks it `BROKEN` (nothing more is written; `service` ends it).
fn write_out<H>(conn: &mut Conn<H>) {
    if conn.has(BROKEN) {
        return;
    }
    while conn.proto.pending_output_len() > 0 {
        match write_output(&mut conn.socket, &conn.proto) {
            Ok(0) => {
                conn.flags |= BROKEN;
                return;
            }
            Ok(n) => conn.proto.consume_output(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(target: "sockeye::server", id = conn.id, "write failed: {e}");
                conn.flags |= BROKEN;
                return;
            }
        }
    }
}

/// A connection's span, entered while the loop works on it, as the tokio server's `conn`
/// span (DESIGN §7): its id (recorded when the handshake gives it one) and remote address, so that its
/// DEBUG frame log and its handler's events say whose they are. Nothing unless DEBUG is on
/// for `sockeye::server` (then the remote address costs a system call).
pub(super) fn conn_span(id: u64, socket: &Stream) -> tracing::span::EnteredSpan {
    conn_span_of(id, || socket.peer_addr())
}

/// [`conn_span`] with the remote address from `remote`, asked only when DEBUG is on (the
/// loop asks the socket; a link keeps its addresses).
pub(super) fn conn_span_of(
    id: u64,
    remote: impl FnOnce() -> Option<std::net::SocketAddr>,
) -> tracing::span::EnteredSpan {
    if !tracing::enabled!(target: "sockeye::server", tracing::Level::DEBUG) {
        return tracing::Span::none().entered();
    }
    let remote = crate::server::Remote(remote());
    if id == 0 {
        // Recorded by `open` when the handshake gives the connection its id.
        let id = tracing::field::Empty;
        return tracing::debug_span!(target: "sockeye::server", "conn", id, remote = %remote)
            .entered();
    }
    tracing::debug_span!(target: "sockeye::server", "conn", id, remote = %remote).entered()
}

/// What [`discard_input`] did.
enum Discarded {
    /// The peer's end of stream, or an error: the lingering is over.
    Over,
    /// Nothing left for now: the next event says when more comes.
    AllForNow,
    /// A turn's worth of reads, and there may be more: the loop must come back to it
    /// (an edge-triggered poll does not report input that is already there).
    More,
}

/// Reads and drops input, up to a turn's worth of reads.
fn discard_input(socket: &mut Stream, buf: &mut [u8]) -> Discarded {
    for _ in 0..READS_PER_TURN {
        match socket.read(buf) {
            Ok(0) => return Discarded::Over,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Discarded::AllForNow,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Discarded::Over,
        }
    }
    Discarded::More
}

/// Gives the connection the loop's write buffer, if it has nothing waiting (its own is then
/// empty, and usually unallocated).
fn lend(proto: &mut Protocol, spare: &mut Vec<u8>) {
    if proto.pending_output_len() == 0 && spare.capacity() > 0 {
        // Both empty: `poll_transmit` swaps them.
        proto.poll_transmit(spare);
    }
}

/// Pieces of the output one write takes (frames and payloads left in place).
const WRITE_SLICES: usize = 64;

/// Writes what the core has to send: with one `write` when it is one piece, a vectored
/// write when large payloads were left in place (`Protocol::set_zero_copy`).
fn write_output(socket: &mut Stream, proto: &Protocol) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
    match proto.pending_output_vectored(&mut slices) {
        1 => socket.write(&slices[0]),
        n => socket.write_vectored(&slices[..n]),
    }
}

/// Takes the (written, empty) write buffer back from the connection, which keeps none.
fn reclaim(proto: &mut Protocol, spare: &mut Vec<u8>) {
    let mut taken = Vec::new();
    // Both empty: `poll_transmit` swaps them.
    proto.poll_transmit(&mut taken);
    if taken.capacity() > spare.capacity() && taken.capacity() <= KEEP_SPARE {
        *spare = taken;
    }
}

/// Hands the core's events to the handshake and the handler.
fn dispatch<F, H>(conn: &mut Conn<H>, slot: usize, local: &mut Local, shared: &Shared<F>)
where
    F: Fn(&Request<()>) -> H,
    H: Handler,
{
    while let Some(event) = conn.proto.poll_event() {
        match event {
            Event::Message(message) => call(conn, slot, local, |h, ws| h.on_message(ws, message)),
            Event::Request(request) => open(conn, slot, local, shared, request),
            Event::Pong { payload, .. } => {
                call(conn, slot, local, |h, ws| h.on_pong(ws, &payload));
            }
            Event::Fragment(fragment) => {
                call(conn, slot, local, |h, ws| h.on_fragment(ws, fragment));
            }
            Event::Close(_) | Event::Ping(_) | Event::Response(_) => {}
        }
    }
}

/// Answers the handshake request: the hooks, then (for a `101`) the factory and `on_open`.
fn open<F, H>(
    conn: &mut Conn<H>,
    slot: usize,
    local: &mut Local,
    shared: &Shared<F>,
    request: Box<Request<()>>,
) where
    F: Fn(&Request<()>) -> H,
    H: Handler,
{
    let closing = shared.control.closing.load(Ordering::Acquire);
    let (response, granted) = shared.hooks.answer(&mut conn.proto, &request, closing);
    let status = response.status();
    if let Err(e) = conn.proto.send_response(&response) {
        tracing::info!(target: "sockeye::server", "opening handshake failed: {e}");
        return;
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        crate::server::log_http_answer(request.uri().path(), status);
        return;
    }
    conn.id = crate::connection::next_id();
    // The span this turn entered (`conn_span`) had no id yet.
    tracing::Span::current().record("id", conn.id);
    match catch_unwind(AssertUnwindSafe(|| (shared.factory)(&request))) {
        Ok(handler) => conn.handler = Some(handler),
        Err(_) => {
            tracing::error!(target: "sockeye::server", id = conn.id, "connection factory panicked");
            conn.proto.fail(CloseCode::INTERNAL_ERROR, "");
            return;
        }
    }
    shared.control.open.fetch_add(1, Ordering::AcqRel);
    // The peer's address is asked of the socket only when the event is logged.
    tracing::info!(target: "sockeye::server", id = conn.id, remote = %crate::server::Remote(conn.socket.peer_addr()), "connection open");
    // An async handler's connection keeps the request (`tasks::AsyncConn::on_open`), and
    // the response if a hook may have changed it.
    let mut granted = granted;
    if shared.hooks.process_response.is_some() {
        let (parts, _) = response.clone().into_parts();
        let head = http::Response::from_parts(parts, ()).into();
        granted.get_or_insert_default().response = Some(head);
    }
    local.request = Some((request, granted));
    call(conn, slot, local, |h, ws| h.on_open(ws));
    local.request = None;
}

/// Runs one of the handler's callbacks; a panic fails the connection with 1011.
fn call<H: Handler>(
    conn: &mut Conn<H>,
    slot: usize,
    local: &mut Local,
    f: impl FnOnce(&mut H, &mut Socket<'_>),
) {
    let Conn {
        proto,
        socket,
        handler,
        id,
        generation,
        ..
    } = conn;
    let Some(handler) = handler.as_mut() else {
        return;
    };
    let mut ws = Socket {
        proto,
        socket,
        id: *id,
        local,
        slot,
        generation: *generation,
    };
    if catch_unwind(AssertUnwindSafe(|| f(handler, &mut ws))).is_err() {
        tracing::error!(target: "sockeye::server", id = *id, "connection handler panicked");
        proto.fail(CloseCode::INTERNAL_ERROR, "");
    }
    if std::mem::take(&mut local.hold) {
        conn.held = true;
    }
    if std::mem::take(&mut local.resume) {
        conn.held = false;
    }
}

/// `on_close`, once, for a connection that opened.
fn close_handler<H: Handler>(conn: &mut Conn<H>, control: &Control) {
    let Some(mut handler) = conn.handler.take() else {
        return;
    };
    control.open.fetch_sub(1, Ordering::AcqRel);
    let closed = closed_of(&conn.proto);
    tracing::info!(target: "sockeye::server", id = conn.id, "connection closed ({})", closed.code());
    if catch_unwind(AssertUnwindSafe(|| handler.on_close(&closed))).is_err() {
        tracing::error!(target: "sockeye::server", id = conn.id, "connection handler panicked in on_close");
    }
}

/// What an idle connection is made of on this front end: its slot and its timer entry.
/// Guards against growth (docs/benchmarks.md, "Memory per idle connection"); 64-bit only.
#[cfg(all(test, target_pointer_width = "64"))]
mod idle_size {
    use std::mem::size_of;
    use std::time::Instant;

    use super::Conn;
    use crate::reactor::Socket;
    use crate::Message;

    #[test]
    fn a_connection_is_the_core_and_a_few_words() {
        let echo = |ws: &mut Socket<'_>, m: Message| drop(ws.send(m));
        fn size_with<H>(_: &H) -> usize {
            size_of::<Conn<H>>()
        }
        let conn = size_with(&echo);
        let core = size_of::<crate::proto::Protocol>();
        // The socket is TCP or Unix (`net::Stream`): a descriptor and a tag, 8 bytes in a
        // release build, 24 in a debug one (where mio's sockets carry their selector's id).
        let socket = size_of::<super::Stream>();
        assert!(socket <= if cfg!(debug_assertions) { 24 } else { 8 });
        assert!(
            conn <= core + 40 + socket,
            "Conn: {conn} bytes (Protocol {core})"
        );
        // An async handler's connection: its handler in the slot is the link's pointer.
        let async_conn = size_of::<Conn<crate::reactor::tasks::AsyncConn>>();
        assert!(
            async_conn <= core + 56 + socket,
            "Conn<AsyncConn>: {async_conn} bytes"
        );
        assert!(core <= 392, "Protocol: {core} bytes");
        assert_eq!(size_of::<std::cmp::Reverse<(Instant, usize, u32)>>(), 32);
    }
}
