//! Async handlers on the event loops: python-websockets' model (`async fn handler(ws)`,
//! `recv().await`, `send().await`) without a tokio task or a tokio registration per
//! connection. The handler's future is polled by the loop that owns the connection; what it
//! sends waits in the connection's [`Link`] until the loop moves it into the core after the
//! poll, so everything one poll sends leaves in one write.
//!
//! The pieces: a [`Link`] per connection (what its [`Connection`] handles and the loop
//! share, under one mutex; it is also the future's waker), an [`AsyncConn`] (the
//! connection's [`Handler`] in the loop: it fills the inbox and tells the link how the
//! connection ends), a task per handler future in the loop's `tasks` slab, and [`Work`]: a
//! task to poll or a link to flush, queued on the loop's own thread in a thread-local list
//! and from other threads through the loop's mailbox.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};

use super::{Command, Handler, Mailbox, Socket};
use crate::addresses::Addresses;
use crate::connection::BusyGuard;
use crate::error::{Closed, Error, Result};
use crate::head::RequestHead;
use crate::proto::utf8::Utf8Validator;
use crate::proto::Error::Misuse;
use crate::proto::{CloseCode, Fragment, Message, MessageKind, PreparedMessage, Side, State};
use crate::queue::{FragmentsState, Inbox, Item};
use crate::BoxError;

/// A handler's future, as the loop keeps it.
pub(super) type TaskFuture = Pin<Box<dyn Future<Output = std::result::Result<(), BoxError>>>>;

/// The user's handler, shared by every connection of the server.
pub(super) type HandlerFn = dyn Fn(crate::Connection) -> TaskFuture + Send + Sync;

/// One handler future in a loop's `tasks` slab.
pub(super) struct Task {
    pub(super) future: TaskFuture,
    pub(super) link: Arc<Link>,
}

/// Work for a loop about one async connection.
pub(super) enum Work {
    /// Poll the link's handler future (it was woken), then flush.
    Poll(Arc<Link>),
    /// Move what the link's handles queued (sends, a close, a resumed read) into the
    /// connection and write it.
    Flush(Arc<Link>),
    /// A publish from a connection that has closed (`Connection::publish`).
    Publish(Box<str>, Message),
}

thread_local! {
    /// On a loop thread: the loop (its mailbox's address) and the work queued from this
    /// thread, which the loop runs before it polls again (no system call to wake itself).
    static CURRENT: RefCell<Option<(usize, Vec<Work>)>> = const { RefCell::new(None) };
}

/// Makes this thread the loop of `mailbox`: work for it from here is queued locally.
pub(super) fn enter_loop(mailbox: &Arc<Mailbox>) {
    CURRENT.with(|c| *c.borrow_mut() = Some((Arc::as_ptr(mailbox) as usize, Vec::new())));
}

/// Takes the work queued on this loop thread into `into` (which must be empty).
pub(super) fn take_work(into: &mut Vec<Work>) {
    CURRENT.with(|c| {
        if let Some((_, queued)) = c.borrow_mut().as_mut() {
            std::mem::swap(queued, into);
        }
    });
}

/// Queues `work` that came through the mailbox on this loop thread.
pub(super) fn push_local(work: Work) {
    CURRENT.with(|c| {
        if let Some((_, queued)) = c.borrow_mut().as_mut() {
            queued.push(work);
        }
    });
}

/// Whether work is queued on this loop thread.
pub(super) fn has_work() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(|(_, w)| !w.is_empty()))
}

/// Queues `work` for the loop of `mailbox`: in the thread-local list when this is that
/// loop's thread, through its mailbox otherwise.
fn schedule(mailbox: &Arc<Mailbox>, work: Work) {
    let here = Arc::as_ptr(mailbox) as usize;
    let mut work = Some(work);
    // When the thread's locals are being torn down (a send from a thread-local
    // destructor), `try_with` fails and the work goes through the mailbox: right whatever
    // thread this is (a loop that has ended drops it).
    let _ = CURRENT.try_with(|c| {
        if let Some((at, queued)) = c.borrow_mut().as_mut() {
            if *at == here {
                queued.extend(work.take());
            }
        }
    });
    if let Some(work) = work {
        mailbox.push(Command::Work(work));
    }
}

