//! A blocking WebSocket connection: the handle applications use, and the I/O thread that
//! moves bytes between the socket and the sans-I/O core.
//!
//! Each connection has one background I/O thread. It owns reading: it blocks in `read` with
//! a read timeout set to the core's next deadline ([`Protocol::poll_timeout`]), feeds what it
//! reads to the core, calls [`Protocol::handle_timeout`], moves messages to the receive queue
//! and writes what the core produced. Handles share the core behind a mutex held only for
//! short, non-blocking sections.
//!
//! Writing: whichever thread finds output in the core and takes the write lock first writes
//! it, the core's output buffer keeping frames in order. A thread that finds the write lock
//! taken leaves its output to the holder, which looks again before it lets the lock go. So a
//! `send` usually writes its own frame, in its own thread, while the I/O thread keeps reading.
//!
//! Timers: the I/O thread wakes at the core's deadline. A thread waiting in `recv`, `close`,
//! `send` (backpressure) or [`PongWaiter::wait`] also wakes at the deadline and fires it: a
//! deadline moved earlier while the I/O thread sleeps in `read` (the close timeout started by
//! `close`) is still honoured.
//!
//! Every protocol rule lives in the core; this module only moves bytes and wakes threads.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::stream::{ReadHalf, Socket, Transport, WriteHalf};
use crate::connection::{Info, Limits};
use crate::error::{Closed, Error, Result};
use crate::proto::{
    self, CloseCode, Event, Fragment, Message, MessageKind, PingId, PreparedMessage, Protocol,
    Side, State,
};
use crate::queue::{FragmentsState, Inbox, Item, Sender};

/// Size of the I/O thread's read buffer.
const READ_BUF: usize = 16 * 1024;

/// The I/O thread reads for at most this long before it looks at the connection again.
const MAX_READ_WAIT: Duration = Duration::from_secs(10);

crate::connection::info_accessors!(Connection);

impl Connection {
    /// Every path parameter of the route that matched, `(name, value)` in the pattern's
    /// order; none without routing.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params_slice().iter().map(|(n, v)| (&**n, &**v))
    }
}

struct Shared {
    proto: Protocol,
    queue: Inbox,
    /// The fragmented message being sent (`send_fragmented`): other senders wait for it.
    fragmented_sender: Option<u64>,
    /// Pings sent by [`Connection::ping`], with the round-trip time once answered.
    pings: Vec<(PingId, Option<Duration>)>,
    /// Bytes taken from the core by the writing thread and not written yet.
    inflight: usize,
    done: bool,
    io_error: Option<Arc<io::Error>>,
    /// Once the transport is to close with output still unwritten: until when any thread
    /// lets the writer try (`Protocol::flush_timeout`; `Some(None)`: no time at all).
    flush_until: Option<Option<Instant>>,
}

impl Shared {
    /// Whether the output that still waits for a peer that does not read it should be given
    /// up on (arms the bound on the first call once the transport is to close).
    fn flush_expired(&mut self) -> bool {
        let waiting = self.proto.pending_output_len() > 0 || self.inflight > 0;
        if self.done || !self.proto.should_close_transport() || !waiting {
            return false;
        }
        if self.flush_until.is_none() {
            let bound = self.proto.flush_timeout();
            self.flush_until = Some(bound.map(|t| Instant::now() + t));
        }
        self.flush_until
            .flatten()
            .is_none_or(|u| Instant::now() >= u)
    }

    /// The flush bound, once armed.
    fn flush_deadline(&self) -> Option<Instant> {
        self.flush_until.flatten()
    }
}

struct Writer {
    stream: WriteHalf,
    buf: Vec<u8>,
}

struct Inner {
    shared: Mutex<Shared>,
    /// Signalled on every change waiters may care about: a message queued, a message taken
    /// (reading may resume), output written, a pong, the end of the connection.
    cond: Condvar,
    writer: Mutex<Writer>,
    /// Kept to shut the socket down from any thread.
    stream: Socket,
    io_thread: Mutex<Option<JoinHandle<()>>>,
    recv_busy: AtomicBool,
    /// Live `Connection` handles; the last one dropped closes the connection.
    handles: AtomicUsize,
    limits: Limits,
    info: Info,
}

