//! The connection state machine: one per connection, both sides, from the opening handshake to
//! the end of the TCP connection.
//!
//! Modelled on python-websockets' `protocol.py` and on quinn-proto: bytes in
//! ([`Protocol::receive_data`], [`Protocol::receive_eof`]), time in
//! ([`Protocol::handle_timeout`]), commands ([`Protocol::send_text`], [`Protocol::close`], ...),
//! and out come events ([`Protocol::poll_event`]), bytes to write
//! ([`Protocol::pending_output`]), the next deadline ([`Protocol::poll_timeout`]) and whether
//! to close the transport ([`Protocol::should_close_transport`]).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response, StatusCode, Uri};

use crate::close::{CloseCode, CloseFrame};
use crate::config::Config;
use crate::error::{Error, HandshakeError, HttpResponse, Limit, LimitExceeded, ProtocolError};
use crate::extensions::deflate::{Deflate, DeflateParams};
use crate::frame::{encode_payload, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD};
use crate::handshake::{self, ServerAccept};
use crate::mask::apply_mask;
use crate::message::{Fragment, Message, MessageKind, PreparedMessage, Utf8Bytes};
use crate::rng::Rng;
use crate::utf8::Utf8Validator;
use crate::Side;

/// The state of a connection (RFC 6455 §4.1, §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// The opening handshake is in progress.
    Connecting,
    /// Messages flow both ways.
    Open,
    /// A close frame was sent or received; waiting for the closing handshake to finish.
    Closing,
    /// The connection is over.
    Closed,
}

/// Something that happened on the connection, for the front end to act on.
#[derive(Debug, Clone)]
pub enum Event {
    /// Server: a handshake request arrived. Answer it with [`Protocol::accept`] (or
    /// [`Protocol::reject`]) and [`Protocol::send_response`].
    /// Boxed: handshake events are rare, and a small `Event` keeps the event queue small.
    Request(Box<Request<()>>),
    /// Client: the server accepted the handshake; the connection is open.
    Response(Box<Response<()>>),
    /// A whole message.
    Message(Message),
    /// A piece of a message, in [`Config::stream_fragments`] mode (a message in one
    /// uncompressed frame comes whole, as [`Event::Message`], in that mode too).
    Fragment(Fragment),
    /// A ping arrived; the core already queued the pong.
    Ping(Bytes),
    /// A pong arrived. `acked` is the newest ping it acknowledges, with every older one
    /// (python-websockets' rule: RFC 6455 §5.5.3 lets a peer answer only the latest ping).
    Pong {
        /// The pong's payload.
        payload: Bytes,
        /// The newest ping acknowledged, if the payload matches one we sent.
        acked: Option<PingId>,
    },
    /// The peer's close frame arrived (code 1005 if it carried none). The core already
    /// answered it if needed.
    Close(CloseFrame),
}

/// Identifies a ping sent with [`Protocol::send_ping`]; ids grow with each ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PingId(pub u64);

#[derive(Debug)]
enum Handshake {
    /// Server, waiting for the request head.
    AwaitRequest,
    /// Server, the request was delivered; waiting for the application's answer.
    AwaitAnswer(Option<Box<Result<ServerAccept, HandshakeError>>>),
    /// Client, the request is not sent yet.
    Unsent,
    /// Client, waiting for the response head.
    AwaitResponse(Box<(String, Vec<String>)>),
    /// Client, a non-101 response whose body is being read.
    ReadBody {
        head: Box<HttpResponse>,
        until: Option<usize>,
    },
    /// Done (or failed).
    Done,
}

/// A message being received.
#[derive(Debug)]
struct Incoming {
    kind: MessageKind,
    compressed: bool,
    fragments: usize,
    size: usize,
    utf8: Utf8Validator,
    /// Delivered as fragments (decided when the message starts).
    streaming: bool,
    /// Frames assembled so far (unused when streaming).
    buf: Vec<u8>,
}

/// The connection state machine. See the [crate documentation](crate) for a driver loop.
///
/// Time: the core never reads a clock. [`Protocol::handle_timeout`] brings the current time;
/// call it whenever the front end wakes up (before feeding input or issuing commands), so
/// that timers armed by them start from the right moment.
#[derive(Debug)]
pub struct Protocol {
    side: Side,
    state: State,
    config: Arc<Config>,
    handshake: Handshake,
    recv: BytesMut,
    /// The receive buffer was grown for a large frame: keep its allocation when it drains,
    /// for the next large frame, until [`Protocol::release_memory`].
    keep_recv: bool,
    out: Vec<u8>,
    out_pos: usize,
    /// Large payloads that follow a point of `out` without being copied into it. Only with
    /// [`Protocol::set_zero_copy`]; allocated while there are some.
    splices: Option<Box<Splices>>,
    /// The smallest payload spliced rather than copied (0: none is), in KiB.
    zero_copy_kib: u16,
    events: VecDeque<Event>,
    /// How the connection ended (error, close frames): boxed, allocated when it starts to
    /// end, so that an open connection carries one pointer for it.
    ending: Option<Box<Ending>>,
    discard: bool,
    close_transport: bool,
    /// A timer ended the connection (open, keepalive or close timeout): the peer is not
    /// answering, so waiting for it to close its side is pointless.
    timed_out: bool,
    eof_received: bool,
    /// Deliver data frames as [`Event::Fragment`]s (from the config; see
    /// [`Protocol::set_stream_fragments`]).
    stream_fragments: bool,
    subprotocol: Option<Box<str>>,
    deflate: Option<Box<Deflate>>,
    deflate_params: Option<DeflateParams>,
    incoming: Option<Box<Incoming>>,
    sending: Option<(MessageKind, bool)>,
    send_utf8: Utf8Validator,
    now: Option<Instant>,
    open_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    keepalive_ping: Option<PingId>,
    /// Pings waiting for their pong (id, payload, when sent); boxed, as most of the time
    /// there is none (32 B inline for a deque that is nearly always empty).
    #[allow(clippy::box_collection)] // the box is the point: 8 bytes inline, not 32
    pings: Option<Box<VecDeque<PingRecord>>>,
    next_ping_id: u64,
    /// The round trip of the last acknowledged ping, in microseconds (saturating at 71
    /// minutes): 8 bytes rather than an `Option<Duration>`'s 16.
    latency_us: Option<u32>,
    rng: Rng,
}

/// A ping waiting for its pong: its id, payload, and when it was sent.
type PingRecord = (PingId, Bytes, Option<Instant>);

/// Payloads spliced into the output (see [`Protocol::set_zero_copy`]).
#[derive(Debug, Default)]
struct Splices {
    /// `(position in out, payload)`, in order; a payload is popped once written.
    queue: VecDeque<(usize, Bytes)>,
    /// Their bytes not written yet.
    total: usize,
}

/// How a connection ended, or is ending: [`Protocol::error`], the close frames.
#[derive(Debug, Default)]
struct Ending {
    error: Option<Error>,
    close_received: Option<CloseFrame>,
    close_sent: Option<CloseFrame>,
}

/// The smallest payload that [`Protocol::set_zero_copy`] splices rather than copies.
const ZERO_COPY_MIN: usize = 64 * 1024;

/// Written bytes at the front of the output buffer worth moving the rest down for (see
/// [`Protocol::consume_output`]).
const COMPACT_OUTPUT: usize = 16 * 1024;

/// The largest output buffer [`Protocol::release_memory`] keeps; a larger one, grown for a
/// large message, is kept while the connection is busy and freed when it is released.
const KEEP_OUTPUT_CAPACITY: usize = 16 * 1024;

impl Protocol {
    /// A server connection, waiting for the handshake request.
    pub fn server(config: Arc<Config>) -> Protocol {
        Protocol::new(Side::Server, config, Handshake::AwaitRequest)
    }

    /// A client connection; build the request with [`Protocol::connect_request`].
    pub fn client(config: Arc<Config>) -> Protocol {
        Protocol::new(Side::Client, config, Handshake::Unsent)
    }

    /// A connection whose opening handshake was done elsewhere (by an HTTP server such as
    /// hyper, say): it starts open, with the negotiated subprotocol and compression.
    pub fn open(
        side: Side,
        config: Arc<Config>,
        subprotocol: Option<String>,
        deflate: Option<DeflateParams>,
    ) -> Protocol {
        let mut p = Protocol::new(side, config, Handshake::Done);
        p.set_open(subprotocol, deflate);
        p
    }

    fn new(side: Side, config: Arc<Config>, handshake: Handshake) -> Protocol {
        let rng = Rng::new(config.seed);
        let stream_fragments = config.stream_fragments;
        Protocol {
            side,
            state: State::Connecting,
            config,
            handshake,
            recv: BytesMut::new(),
            keep_recv: false,
            out: Vec::new(),
            out_pos: 0,
            splices: None,
            zero_copy_kib: 0,
            events: VecDeque::new(),
            ending: None,
            discard: false,
            close_transport: false,
            timed_out: false,
            eof_received: false,
            stream_fragments,
            subprotocol: None,
            deflate: None,
            deflate_params: None,
            incoming: None,
            sending: None,
            send_utf8: Utf8Validator::new(),
            now: None,
            open_deadline: None,
            close_deadline: None,
            next_ping: None,
            pong_deadline: None,
            keepalive_ping: None,
            pings: None,
            next_ping_id: 0,
            latency_us: None,
            rng,
        }
    }