thread_local! {
    /// Sends left to the handler future this loop thread is polling; `None` outside such
    /// a poll (a send from a tokio task takes part in tokio's budget instead).
    static BUDGET: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Sends one poll of a handler may make before it yields to the loop (which then writes
/// them and serves its other connections). tokio gives a task 128 units per poll.
const SENDS_PER_POLL: u32 = 128;

/// Runs one poll of a handler future with a fresh send budget.
pub(super) fn with_budget<R>(poll: impl FnOnce() -> R) -> R {
    struct Restore(Option<u32>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BUDGET.set(self.0);
        }
    }
    let _restore = Restore(BUDGET.replace(Some(SENDS_PER_POLL)));
    poll()
}

/// Runs `send` within the budget: a handler that sends in a tight loop, never waiting (under
/// `write_limit`), yields every [`SENDS_PER_POLL`] sends, so that what it sent is written
/// while it goes on and the loop's other connections get their turn (tokio's cooperative
/// budget does this for a task; the loop has its own, as it polls outside tokio's tasks).
#[inline]
fn within_budget(
    cx: &mut Context<'_>,
    send: impl FnOnce(&mut Context<'_>) -> Poll<Result<()>>,
) -> Poll<Result<()>> {
    match BUDGET.get() {
        Some(0) => {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        Some(left) => {
            let sent = send(cx);
            if sent.is_ready() {
                BUDGET.set(Some(left - 1));
            }
            sent
        }
        None => {
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            let sent = send(cx);
            if sent.is_ready() {
                coop.made_progress();
            }
            sent
        }
    }
}

/// What is queued for the connection by its handles.
pub(super) enum Out {
    Message(Message),
    /// A message encoded once for many connections (`broadcast`, a `Hub`), shared by them.
    Prepared(Arc<PreparedMessage>),
    /// A frame of a fragmented message (`send_fragmented`).
    Fragment(MessageKind, Bytes, bool),
    /// `Connection::subscribe`, `unsubscribe`, `publish`.
    Subscribe(Box<str>),
    Unsubscribe(Box<str>),
    Publish(Box<str>, Message),
    /// A ping with this payload (`Connection::ping`).
    Ping(Bytes),
    Close(CloseCode, String),
    Fail(CloseCode),
}

/// What a connection's handles and its loop share.
pub(crate) struct Link {
    mailbox: Arc<Mailbox>,
    /// The connection's slot in its loop, and its handler future's slot in the loop's tasks.
    pub(super) slot: u32,
    pub(super) task: u32,
    pub(super) id: u64,
    max_queue: u32,
    write_limit: u32,
    /// A `Work::Poll` is queued (wakes in between are one poll).
    poll_queued: AtomicBool,
    /// A `recv` is waiting (an atomic, not in the state: two fewer locks per message).
    recv_busy: AtomicBool,
    /// Kept as its bytes, parsed again if asked for (`crate::head`).
    request: RequestHead,
    subprotocol: Option<Box<str>>,
    addresses: Addresses,
    state: Mutex<LinkState>,
}

struct LinkState {
    /// Messages received, waiting for `recv`.
    /// Messages and fragments received, waiting for `recv` or `recv_streaming`.
    inbox: Inbox,
    /// What handles queued since the loop last flushed.
    outbox: Vec<Out>,
    /// Bytes waiting to be written: the core's, as of the loop's last write, and the
    /// outbox's.
    buffered: usize,
    recv_waker: Option<Waker>,
    /// Senders waiting for `buffered` to go under `write_limit`, and `wait_closed`s.
    waiting: Option<Box<Waiting>>,
    /// A `Work::Flush` is queued.
    flush_queued: bool,
    /// A close was queued (by `close` or by the end of the handler).
    closing: bool,
    /// The `Stream` of messages has ended (after `None` or an error).
    stream_done: bool,
    /// The loop stopped reading: `max_queue` messages wait.
    held: bool,
    /// Closing with `max_queue` items waiting: what comes from now on is dropped.
    dropping: bool,
    state: State,
    /// How it ended, once it did (`state` is `Closed`).
    closed: Option<Box<Closed>>,
    /// The round trip of the latest ping answered (keepalive or `ping`), in microseconds;
    /// 0 for none yet.
    latency_us: u32,
}

/// A `Connection::ping` of an event loop's connection.
struct LinkPing {
    id: u64,
    payload: Bytes,
    /// The loop put it in the core (a pong can answer it).
    sent: bool,
    /// The core refused it: a keepalive ping in flight has the same payload.
    refused: bool,
    /// The round trip, once answered.
    rtt: Option<Duration>,
}

/// Who waits on a connection, boxed: most connections never have anyone. Each kind is
/// woken only by what it waits for (a waiter woken by every write would be polled in a
/// loop: a handler in `wait_closed` spun its loop in the first version).
#[derive(Default)]
struct Waiting {
    /// Senders waiting for `buffered` to go under `write_limit` (or the close).
    senders: Vec<Waker>,
    /// `wait_closed`s and `close`s (woken at the end).
    closers: Vec<Waker>,
    /// `ping`s (woken by pongs and at the end).
    pingers: Vec<Waker>,
    /// Receivers beyond the first (`recv_waker`): a `Stream` polled while a `recv` waits
    /// elsewhere, say. Woken with it, so that none is forgotten.
    receivers: Vec<Waker>,
    /// `Connection::ping`s waiting for their pong, in the order queued.
    pings: Vec<LinkPing>,
    /// `Connection::on_close` hooks, run once the connection is over.
    close_hooks: Vec<Box<dyn FnOnce() + Send>>,
    /// The `send_fragmented` whose message is being sent: other messages wait for it
    /// (here and not in the link's state, as fragmented messages are rare).
    fragmented: Option<NonZeroU64>,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.senders.is_empty()
            && self.closers.is_empty()
            && self.pingers.is_empty()
            && self.receivers.is_empty()
            && self.pings.is_empty()
            && self.close_hooks.is_empty()
            && self.fragmented.is_none()
    }

    fn list(&mut self, which: Waiters) -> &mut Vec<Waker> {
        match which {
            Waiters::Senders => &mut self.senders,
            Waiters::Closers => &mut self.closers,
            Waiters::Pingers => &mut self.pingers,
            Waiters::Receivers => &mut self.receivers,
        }
    }
}

/// Which waiters to wake.
#[derive(Clone, Copy)]
enum Waiters {
    Senders,
    Closers,
    Pingers,
    Receivers,
}

/// Ping payloads of async connections: unique in the process, so a late pong never answers
/// a later ping.
static PING_TOKENS: AtomicU64 = AtomicU64::new(1);

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection's span, entered while the loop polls its handler or flushes what its
    /// handles queued (see `event_loop::conn_span`).
    pub(super) fn span(&self) -> tracing::span::EnteredSpan {
        super::event_loop::conn_span_of(self.id, || self.addresses.remote())
    }

    /// A receiver took from the inbox: it waits no more (no stale waker for the next
    /// message to wake for nothing), an emptied inbox gives its memory back.
    fn taken(st: &mut LinkState) {
        st.recv_waker = None;
        st.inbox.release_if_empty();
    }

    /// Reading resumes (a flush) if it was held at `max_queue` and the inbox is down to a
    /// quarter.
    fn resume_if_room(self: &Arc<Self>, st: MutexGuard<'_, LinkState>) {
        if st.held && st.inbox.len() <= self.max_queue as usize / 4 {
            self.flush_later(st);
        }
    }

    /// Queues a flush unless one is queued already (`st` is the locked state).
    fn flush_later(self: &Arc<Self>, mut st: MutexGuard<'_, LinkState>) {
        if std::mem::replace(&mut st.flush_queued, true) {
            return;
        }
        drop(st);
        schedule(&self.mailbox, Work::Flush(self.clone()));
    }

    /// The loop moves what was queued into the connection (`ws`): sends, a close; reading
    /// resumes once the inbox has room again.
    pub(super) fn flush_into(&self, ws: &mut Socket<'_>) {
        let mut st = self.lock();
        st.flush_queued = false;
        let outbox = std::mem::take(&mut st.outbox);
        // Reading resumes once the inbox has room, and for good once a close is queued
        // (the peer's close frame must be read; nobody may `recv` any more).
        if st.held && (st.inbox.len() <= self.max_queue as usize / 4 || st.closing) {
            st.held = false;
            ws.local.resume = true;
        }
        drop(st);
        // Whole messages queued while another sender's fragmented message is under way
        // (a `Sink` between `poll_ready` and `start_send`) wait for its last fragment.
        let mut deferred = Vec::new();
        for out in outbox {
            // What finds the connection closing is dropped, as `send` would fail.
            match out {
                Out::Message(_) | Out::Prepared(_) if ws.proto.is_sending_fragments() => {
                    deferred.push(out);
                }
                Out::Message(m) => {
                    let _ = ws.send(m);
                }
                Out::Prepared(m) => {
                    let _ = ws.send_prepared(&m);
                }
                Out::Fragment(kind, data, fin) => {
                    if ws.proto.send_fragment(kind, &data, fin).is_err() {
                        // The message can never end: as the tokio connection does.
                        ws.proto
                            .fail(CloseCode::INTERNAL_ERROR, "fragmented message refused");
                    }
                    if fin {
                        for out in deferred.drain(..) {
                            match out {
                                Out::Message(m) => drop(ws.send(m)),
                                Out::Prepared(m) => drop(ws.send_prepared(&m)),
                                _ => {}
                            }
                        }
                    }
                }
                Out::Ping(payload) => {
                    let sent = ws.ping(&payload).is_ok();
                    self.ping_sent(&payload, sent);
                }
                Out::Close(code, reason) => {
                    let _ = ws.close(code, &reason);
                }
                Out::Fail(code) => ws.proto.fail(code, ""),
                Out::Subscribe(topic) => {
                    ws.subscribe(&topic);
                }
                Out::Unsubscribe(topic) => {
                    ws.unsubscribe(&topic);
                }
                Out::Publish(topic, m) => ws.publish(&topic, m),
            }
        }
        if !deferred.is_empty() {
            // Still under way: they go first at the next flush.
            let mut st = self.lock();
            deferred.append(&mut st.outbox);
            st.outbox = deferred;
        }
    }

    /// The loop wrote what it could: `buffered` is what the core still holds. Wakes the
    /// senders when it is under `write_limit`.
    pub(super) fn written(&self, buffered: usize) {
        let mut st = self.lock();
        let queued: usize = st.outbox.iter().map(out_len).sum();
        st.buffered = buffered + queued;
        let waiters = if st.buffered <= self.write_limit as usize {
            take_waiters(&mut st, Waiters::Senders)
        } else {
            Vec::new()
        };
        drop(st);
        wake_all(waiters);
    }

    /// The closing handshake started (either side, or a shutdown): sends fail from now on,
    /// and reading is never held again. `closed` is what is known of the end so far.
    pub(super) fn closing(&self, closed: Closed) {
        let mut st = self.lock();
        if st.state == State::Closed {
            return;
        }
        st.state = State::Closing;
        st.closing = true;
        st.closed = Some(Box::new(closed));
        // Senders waiting for room fail now.
        let waiters = take_waiters(&mut st, Waiters::Senders);
        drop(st);
        wake_all(waiters);
    }

    /// The connection is over: `recv` hands out what waits, then the end.
    fn ended(&self, closed: &Closed) {
        // The close hooks run before the connection says it is closed (as on tokio): who
        // sees `closed()` sees what the hooks did. Hooks added while they run run too.
        loop {
            let hooks = take_hooks(&mut self.lock());
            if hooks.is_empty() {
                break;
            }
            self.run_hooks(hooks);
        }
        let mut st = self.lock();
        // One added between the last run and now (from then on `on_close` runs them).
        let late = take_hooks(&mut st);
        st.state = State::Closed;
        st.closed = Some(Box::new(closed.clone()));
        st.buffered = 0;
        let outbox = std::mem::take(&mut st.outbox);
        let recv = st.recv_waker.take();
        let mut waiters = take_waiters(&mut st, Waiters::Senders);
        waiters.extend(take_waiters(&mut st, Waiters::Closers));
        waiters.extend(take_waiters(&mut st, Waiters::Pingers));
        waiters.extend(take_waiters(&mut st, Waiters::Receivers));
        drop(st);
        self.run_hooks(late);
        // Sends die with the connection; publishes do not (they are the topic's).
        for out in outbox {
            if let Out::Publish(topic, message) = out {
                schedule(&self.mailbox, Work::Publish(topic, message));
            }
        }
        wake_all(recv.into_iter().chain(waiters));
    }

    fn run_hooks(&self, hooks: Vec<Box<dyn FnOnce() + Send>>) {
        for hook in hooks {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)).is_err() {
                tracing::error!(target: "sockeye::server", id = self.id, "a close hook panicked");
            }
        }
    }

    /// A poll of the handler future starts: a wake from now on queues another.
    pub(super) fn start_poll(&self) {
        self.poll_queued.store(false, Ordering::Release);
    }

    /// The handler future ended: queues the close (1000) or the failure (1011) it calls for.
    pub(super) fn finish(self: &Arc<Self>, out: Out) {
        let mut st = self.lock();
        if st.state == State::Closed {
            return;
        }
        st.closing = true;
        st.outbox.push(out);
        self.flush_later(st);
    }
}