fn relock<T>(r: std::sync::LockResult<T>) -> T {
    // A panic while holding a lock can only come from a bug in this module; every section
    // leaves the state consistent, so go on with it.
    r.unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        relock(self.shared.lock())
    }

    /// Waits on the condvar until `until` or the core's next deadline, whichever is first.
    /// Fires the core's timers when its deadline passed. Returns the guard, relocked.
    fn wait<'a>(
        &'a self,
        sh: MutexGuard<'a, Shared>,
        until: Option<Instant>,
    ) -> MutexGuard<'a, Shared> {
        let core = sh.proto.poll_timeout();
        let deadline = [core, until, sh.flush_deadline()]
            .into_iter()
            .flatten()
            .min();
        let mut sh = match deadline {
            None => relock(self.cond.wait(sh)),
            Some(d) => {
                let timeout = d.saturating_duration_since(Instant::now());
                relock(self.cond.wait_timeout(sh, timeout)).0
            }
        };
        if core.is_some_and(|c| Instant::now() >= c) && !sh.done {
            sh.proto.handle_timeout(Instant::now());
            // Buffers grown for large messages go back at each timer event (keepalive).
            sh.proto.release_memory();
            self.dispatch(&mut sh);
            drop(sh);
            self.flush();
            sh = self.lock();
        }
        if sh.flush_expired() {
            drop(sh);
            self.give_up();
            sh = self.lock();
        }
        sh
    }

    /// The peer did not take the output within the bound: the connection ends without it.
    /// Shutting the socket down fails the write a thread may be blocked in (the I/O
    /// thread's, or a sender's) and ends the I/O thread's read.
    fn give_up(&self) {
        tracing::debug!(target: "sockeye", id = self.info.id, "output not written within close_timeout: dropped");
        self.finish(None);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Delivers the core's events: messages to the queue, pongs to their waiters.
    fn dispatch(&self, sh: &mut Shared) {
        let mut notify = false;
        while let Some(event) = sh.proto.poll_event() {
            match event {
                Event::Message(m) => {
                    sh.queue.push(Item::Message(m));
                    notify = true;
                }
                Event::Pong {
                    acked: Some(id), ..
                } => {
                    let latency = sh.proto.latency().unwrap_or_default();
                    for (pid, slot) in sh.pings.iter_mut() {
                        if *pid <= id && slot.is_none() {
                            *slot = Some(latency);
                            notify = true;
                        }
                    }
                }
                Event::Close(_) => notify = true,
                Event::Fragment(f) => {
                    sh.queue.push(Item::Fragment(f));
                    notify = true;
                }
                Event::Ping(_) | Event::Pong { .. } | Event::Request(_) | Event::Response(_) => {}
            }
        }
        if notify {
            self.cond.notify_all();
        }
    }

    /// Writes what the core has to send, unless another thread is writing: that thread
    /// looks for more output before it stops. Shuts the socket down when the core says so
    /// and everything is written.
    fn flush(&self) {
        self.flush_from(false);
    }

    /// [`flush`](Self::flush), saying whether the caller is the I/O thread: that thread
    /// closes the transport itself (lingering first); another thread must wake it.
    fn flush_from(&self, io_thread: bool) {
        loop {
            let mut w = match self.writer.try_lock() {
                Ok(w) => w,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            self.flush_locked(&mut w, io_thread);
            drop(w);
            // Output queued by a thread that found the lock taken, just before it was
            // released, is ours to write.
            let sh = self.lock();
            if sh.proto.pending_output_len() == 0 || sh.done {
                return;
            }
        }
    }

    fn flush_locked(&self, w: &mut Writer, io_thread: bool) {
        loop {
            let mut sh = self.lock();
            w.buf.clear();
            sh.proto.poll_transmit(&mut w.buf);
            if w.buf.is_empty() {
                let close = sh.proto.should_close_transport() && !sh.done;
                let linger = sh.proto.linger_timeout().is_some();
                drop(sh);
                if close {
                    w.stream.close_notify();
                    if linger {
                        // The close frame and a FIN: the peer answers by closing its side,
                        // which wakes the I/O thread (or its read timeout does, at most
                        // MAX_READ_WAIT); it then lingers and closes the socket.
                        let _ = self.stream.shutdown(Shutdown::Write);
                    } else if !io_thread {
                        // Wakes the I/O thread from its read (it sees the end of stream).
                        let _ = self.stream.shutdown(Shutdown::Both);
                    }
                }
                if w.buf.capacity() > 64 * 1024 {
                    w.buf = Vec::new();
                }
                return;
            }
            sh.inflight = w.buf.len();
            drop(sh);
            let result = w.stream.write_all(&w.buf);
            let mut sh = self.lock();
            sh.inflight = 0;
            if let Err(e) = result {
                let _ = sh.proto.receive_eof();
                if sh.io_error.is_none() {
                    sh.io_error = Some(Arc::new(e));
                }
                drop(sh);
                let _ = self.stream.shutdown(Shutdown::Both);
                self.cond.notify_all();
                return;
            }
            drop(sh);
            self.cond.notify_all();
        }
    }

    /// Marks the connection finished and wakes every waiter.
    fn finish(&self, error: Option<io::Error>) {
        let mut sh = self.lock();
        if sh.done {
            return;
        }
        sh.done = true;
        sh.inflight = 0;
        if let Some(e) = error {
            sh.io_error.get_or_insert(Arc::new(e));
        }
        let code = sh.proto.close_code();
        drop(sh);
        let id = self.info.id;
        match self.info.side {
            Side::Server => {
                tracing::info!(target: "sockeye::server", id, "connection closed ({})", code)
            }
            Side::Client => {
                tracing::info!(target: "sockeye::client", id, "connection closed ({})", code)
            }
        }
        self.cond.notify_all();
    }

    /// Reads and discards until the peer closes its side, an error, or `linger` is over
    /// ([`proto::Protocol::linger_timeout`]: closing with unread data would reset the
    /// connection and lose the close frame at the peer).
    fn linger(reader: &mut ReadHalf, buf: &mut [u8], linger: Duration) {
        let deadline = Instant::now() + linger;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || reader.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match reader.read(buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// The I/O thread: reads, fires timers, writes, until the transport is closed.
    fn run(self: Arc<Self>, mut reader: ReadHalf) {
        let mut buf = vec![0u8; READ_BUF];
        let mut eof = false;
        loop {
            {
                let mut sh = self.lock();
                sh.proto.handle_timeout(Instant::now());
                self.dispatch(&mut sh);
            }
            self.flush_from(true);
            let deadline = {
                let mut sh = self.lock();
                if sh.done {
                    return;
                }
                let drained = sh.proto.pending_output_len() == 0 && sh.inflight == 0;
                if sh.proto.should_close_transport() && drained {
                    let linger = sh.proto.linger_timeout();
                    drop(sh);
                    if let Some(linger) = linger {
                        let _ = self.stream.shutdown(Shutdown::Write);
                        self.finish(None);
                        Self::linger(&mut reader, &mut buf, linger);
                    } else {
                        self.finish(None);
                    }
                    let _ = self.stream.shutdown(Shutdown::Both);
                    return;
                }
                let deadline = sh.proto.poll_timeout();
                if eof
                    || sh.proto.should_close_transport()
                    || sh.queue.len() >= self.limits.max_queue
                {
                    // Backpressure, or waiting for output to drain: no reading.
                    if !sh.proto.should_close_transport() {
                        drop(self.wait(sh, None));
                        continue;
                    }
                    // Draining before the close: bounded, for a peer that does not read
                    // (`wait` gives up on the output when the bound passes).
                    if sh.flush_expired() {
                        drop(sh);
                        self.give_up();
                        return;
                    }
                    drop(self.wait(sh, None));
                    continue;
                }
                deadline
            };
            // Bounded, so that a close decided by another thread (which cannot interrupt
            // this read without losing what the peer has not read yet) is acted on.
            let timeout = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(MAX_READ_WAIT)
                .clamp(Duration::from_millis(1), MAX_READ_WAIT);
            if reader.set_read_timeout(Some(timeout)).is_err() {
                // Only fails for a zero duration, which clamp() rules out.
                continue;
            }
            match reader.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    let mut sh = self.lock();
                    let _ = sh.proto.receive_eof();
                    self.dispatch(&mut sh);
                }
                Ok(n) => {
                    let mut sh = self.lock();
                    sh.proto.handle_timeout(Instant::now());
                    if let Err(e) = sh.proto.receive_data(&buf[..n]) {
                        tracing::debug!(target: "sockeye", id = self.info.id, "connection failed: {e}");
                    }
                    self.dispatch(&mut sh);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    {
                        let mut sh = self.lock();
                        let _ = sh.proto.receive_eof();
                        self.dispatch(&mut sh);
                    }
                    let _ = self.stream.shutdown(Shutdown::Both);
                    self.finish(Some(e));
                    return;
                }
            }
        }
    }
}

/// A blocking WebSocket connection: the same type on the server (handed to the handler) and
/// the client (returned by [`connect`](super::connect)).
///
/// Cheap to clone: clones are handles to one connection, and may be used from many threads.
/// `send`, `ping` and `close` may be called from many threads at once (frames never
/// interleave), also while another thread is blocked in `recv`. One thread at a time may
/// wait in `recv` (a second gets [`Error::ConcurrentRecv`]).
///
/// When the last handle is dropped, the connection closes with 1000 (the closing handshake
/// finishes in the background).
pub struct Connection {
    inner: Arc<Inner>,
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        self.inner.handles.fetch_add(1, Ordering::Relaxed);
        Connection {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.inner.handles.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let mut sh = self.inner.lock();
        if sh.done || sh.proto.state() != State::Open {
            return;
        }
        sh.proto.handle_timeout(Instant::now());
        let _ = sh.proto.close(CloseCode::NORMAL, "");
        drop(sh);
        self.inner.flush();
        // The I/O thread may sleep in `read` without a deadline: a short-lived thread waits
        // for the closing handshake and fires its timeout.
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("sockeye-close".into())
            .spawn(move || wait_done(&inner, None));
        if spawned.is_err() {
            let _ = self.inner.stream.shutdown(Shutdown::Both);
        }
    }
}

/// Waits until the connection is done or `until` passes; returns whether it is done.
fn wait_done(inner: &Inner, until: Option<Instant>) -> bool {
    let mut sh = inner.lock();
    loop {
        if sh.done {
            return true;
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            return false;
        }
        sh = inner.wait(sh, until);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.info.id)
            .field("side", &self.inner.info.side)
            .field("remote_addr", &self.inner.info.addresses.remote())
            .field("state", &self.state())
            .finish()
    }
}