    // ----- Accessors -------------------------------------------------------------------

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Delivers data frames as [`Event::Fragment`]s from now on (`true`), or whole messages
    /// as [`Event::Message`]s (`false`), whatever the config says
    /// ([`Config::stream_fragments`]; a message in one uncompressed frame comes whole either
    /// way). Takes effect from the next message: one already begun is delivered the way it
    /// started.
    ///
    /// A front end that lets its application choose per message between whole messages and
    /// fragments turns this on and joins fragments with a [`crate::Assembler`].
    pub fn set_stream_fragments(&mut self, on: bool) {
        self.stream_fragments = on;
    }

    /// The subprotocol negotiated in the handshake.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The permessage-deflate parameters negotiated, if compression is on.
    pub fn deflate_params(&self) -> Option<&DeflateParams> {
        self.deflate_params.as_ref()
    }

    /// The error that failed the connection, if any. Every later input call returns it too.
    pub fn error(&self) -> Option<&Error> {
        self.ending.as_ref()?.error.as_ref()
    }

    /// The close frame received from the peer (code 1005 if it was empty).
    pub fn close_received(&self) -> Option<&CloseFrame> {
        self.ending.as_ref()?.close_received.as_ref()
    }

    /// The close frame sent to the peer (code 1005 if it was empty).
    pub fn close_sent(&self) -> Option<&CloseFrame> {
        self.ending.as_ref()?.close_sent.as_ref()
    }

    /// The close code to report: the peer's, or 1006 if no close frame was received
    /// (RFC 6455 §7.1.5).
    pub fn close_code(&self) -> CloseCode {
        self.close_received()
            .map_or(CloseCode::ABNORMAL, |c| c.code)
    }

    /// The close reason to report: the peer's, or empty.
    pub fn close_reason(&self) -> &str {
        self.close_received().map_or("", |c| c.reason.as_str())
    }

    /// Whether the connection ended normally: close frames exchanged both ways, each with
    /// 1000, 1001 or no code (1005), as python-websockets' `ConnectionClosedOK`.
    pub fn close_ok(&self) -> bool {
        let ok = |c: Option<&CloseFrame>| {
            c.is_some_and(|c| c.code.is_ok() || c.code == CloseCode::NO_STATUS)
        };
        ok(self.close_received()) && ok(self.close_sent())
    }

    /// Round-trip time measured by the last acknowledged ping.
    pub fn latency(&self) -> Option<Duration> {
        self.latency_us.map(|us| Duration::from_micros(us.into()))
    }

    /// Whether the TCP connection is expected to close soon (a close frame was sent or
    /// received, or the connection failed). python-websockets' `close_expected`.
    pub fn close_expected(&self) -> bool {
        matches!(self.state, State::Closing | State::Closed) || self.close_transport
    }

    // ----- Input -----------------------------------------------------------------------

    /// Feeds bytes read from the transport.
    ///
    /// Events become available from [`Protocol::poll_event`] and bytes to send (pongs, close
    /// frames, handshake responses) from [`Protocol::pending_output`]. On an error the core
    /// has already queued what must be sent (a close frame with the right code, or an HTTP
    /// error response) and returns the same error on every later call; events produced
    /// before the error stay available.
    pub fn receive_data(&mut self, data: &[u8]) -> Result<(), Error> {
        if let Some(e) = self.error() {
            return Err(e.clone());
        }
        if self.discard || self.state == State::Closed {
            return Ok(());
        }
        self.recv.extend_from_slice(data);
        self.process()
    }

    /// How many more bytes the frame being received needs, once its header is in: a front
    /// end may read them straight into [`Protocol::receive_buffer`] (which has room for the
    /// whole frame) and call [`Protocol::receive_buffered`], instead of reading into a buffer
    /// of its own and copying with [`Protocol::receive_data`]. That saves a copy of every
    /// large payload, and lets one read take as much of it as the transport has. 0 when no
    /// frame is in progress (or during the opening handshake, or after an error).
    pub fn frame_bytes_missing(&self) -> usize {
        if self.state == State::Connecting || self.discard || self.error().is_some() {
            return 0;
        }
        match FrameHeader::parse(&self.recv, self.config.max_frame_size) {
            Ok(Some(h)) => {
                // payload_len <= max_frame_size, a usize: lossless.
                (h.header_len + h.payload_len as usize).saturating_sub(self.recv.len())
            }
            _ => 0,
        }
    }

    /// The receive buffer, for a front end that reads straight into it (see
    /// [`Protocol::frame_bytes_missing`]): append to it, then call
    /// [`Protocol::receive_buffered`]. Anything else done to it breaks the connection.
    pub fn receive_buffer(&mut self) -> &mut BytesMut {
        &mut self.recv
    }

    /// Processes the bytes a front end appended to [`Protocol::receive_buffer`], as
    /// [`Protocol::receive_data`] processes the bytes it is given.
    pub fn receive_buffered(&mut self) -> Result<(), Error> {
        if let Some(e) = self.error() {
            return Err(e.clone());
        }
        if self.discard || self.state == State::Closed {
            self.recv.clear();
            return Ok(());
        }
        self.process()
    }