impl Wake for Link {
    fn wake(self: Arc<Self>) {
        if !self.poll_queued.swap(true, Ordering::AcqRel) {
            let mailbox = self.mailbox.clone();
            schedule(&mailbox, Work::Poll(self));
        }
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.poll_queued.swap(true, Ordering::AcqRel) {
            schedule(&self.mailbox, Work::Poll(self.clone()));
        }
    }
}

/// A slot index or a limit as kept in a [`Link`] (4 billion of either is out of reach; a
/// larger limit is as good as none).
fn narrow(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn out_len(out: &Out) -> usize {
    match out {
        Out::Message(m) => m.len(),
        Out::Prepared(m) => m.message().len(),
        Out::Fragment(_, data, _) => data.len(),
        Out::Ping(_)
        | Out::Close(..)
        | Out::Fail(_)
        | Out::Subscribe(_)
        | Out::Unsubscribe(_)
        | Out::Publish(..) => 0,
    }
}

/// The connection's [`Handler`] in the loop, for [`super::ServerBuilder::serve_async`]:
/// starts the handler future when the connection opens, feeds the inbox, and tells the
/// link how the connection ends.
pub(super) enum AsyncConn {
    /// Until the connection opens: the handler to start.
    Start(Arc<HandlerFn>),
    Open(Arc<Link>),
    Over,
}

impl AsyncConn {
    /// A message or fragment for `recv`: into the inbox, and the receiver woken.
    #[inline]
    fn received(&mut self, ws: &mut Socket<'_>, item: Item) {
        let AsyncConn::Open(link) = self else {
            return;
        };
        let mut st = link.lock();
        // Closing (the handler may be gone): reading goes on until the peer's close frame,
        // and what comes meanwhile is kept up to `max_queue`, the rest dropped (all of the
        // rest: a message must not lose a fragment in its middle).
        if st.closing && st.inbox.len() >= link.max_queue as usize {
            st.dropping = true;
        }
        if !st.dropping {
            st.inbox.push(item);
        }
        if !st.closing && st.inbox.len() >= link.max_queue as usize && !st.held {
            // Reading stops until `recv` takes the inbox down to a quarter.
            st.held = true;
            ws.local.hold = true;
        }
        let waker = st.recv_waker.take();
        let others = take_waiters(&mut st, Waiters::Receivers);
        drop(st);
        wake_all(waker.into_iter().chain(others));
    }
}

impl Handler for AsyncConn {
    fn on_open(&mut self, ws: &mut Socket<'_>) {
        let (AsyncConn::Start(handler), Some((request, granted))) =
            (&*self, ws.local.request.take())
        else {
            return;
        };
        let handler = handler.clone();
        let link = Arc::new(Link {
            mailbox: ws.local.mailbox.clone(),
            slot: narrow(ws.slot),
            task: narrow(ws.local.tasks.next_key()),
            id: ws.id,
            max_queue: narrow(ws.local.max_queue),
            write_limit: narrow(ws.local.write_limit),
            poll_queued: AtomicBool::new(true),
            recv_busy: AtomicBool::new(false),
            request: RequestHead::new(*request, granted),
            subprotocol: ws.subprotocol().map(Box::from),
            addresses: Addresses::new(ws.local_addr(), ws.remote_addr()),
            state: Mutex::new(LinkState {
                inbox: Inbox::default(),
                outbox: Vec::new(),
                buffered: 0,
                recv_waker: None,
                waiting: None,
                flush_queued: false,
                closing: false,
                stream_done: false,
                held: false,
                dropping: false,
                state: State::Open,
                closed: None,
                latency_us: 0,
            }),
        });
        let future = handler(LoopConn { link: link.clone() }.into());
        let task = ws.local.tasks.insert(Task {
            future,
            link: link.clone(),
        });
        debug_assert_eq!(task, link.task as usize);
        link.mailbox.register(ws.slot, Some(&link));
        schedule(&link.mailbox, Work::Poll(link.clone()));
        *self = AsyncConn::Open(link);
    }

    const STREAMS: bool = true;

    fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
        self.received(ws, Item::Message(message));
    }

    fn on_fragment(&mut self, ws: &mut Socket<'_>, fragment: Fragment) {
        self.received(ws, Item::Fragment(fragment));
    }

    fn on_drain(&mut self, ws: &mut Socket<'_>) {
        if let AsyncConn::Open(link) = self {
            link.written(ws.buffered_amount());
        }
    }

    fn on_closing(&mut self, ws: &mut Socket<'_>) {
        if let AsyncConn::Open(link) = self {
            link.closing(super::closed_of(ws.proto));
        }
    }

    fn on_pong(&mut self, ws: &mut Socket<'_>, _payload: &[u8]) {
        let AsyncConn::Open(link) = self else {
            return;
        };
        let latency = ws.latency();
        let mut st = link.lock();
        if let Some(latency) = latency {
            let us = latency.as_micros().clamp(1, u32::MAX.into());
            st.latency_us = u32::try_from(us).unwrap_or(u32::MAX);
        }
        if let Some(waiting) = st.waiting.as_deref_mut() {
            // A pong answers its ping and every earlier one, the keepalive's included (the
            // core's rule; a peer may answer only the latest ping): each of ours that the
            // core no longer waits for was answered.
            for ping in waiting.pings.iter_mut() {
                if ping.sent && ping.rtt.is_none() && !ws.proto.ping_waiting(&ping.payload) {
                    ping.rtt = latency.or(Some(Duration::ZERO));
                }
            }
        }
        let waiters = take_waiters(&mut st, Waiters::Pingers);
        drop(st);
        wake_all(waiters);
    }

    fn on_close(&mut self, closed: &Closed) {
        if let AsyncConn::Open(link) = std::mem::replace(self, AsyncConn::Over) {
            link.mailbox.register(link.slot as usize, None);
            link.ended(closed);
        }
    }
}