impl Connection {
    /// Wraps an open protocol and its transport, and starts the connection's I/O thread.
    pub(crate) fn new(
        proto: Protocol,
        transport: Transport,
        limits: Limits,
        mut info: Info,
    ) -> io::Result<Connection> {
        info.id = crate::connection::next_id();
        let Transport {
            reader,
            writer,
            socket: stream,
        } = transport;
        // Reads time out at the core's deadlines; writes block (backpressure).
        stream.set_write_timeout(None)?;
        let mut proto = proto;
        // Data frames come as fragments: `recv` joins them, `recv_streaming` hands them out.
        proto.set_stream_fragments(true);
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared {
                proto,
                queue: Inbox::default(),
                fragmented_sender: None,
                pings: Vec::new(),
                inflight: 0,
                done: false,
                io_error: None,
                flush_until: None,
            }),
            cond: Condvar::new(),
            writer: Mutex::new(Writer {
                stream: writer,
                buf: Vec::new(),
            }),
            stream,
            io_thread: Mutex::new(None),
            recv_busy: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
            limits,
            info,
        });
        {
            let mut sh = inner.lock();
            sh.proto.handle_timeout(Instant::now());
            // Messages that arrived with the handshake are waiting in the core already.
            inner.dispatch(&mut sh);
        }
        let io = inner.clone();
        let handle = std::thread::Builder::new()
            .name(format!("sockeye-io-{}", inner.info.id))
            .spawn(move || io.run(reader))?;
        *relock(inner.io_thread.lock()) = Some(handle);
        Ok(Connection { inner })
    }

    /// Waits for the I/O thread to end (after the connection is done).
    pub(crate) fn join_io_thread(&self) {
        let handle = relock(self.inner.io_thread.lock()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Receives the next message, waiting as long as it takes.
    ///
    /// Returns `Ok(None)` once the connection closed normally (1000 or 1001 both ways), and
    /// [`Error::ConnectionClosed`] with the close frames when it ended any other way.
    /// Messages that arrived before the close are returned first.
    pub fn recv(&self) -> Result<Option<Message>> {
        self.recv_until(None)
    }

    /// Like [`Connection::recv`], waiting at most `timeout`: [`Error::RecvTimeout`] when no
    /// message came in time. The connection stays usable after a timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Message>> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    fn recv_until(&self, until: Option<Instant>) -> Result<Option<Message>> {
        if self.inner.recv_busy.swap(true, Ordering::Acquire) {
            return Err(Error::ConcurrentRecv);
        }
        let _busy = BusyGuard(&self.inner.recv_busy);
        match self.next_item(until, |sh| sh.queue.take_message())? {
            Ok(Some(message)) => Ok(Some(message?)),
            Ok(None) => Ok(None),
            Err(closed) if closed.is_ok() => Ok(None),
            Err(closed) => Err(Error::ConnectionClosed(closed)),
        }
    }

    /// Receives the next message fragment by fragment, as its frames arrive, instead of
    /// waiting for all of it (python-websockets' `recv_streaming`); iterate over the
    /// returned [`Fragments`].
    ///
    /// Holds the receiving side like [`recv`](Self::recv) (a concurrent `recv` gets
    /// [`Error::ConcurrentRecv`]) until the `Fragments` is dropped. Fragments of a text
    /// message may end inside a character; together they are valid UTF-8. If a timed-out
    /// `recv_timeout` had received part of the message, that part comes first, as one
    /// fragment. Dropping `Fragments` before the last fragment discards the rest of the
    /// message.
    ///
    /// ```no_run
    /// # fn f(ws: sockeye::sync::Connection) -> sockeye::Result<()> {
    /// for fragment in ws.recv_streaming()? {
    ///     let fragment = fragment?;
    ///     println!("{} bytes, last: {}", fragment.data.len(), fragment.fin);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn recv_streaming(&self) -> Result<Fragments<'_>> {
        if self.inner.recv_busy.swap(true, Ordering::Acquire) {
            return Err(Error::ConcurrentRecv);
        }
        Ok(Fragments {
            conn: self,
            _busy: BusyGuard(&self.inner.recv_busy),
            state: FragmentsState::Start,
        })
    }

    /// Waits until `take` finds what it wants in the queue (it runs under the lock each time
    /// the queue may have changed): `Ok(Ok(Some(r)))`; or the connection is over with nothing
    /// left for `take`: `Ok(Err(closed))`; or `until` passed: `Err(RecvTimeout)`. Resumes
    /// reading when `take` brought the queue under `max_queue`.
    fn next_item<R>(
        &self,
        until: Option<Instant>,
        mut take: impl FnMut(&mut Shared) -> Option<R>,
    ) -> Result<std::result::Result<Option<R>, Closed>> {
        let max_queue = self.inner.limits.max_queue;
        let mut sh = self.inner.lock();
        loop {
            let before = sh.queue.len();
            let got = take(&mut sh);
            if before >= max_queue && sh.queue.len() < max_queue {
                // Reading was paused for backpressure: resume it.
                self.inner.cond.notify_all();
            }
            if got.is_some() {
                return Ok(Ok(got));
            }
            if sh.done {
                return Ok(Err(closed_of(&sh)));
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                return Err(Error::RecvTimeout);
            }
            sh = self.inner.wait(sh, until);
        }
    }

    /// Sends a message: text for `&str`/`String`, binary for `Vec<u8>`/`Bytes`/`&[u8]`.
    ///
    /// Waits while more than `write_limit` bytes are waiting to be written (backpressure),
    /// and usually writes the frame itself before it returns.
    pub fn send(&self, message: impl Into<Message>) -> Result<()> {
        let message = message.into();
        self.send_with(|sh| sh.proto.send(&message))
    }

    /// Sends a message in fragments (RFC 6455 §5.4), one frame per item of `fragments`.
    /// Other messages wait until it is complete; pings and pongs may go between fragments.
    pub fn send_fragmented<I, B>(&self, kind: MessageKind, fragments: I) -> Result<()>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        // One item ahead, so that the last item goes in the last frame. The iterator may
        // block (reading a file, say): the message stays open meanwhile.
        let owner = crate::connection::next_id();
        let mut sending = FragmentedSend {
            conn: self,
            owner,
            started: false,
        };
        let mut iter = fragments.into_iter();
        let mut current = iter.next();
        loop {
            let following = if current.is_some() { iter.next() } else { None };
            let fin = following.is_none();
            let data: &[u8] = current.as_ref().map_or(&[], |b| b.as_ref());
            self.send_as(Sender::Fragment(owner), |sh| {
                sh.proto.send_fragment(kind, data, fin)?;
                sh.fragmented_sender = (!fin).then_some(owner);
                Ok(())
            })?;
            sending.started = !fin;
            if fin {
                return Ok(());
            }
            current = following;
        }
    }

    fn send_with(
        &self,
        op: impl FnOnce(&mut Shared) -> std::result::Result<(), proto::Error>,
    ) -> Result<()> {
        self.send_as(Sender::Message, op)
    }

    /// `send_with` for a `sender`: a whole message waits while another thread's fragmented
    /// message is being sent; control frames do not.
    fn send_as(
        &self,
        sender: Sender,
        op: impl FnOnce(&mut Shared) -> std::result::Result<(), proto::Error>,
    ) -> Result<()> {
        let mut sh = self.inner.lock();
        loop {
            if sh.done {
                return Err(Error::ConnectionClosed(closed_of(&sh)));
            }
            if sender.may_send(sh.fragmented_sender)
                && sh.proto.pending_output_len() + sh.inflight <= self.inner.limits.write_limit
            {
                break;
            }
            sh = self.inner.wait(sh, None);
        }
        sh.proto.handle_timeout(Instant::now());
        if let Err(e) = op(&mut sh) {
            return Err(match e {
                proto::Error::ConnectionClosed => Error::ConnectionClosed(closed_of(&sh)),
                e => e.into(),
            });
        }
        let fragmented_done =
            matches!(sender, Sender::Fragment(_)) && sh.fragmented_sender.is_none();
        drop(sh);
        if fragmented_done {
            // Senders waiting for the fragmented message to end may go.
            self.inner.cond.notify_all();
        }
        self.inner.flush();
        Ok(())
    }

    /// Sends a ping with a random payload; [`PongWaiter::wait`] for the round-trip time.
    pub fn ping(&self) -> Result<PongWaiter> {
        let mut payload = [0u8; 4];
        loop {
            // Distinct from any ping still waiting; the core refuses duplicates.
            let n = crate::connection::next_id() as u32 ^ 0x5a5a_5a5a;
            payload.copy_from_slice(&n.to_be_bytes());
            match self.ping_with(&payload) {
                Err(Error::Misuse(_)) => continue,
                r => return r,
            }
        }
    }

    /// Sends a ping with this payload (at most 125 bytes).
    pub fn ping_with(&self, payload: &[u8]) -> Result<PongWaiter> {
        let mut id = None;
        // The waiter is registered under the same lock as the ping is queued, so the pong
        // cannot be processed in between.
        self.send_as(Sender::Control, |sh| {
            let pid = sh.proto.send_ping(payload)?;
            sh.pings.push((pid, None));
            id = Some(pid);
            Ok(())
        })?;
        let id = id.ok_or(Error::Misuse("ping not sent"))?;
        Ok(PongWaiter {
            inner: self.inner.clone(),
            id,
        })
    }

    /// Closes the connection with this code and reason, and waits until the closing
    /// handshake is over and the socket closed (at most `close_timeout`). Closing a
    /// connection that is already closed does nothing.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<()> {
        self.start_close(code, reason)?;
        self.wait_closed();
        Ok(())
    }

    /// Starts the closing handshake without waiting for it.
    pub(crate) fn start_close(&self, code: CloseCode, reason: &str) -> Result<()> {
        {
            let mut sh = self.inner.lock();
            if sh.done {
                return Ok(());
            }
            sh.proto.handle_timeout(Instant::now());
            sh.proto.close(code, reason)?;
        }
        self.inner.flush();
        Ok(())
    }

    /// Fails the connection with this code (1011 when a handler fails).
    pub(crate) fn fail(&self, code: CloseCode, reason: &str) {
        {
            let mut sh = self.inner.lock();
            if sh.done {
                return;
            }
            sh.proto.handle_timeout(Instant::now());
            sh.proto.fail(code, reason);
        }
        self.inner.flush();
    }

    /// Waits until the connection is closed.
    pub fn wait_closed(&self) {
        wait_done(&self.inner, None);
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

    /// Queues a message without waiting, for broadcast: refused (returns `false`) when the
    /// connection is not open or more than `write_limit` bytes already wait.
    fn try_queue(&self, message: &PreparedMessage) -> bool {
        let mut sh = self.inner.lock();
        if sh.done
            || sh.proto.state() != State::Open
            || sh.proto.pending_output_len() + sh.inflight > self.inner.limits.write_limit
        {
            return false;
        }
        sh.proto.send_prepared(message).is_ok()
    }
}