    /// Signals that the peer closed its side of the transport (read returned 0).
    ///
    /// Without a closing handshake the connection ended abnormally: [`Protocol::close_code`]
    /// gives 1006. During the opening handshake this is an error.
    pub fn receive_eof(&mut self) -> Result<(), Error> {
        if self.eof_received {
            return self.error().cloned().map_or(Ok(()), Err);
        }
        self.eof_received = true;
        self.close_transport = true;
        let result = if self.state == State::Connecting && self.error().is_none() {
            match std::mem::replace(&mut self.handshake, Handshake::Done) {
                Handshake::ReadBody { mut head, .. } => {
                    // A body delimited by the end of the connection (RFC 9112 §6.3).
                    head.body = self.recv.split().freeze();
                    Err(Error::Handshake(HandshakeError::UnexpectedStatus(head)))
                }
                _ => Err(Error::Handshake(HandshakeError::UnexpectedEof)),
            }
        } else {
            Ok(())
        };
        self.state = State::Closed;
        self.close_deadline = None;
        self.clear_timers();
        self.recv = BytesMut::new();
        self.incoming = None;
        match result {
            Err(e) => {
                self.ending().error = Some(e.clone());
                Err(e)
            }
            Ok(()) => self.error().cloned().map_or(Ok(()), Err),
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > 0 {
            // Drained: an idle connection keeps no event queue (a few hundred bytes each,
            // for thousands of connections), at the cost of one allocation per batch.
            self.events = VecDeque::new();
        }
        event
    }

    /// How many events wait in [`Protocol::poll_event`].
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    fn process(&mut self) -> Result<(), Error> {
        let result = if self.state == State::Connecting {
            self.process_handshake()
        } else {
            self.process_frames()
        };
        if let Err(e) = &result {
            if self.error().is_none() {
                self.fail_with(e.clone());
            }
        }
        result
    }

    // ----- Opening handshake -----------------------------------------------------------

    fn process_handshake(&mut self) -> Result<(), Error> {
        match &mut self.handshake {
            Handshake::AwaitRequest => {
                match handshake::parse_request(&self.recv, &self.config) {
                    Ok(None) => Ok(()),
                    Ok(Some((request, n))) => {
                        self.recv.advance(n);
                        self.handshake = Handshake::AwaitAnswer(None);
                        self.events.push_back(Event::Request(Box::new(request)));
                        Ok(())
                    }
                    Err(e) => {
                        // Answer the malformed request with its status, then close.
                        let body = format!("Failed to open a WebSocket connection: {e}.\n");
                        let response = handshake::reject(e.status(), &body, &self.config);
                        handshake::write_response(&response, &mut self.out);
                        Err(Error::Handshake(e))
                    }
                }
            }
            Handshake::AwaitResponse(pending) => {
                let (key, offered) = &**pending;
                let (response, n) = match handshake::parse_response(&self.recv, &self.config)? {
                    None => return Ok(()),
                    Some(r) => r,
                };
                self.recv.advance(n);
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let accept = handshake::check_response(&response, key, offered, &self.config)?;
                    self.handshake = Handshake::Done;
                    self.set_open(accept.subprotocol, accept.deflate);
                    self.events.push_back(Event::Response(Box::new(response)));
                    return self.process_frames();
                }
                let (parts, ()) = response.into_parts();
                let until = body_length(&parts.status, &parts.headers);
                let head = Box::new(HttpResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body: Bytes::new(),
                });
                self.handshake = Handshake::ReadBody { head, until };
                self.process_handshake()
            }
            Handshake::ReadBody { head, until } => {
                let max = self.config.max_handshake_size;
                let want = until.unwrap_or(usize::MAX);
                if want != usize::MAX && want > max || self.recv.len() > max {
                    return Err(HandshakeError::LimitExceeded(LimitExceeded {
                        limit: Limit::HandshakeSize,
                        max,
                    })
                    .into());
                }
                if self.recv.len() < want {
                    return Ok(());
                }
                let mut head = head.clone();
                head.body = self.recv.split_to(want).freeze();
                self.handshake = Handshake::Done;
                Err(HandshakeError::UnexpectedStatus(head).into())
            }
            // Bytes that arrive before the application answers the request are kept; they
            // are frames the client pipelined, processed once the connection opens.
            Handshake::AwaitAnswer(_) | Handshake::Unsent | Handshake::Done => Ok(()),
        }
    }

    /// Server: validates a handshake request and prepares the answer, choosing the
    /// subprotocol from [`Config::subprotocols`].
    ///
    /// Returns a `101 Switching Protocols` response, or an error response (400, 403, 405,
    /// 426) that explains the problem. Headers may be added to it before it is passed to
    /// [`Protocol::send_response`].
    pub fn accept(&mut self, request: &Request<()>) -> Response<Bytes> {
        self.accept_inner(request, None)
    }

    /// Server: like [`Protocol::accept`], with the subprotocol chosen by the application
    /// (it must be one the client offered; `None` selects none).
    pub fn accept_with_subprotocol(
        &mut self,
        request: &Request<()>,
        subprotocol: Option<&str>,
    ) -> Response<Bytes> {
        self.accept_inner(request, Some(subprotocol))
    }

    fn accept_inner(
        &mut self,
        request: &Request<()>,
        subprotocol: Option<Option<&str>>,
    ) -> Response<Bytes> {
        let (response, result) = handshake::answer(request, &self.config, subprotocol);
        if let Handshake::AwaitAnswer(slot) = &mut self.handshake {
            *slot = Some(Box::new(result));
        }
        response
    }

    /// Server: an HTTP response that refuses the handshake (for health checks, auth, ...).
    pub fn reject(&self, status: StatusCode, body: &str) -> Response<Bytes> {
        handshake::reject(status, body, &self.config)
    }

    /// Server: sends the answer to the handshake request.
    ///
    /// A `101` response opens the connection (it must come from [`Protocol::accept`]); any
    /// other status ends it once written.
    pub fn send_response(&mut self, response: &Response<Bytes>) -> Result<(), Error> {
        let Handshake::AwaitAnswer(slot) = &mut self.handshake else {
            return Err(Error::Misuse("send_response without a pending request"));
        };
        let accepted = slot.take().map(|b| *b);
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(Ok(accept)) = accepted else {
                return Err(Error::Misuse(
                    "a 101 response must come from a successful accept",
                ));
            };
            handshake::write_response(response, &mut self.out);
            self.handshake = Handshake::Done;
            self.set_open(accept.subprotocol, accept.deflate.map(|(p, _)| p));
            // Frames the client sent right behind its request.
            let result = self.process_frames();
            if let Err(e) = &result {
                if self.error().is_none() {
                    self.fail_with(e.clone());
                }
            }
            result
        } else {
            handshake::write_response(response, &mut self.out);
            self.handshake = Handshake::Done;
            let e = match accepted {
                Some(Err(e)) => e,
                _ => HandshakeError::Rejected(response.status()),
            };
            self.ending().error = Some(Error::Handshake(e));
            self.state = State::Closed;
            self.close_transport = true;
            self.discard = true;
            self.clear_timers();
            Ok(())
        }
    }

    /// Client: builds the handshake request for `uri` (`ws://` or `wss://`), with a fresh
    /// key. Headers may be added before it is passed to [`Protocol::send_request`].
    pub fn connect_request(&mut self, uri: &Uri) -> Result<Request<()>, Error> {
        let mut raw = [0u8; 16];
        self.rng.fill(&mut raw);
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw);
        Ok(handshake::build_request(uri, &key, &self.config)?)
    }

    /// Client: sends the handshake request.
    pub fn send_request(&mut self, request: &Request<()>) -> Result<(), Error> {
        if !matches!(self.handshake, Handshake::Unsent) {
            return Err(Error::Misuse("send_request on a server or twice"));
        }
        let key = request
            .headers()
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .ok_or(Error::Misuse("the request has no Sec-WebSocket-Key"))?
            .to_owned();
        let offered = handshake::offered_subprotocols(request);
        handshake::write_request(request, &mut self.out);
        self.handshake = Handshake::AwaitResponse(Box::new((key, offered)));
        Ok(())
    }

    fn set_open(&mut self, subprotocol: Option<String>, deflate: Option<DeflateParams>) {
        self.state = State::Open;
        self.subprotocol = subprotocol.map(String::into_boxed_str);
        self.deflate_params = deflate;
        self.deflate = deflate.map(|p| {
            let level = self
                .config
                .compression
                .as_ref()
                .map_or(6, |c| c.compression_level);
            Box::new(Deflate::new(p, self.side, level))
        });
        self.open_deadline = None;
        self.next_ping = match (self.config.ping_interval, self.now) {
            (Some(i), Some(now)) => Some(now + i),
            _ => None,
        };
    }

    // ----- Frames ----------------------------------------------------------------------

    fn process_frames(&mut self) -> Result<(), Error> {
        loop {
            if self.discard {
                self.recv.clear();
                return Ok(());
            }
            let Some(h) = FrameHeader::parse(&self.recv, self.config.max_frame_size)? else {
                if self.recv.is_empty() && !self.keep_recv {
                    // Idle connections keep no receive buffer. (`capacity()` of a fully
                    // consumed BytesMut can be 0 while it still holds its allocation, so
                    // replace it unconditionally; `BytesMut::new` does not allocate.)
                    self.recv = BytesMut::new();
                }
                return Ok(());
            };
            self.check_header(&h)?;
            // payload_len <= max_frame_size, a usize: lossless.
            let len = h.payload_len as usize;
            let total = h.header_len + len;
            if self.recv.len() < total {
                // Reserve once for the whole frame rather than growing step by step. A
                // large buffer is kept for the next large frame: once the message using
                // it is dropped, `reserve` takes the same allocation back instead of
                // faulting in fresh memory.
                self.keep_recv |= total > KEEP_OUTPUT_CAPACITY;
                self.recv.reserve(total - self.recv.len());
                return Ok(());
            }
            self.recv.advance(h.header_len);
            let mut payload = self.recv.split_to(len);
            if let Some(key) = h.mask {
                apply_mask(&mut payload, key, 0);
            }
            log_frame(self.side, '<', h.opcode, &payload, h.fin, h.rsv1);
            self.handle_frame(&h, payload.freeze())?;
        }
    }

    fn check_header(&self, h: &FrameHeader) -> Result<(), Error> {
        // RFC 6455 §5.1: "The server MUST close the connection upon receiving a frame that is
        // not masked" and "A client MUST close a connection if it detects a masked frame."
        match (self.side, h.mask.is_some()) {
            (Side::Server, false) => return Err(ProtocolError::UnmaskedFrame.into()),
            (Side::Client, true) => return Err(ProtocolError::MaskedFrame.into()),
            _ => {}
        }
        // RFC 6455 §5.2: reserved bits "MUST be 0 unless an extension is negotiated that
        // defines meanings for non-zero values".
        if h.rsv2 || h.rsv3 {
            return Err(ProtocolError::ReservedBits.into());
        }
        if h.rsv1 {
            if self.deflate.is_none() {
                return Err(ProtocolError::ReservedBits.into());
            }
            // RFC 7692 §6.1: RSV1 only on the first frame of a data message.
            if h.opcode.is_control() || h.opcode == OpCode::Continuation {
                return Err(ProtocolError::CompressedControlOrContinuation.into());
            }
        }
        match h.opcode {
            OpCode::Text | OpCode::Binary if self.incoming.is_some() => {
                Err(ProtocolError::ExpectedContinuation.into())
            }
            OpCode::Continuation if self.incoming.is_none() => {
                Err(ProtocolError::UnexpectedContinuation.into())
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                // Check the declared length against max_size before buffering the payload
                // (compressed payloads are checked while they inflate).
                let compressed = match &self.incoming {
                    Some(inc) => inc.compressed,
                    None => h.rsv1,
                };
                let so_far = self.incoming.as_ref().map_or(0, |inc| inc.size);
                if !compressed && (so_far as u64 + h.payload_len) > self.config.max_size as u64 {
                    return Err(self.too_big());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn too_big(&self) -> Error {
        Error::LimitExceeded(LimitExceeded {
            limit: Limit::MessageSize,
            max: self.config.max_size,
        })
    }

    fn handle_frame(&mut self, h: &FrameHeader, payload: Bytes) -> Result<(), Error> {
        match h.opcode {
            OpCode::Text | OpCode::Binary => {
                let kind = if h.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                if h.fin && !h.rsv1 && self.config.max_fragments > 0 {
                    // A whole message in one uncompressed frame, the common case: no state
                    // for a message in progress, one UTF-8 pass, and handed over whole even
                    // in stream mode (a front end's `recv_streaming` hands it out as one
                    // fragment). check_header already held its length to max_size.
                    let msg = match kind {
                        MessageKind::Text => Message::Text(
                            Utf8Bytes::try_from_bytes(payload).map_err(|_| Error::InvalidUtf8)?,
                        ),
                        MessageKind::Binary => Message::Binary(payload),
                    };
                    self.events.push_back(Event::Message(msg));
                    return Ok(());
                }
                self.incoming = Some(Box::new(Incoming {
                    kind,
                    compressed: h.rsv1,
                    fragments: 0,
                    size: 0,
                    utf8: Utf8Validator::new(),
                    streaming: self.stream_fragments,
                    buf: Vec::new(),
                }));
                self.data_frame(payload, h.fin)
            }
            OpCode::Continuation => self.data_frame(payload, h.fin),
            OpCode::Ping => {
                // RFC 6455 §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong
                // frame in response, unless it already received a Close frame." A close frame
                // received stops input processing, so only check that we did not send one.
                if self.state == State::Open {
                    self.write_frame(OpCode::Pong, &payload, true, false);
                }
                self.events.push_back(Event::Ping(payload));
                Ok(())
            }
            OpCode::Pong => {
                let acked = self.ack_pings(&payload);
                self.events.push_back(Event::Pong { payload, acked });
                Ok(())
            }
            OpCode::Close => self.close_frame(payload),
        }
    }

    fn data_frame(&mut self, payload: Bytes, fin: bool) -> Result<(), Error> {
        let max_size = self.config.max_size;
        let max_fragments = self.config.max_fragments;
        let inc = self
            .incoming
            .as_mut()
            .ok_or(Error::Protocol(ProtocolError::UnexpectedContinuation))?;
        let streaming = inc.streaming;
        inc.fragments += 1;
        if inc.fragments > max_fragments {
            return Err(LimitExceeded {
                limit: Limit::Fragments,
                max: max_fragments,
            }
            .into());
        }
        let first = inc.fragments == 1;
        // The new data of this frame: zero-copy for uncompressed frames.
        let data: Bytes = if inc.compressed {
            let deflate = self
                .deflate
                .as_mut()
                .ok_or(Error::Protocol(ProtocolError::ReservedBits))?;
            if streaming {
                let mut out = Vec::new();
                deflate.decompress(&payload, fin, &mut out, max_size - inc.size)?;
                Bytes::from(out)
            } else {
                let before = inc.buf.len();
                deflate.decompress(&payload, fin, &mut inc.buf, max_size)?;
                inc.size = inc.buf.len();
                if inc.kind == MessageKind::Text {
                    inc.utf8
                        .feed(&inc.buf[before..])
                        .map_err(|_| Error::InvalidUtf8)?;
                }
                Bytes::new()
            }
        } else {
            payload
        };
        if !inc.compressed || streaming {
            inc.size += data.len();
            if inc.size > max_size {
                return Err(LimitExceeded {
                    limit: Limit::MessageSize,
                    max: max_size,
                }
                .into());
            }
            if inc.kind == MessageKind::Text {
                inc.utf8.feed(&data).map_err(|_| Error::InvalidUtf8)?;
            }
        }
        if fin && inc.kind == MessageKind::Text {
            inc.utf8.finish().map_err(|_| Error::InvalidUtf8)?;
        }
        if streaming {
            self.events.push_back(Event::Fragment(Fragment {
                kind: inc.kind,
                data,
                first,
                fin,
            }));
        } else if fin {
            let bytes = if first && !inc.compressed {
                data
            } else {
                if !inc.compressed {
                    inc.buf.extend_from_slice(&data);
                }
                Bytes::from(std::mem::take(&mut inc.buf))
            };
            let msg = match inc.kind {
                MessageKind::Text => Message::Text(Utf8Bytes::from_validated(bytes)),
                MessageKind::Binary => Message::Binary(bytes),
            };
            self.events.push_back(Event::Message(msg));
        } else if !inc.compressed {
            if inc.buf.is_empty() {
                // One allocation for the declared size of the first frame onwards.
                inc.buf.reserve(data.len() * 2);
            }
            inc.buf.extend_from_slice(&data);
        }
        if fin {
            self.incoming = None;
        }
        Ok(())
    }

    fn close_frame(&mut self, payload: Bytes) -> Result<(), Error> {
        let frame = CloseFrame::parse(&payload)?
            .unwrap_or_else(|| CloseFrame::new(CloseCode::NO_STATUS, ""));
        if self.state == State::Open {
            // RFC 6455 §5.5.1: "If an endpoint receives a Close frame and did not previously
            // send a Close frame, the endpoint MUST send a Close frame in response. (When
            // sending a Close frame in response, the endpoint typically echos the status code
            // it received.)" We echo the payload as received.
            self.write_frame(OpCode::Close, &payload, true, false);
            self.ending().close_sent = Some(frame.clone());
            self.state = State::Closing;
        }
        self.ending().close_received = Some(frame.clone());
        self.after_close_handshake();
        self.events.push_back(Event::Close(frame));
        Ok(())
    }

    /// Both close frames are exchanged: stop reading frames; RFC 6455 §7.1.1: "the server
    /// [...] SHOULD close the underlying TCP connection first"; the client waits for it, at
    /// most close_timeout.
    fn after_close_handshake(&mut self) {
        self.discard = true;
        self.incoming = None;
        self.clear_timers();
        match self.side {
            Side::Server => self.close_transport = true,
            Side::Client => self.arm_close_timer(),
        }
    }

    fn ack_pings(&mut self, payload: &[u8]) -> Option<PingId> {
        let pings = self.pings.as_mut()?;
        let i = pings.iter().position(|(_, p, _)| p[..] == *payload)?;
        let (id, _, sent) = pings[i].clone();
        pings.drain(..=i);
        if pings.is_empty() {
            // Give the allocation back (4 entries, 224 bytes, and the box): an idle
            // connection has a ping in flight only for a round trip every ping_interval, and
            // would otherwise keep it for its whole life.
            self.pings = None;
        }
        if let (Some(sent), Some(now)) = (sent, self.now) {
            let us = now.saturating_duration_since(sent).as_micros();
            self.latency_us = Some(u32::try_from(us).unwrap_or(u32::MAX));
        }
        if self.keepalive_ping.is_some_and(|k| k <= id) {
            self.keepalive_ping = None;
            self.pong_deadline = None;
        }
        Some(id)
    }

    // ----- Commands --------------------------------------------------------------------

    fn check_can_send(&self) -> Result<(), Error> {
        match self.state {
            State::Open => Ok(()),
            State::Connecting => Err(Error::Misuse("the connection is not open yet")),
            // RFC 6455 §5.5.1: "The application MUST NOT send any more data frames after
            // sending a Close frame."
            State::Closing | State::Closed => Err(Error::ConnectionClosed),
        }
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.send_message(MessageKind::Text, text.as_bytes())
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send_message(MessageKind::Binary, data)
    }

    /// Sends a message.
    pub fn send(&mut self, message: &Message) -> Result<(), Error> {
        let len = message.as_bytes().len();
        let min = usize::from(self.zero_copy_kib) * 1024;
        let splice = min > 0 && len >= min && self.side == Side::Server;
        if splice && self.deflate.is_none() {
            return self.send_spliced(message);
        }
        self.send_message(message.kind(), message.as_bytes())
    }

    /// [`Protocol::send`] of a large message from a server without compression: the frame
    /// header goes to the output, the payload stays in the message's buffer (a splice).
    fn send_spliced(&mut self, message: &Message) -> Result<(), Error> {
        self.check_can_send()?;
        if self.sending.is_some() {
            return Err(Error::Misuse("a fragmented message is being sent"));
        }
        let opcode = match message.kind() {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        };
        let payload = message.clone().into_bytes();
        log_frame(self.side, '>', opcode, &payload, true, false);
        FrameHeader::encode(&mut self.out, true, false, opcode, None, payload.len());
        let splices = self.splices.get_or_insert_with(Box::default);
        splices.total += payload.len();
        splices.queue.push_back((self.out.len(), payload));
        Ok(())
    }

    /// Lets [`Protocol::send`] keep a large message's payload (64 KiB or more, sent by a
    /// server without compression) where it is instead of copying it into the output: the
    /// output is then the bytes plus payloads spliced in at given points, which
    /// [`Protocol::poll_transmit_spliced`] hands out without a copy (for a vectored write).
    /// A front end that writes from the core's own output gets them from
    /// [`Protocol::pending_output`] or [`Protocol::pending_output_vectored`] as pieces of
    /// their own; [`Protocol::poll_transmit`] copies them in.
    pub fn set_zero_copy(&mut self, on: bool) {
        self.set_zero_copy_min(if on { ZERO_COPY_MIN } else { 0 });
    }

    /// [`Protocol::set_zero_copy`] from payloads of `min` bytes on (rounded up to whole KiB,
    /// at least 1 KiB; 0 turns it off), for a front end whose measurements favour another
    /// threshold than the default 64 KiB. Below a few KiB, copying costs less than the
    /// extra piece of a vectored write.
    pub fn set_zero_copy_min(&mut self, min: usize) {
        self.zero_copy_kib = match min {
            0 => 0,
            n => u16::try_from(n.div_ceil(1024)).unwrap_or(u16::MAX),
        };
    }

    /// Sends a message serialised once for many connections: a server connection without
    /// compression copies the ready frame; others encode the message as [`Protocol::send`].
    pub fn send_prepared(&mut self, prepared: &PreparedMessage) -> Result<(), Error> {
        if self.side == Side::Client || self.deflate.is_some() {
            return self.send(prepared.message());
        }
        self.check_can_send()?;
        if self.sending.is_some() {
            return Err(Error::Misuse("a fragmented message is being sent"));
        }
        let message = prepared.message();
        let opcode = match message.kind() {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        };
        log_frame(self.side, '>', opcode, message.as_bytes(), true, false);
        self.out.extend_from_slice(prepared.frame());
        Ok(())
    }

    fn send_message(&mut self, kind: MessageKind, data: &[u8]) -> Result<(), Error> {
        self.check_can_send()?;
        if self.sending.is_some() {
            return Err(Error::Misuse("a fragmented message is being sent"));
        }
        self.write_data(kind, data, true, true);
        Ok(())
    }

    /// Whether a fragmented message is being sent (started by [`Protocol::send_fragment`],
    /// not ended): other messages are refused until its last fragment.
    pub fn is_sending_fragments(&self) -> bool {
        self.sending.is_some()
    }

    /// Sends one fragment of a message (RFC 6455 §5.4): the first call starts a message of
    /// `kind`, later calls continue it, `fin` ends it. Control frames may be sent between
    /// fragments; other messages may not. Text may be cut anywhere, even inside a
    /// character, but the fragments together must be valid UTF-8.
    pub fn send_fragment(
        &mut self,
        kind: MessageKind,
        data: &[u8],
        fin: bool,
    ) -> Result<(), Error> {
        self.check_can_send()?;
        let first = match self.sending {
            None => true,
            Some((k, _)) if k == kind => false,
            Some(_) => return Err(Error::Misuse("fragment of another kind than its message")),
        };
        if kind == MessageKind::Text {
            if first {
                self.send_utf8 = Utf8Validator::new();
            }
            self.send_utf8.feed_fragment(data, fin)?;
        }
        self.write_data(kind, data, first, fin);
        self.sending = if fin { None } else { Some((kind, true)) };
        Ok(())
    }

    fn write_data(&mut self, kind: MessageKind, data: &[u8], first: bool, fin: bool) {
        let opcode = match (first, kind) {
            (false, _) => OpCode::Continuation,
            (true, MessageKind::Text) => OpCode::Text,
            (true, MessageKind::Binary) => OpCode::Binary,
        };
        if let Some(deflate) = self.deflate.as_mut() {
            // RFC 7692 §6.1: RSV1 on the first frame of a compressed message only.
            let mut compressed = Vec::new();
            deflate.compress(data, fin, &mut compressed);
            self.write_frame(opcode, &compressed, fin, first);
        } else {
            self.write_frame(opcode, data, fin, false);
        }
    }

    /// Sends a ping with this payload (at most 125 bytes); the matching pong is reported as
    /// [`Event::Pong`] with the returned id in `acked`.
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<PingId, Error> {
        self.check_can_send()?;
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(Error::Misuse("ping payload over 125 bytes"));
        }
        if self.ping_waiting(payload) {
            return Err(Error::Misuse("a ping with this payload is already waiting"));
        }
        Ok(self.ping_inner(payload))
    }

    /// Whether a ping with this payload waits for its pong (a pong acknowledges its ping
    /// and every earlier one: a front end that keeps its own record of pings asks this to
    /// learn which the latest pong answered).
    pub fn ping_waiting(&self, payload: &[u8]) -> bool {
        self.pings
            .iter()
            .flat_map(|pings| pings.iter())
            .any(|(_, p, _)| p[..] == *payload)
    }

    fn ping_inner(&mut self, payload: &[u8]) -> PingId {
        let id = PingId(self.next_ping_id);
        self.next_ping_id += 1;
        self.pings.get_or_insert_default().push_back((
            id,
            Bytes::copy_from_slice(payload),
            self.now,
        ));
        self.write_frame(OpCode::Ping, payload, true, false);
        id
    }

    /// Sends an unsolicited pong (a unidirectional heartbeat, RFC 6455 §5.5.3).
    pub fn send_pong(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.check_can_send()?;
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(Error::Misuse("pong payload over 125 bytes"));
        }
        self.write_frame(OpCode::Pong, payload, true, false);
        Ok(())
    }

    /// Whether the application may close with `code`: one valid on the wire, or
    /// [`CloseCode::NO_STATUS`] (a close frame without a code). [`Protocol::close`] applies it;
    /// a front end that queues a close before it reaches the core checks it with this.
    pub fn check_close_code(code: CloseCode) -> Result<(), Error> {
        if code != CloseCode::NO_STATUS && !code.is_valid_on_wire() {
            return Err(Error::Misuse("this close code may not be sent"));
        }
        Ok(())
    }

    /// Starts the closing handshake with this code and reason (RFC 6455 §7.1.2).
    ///
    /// [`CloseCode::NO_STATUS`] (1005) sends an empty close frame. The reason is cut to 123
    /// bytes. Closing a connection that is already closing does nothing.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        match self.state {
            State::Connecting => Err(Error::Misuse("close before the connection is open")),
            State::Closing | State::Closed => Ok(()),
            State::Open => {
                Self::check_close_code(code)?;
                self.send_close(CloseFrame::new(code, reason));
                self.arm_close_timer();
                Ok(())
            }
        }
    }

    fn send_close(&mut self, frame: CloseFrame) {
        let payload = if frame.code == CloseCode::NO_STATUS {
            Bytes::new()
        } else {
            frame.to_payload()
        };
        self.write_frame(OpCode::Close, &payload, true, false);
        self.ending().close_sent = Some(frame);
        self.state = State::Closing;
        self.clear_keepalive();
    }

    /// Fails the connection (RFC 6455 §7.1.7) with this code, for errors found above the
    /// core (a handler that failed: 1011). Sends a close frame if the connection is open;
    /// a server then closes the transport at once, a client waits for the server to.
    pub fn fail(&mut self, code: CloseCode, reason: &str) {
        if self.state == State::Open {
            self.send_close(CloseFrame::new(code, reason));
        }
        self.after_failure();
    }

    /// The ending's record, allocated when first needed.
    fn ending(&mut self) -> &mut Ending {
        self.ending.get_or_insert_with(Box::default)
    }

    fn fail_with(&mut self, error: Error) {
        self.timed_out |= matches!(error, Error::Timeout(_));
        if self.state == State::Open {
            if let Some(code) = error.close_code() {
                let reason = match &error {
                    Error::Protocol(e) => e.to_string(),
                    Error::LimitExceeded(e) => e.to_string(),
                    Error::Timeout(t) => format!("{t} timeout"),
                    _ => String::new(),
                };
                self.send_close(CloseFrame::new(code, reason));
            }
        }
        if self.state == State::Connecting {
            self.state = State::Closed;
            self.close_transport = true;
            self.handshake = Handshake::Done;
        }
        self.ending().error = Some(error);
        self.after_failure();
    }

    fn after_failure(&mut self) {
        self.discard = true;
        self.incoming = None;
        self.recv = BytesMut::new();
        self.clear_keepalive();
        // RFC 6455 §7.1.7 and python-websockets: a server closes the TCP connection without
        // waiting for the client's close frame; a client waits for the server to close it.
        match self.side {
            Side::Server => self.close_transport = true,
            Side::Client if self.state != State::Closed => self.arm_close_timer(),
            Side::Client => {}
        }
    }

    fn write_frame(&mut self, opcode: OpCode, payload: &[u8], fin: bool, rsv1: bool) {
        log_frame(self.side, '>', opcode, payload, fin, rsv1);
        let mask = match self.side {
            Side::Client => Some(self.rng.mask()),
            Side::Server => None,
        };
        FrameHeader::encode(&mut self.out, fin, rsv1, opcode, mask, payload.len());
        encode_payload(&mut self.out, payload, mask);
    }

    // ----- Output ----------------------------------------------------------------------

    /// The next bytes waiting to be written to the transport, in order. Write as much as
    /// possible in one call, then report it with [`Protocol::consume_output`]; call again for
    /// more (with [`Protocol::set_zero_copy`] the output is in several pieces: the frames, and
    /// the large payloads left where they were; [`Protocol::pending_output_vectored`] hands
    /// them out at once, for a vectored write). Empty when nothing waits.
    pub fn pending_output(&self) -> &[u8] {
        match self.splices.as_ref().and_then(|s| s.queue.front()) {
            Some((at, payload)) if *at == self.out_pos => payload,
            Some((at, _)) => &self.out[self.out_pos..*at],
            None => &self.out[self.out_pos..],
        }
    }

    /// Fills `dst` with the pieces of the output, in order, as many as fit (see
    /// [`Protocol::pending_output`]); returns how many. Write them with one vectored write,
    /// then report the bytes written with [`Protocol::consume_output`].
    pub fn pending_output_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        let mut pos = self.out_pos;
        let mut splices = self.splices.iter().flat_map(|s| s.queue.iter()).peekable();
        while filled < dst.len() {
            let piece: &[u8] = match splices.peek() {
                Some((at, payload)) if *at == pos => {
                    splices.next();
                    payload
                }
                Some((at, _)) => {
                    let piece = &self.out[pos..*at];
                    pos = *at;
                    piece
                }
                None if pos < self.out.len() => {
                    let piece = &self.out[pos..];
                    pos = self.out.len();
                    piece
                }
                None => break,
            };
            dst[filled] = IoSlice::new(piece);
            filled += 1;
        }
        filled
    }

    /// How many bytes wait to be written (for write limits and backpressure).
    pub fn pending_output_len(&self) -> usize {
        let spliced = self.splices.as_ref().map_or(0, |s| s.total);
        self.out.len() - self.out_pos + spliced
    }

    /// Copies the spliced payloads into the output, for the front ends that take it as one
    /// run of bytes.
    fn unsplice(&mut self) {
        let Some(splices) = self.splices.take() else {
            return;
        };
        let mut out = Vec::with_capacity(self.out.len() + splices.total);
        let mut at = 0;
        for (pos, payload) in splices.queue {
            out.extend_from_slice(&self.out[at..pos]);
            out.extend_from_slice(&payload);
            at = pos;
        }
        out.extend_from_slice(&self.out[at..]);
        self.out = out;
    }

    /// Marks the next `n` bytes of the output as written (those of
    /// [`Protocol::pending_output`], or of several pieces after a vectored write; more than
    /// what waits counts as all of it). Nothing is copied: a payload left in place by
    /// [`Protocol::set_zero_copy`] is let go once written.
    ///
    /// The bytes written are dropped from the output buffer when they are the larger part
    /// of it, so that a connection that never quite catches up (a subscriber a little slower
    /// than its publisher) does not keep everything it was ever sent.
    pub fn consume_output(&mut self, mut n: usize) {
        while n > 0 {
            let front = self.splices.as_mut().and_then(|s| s.queue.front_mut());
            match front {
                Some((at, payload)) if *at == self.out_pos => {
                    let take = n.min(payload.len());
                    payload.advance(take);
                    n -= take;
                    let emptied = payload.is_empty();
                    let splices = self.splices.as_mut().expect("a splice is there");
                    splices.total -= take;
                    if emptied {
                        splices.queue.pop_front();
                        if splices.queue.is_empty() {
                            self.splices = None;
                        }
                    }
                }
                next => {
                    let end = next.map_or(self.out.len(), |s| s.0);
                    let take = n.min(end - self.out_pos);
                    if take == 0 {
                        break;
                    }
                    self.out_pos += take;
                    n -= take;
                }
            }
        }
        if self.out_pos == self.out.len() && self.splices.is_none() {
            self.out_pos = 0;
            self.out.clear();
        } else if self.out_pos >= COMPACT_OUTPUT && self.out_pos * 2 >= self.out.len() {
            // Moves at most as many bytes as it frees. Splices are all at or after out_pos.
            self.out.drain(..self.out_pos);
            if let Some(splices) = self.splices.as_mut() {
                for (at, _) in splices.queue.iter_mut() {
                    *at -= self.out_pos;
                }
            }
            self.out_pos = 0;
        }
    }

    /// Frees the buffers grown for large messages, if they are empty: an output buffer over
    /// 16 KiB, and the receive buffer's allocation. Buffers are kept between messages, so
    /// that a connection exchanging large messages does not allocate (and fault in) fresh
    /// memory for each; a front end calls this when the connection may be idle, e.g. on
    /// every timer event (the keepalive ping, every 20 s by default).
    pub fn release_memory(&mut self) {
        if self.out.is_empty() && self.out.capacity() > KEEP_OUTPUT_CAPACITY {
            self.out = Vec::new();
        }
        if self.recv.is_empty() {
            self.recv = BytesMut::new();
            self.keep_recv = false;
        }
    }

    /// Moves every pending byte to the end of `buf`. When `buf` is empty the buffers are
    /// swapped rather than copied (the core keeps `buf`'s allocation for its next output:
    /// a front end that writes from `buf` and passes it back empty makes no allocation).
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) {
        self.unsplice();
        if buf.is_empty() && self.out_pos == 0 {
            std::mem::swap(buf, &mut self.out);
            self.out.clear();
            return;
        }
        buf.extend_from_slice(self.pending_output());
        self.consume_output(usize::MAX);
    }

    /// [`Protocol::poll_transmit`] without copying spliced payloads (see
    /// [`Protocol::set_zero_copy`]): the bytes go to the end of `buf`, and each payload to
    /// `splices` with the position in `buf` it follows, after those already there.
    pub fn poll_transmit_spliced(&mut self, buf: &mut Vec<u8>, splices: &mut Vec<(usize, Bytes)>) {
        let Some(taken) = self.splices.take() else {
            return self.poll_transmit(buf);
        };
        let base = buf.len();
        let start = self.out_pos;
        splices.extend(
            taken
                .queue
                .into_iter()
                .map(|(pos, payload)| (base + pos - start, payload)),
        );
        self.poll_transmit(buf);
    }

    /// Whether the front end should close the transport once [`Protocol::pending_output`] is
    /// written: after a failed handshake, a server's closing handshake, a failure, a timeout,
    /// or the peer's end of stream.
    pub fn should_close_transport(&self) -> bool {
        self.close_transport
    }

    /// How long to linger once the transport is to be closed and the output is written: end
    /// the writing side (TCP FIN, after the close frame), then read and discard whatever the
    /// peer still sends until it closes its side, for at most this long, and only then close
    /// the transport. `None` when the peer has already closed its side, or when a timeout
    /// ended the connection (the peer is not answering).
    ///
    /// Closing a TCP socket whose receive queue holds unread data makes the kernel send a
    /// reset, and a reset makes the peer drop what it has not read yet, the close frame
    /// included: a server that fails a connection in the middle of a large frame (1009, say)
    /// would leave the client with 1006 instead. Lingering is what HTTP servers do for the
    /// same reason. The wait is `close_timeout`.
    pub fn linger_timeout(&self) -> Option<Duration> {
        (!self.eof_received && !self.timed_out).then_some(self.config.close_timeout)
    }

    /// How long a front end may keep trying to write [`Protocol::pending_output`] once
    /// [`Protocol::should_close_transport`] is true, before it gives up and closes the
    /// transport with the output unwritten: `close_timeout`, or `None` (give up at once)
    /// when a timeout ended the connection (the peer is not answering, so it is not
    /// reading either). Without this bound a peer that stops reading would hold the
    /// connection, and a server's shutdown, for ever: the core's own timers are over by then.
    pub fn flush_timeout(&self) -> Option<Duration> {
        (!self.timed_out).then_some(self.config.close_timeout)
    }

    // ----- Time ------------------------------------------------------------------------

    /// The next moment [`Protocol::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.open_deadline,
            self.close_deadline,
            self.next_ping,
            self.pong_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Tells the core the time is `now`: fires the timers that are due (open timeout,
    /// keepalive ping and its timeout, close timeout), and starts those that were waiting
    /// for a first reading of the clock.
    pub fn handle_timeout(&mut self, now: Instant) {
        let first = self.now.is_none();
        self.now = Some(now);
        if first {
            if self.state == State::Connecting {
                self.open_deadline = self.config.open_timeout.map(|t| now + t);
            }
            if self.state == State::Open && self.next_ping.is_none() {
                self.next_ping = self.config.ping_interval.map(|i| now + i);
            }
        }
        if self.open_deadline.is_some_and(|d| now >= d) {
            self.open_deadline = None;
            if self.state == State::Connecting && self.error().is_none() {
                self.fail_with(Error::Timeout(crate::error::Timeout::Open));
            }
        }
        if self.close_deadline.is_some_and(|d| now >= d) {
            // The closing handshake did not finish: give up on it (1006 unless the peer's
            // close frame came).
            self.close_deadline = None;
            self.state = State::Closed;
            self.close_transport = true;
            self.timed_out = true;
            self.discard = true;
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            self.pong_deadline = None;
            if self.state == State::Open {
                // python-websockets: "keepalive ping timeout", 1011.
                self.fail_with(Error::Timeout(crate::error::Timeout::KeepalivePing));
            }
        }
        if self.state != State::Open {
            // Keepalive only runs while open; a stale deadline would make front ends that
            // sleep until poll_timeout() spin.
            self.clear_keepalive();
        }
        if self.next_ping.is_some_and(|d| now >= d) && self.state == State::Open {
            let interval = self.config.ping_interval.unwrap_or(Duration::MAX);
            self.next_ping = now.checked_add(interval);
            if self.keepalive_ping.is_none() {
                let mut payload = [0u8; 4];
                self.rng.fill(&mut payload);
                // Avoid the payload of a ping the application is still waiting on.
                while self.ping_waiting(&payload) {
                    self.rng.fill(&mut payload);
                }
                let id = self.ping_inner(&payload);
                self.keepalive_ping = Some(id);
                self.pong_deadline = self.config.ping_timeout.and_then(|t| now.checked_add(t));
            }
        }
    }

    fn arm_close_timer(&mut self) {
        if self.close_deadline.is_none() {
            self.close_deadline = self
                .now
                .and_then(|n| n.checked_add(self.config.close_timeout));
        }
    }

    fn clear_keepalive(&mut self) {
        self.next_ping = None;
        self.pong_deadline = None;
        self.keepalive_ping = None;
    }

    fn clear_timers(&mut self) {
        self.open_deadline = None;
        self.clear_keepalive();
    }
}