/// A connection served by an async handler on an event loop
/// ([`ServerBuilder::serve_async`](super::ServerBuilder::serve_async)), behind
/// [`crate::Connection`]: python-websockets' API for about a kilobyte per idle connection.
///
/// Cheap to clone, `Send + Sync`: other tasks and threads may send on it and wait for its
/// end. What the handler sends during one poll leaves in one write. Sends from elsewhere
/// reach the connection through its loop's mailbox, in order.
#[derive(Clone)]
pub(crate) struct LoopConn {
    link: Arc<Link>,
}

impl From<Arc<Link>> for LoopConn {
    fn from(link: Arc<Link>) -> Self {
        LoopConn { link }
    }
}

/// Forgets a `ping` when its `Pong` is dropped (the list is freed once empty).
pub(crate) struct LoopPong {
    link: Arc<Link>,
    id: u64,
}

impl Future for LoopPong {
    type Output = Result<Duration>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.link.lock();
        let entry = (st.waiting.as_deref()).and_then(|w| w.pings.iter().find(|p| p.id == self.id));
        match entry.map(|p| (p.rtt, p.refused)) {
            Some((Some(latency), _)) => return Poll::Ready(Ok(latency)),
            Some((None, true)) => {
                let refused = Misuse("a ping with this payload is already waiting");
                return Poll::Ready(Err(refused.into()));
            }
            Some(_) if st.state != State::Closed => {}
            // Closed first.
            _ => return Poll::Ready(Err(Error::ConnectionClosed(closed_so_far(&st)))),
        }
        add_waiter(&mut st, Waiters::Pingers, cx.waker());
        Poll::Pending
    }
}

