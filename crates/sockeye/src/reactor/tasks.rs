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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::Request;

use super::{Command, Handler, Mailbox, Socket};
use crate::addresses::Addresses;
use crate::error::{Closed, Error, Result};
use crate::head::RequestHead;
use crate::proto::{CloseCode, Message, PreparedMessage, State};
use crate::BoxError;

/// A handler's future, as the loop keeps it.
pub(super) type TaskFuture = Pin<Box<dyn Future<Output = std::result::Result<(), BoxError>>>>;

/// The user's handler, shared by every connection of the server.
pub(super) type HandlerFn = dyn Fn(Connection) -> TaskFuture + Send + Sync;

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

/// What is queued for the connection by its handles.
pub(super) enum Out {
    Message(Message),
    /// A message encoded once for many connections (`broadcast`).
    Prepared(Arc<PreparedMessage>),
    /// `Connection::subscribe`, `unsubscribe`, `publish`.
    Subscribe(Box<str>),
    Unsubscribe(Box<str>),
    Publish(Box<str>, Message),
    /// A ping whose payload is this token (`Connection::ping`).
    Ping(u64),
    Close(CloseCode, String),
    Fail(CloseCode),
}

/// What a connection's handles and its loop share.
pub(super) struct Link {
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
    inbox: VecDeque<Message>,
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
    state: State,
    /// How it ended, once it did (`state` is `Closed`).
    closed: Option<Box<Closed>>,
    /// The round trip of the latest ping answered (keepalive or `ping`), in microseconds;
    /// 0 for none yet.
    latency_us: u32,
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
    /// `Connection::ping`s waiting for their pong: token, and the round trip once it came.
    pings: Vec<(u64, Option<Duration>)>,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.senders.is_empty()
            && self.closers.is_empty()
            && self.pingers.is_empty()
            && self.receivers.is_empty()
            && self.pings.is_empty()
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
        for out in outbox {
            // What finds the connection closing is dropped, as `send` would fail.
            match out {
                Out::Message(m) => {
                    let _ = ws.send(m);
                }
                Out::Prepared(m) => {
                    let _ = ws.send_prepared(&m);
                }
                Out::Ping(token) => {
                    let _ = ws.ping(&token.to_be_bytes());
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
        let mut st = self.lock();
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
        // Sends die with the connection; publishes do not (they are the topic's).
        for out in outbox {
            if let Out::Publish(topic, message) = out {
                schedule(&self.mailbox, Work::Publish(topic, message));
            }
        }
        wake_all(recv.into_iter().chain(waiters));
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
                inbox: VecDeque::new(),
                outbox: Vec::new(),
                buffered: 0,
                recv_waker: None,
                waiting: None,
                flush_queued: false,
                closing: false,
                stream_done: false,
                held: false,
                state: State::Open,
                closed: None,
                latency_us: 0,
            }),
        });
        let future = handler(Connection { link: link.clone() });
        let task = ws.local.tasks.insert(Task {
            future,
            link: link.clone(),
        });
        debug_assert_eq!(task, link.task as usize);
        schedule(&link.mailbox, Work::Poll(link.clone()));
        *self = AsyncConn::Open(link);
    }

    fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
        let AsyncConn::Open(link) = self else {
            return;
        };
        let mut st = link.lock();
        if !st.closing || st.inbox.len() < link.max_queue as usize {
            st.inbox.push_back(message);
        }
        // Closing (the handler may be gone): reading goes on until the peer's close frame,
        // and what comes meanwhile is kept up to `max_queue`, the rest dropped.
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

    fn on_pong(&mut self, ws: &mut Socket<'_>, payload: &[u8]) {
        let AsyncConn::Open(link) = self else {
            return;
        };
        let latency = ws.latency();
        let mut st = link.lock();
        if let Some(latency) = latency {
            let us = latency.as_micros().clamp(1, u32::MAX.into());
            st.latency_us = u32::try_from(us).unwrap_or(u32::MAX);
        }
        let answered = <[u8; 8]>::try_from(payload).map(u64::from_be_bytes);
        if let (Some(waiting), Ok(answered)) = (st.waiting.as_deref_mut(), answered) {
            // A pong that answers one of this connection's pings answers every earlier one
            // too (the core's rule); any other pong answers none of them.
            if waiting.pings.iter().any(|(token, _)| *token == answered) {
                for (token, got) in waiting.pings.iter_mut() {
                    if *token <= answered && got.is_none() {
                        *got = Some(latency.unwrap_or_default());
                    }
                }
            }
        }
        let waiters = take_waiters(&mut st, Waiters::Pingers);
        drop(st);
        wake_all(waiters);
    }

    fn on_close(&mut self, closed: &Closed) {
        if let AsyncConn::Open(link) = std::mem::replace(self, AsyncConn::Over) {
            link.ended(closed);
        }
    }
}