/// DEBUG log of one frame, as python-websockets: `> TEXT 'hello' [5 bytes]`. Targets
/// `sockeye::server` and `sockeye::client`, so the front end's connection span applies.
fn log_frame(side: Side, dir: char, opcode: OpCode, payload: &[u8], fin: bool, rsv1: bool) {
    macro_rules! emit {
        ($target:literal) => {
            if tracing::enabled!(target: $target, tracing::Level::DEBUG) {
                tracing::debug!(
                    target: $target,
                    "{dir} {}",
                    describe_frame(opcode, payload, fin, rsv1)
                );
            }
        };
    }
    match side {
        Side::Server => emit!("sockeye::server"),
        Side::Client => emit!("sockeye::client"),
    }
}

/// `TEXT 'hello' [5 bytes]`, `BINARY 01 02 03 [3 bytes, continued]`, `CLOSE 1000 (OK) [2 bytes]`.
pub(crate) fn describe_frame(opcode: OpCode, payload: &[u8], fin: bool, rsv1: bool) -> String {
    const MAX: usize = 75;
    let data = match opcode {
        _ if rsv1 => format!("{} bytes compressed", payload.len()),
        OpCode::Text | OpCode::Continuation if std::str::from_utf8(payload).is_ok() => {
            let text = std::str::from_utf8(payload).unwrap_or_default();
            if text.chars().count() > MAX {
                let cut: String = text.chars().take(MAX - 3).collect();
                format!("'{cut}...'")
            } else {
                format!("'{text}'")
            }
        }
        OpCode::Close => match CloseFrame::parse(payload) {
            Ok(Some(c)) => c.to_string(),
            Ok(None) => String::new(),
            Err(_) => "invalid".to_owned(),
        },
        _ => {
            let hex: Vec<String> = payload
                .iter()
                .take(MAX / 3)
                .map(|b| format!("{b:02x}"))
                .collect();
            let more = if payload.len() > MAX / 3 { "..." } else { "" };
            format!("{}{more}", hex.join(" "))
        }
    };
    let cont = if fin { "" } else { ", continued" };
    let sep = if data.is_empty() { "" } else { " " };
    format!(
        "{}{sep}{data} [{} bytes{cont}]",
        opcode.name(),
        payload.len()
    )
}