impl Drop for LoopPong {
    fn drop(&mut self) {
        let mut st = self.link.lock();
        if let Some(waiting) = st.waiting.as_deref_mut() {
            waiting.pings.retain(|p| p.id != self.id);
            if waiting.is_empty() {
                st.waiting = None;
            }
        }
    }
}

impl Link {
    /// The loop put the ping with this payload in the core (`sent`), or the core refused it
    /// (a keepalive ping has the same payload): then its `Pong` ends with an error.
    fn ping_sent(&self, payload: &[u8], sent: bool) {
        let mut st = self.lock();
        let Some(waiting) = st.waiting.as_deref_mut() else {
            return;
        };
        // The unanswered ping with this payload (an answered one may share it).
        let this = |p: &LinkPing| p.payload[..] == *payload && p.rtt.is_none() && !p.refused;
        if sent {
            for ping in waiting.pings.iter_mut().filter(|p| this(p)) {
                ping.sent = true;
            }
            return;
        }
        for ping in waiting.pings.iter_mut().filter(|p| this(p)) {
            ping.refused = true;
        }
        let waiters = take_waiters(&mut st, Waiters::Pingers);
        drop(st);
        wake_all(waiters);
    }
}

/// The messages of an event loop's connection, each as one fragment
/// ([`crate::Connection::recv_streaming`]: the loop joins a message's frames before the
/// handler sees it).
pub(crate) struct LoopFragments<'a> {
    conn: &'a LoopConn,
    _busy: BusyGuard<'a>,
    state: FragmentsState,
}

impl LoopFragments<'_> {
    /// The next fragment, as soon as it arrives (see `TaskFragments::next`).
    pub(crate) async fn next(&mut self) -> Result<Option<Fragment>> {
        if self.state == FragmentsState::Done {
            return Ok(None);
        }
        let (conn, state) = (self.conn, &mut self.state);
        let got = poll_fn(|cx| conn.poll_item(cx, |inbox| inbox.take_fragment(state))).await;
        match got {
            Ok(fragment) => Ok(Some(fragment)),
            Err(closed) if closed.is_ok() && self.state == FragmentsState::Start => Ok(None),
            Err(closed) => Err(Error::ConnectionClosed(closed)),
        }
    }
}

/// A fragmented message being sent: other senders wait until its last frame. Dropped
/// before that (its sender cancelled), it fails the connection, as the message can never
/// end.
pub(crate) struct LoopFragmented<'a> {
    conn: &'a LoopConn,
    kind: MessageKind,
    owner: NonZeroU64,
    started: bool,
    /// Text: the fragments so far are valid UTF-8.
    utf8: Option<Box<Utf8Validator>>,
}