fn closed_of(sh: &Shared) -> Closed {
    Closed {
        received: sh.proto.close_received().cloned(),
        sent: sh.proto.close_sent().cloned(),
    }
}

/// The fragments of one message, from [`Connection::recv_streaming`]: an iterator that
/// waits for each fragment as it arrives. It ends after the last fragment (`fin`), or when
/// the connection closed normally before another message began; a connection that ends in
/// the middle of the message yields [`Error::ConnectionClosed`].
pub struct Fragments<'a> {
    conn: &'a Connection,
    _busy: BusyGuard<'a>,
    state: FragmentsState,
}

impl Fragments<'_> {
    /// Like [`Iterator::next`], waiting at most `timeout`: `Some(Err(RecvTimeout))` when no
    /// fragment came in time (the message can still be read on).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<Fragment>> {
        self.next_until(Some(Instant::now() + timeout))
    }

    fn next_until(&mut self, until: Option<Instant>) -> Option<Result<Fragment>> {
        if self.state == FragmentsState::Done {
            return None;
        }
        let state = &mut self.state;
        match self
            .conn
            .next_item(until, |sh| sh.queue.take_fragment(state))
        {
            Ok(Ok(fragment)) => fragment.map(Ok),
            Ok(Err(closed)) if closed.is_ok() && self.state == FragmentsState::Start => None,
            Ok(Err(closed)) => {
                self.state = FragmentsState::Done;
                Some(Err(Error::ConnectionClosed(closed)))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

impl Iterator for Fragments<'_> {
    type Item = Result<Fragment>;

    fn next(&mut self) -> Option<Result<Fragment>> {
        self.next_until(None)
    }
}

impl std::fmt::Debug for Fragments<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fragments")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A fragmented message being sent; dropped before its last frame (the iterator panicked),
/// it fails the connection, since the message can never end.
struct FragmentedSend<'a> {
    conn: &'a Connection,
    owner: u64,
    started: bool,
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
            .fail(CloseCode::INTERNAL_ERROR, "fragmented message interrupted");
        self.conn.inner.cond.notify_all();
    }
}