/// A connection served by an async handler on an event loop
/// ([`ServerBuilder::serve_async`](super::ServerBuilder::serve_async)): python-websockets'
/// API, `recv().await` and `send().await`, for about a kilobyte per idle connection.
///
/// Cheap to clone, `Send + Sync`: other tasks and threads may send on it and wait for its
/// end. What the handler sends during one poll leaves in one write. Sends from elsewhere
/// reach the connection through its loop's mailbox, in order.
#[derive(Clone)]
pub struct Connection {
    link: Arc<Link>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("reactor::Connection")
            .field("id", &self.link.id)
            .field("state", &self.state())
            .finish()
    }
}

/// Forgets a `ping` when it ends or is dropped (the list is freed once empty).
struct PingGuard<'a>(&'a Link, u64);

impl Drop for PingGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        if let Some(waiting) = st.waiting.as_deref_mut() {
            waiting.pings.retain(|(t, _)| *t != self.1);
            if waiting.is_empty() {
                st.waiting = None;
            }
        }
    }
}

/// Clears the receiving side's busy flag when a `recv` ends or is dropped.
struct RecvGuard<'a>(&'a Link);

impl Drop for RecvGuard<'_> {
    fn drop(&mut self) {
        self.0.recv_busy.store(false, Ordering::Release);
    }
}

impl Connection {
    /// A number that identifies this connection in logs, unique within the process (one
    /// numbering for every front end).
    pub fn id(&self) -> u64 {
        self.link.id
    }

    /// The handshake request (method, path, headers, cookies).
    pub fn request(&self) -> &Request<()> {
        self.link.request.get()
    }

    /// The user name the client authenticated with, when the server checks HTTP Basic
    /// credentials (`basic_auth`).
    pub fn username(&self) -> Option<&str> {
        self.link.request.username()
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.link.addresses.remote()
    }