impl LoopFragmented<'_> {
    /// Sends the next frame of the message (`fin` for the last).
    pub(crate) async fn send(&mut self, data: &[u8], fin: bool) -> Result<()> {
        if let Some(utf8) = self.utf8.as_mut() {
            // The core's rule, checked here: an error now, not a 1011 at the flush.
            utf8.feed_fragment(data, fin)?;
        }
        let mut data = Some(Bytes::copy_from_slice(data));
        let (conn, kind, owner) = (self.conn, self.kind, self.owner);
        poll_fn(|cx| {
            within_budget(cx, |cx| {
                let mut st = conn.link.lock();
                std::task::ready!(conn.poll_room(&mut st, cx, Some(owner)))?;
                let data = data.take().expect("polled after completion");
                st.buffered += data.len();
                set_fragmented(&mut st, (!fin).then_some(owner));
                st.outbox.push(Out::Fragment(kind, data, fin));
                let senders = if fin {
                    // Whole messages waiting for this one may go.
                    take_waiters(&mut st, Waiters::Senders)
                } else {
                    Vec::new()
                };
                conn.link.flush_later(st);
                wake_all(senders);
                Poll::Ready(Ok(()))
            })
        })
        .await?;
        self.started = !fin;
        Ok(())
    }
}

impl Drop for LoopFragmented<'_> {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        let mut st = self.conn.link.lock();
        if fragmented(&st) == Some(self.owner) {
            set_fragmented(&mut st, None);
        }
        st.closing = true;
        st.outbox.push(Out::Fail(CloseCode::INTERNAL_ERROR));
        let senders = take_waiters(&mut st, Waiters::Senders);
        self.conn.link.flush_later(st);
        wake_all(senders);
    }
}

impl LoopConn {
    pub(crate) fn id(&self) -> u64 {
        self.link.id
    }

    pub(crate) fn side(&self) -> Side {
        Side::Server
    }

    pub(crate) fn request(&self) -> &Request<()> {
        self.link.request.get()
    }

    pub(crate) fn response(&self) -> &Response<()> {
        (self.link.request).answer(&self.link.mailbox.config, self.subprotocol())
    }