/// The length of a non-101 response body: `Some(n)` from `Content-Length`, `Some(0)` when
/// there is none by definition, `None` when it runs to the end of the connection.
fn body_length(status: &StatusCode, headers: &http::HeaderMap) -> Option<usize> {
    // RFC 9112 §6.3: 1xx, 204 and 304 responses have no body.
    if status.is_informational()
        || *status == StatusCode::NO_CONTENT
        || *status == StatusCode::NOT_MODIFIED
    {
        return Some(0);
    }
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        // A chunked body is not worth decoding for an error report.
        return Some(0);
    }
    // A Content-Length that does not parse counts as 0: the error report goes without it.
    headers.get(http::header::CONTENT_LENGTH).map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle connections keep nothing of their pings: the record of a ping in flight goes,
    /// allocation and all, with its pong (it was 224 bytes per connection after the first
    /// keepalive ping, for ever).
    #[test]
    fn a_ping_answered_leaves_no_allocation_behind() {
        let config = Arc::new(Config::default());
        let mut server = Protocol::open(Side::Server, config.clone(), None, None);
        let mut client = Protocol::open(Side::Client, config, None, None);
        for round in 0..3 {
            let id = server
                .send_ping(format!("ping {round}").as_bytes())
                .unwrap();
            assert!(server.pings.as_ref().is_some_and(|p| p.capacity() > 0));
            let mut wire = Vec::new();
            server.poll_transmit(&mut wire);
            client.receive_data(&wire).unwrap();
            let mut back = Vec::new();
            client.poll_transmit(&mut back);
            server.receive_data(&back).unwrap();
            let mut acked = None;
            while let Some(event) = server.poll_event() {
                if let Event::Pong { acked: a, .. } = event {
                    acked = a;
                }
            }
            assert_eq!(acked, Some(id), "round {round}");
            assert!(server.pings.is_none(), "round {round}");
        }
    }

    /// The core is the largest part of an idle connection in every front end.
    #[test]
    fn the_core_does_not_grow() {
        let size = std::mem::size_of::<Protocol>();
        assert!(size <= 336, "Protocol: {size} B");
    }

    #[test]
    fn latency_is_kept_to_the_microsecond_and_saturates() {
        let config = Arc::new(Config::default());
        let start = Instant::now();
        for (after, expected) in [
            (Duration::from_micros(1_500), Duration::from_micros(1_500)),
            (Duration::from_nanos(999), Duration::ZERO),
            (
                Duration::from_secs(5 * 3600),
                Duration::from_micros(u32::MAX.into()),
            ),
        ] {
            let mut server = Protocol::open(Side::Server, config.clone(), None, None);
            let mut client = Protocol::open(Side::Client, config.clone(), None, None);
            server.handle_timeout(start);
            server.send_ping(b"t").unwrap();
            let mut wire = Vec::new();
            server.poll_transmit(&mut wire);
            client.receive_data(&wire).unwrap();
            let mut back = Vec::new();
            client.poll_transmit(&mut back);
            server.handle_timeout(start + after);
            server.receive_data(&back).unwrap();
            assert_eq!(server.latency(), Some(expected), "after {after:?}");
        }
    }

    #[test]
    fn zero_copy_splices_large_payloads_in_order_and_copies_them_for_plain_readers() {
        let config = Arc::new(Config::default());
        let big = Bytes::from(vec![5u8; 100_000]);
        let frames = |zero_copy: bool| {
            let mut server = Protocol::open(Side::Server, config.clone(), None, None);
            server.set_zero_copy(zero_copy);
            server.send(&Message::from("before")).unwrap();
            server.send(&Message::Binary(big.clone())).unwrap();
            server.send(&Message::from("after")).unwrap();
            server
        };
        let mut plain = frames(false);
        let mut expected = Vec::new();
        plain.poll_transmit(&mut expected);

        // Spliced: the payload is the message's own buffer, at its place in the output.
        let mut server = frames(true);
        assert_eq!(server.pending_output_len(), expected.len());
        let (mut buf, mut splices) = (b"xy".to_vec(), Vec::new());
        server.poll_transmit_spliced(&mut buf, &mut splices);
        assert_eq!(server.pending_output_len(), 0);
        assert_eq!(splices.len(), 1);
        let (at, payload) = &splices[0];
        assert_eq!(payload.as_ptr(), big.as_ptr(), "not copied");
        let mut joined = buf[..*at].to_vec();
        joined.extend_from_slice(payload);
        joined.extend_from_slice(&buf[*at..]);
        assert_eq!(&joined[2..], &expected[..]);

        // poll_transmit copies it in.
        let mut server = frames(true);
        let mut copied = Vec::new();
        server.poll_transmit(&mut copied);
        assert_eq!(copied, expected);

        // pending_output hands out the pieces one by one, the payload where it was, and
        // consume_output goes through them in any steps (here 7 bytes at a time).
        let mut server = frames(true);
        let head = server.pending_output().len();
        assert!(head < expected.len(), "the frames before the payload first");
        let mut written = Vec::new();
        let mut saw_payload = false;
        while server.pending_output_len() > 0 {
            let piece = server.pending_output();
            saw_payload |= piece.as_ptr() == big.as_ptr();
            let n = piece.len().min(7);
            written.extend_from_slice(&piece[..n]);
            server.consume_output(n);
            assert_eq!(server.pending_output_len(), expected.len() - written.len());
        }
        assert!(saw_payload, "not copied");
        assert_eq!(written, expected);
        assert!(server.pending_output().is_empty());

        // pending_output_vectored: all pieces at once; a write that ends inside the payload,
        // then one that ends inside the last frame.
        let mut server = frames(true);
        let vectored = |server: &Protocol, room: usize| {
            let mut slices = [IoSlice::new(&[]); 8];
            let n = server.pending_output_vectored(&mut slices[..room]);
            let ptrs: Vec<*const u8> = slices[..n].iter().map(|s| s.as_ptr()).collect();
            let joined: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
            (n, ptrs, joined)
        };
        let (n, ptrs, joined) = vectored(&server, 8);
        assert_eq!(n, 3, "frame header, payload, last frame");
        assert_eq!(ptrs[1], big.as_ptr(), "not copied");
        assert_eq!(joined, expected);
        let first = head + 1000;
        server.consume_output(first);
        let (n, _, joined) = vectored(&server, 1);
        assert_eq!(n, 1, "as many as fit");
        assert_eq!(joined, &big[1000..]);
        let (_, _, rest) = vectored(&server, 8);
        assert_eq!(rest, &expected[first..]);
        server.consume_output(expected.len() - first - 2);
        assert_eq!(server.pending_output(), &expected[expected.len() - 2..]);
        // Part-written, then copied in: poll_transmit gives what is left.
        let mut tail = Vec::new();
        server.poll_transmit(&mut tail);
        assert_eq!(tail, &expected[expected.len() - 2..]);
        let mut server = frames(true);
        server.consume_output(head + 10);
        let mut tail = Vec::new();
        server.poll_transmit(&mut tail);
        assert_eq!(tail, &expected[head + 10..]);
        // More than waits: all of it.
        let mut server = frames(true);
        server.consume_output(usize::MAX);
        assert_eq!(server.pending_output_len(), 0);
        assert!(server.pending_output().is_empty());

        // Clients mask, compression transforms: both copy as before.
        let mut client = Protocol::open(Side::Client, config.clone(), None, None);
        client.set_zero_copy(true);
        client.send(&Message::Binary(big.clone())).unwrap();
        let mut splices = Vec::new();
        client.poll_transmit_spliced(&mut Vec::new(), &mut splices);
        assert!(splices.is_empty());
    }

    #[test]
    fn output_written_in_pieces_is_the_same_bytes_and_the_buffer_stays_bounded() {
        // A connection that sends steadily and never quite catches up (a subscriber a little
        // slower than its publisher): what it writes is exactly what a copying twin writes,
        // and its output buffer does not keep what was written.
        let config = Arc::new(Config::default());
        let mut fast = Protocol::open(Side::Server, config.clone(), None, None);
        fast.set_zero_copy_min(1024);
        let mut twin = Protocol::open(Side::Server, config, None, None);
        let (mut written, mut expected) = (Vec::new(), Vec::new());
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let mut max_out = 0;
        for i in 0..10_000u64 {
            // Mostly 1 KB frames, some spliced payloads (up to 70 KB).
            let len = if next(8) == 0 {
                1024 + next(70_000)
            } else {
                1000
            };
            let payload = Bytes::from(vec![i as u8; len as usize]);
            fast.send(&Message::Binary(payload.clone())).unwrap();
            twin.send(&Message::Binary(payload)).unwrap();
            // Write a little less than was sent, in 1 to 3 pieces at a time.
            let mut budget = (len as usize).saturating_sub(1 + next(64) as usize);
            while budget > 0 && fast.pending_output_len() > 0 {
                let mut slices = [IoSlice::new(&[]); 3];
                let pieces = fast.pending_output_vectored(&mut slices[..1 + next(3) as usize]);
                let mut n = 0;
                for slice in &slices[..pieces] {
                    let take = slice.len().min(budget - n);
                    written.extend_from_slice(&slice[..take]);
                    n += take;
                }
                fast.consume_output(n);
                budget -= n;
            }
            max_out = max_out.max(fast.out.len());
        }
        while fast.pending_output_len() > 0 {
            let piece = fast.pending_output().to_vec();
            written.extend_from_slice(&piece);
            fast.consume_output(piece.len());
        }
        twin.poll_transmit(&mut expected);
        assert!(written == expected, "the bytes written differ");
        assert!(
            max_out < 256 * 1024,
            "the output buffer grew to {max_out} bytes"
        );
        assert!(fast.splices.is_none());
    }

    #[test]
    fn the_zero_copy_threshold_can_be_lowered() {
        let config = Arc::new(Config::default());
        let spliced = |setup: &dyn Fn(&mut Protocol), len: usize| {
            let mut server = Protocol::open(Side::Server, config.clone(), None, None);
            setup(&mut server);
            server
                .send(&Message::Binary(Bytes::from(vec![1u8; len])))
                .unwrap();
            let mut splices = Vec::new();
            server.poll_transmit_spliced(&mut Vec::new(), &mut splices);
            !splices.is_empty()
        };
        let default = |p: &mut Protocol| p.set_zero_copy(true);
        let four_kib = |p: &mut Protocol| p.set_zero_copy_min(4096);
        let off = |p: &mut Protocol| p.set_zero_copy_min(0);
        assert!(!spliced(&default, 16 * 1024));
        assert!(spliced(&default, 64 * 1024));
        assert!(spliced(&four_kib, 4096));
        assert!(spliced(&four_kib, 16 * 1024));
        assert!(!spliced(&four_kib, 4095));
        assert!(!spliced(&off, 1 << 20));
    }

    #[test]
    fn a_large_frame_can_be_read_straight_into_the_receive_buffer() {
        let config = Arc::new(Config::default());
        let mut client = Protocol::open(Side::Client, config.clone(), None, None);
        let mut server = Protocol::open(Side::Server, config, None, None);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        client.send(&Message::from(big.clone())).unwrap();
        let mut wire = Vec::new();
        client.poll_transmit(&mut wire);
        assert_eq!(server.frame_bytes_missing(), 0, "no frame in progress");
        server.receive_data(&wire[..1000]).unwrap();
        assert_eq!(server.frame_bytes_missing(), wire.len() - 1000);
        assert!(
            server.receive_buffer().capacity() >= wire.len(),
            "room for the frame"
        );
        server
            .receive_buffer()
            .extend_from_slice(&wire[1000..50_000]);
        server.receive_buffered().unwrap();
        assert_eq!(server.frame_bytes_missing(), wire.len() - 50_000);
        assert!(server.poll_event().is_none());
        server.receive_buffer().extend_from_slice(&wire[50_000..]);
        server.receive_buffered().unwrap();
        assert_eq!(server.frame_bytes_missing(), 0);
        match server.poll_event() {
            Some(Event::Message(m)) => assert_eq!(m, Message::from(big)),
            other => panic!("expected the message, got {other:?}"),
        }
        // After an error nothing is read directly, and what is appended is dropped.
        server.receive_data(&[0x81, 0x05, b'h']).unwrap_err();
        assert_eq!(server.frame_bytes_missing(), 0);
        server.receive_buffer().extend_from_slice(b"more");
        assert!(server.receive_buffered().is_err());
    }

    #[test]
    fn large_output_buffers_are_kept_between_messages_and_released_on_request() {
        let config = Arc::new(Config::default());
        let mut server = Protocol::open(Side::Server, config, None, None);
        let big = vec![7u8; 1 << 20];
        server.send(&Message::from(big.clone())).unwrap();
        let mut wire = Vec::new();
        server.poll_transmit(&mut wire);
        assert_eq!(wire.len(), big.len() + 10);
        // The front end gives its written buffer back: the core reuses its allocation.
        wire.clear();
        server.send(&Message::from(big.clone())).unwrap();
        let mut second = wire;
        server.poll_transmit(&mut second);
        assert_eq!(&second[10..], &big[..]);
        assert!(
            server.out.capacity() >= big.len(),
            "kept for the next message"
        );
        // While output is pending nothing is released.
        server.send(&Message::from("x")).unwrap();
        server.release_memory();
        assert_eq!(server.pending_output_len(), 3);
        server.consume_output(3);
        server.release_memory();
        assert!(server.out.capacity() <= KEEP_OUTPUT_CAPACITY);
        assert_eq!(server.recv.capacity(), 0);
    }

    #[test]
    fn frame_descriptions_for_the_debug_log() {
        assert_eq!(
            describe_frame(OpCode::Text, b"hello", true, false),
            "TEXT 'hello' [5 bytes]"
        );
        assert_eq!(
            describe_frame(OpCode::Binary, &[1, 2, 3], false, false),
            "BINARY 01 02 03 [3 bytes, continued]"
        );
        assert_eq!(
            describe_frame(OpCode::Close, b"\x03\xe8", true, false),
            "CLOSE 1000 (OK) [2 bytes]"
        );
        assert_eq!(
            describe_frame(OpCode::Ping, b"", true, false),
            "PING [0 bytes]"
        );
        let long = "x".repeat(100);
        let d = describe_frame(OpCode::Text, long.as_bytes(), true, false);
        assert!(
            d.starts_with("TEXT 'xxx") && d.ends_with("...' [100 bytes]"),
            "{d}"
        );
        assert_eq!(
            describe_frame(OpCode::Text, b"abc", true, true),
            "TEXT 3 bytes compressed [3 bytes]"
        );
    }
}