    /// The local address of the connection's socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.link.addresses.local()
    }

    /// The state of the connection, as of the loop's latest write (`Open` until a close
    /// is under way).
    pub fn state(&self) -> State {
        self.link.lock().state
    }

    /// How the connection ended, once it has.
    pub fn closed(&self) -> Option<Closed> {
        let st = self.link.lock();
        if st.state == State::Closed {
            st.closed.as_deref().cloned()
        } else {
            None
        }
    }

    /// The round-trip time measured by the latest ping answered (keepalive or
    /// [`ping`](Self::ping)), if any.
    pub fn latency(&self) -> Option<Duration> {
        match self.link.lock().latency_us {
            0 => None,
            us => Some(Duration::from_micros(us.into())),
        }
    }

    /// The code of the peer's close frame (1006 when none came), once the connection is
    /// closed; `None` before.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.closed().map(|c| c.code())
    }

    /// The subprotocol negotiated in the handshake, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.link.subprotocol.as_deref()
    }

    /// Sends a ping and waits for its pong: the round-trip time. Fails with
    /// [`Error::ConnectionClosed`] if the connection closes first. Cancel-safe (a pong that
    /// comes later is ignored).
    pub async fn ping(&self) -> Result<Duration> {
        let token = PING_TOKENS.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.link.lock();
            if st.state != State::Open || st.closing {
                return Err(Error::ConnectionClosed(closed_so_far(&st)));
            }
            (st.waiting.get_or_insert_with(Box::default).pings).push((token, None));
            st.outbox.push(Out::Ping(token));
            self.link.flush_later(st);
        }
        let _forget = PingGuard(&self.link, token);
        poll_fn(|cx| {
            let mut st = self.link.lock();
            let got =
                (st.waiting.as_deref()).and_then(|w| w.pings.iter().find(|(t, _)| *t == token));
            if let Some((_, Some(latency))) = got {
                return Poll::Ready(Ok(*latency));
            }
            if st.state == State::Closed {
                return Poll::Ready(Err(Error::ConnectionClosed(closed_so_far(&st))));
            }
            add_waiter(&mut st, Waiters::Pingers, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Bytes waiting to be written (as of the loop's latest write, plus what was queued
    /// since).
    pub fn buffered_amount(&self) -> usize {
        self.link.lock().buffered
    }

    /// Receives the next message.
    ///
    /// Returns `Ok(None)` once the connection closed normally (1000 or 1001 both ways), and
    /// [`Error::ConnectionClosed`] with the close frames when it ended any other way.
    /// Messages that arrived before the close are returned first. A second `recv` while one
    /// is waiting fails with [`Error::ConcurrentRecv`]. Cancel-safe: a `recv` dropped
    /// before it completes loses no message.
    ///
    /// While `max_queue` messages wait, the loop stops reading from the connection (the
    /// peer's sends back up); it reads again once `recv` takes them down to a quarter.
    pub async fn recv(&self) -> Result<Option<Message>> {
        if self.link.recv_busy.swap(true, Ordering::Acquire) {
            return Err(Error::ConcurrentRecv);
        }
        let _busy = RecvGuard(&self.link);
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>>> {
        let mut st = self.link.lock();
        if let Some(message) = st.inbox.pop_front() {
            if st.inbox.is_empty() {
                // An idle connection keeps no inbox (one allocation per batch received).
                st.inbox = VecDeque::new();
            }
            if st.held && st.inbox.len() <= self.link.max_queue as usize / 4 {
                self.link.flush_later(st);
            }
            return Poll::Ready(Ok(Some(message)));
        }
        if st.state == State::Closed {
            let closed = closed_so_far(&st);
            return Poll::Ready(if closed.is_ok() {
                Ok(None)
            } else {
                Err(Error::ConnectionClosed(closed))
            });
        }
        match &st.recv_waker {
            None => st.recv_waker = Some(cx.waker().clone()),
            Some(w) if w.will_wake(cx.waker()) => {}
            // Another receiver waits too: both are woken by the next message.
            Some(_) => add_waiter(&mut st, Waiters::Receivers, cx.waker()),
        }
        Poll::Pending
    }

    /// Sends a message: queues it for the connection's loop, first waiting while more than
    /// `write_limit` bytes wait to be written. Fails with [`Error::ConnectionClosed`] once
    /// the connection is closing or closed. Cancel-safe: a `send` dropped before it
    /// completes has not queued its message.
    pub fn send(&self, message: impl Into<Message>) -> impl Future<Output = Result<()>> + '_ {
        // A `poll_fn` over the message: the future is the handle and the message (48 B),
        // which keeps a handler's future small (an idle connection keeps it).
        let mut message = Some(message.into());
        poll_fn(move |cx| {
            let mut st = self.link.lock();
            std::task::ready!(self.poll_room(&mut st, cx))?;
            self.queue(st, message.take().expect("polled after completion"));
            Poll::Ready(Ok(()))
        })
    }

    /// Ready to take a message: open, not closing, and at most `write_limit` bytes waiting
    /// (else the sender waits for the loop to write them).
    fn poll_room(&self, st: &mut LinkState, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if st.state != State::Open || st.closing {
            return Poll::Ready(Err(Error::ConnectionClosed(closed_so_far(st))));
        }
        if st.buffered > self.link.write_limit as usize {
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

    /// Subscribes this connection to `topic` of the server's pub/sub (the topics of
    /// [`Socket::subscribe`](super::Socket::subscribe) and
    /// [`Server::publish`](super::Server::publish)), in order with what this handle sends.
    /// It leaves all its topics when it ends.
    pub fn subscribe(&self, topic: &str) {
        self.queue_out(Out::Subscribe(topic.into()));
    }

    /// Unsubscribes this connection from `topic`.
    pub fn unsubscribe(&self, topic: &str) {
        self.queue_out(Out::Unsubscribe(topic.into()));
    }

    /// Publishes `message` to every subscriber of `topic` but this connection, on every loop
    /// thread, encoded once (see [`Socket::publish`](super::Socket::publish): slow
    /// subscribers are skipped, each gets one write per turn). Never waits. Works after the
    /// connection has closed too ("Bob left" from a chat handler's end), in order with
    /// what it published before.
    pub fn publish(&self, topic: &str, message: impl Into<Message>) {
        let out = Out::Publish(topic.into(), message.into());
        let mut st = self.link.lock();
        if st.state == State::Open && !st.closing {
            st.outbox.push(out);
            self.link.flush_later(st);
        } else {
            drop(st);
            // The connection is gone or going: its loop publishes it for no one's slot.
            let Out::Publish(topic, message) = out else {
                unreachable!()
            };
            schedule(&self.link.mailbox, Work::Publish(topic, message));
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

    /// Starts the closing handshake with `code` and `reason` (at most 123 bytes) and waits
    /// until the connection is closed (bounded by `close_timeout`). Messages that arrive
    /// meanwhile can still be received.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<()> {
        if code != CloseCode::NO_STATUS && !code.is_valid_on_wire() {
            return Err(crate::proto::Error::Misuse("this close code may not be sent").into());
        }
        self.start_close(code, reason);
        self.wait_closed().await;
        Ok(())
    }

    /// Queues a close unless one is under way.
    fn start_close(&self, code: CloseCode, reason: &str) {
        let mut st = self.link.lock();
        if st.state == State::Open && !st.closing {
            st.closing = true;
            st.outbox.push(Out::Close(code, reason.to_owned()));
            self.link.flush_later(st);
        }
    }

    /// Waits until the connection is closed.
    pub async fn wait_closed(&self) {
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

/// Sends `message` to every connection in `connections` without waiting (python-websockets'
/// `broadcast`, as [`crate::broadcast`] for the tokio server): encoded once (a
/// [`PreparedMessage`]; connections that compress encode it themselves) and queued for
/// each connection's loop. Connections that are not open, or have more than `write_limit`
/// bytes waiting, are skipped; they are returned so the caller can act on them.
///
/// ```no_run
/// # async fn f(all: Vec<sockeye::reactor::Connection>) {
/// let slow = sockeye::reactor::broadcast(&all, "to everyone");
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
    for conn in connections {
        let mut st = conn.link.lock();
        if st.state != State::Open || st.closing || st.buffered > conn.link.write_limit as usize {
            skipped.push(conn.clone());
            continue;
        }
        st.buffered += message.message().len();
        st.outbox.push(Out::Prepared(message.clone()));
        conn.link.flush_later(st);
    }
    skipped
}

impl futures_core::Stream for Connection {
    type Item = Result<Message>;

    /// The messages received, as [`Connection::recv`] gives them (python-websockets'
    /// `async for message in websocket`); the stream ends after a normal close, or after
    /// yielding the error of any other end (once for the connection: the clones share
    /// one stream). While a `recv` waits, polling the stream gives
    /// [`Error::ConcurrentRecv`].
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

impl futures_sink::Sink<Message> for Connection {
    type Error = Error;

    /// Ready once at most `write_limit` bytes wait (as [`Connection::send`] waits).
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut st = self.link.lock();
        self.poll_room(&mut st, cx)
    }

    /// Queues the message for the connection's loop.
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        let st = self.link.lock();
        if st.state != State::Open || st.closing {
            return Err(Error::ConnectionClosed(closed_so_far(&st)));
        }
        self.queue(st, item);
        Ok(())
    }

    /// Nothing to wait for: `start_send` queued the message for the connection's loop,
    /// which writes it as soon as the socket takes it (as the tokio `Connection`'s sink,
    /// whose flush ends once the message is in the output buffer).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Closes the connection with 1000 (if nobody has started a close) and waits until it
    /// is closed.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.start_close(CloseCode::NORMAL, "");
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
    use super::{Connection, Link};

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
        assert!(link <= 232, "Link: {link} B");
        assert!(recv <= 64, "recv: {recv} B");
        assert!(send <= 80, "send: {send} B");
        assert!(handler <= 184, "echo handler future: {handler} B");
    }
}