    pub(crate) fn username(&self) -> Option<&str> {
        self.link.request.username()
    }

    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.link.request.param(name)
    }

    pub(crate) fn params_slice(&self) -> &[(Arc<str>, Box<str>)] {
        self.link.request.params()
    }

    pub(crate) fn route(&self) -> Option<usize> {
        self.link.request.route()
    }

    pub(crate) fn remote_addr(&self) -> Option<SocketAddr> {
        self.link.addresses.remote()
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.link.addresses.local()
    }

    pub(crate) fn subprotocol(&self) -> Option<&str> {
        self.link.subprotocol.as_deref()
    }

    pub(crate) fn state(&self) -> State {
        let st = self.link.lock();
        match st.state {
            // A close queued (by a handle, or by the handler's end) and not yet flushed:
            // closing already, as on tokio, where `close` reaches the core at once.
            State::Open if st.closing => State::Closing,
            state => state,
        }
    }

    pub(crate) fn closed(&self) -> Option<Closed> {
        let st = self.link.lock();
        (st.state == State::Closed).then(|| closed_so_far(&st))
    }

    pub(crate) fn close_code(&self) -> CloseCode {
        closed_so_far(&self.link.lock()).code()
    }

    pub(crate) fn close_reason(&self) -> String {
        let closed = closed_so_far(&self.link.lock());
        closed.received.map(|f| f.reason).unwrap_or_default()
    }

    pub(crate) fn latency(&self) -> Option<Duration> {
        match self.link.lock().latency_us {
            0 => None,
            us => Some(Duration::from_micros(us.into())),
        }
    }

    pub(crate) fn buffered_amount(&self) -> usize {
        self.link.lock().buffered
    }

    /// Queues a ping (with `payload`, else a token unique in the process); its `Pong`
    /// resolves when the answer comes.
    pub(crate) fn ping(&self, payload: Option<&[u8]>) -> Result<LoopPong> {
        let id = PING_TOKENS.fetch_add(1, Ordering::Relaxed);
        let payload = match payload {
            Some(p) if p.len() > 125 => {
                return Err(crate::proto::Error::Misuse("ping payload over 125 bytes").into())
            }
            Some(p) => Bytes::copy_from_slice(p),
            None => Bytes::copy_from_slice(&id.to_be_bytes()),
        };
        let mut st = self.link.lock();
        if st.state != State::Open || st.closing {
            return Err(Error::ConnectionClosed(closed_so_far(&st)));
        }
        let waiting = st.waiting.get_or_insert_with(Box::default);
        // Only an unanswered ping blocks its payload (as the core's record on tokio).
        if waiting
            .pings
            .iter()
            .any(|p| p.payload == payload && p.rtt.is_none() && !p.refused)
        {
            return Err(
                crate::proto::Error::Misuse("a ping with this payload is already waiting").into(),
            );
        }
        waiting.pings.push(LinkPing {
            id,
            payload: payload.clone(),
            sent: false,
            refused: false,
            rtt: None,
        });
        st.outbox.push(Out::Ping(payload));
        self.link.flush_later(st);
        Ok(LoopPong {
            link: self.link.clone(),
            id,
        })
    }

    pub(crate) fn recv_streaming(&self) -> Result<LoopFragments<'_>> {
        Ok(LoopFragments {
            conn: self,
            _busy: BusyGuard::claim(&self.link.recv_busy)?,
            state: FragmentsState::Start,
        })
    }

    /// Set while a `recv` (or `recv_streaming`) holds the receiving side.
    pub(crate) fn recv_flag(&self) -> &AtomicBool {
        &self.link.recv_busy
    }

    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>>> {
        // The common case first: a whole message waits (a pipelining peer), one lock, no
        // joining. (Through `poll_item` this cost the pipelined echo about 8 %.)
        {
            let mut st = self.link.lock();
            if let Some(message) = st.inbox.take_whole() {
                Link::taken(&mut st);
                self.link.resume_if_room(st);
                return Poll::Ready(Ok(Some(message)));
            }
        }
        match std::task::ready!(self.poll_item(cx, Inbox::take_message)) {
            Ok(Ok(message)) => Poll::Ready(Ok(Some(message))),
            Ok(Err(e)) => Poll::Ready(Err(e.into())),
            Err(closed) if closed.is_ok() => Poll::Ready(Ok(None)),
            Err(closed) => Poll::Ready(Err(Error::ConnectionClosed(closed))),
        }
    }

    /// What `take` finds in the inbox, or how the connection ended once nothing more can
    /// come.
    fn poll_item<R>(
        &self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut Inbox) -> Option<R>,
    ) -> Poll<std::result::Result<R, Closed>> {
        let mut st = self.link.lock();
        let result = match take(&mut st.inbox) {
            Some(item) => {
                Link::taken(&mut st);
                Poll::Ready(Ok(item))
            }
            None if st.state == State::Closed => Poll::Ready(Err(closed_so_far(&st))),
            None => {
                match &st.recv_waker {
                    None => st.recv_waker = Some(cx.waker().clone()),
                    Some(w) if w.will_wake(cx.waker()) => {}
                    // Another receiver waits too: both are woken by the next message.
                    Some(_) => add_waiter(&mut st, Waiters::Receivers, cx.waker()),
                }
                Poll::Pending
            }
        };
        // Reading resumes once the inbox has room, whatever `take` found: a message of
        // more than `max_queue` fragments is taken into the assembler with nothing to
        // show for it yet, and must not wait for a flush that nothing else asks for.
        self.link.resume_if_room(st);
        result
    }

    /// Queues `message` (taken once sent) for the loop once there is room.
    pub(crate) fn poll_send(
        &self,
        cx: &mut Context<'_>,
        message: &mut Option<Message>,
    ) -> Poll<Result<()>> {
        within_budget(cx, |cx| {
            let mut st = self.link.lock();
            std::task::ready!(self.poll_room(&mut st, cx, None))?;
            self.queue(st, message.take().expect("polled after completion"));
            Poll::Ready(Ok(()))
        })
    }

    /// A fragmented message of `kind`, sent frame by frame (other messages wait for it).
    pub(crate) fn start_fragmented(&self, kind: MessageKind) -> LoopFragmented<'_> {
        LoopFragmented {
            conn: self,
            kind,
            owner: NonZeroU64::new(PING_TOKENS.fetch_add(1, Ordering::Relaxed))
                .unwrap_or(NonZeroU64::MIN),
            started: false,
            utf8: (kind == MessageKind::Text).then(Box::default),
        }
    }

    /// Ready to take a message from `owner` (a fragmented message's sender, `None` for a
    /// whole message): open, not closing, no other fragmented message under way, and at
    /// most `write_limit` bytes waiting (else the sender waits for the loop to write them).
    fn poll_room(
        &self,
        st: &mut LinkState,
        cx: &mut Context<'_>,
        owner: Option<NonZeroU64>,
    ) -> Poll<Result<()>> {
        if st.state != State::Open || st.closing {
            return Poll::Ready(Err(Error::ConnectionClosed(closed_so_far(st))));
        }
        let under_way = fragmented(st);
        let others_message = under_way.is_some() && under_way != owner;
        if others_message || st.buffered > self.link.write_limit as usize {
            add_waiter(st, Waiters::Senders, cx.waker());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    /// Queues `message` for the loop (`st` is the locked state, room checked).
    fn queue(&self, mut st: MutexGuard<'_, LinkState>, message: Message) {
        st.buffered += message.len();
        st.outbox.push(Out::Message(message));
        self.link.flush_later(st);
    }

    /// For broadcast and hubs: queues `message` unless the connection is not open, a
    /// fragmented message is under way, or more than `write_limit` bytes wait.
    pub(crate) fn try_send_prepared(&self, message: &Arc<PreparedMessage>) -> bool {
        let mut st = self.link.lock();
        if st.state != State::Open
            || st.closing
            || fragmented(&st).is_some()
            || st.buffered > self.link.write_limit as usize
        {
            return false;
        }
        st.buffered += message.message().len();
        st.outbox.push(Out::Prepared(message.clone()));
        self.link.flush_later(st);
        true
    }

    pub(crate) fn on_close(&self, hook: impl FnOnce() + Send + 'static) {
        let mut st = self.link.lock();
        if st.state == State::Closed {
            drop(st);
            hook();
        } else {
            let waiting = st.waiting.get_or_insert_with(Box::default);
            waiting.close_hooks.push(Box::new(hook));
        }
    }

    pub(crate) fn subscribe(&self, topic: &str) {
        self.queue_out(Out::Subscribe(topic.into()));
    }

    pub(crate) fn unsubscribe(&self, topic: &str) {
        self.queue_out(Out::Unsubscribe(topic.into()));
    }

    pub(crate) fn publish(&self, topic: &str, message: Message) {
        let mut st = self.link.lock();
        if st.state == State::Open && !st.closing {
            st.outbox.push(Out::Publish(topic.into(), message));
            self.link.flush_later(st);
        } else {
            drop(st);
            // The connection is gone or going: its loop publishes it for no one's slot.
            schedule(&self.link.mailbox, Work::Publish(topic.into(), message));
        }
    }

    /// Queues `out` for the loop unless the connection is closing.
    fn queue_out(&self, out: Out) {
        let mut st = self.link.lock();
        if st.state == State::Open && !st.closing {
            st.outbox.push(out);
            self.link.flush_later(st);
        }
    }

    /// Queues a close unless one is under way; a code that may not be sent is an error.
    pub(crate) fn start_close(&self, code: CloseCode, reason: &str) -> Result<()> {
        crate::proto::Protocol::check_close_code(code)?;
        let mut st = self.link.lock();
        if st.state == State::Open && !st.closing {
            st.closing = true;
            st.outbox.push(Out::Close(code, reason.to_owned()));
            self.link.flush_later(st);
        }
        Ok(())
    }

    pub(crate) async fn wait_closed(&self) {
        poll_fn(|cx| self.poll_closed(cx)).await
    }

    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.link.lock();
        if st.state == State::Closed {
            return Poll::Ready(());
        }
        add_waiter(&mut st, Waiters::Closers, cx.waker());
        Poll::Pending
    }
}