struct BusyGuard<'a>(&'a AtomicBool);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The answer to a [`Connection::ping`]: [`PongWaiter::wait`] gives the round-trip time.
pub struct PongWaiter {
    inner: Arc<Inner>,
    id: PingId,
}

impl std::fmt::Debug for PongWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PongWaiter").field("id", &self.id).finish()
    }
}

impl PongWaiter {
    /// Waits at most `timeout` for the pong: the round-trip time, [`Error::RecvTimeout`] when
    /// it did not come in time (the waiter can wait again), or [`Error::ConnectionClosed`]
    /// if the connection ended first.
    pub fn wait(&self, timeout: Duration) -> Result<Duration> {
        let until = Instant::now() + timeout;
        let mut sh = self.inner.lock();
        loop {
            if let Some((_, Some(rtt))) = sh.pings.iter().find(|(id, _)| *id == self.id) {
                return Ok(*rtt);
            }
            if sh.done {
                return Err(Error::ConnectionClosed(closed_of(&sh)));
            }
            if Instant::now() >= until {
                return Err(Error::RecvTimeout);
            }
            sh = self.inner.wait(sh, Some(until));
        }
    }
}

impl Drop for PongWaiter {
    fn drop(&mut self) {
        let mut sh = self.inner.lock();
        sh.pings.retain(|(id, _)| *id != self.id);
    }
}

/// Sends `message` to every connection in `connections`, encoded once per connection into
/// its output buffer, then writes it in the calling thread. Connections that are not open,
/// or have more than `write_limit` bytes waiting, are skipped and returned so the caller can
/// act on them. A connection whose socket buffer is full makes the call wait while its share
/// is written (unless another thread is writing to it already).
pub fn broadcast<'a, I>(connections: I, message: impl Into<Message>) -> Vec<Connection>
where
    I: IntoIterator<Item = &'a Connection>,
{
    // Serialised once for every connection (see the tokio `broadcast`).
    let message = PreparedMessage::new(message);
    let mut skipped = Vec::new();
    let mut queued = Vec::new();
    for c in connections {
        if c.try_queue(&message) {
            queued.push(c);
        } else {
            skipped.push(c.clone());
        }
    }
    for c in queued {
        c.inner.flush();
    }
    skipped
}