impl futures_core::Stream for LoopConn {
    type Item = Result<Message>;

    /// The stream's end is shared by the clones. While a `recv` waits, polling the stream
    /// gives [`Error::ConcurrentRecv`].
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        if self.link.lock().stream_done {
            return Poll::Ready(None);
        }
        if self.link.recv_busy.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(Error::ConcurrentRecv)));
        }
        let got = std::task::ready!(self.poll_recv(cx));
        let item = match got {
            Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        };
        self.link.lock().stream_done = true;
        Poll::Ready(item)
    }
}

impl futures_sink::Sink<Message> for LoopConn {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        // The send budget as for `send` (a unit per message the sink takes).
        within_budget(cx, |cx| {
            let mut st = self.link.lock();
            self.poll_room(&mut st, cx, None)
        })
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        let st = self.link.lock();
        if st.state != State::Open || st.closing {
            return Err(Error::ConnectionClosed(closed_so_far(&st)));
        }
        self.queue(st, item);
        Ok(())
    }

    /// Nothing to wait for: `start_send` queued the message for the connection's loop,
    /// which writes it as soon as the socket takes it (as the tokio connection's sink,
    /// whose flush ends once the message is in the output buffer).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Closes the connection with 1000 (if nobody has started a close) and waits until it
    /// is closed.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let _ = self.start_close(CloseCode::NORMAL, "");
        self.poll_closed(cx).map(Ok)
    }
}

/// How the connection ended, or what is known of it while it ends.
fn closed_so_far(st: &LinkState) -> Closed {
    st.closed.as_deref().cloned().unwrap_or(Closed {
        received: None,
        sent: None,
    })
}

/// The waiters of one kind, taken out (the box freed once nobody waits).
fn take_waiters(st: &mut LinkState, which: Waiters) -> Vec<Waker> {
    let Some(waiting) = st.waiting.as_deref_mut() else {
        return Vec::new();
    };
    let wakers = std::mem::take(waiting.list(which));
    if waiting.is_empty() {
        st.waiting = None;
    }
    wakers
}

/// Wakes `wakers`; one that panics (a foreign waker) does not stop the others or the loop.
fn wake_all(wakers: impl IntoIterator<Item = Waker>) {
    for waker in wakers {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake())).is_err() {
            tracing::error!(target: "sockeye::server", "a waker panicked");
        }
    }
}

/// The `send_fragmented` whose message is under way, if any.
fn fragmented(st: &LinkState) -> Option<NonZeroU64> {
    st.waiting.as_deref().and_then(|w| w.fragmented)
}

fn set_fragmented(st: &mut LinkState, owner: Option<NonZeroU64>) {
    match (owner, st.waiting.as_deref_mut()) {
        (Some(_), _) => st.waiting.get_or_insert_with(Box::default).fragmented = owner,
        (None, Some(waiting)) => {
            waiting.fragmented = None;
            if waiting.is_empty() {
                st.waiting = None;
            }
        }
        (None, None) => {}
    }
}

/// The `on_close` hooks waiting to run, taken out.
fn take_hooks(st: &mut LinkState) -> Vec<Box<dyn FnOnce() + Send>> {
    match st.waiting.as_deref_mut() {
        Some(w) => std::mem::take(&mut w.close_hooks),
        None => Vec::new(),
    }
}

/// Adds `waker` to the waiters of its kind.
fn add_waiter(st: &mut LinkState, which: Waiters, waker: &Waker) {
    let wakers = st.waiting.get_or_insert_with(Box::default).list(which);
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

/// What an idle async connection keeps besides its slot: the link and the handler's future.
/// Guards against growth (docs/benchmarks.md, "Memory per idle connection"); 64-bit only.
#[cfg(all(test, target_pointer_width = "64"))]
mod idle_size {
    use super::Link;
    use crate::Connection;

    async fn echo(ws: Connection) -> crate::Result<()> {
        while let Some(message) = ws.recv().await? {
            ws.send(message).await?;
        }
        Ok(())
    }

    async fn recv_only(ws: Connection) {
        let _ = ws.recv().await;
    }

    async fn send_only(ws: Connection) {
        let _ = ws.send("x").await;
    }

    fn future_size<F: std::future::Future>(_: &dyn Fn(Connection) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_link_and_an_echo_handlers_future_stay_small() {
        let link = std::mem::size_of::<Link>();
        let recv = future_size(&recv_only);
        let send = future_size(&send_only);
        let handler = future_size(&echo);
        // 240: the inbox holds fragments too (`recv_streaming` as they arrive), with the
        // message `recv` is joining boxed while there is one.
        assert!(link <= 240, "Link: {link} B");
        assert!(recv <= 56, "recv: {recv} B");
        assert!(send <= 104, "send: {send} B");
        assert!(handler <= 216, "echo handler future: {handler} B");
    }
}
