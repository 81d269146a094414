//! Fuzzing oracles shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, which include
//! this file with `#[path]`) and the stable harness (`tests/fuzz_harness.rs`).
//!
//! Each function takes arbitrary bytes, drives one part of sockeye-proto with them and panics
//! if an invariant breaks. Besides "no panic", the invariants checked are:
//!
//! - `frame_decode`: only `Protocol` and `LimitExceeded` errors; an incomplete frame leaves
//!   the buffer alone; `encode` then `decode` gives back every decoded frame, masked or not;
//!   decoding in two pieces gives the same frames as decoding at once.
//! - `handshake_request` / `handshake_response`: the head length is within the input and is
//!   found again in the head alone; rejections map to a 4xx status; an accepted request
//!   yields a 101 whose `Sec-WebSocket-Accept` matches the key; negotiated values are ones
//!   that were offered.
//! - `server_connection` / `client_connection`: no panic whatever the chunking; no `Misuse`
//!   error from peer data; the output written per call stays bounded; once the connection
//!   has failed, every later `receive_data` returns that same error; after `handle_timeout`
//!   the next deadline is in the future; events match the side.
//!
//! The connection oracles read the first byte of their input as a control byte (see
//! [`Control`]); the rest is what the peer sends.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sockeye_proto::close::CloseCode;
use sockeye_proto::frame::Frame;
use sockeye_proto::handshake;
use sockeye_proto::{
    Assembler, Config, DeflateParams, Error, Event, Message, Protocol, Side, State,
};

/// The largest frame `frame_decode` accepts: small, so that the limit is reached.
pub const FRAME_DECODE_MAX: usize = 4096;

/// The key of RFC 6455 §1.3, used by the client oracles so that seeds can carry a valid
/// `Sec-WebSocket-Accept` (`s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`).
pub const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Subprotocols configured on both sides of the connection oracles.
pub const SUBPROTOCOLS: [&str; 2] = ["chat", "superchat"];

// ----- Frames ------------------------------------------------------------------------------

/// `Frame::decode` in a loop over the input.
pub fn frame_decode(data: &[u8]) {
    let whole = decode_frames(data, FRAME_DECODE_MAX);

    // Same input in two pieces, decoding after each: same frames, same outcome.
    if !data.is_empty() {
        let split = usize::from(data[0]) % (data.len() + 1);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut outcome = Ok(());
        'pieces: for piece in [&data[..split], &data[split..]] {
            buf.extend_from_slice(piece);
            loop {
                match Frame::decode(&mut buf, FRAME_DECODE_MAX) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        outcome = Err(e);
                        break 'pieces;
                    }
                }
            }
        }
        assert_eq!(frames, whole.0, "frames differ when the input is split");
        assert_eq!(outcome, whole.1, "outcome differs when the input is split");
    }

    for frame in &whole.0 {
        assert!(frame.payload.len() <= FRAME_DECODE_MAX);
        if frame.opcode.is_control() {
            assert!(frame.fin, "fragmented control frame decoded");
            assert!(frame.payload.len() <= 125, "long control frame decoded");
        }
        for mask in [None, Some([0x37, 0xfa, 0x21, 0x3d]), Some([0, 0, 0, 0])] {
            let mut wire = Vec::new();
            frame.encode(&mut wire, mask);
            let mut buf = BytesMut::from(&wire[..]);
            let again = Frame::decode(&mut buf, FRAME_DECODE_MAX)
                .expect("re-encoded frame fails to decode")
                .expect("re-encoded frame is incomplete");
            assert_eq!(
                &again, frame,
                "round trip changed the frame (mask {mask:?})"
            );
            assert!(buf.is_empty(), "re-encoded frame leaves bytes behind");
        }
    }
}

/// Decodes frames until the input runs out or an error; checks the error kinds.
fn decode_frames(data: &[u8], max: usize) -> (Vec<Frame>, Result<(), Error>) {
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    loop {
        let before = buf.len();
        match Frame::decode(&mut buf, max) {
            Ok(Some(f)) => {
                assert!(buf.len() < before, "a decoded frame consumed nothing");
                frames.push(f);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                assert_eq!(&buf[..], &data[data.len() - before..]);
                return (frames, Ok(()));
            }
            Err(e) => {
                assert!(
                    matches!(e, Error::Protocol(_) | Error::LimitExceeded(_)),
                    "unexpected error kind from Frame::decode: {e:?}"
                );
                assert!(e.close_code().is_some(), "frame error without a close code");
                return (frames, Err(e));
            }
        }
    }
}

// ----- Handshake ---------------------------------------------------------------------------

fn handshake_configs() -> [Config; 2] {
    let default = Config::new();
    let mut small = Config::new();
    small
        .max_line_length(512)
        .max_headers(24)
        .max_handshake_size(4096)
        .subprotocols(SUBPROTOCOLS)
        .origins(Some(vec![Some("http://example.com".to_owned()), None]));
    [default, small]
}

/// `handshake::parse_request`, then `handshake::check_request` on what it parsed.
pub fn handshake_request(data: &[u8]) {
    for config in handshake_configs() {
        match handshake::parse_request(data, &config) {
            Ok(None) => {}
            Ok(Some((request, n))) => {
                assert!(
                    n > 0 && n <= data.len(),
                    "head length {n} of {}",
                    data.len()
                );
                // The head ends at n: the head alone parses the same.
                match handshake::parse_request(&data[..n], &config) {
                    Ok(Some((_, m))) => assert_eq!(m, n, "head alone has another length"),
                    other => panic!("head alone does not parse: {other:?}"),
                }
                let offered = handshake::offered_subprotocols(&request);
                // The application may only pick a subprotocol the client offered.
                let mut choices = vec![None, Some(None)];
                if let Some(first) = offered.first() {
                    choices.push(Some(Some(first.as_str())));
                }
                for choice in choices {
                    match handshake::check_request(&request, &config, choice) {
                        Ok(accept) => {
                            if let Some(p) = &accept.subprotocol {
                                assert!(offered.contains(p), "chose {p:?}, not offered");
                            }
                            let response = handshake::build_response(&accept, &config);
                            assert_eq!(response.status().as_u16(), 101);
                            let expected = handshake::accept_key(accept.key.as_bytes());
                            let got = response
                                .headers()
                                .get("sec-websocket-accept")
                                .and_then(|v| v.to_str().ok());
                            assert_eq!(got, Some(expected.as_str()), "wrong accept");
                            let mut out = Vec::new();
                            handshake::write_response(&response, &mut out);
                            assert!(out.starts_with(b"HTTP/1.1 101"), "101 not written");
                        }
                        Err(e) => {
                            assert!(e.status().is_client_error(), "{e:?} -> {}", e.status());
                            let response = handshake::reject(e.status(), &e.to_string(), &config);
                            let mut out = Vec::new();
                            handshake::write_response(&response, &mut out);
                        }
                    }
                }
            }
            Err(e) => {
                assert!(e.status().is_client_error(), "{e:?} -> {}", e.status());
            }
        }
    }
}

/// `handshake::parse_response`, then `handshake::check_response` against [`CLIENT_KEY`].
pub fn handshake_response(data: &[u8]) {
    let offered: Vec<String> = SUBPROTOCOLS.iter().map(|s| (*s).to_owned()).collect();
    for config in handshake_configs() {
        match handshake::parse_response(data, &config) {
            Ok(None) | Err(_) => {}
            Ok(Some((response, n))) => {
                assert!(
                    n > 0 && n <= data.len(),
                    "head length {n} of {}",
                    data.len()
                );
                match handshake::parse_response(&data[..n], &config) {
                    Ok(Some((_, m))) => assert_eq!(m, n, "head alone has another length"),
                    other => panic!("head alone does not parse: {other:?}"),
                }
                let none: &[String] = &[];
                for offered in [&offered[..], none] {
                    let result = handshake::check_response(&response, CLIENT_KEY, offered, &config);
                    let Ok(accept) = result else { continue };
                    assert_eq!(response.status().as_u16(), 101, "non-101 accepted");
                    if let Some(p) = &accept.subprotocol {
                        assert!(offered.contains(p), "server chose {p:?}, not offered");
                    }
                    if let Some(d) = &accept.deflate {
                        assert!((8..=15).contains(&d.server_max_window_bits), "{d:?}");
                        assert!((8..=15).contains(&d.client_max_window_bits), "{d:?}");
                    }
                }
            }
        }
    }
}

// ----- Connections -------------------------------------------------------------------------

/// How a connection oracle reads the first byte of its input.
///
/// - bits 0-3: the chunk size the rest of the input is fed in ([`CHUNKS`]);
/// - bit 4: `stream_fragments`;
/// - bit 5: simulated time advances 1.1 s per chunk instead of 150 ms;
/// - bit 6: handshake path: compression off in the config;
/// - bit 7: skip the handshake: start from `Protocol::open`, with the deflate parameters
///   chosen by the second byte ([`open_params`]).
#[derive(Debug, Clone, Copy)]
pub struct Control(pub u8);

/// Chunk sizes selectable by the control byte.
pub const CHUNKS: [usize; 16] = [
    1,
    2,
    3,
    5,
    7,
    8,
    13,
    16,
    31,
    64,
    100,
    128,
    256,
    1024,
    4096,
    usize::MAX,
];

impl Control {
    fn chunk(self) -> usize {
        CHUNKS[usize::from(self.0 & 0x0f)]
    }
    fn stream(self) -> bool {
        self.0 & 0x10 != 0
    }
    fn step(self) -> Duration {
        if self.0 & 0x20 != 0 {
            Duration::from_millis(1100)
        } else {
            Duration::from_millis(150)
        }
    }
    fn no_compression(self) -> bool {
        self.0 & 0x40 != 0
    }
    fn open(self) -> bool {
        self.0 & 0x80 != 0
    }
}

/// The deflate parameters of the `Protocol::open` path, by the second input byte.
pub fn open_params(b: u8) -> Option<DeflateParams> {
    let p = |snct, cnct, smwb, cmwb| DeflateParams {
        server_no_context_takeover: snct,
        client_no_context_takeover: cnct,
        server_max_window_bits: smwb,
        client_max_window_bits: cmwb,
    };
    match b % 6 {
        0 => Some(p(false, false, 15, 15)),
        1 => Some(p(true, true, 15, 15)),
        2 => Some(p(false, true, 10, 12)),
        3 => Some(p(true, false, 9, 15)),
        4 => Some(p(false, false, 15, 9)),
        _ => None,
    }
}

/// The config of the connection oracles: small limits and short timers, so fuzzing reaches
/// them.
pub fn connection_config(control: Control) -> Config {
    let mut config = Config::new();
    config
        .max_size(64 * 1024)
        .max_frame_size(16 * 1024)
        .max_fragments(64)
        .max_line_length(1024)
        .max_headers(32)
        .max_handshake_size(8 * 1024)
        .subprotocols(SUBPROTOCOLS)
        .ping_interval(Some(Duration::from_secs(2)))
        .ping_timeout(Some(Duration::from_secs(1)))
        .open_timeout(Some(Duration::from_secs(5)))
        .close_timeout(Duration::from_secs(2))
        .stream_fragments(control.stream())
        .seed(Some(0x5eed));
    if control.no_compression() {
        config.compression(None);
    }
    config
}

/// A server fed the input as client bytes.
pub fn server_connection(data: &[u8]) {
    run_connection(Side::Server, data);
}

/// A client fed the input as server bytes, after sending its request.
pub fn client_connection(data: &[u8]) {
    run_connection(Side::Client, data);
}

/// Drives one connection and checks the invariants of the module docs.
struct Driver {
    p: Protocol,
    now: Instant,
    step: Duration,
    max_size: usize,
    /// The error that failed the connection, once it did.
    failed: Option<Error>,
    /// Joins streamed fragments as the front ends do: what the core validated, the
    /// assembler must accept, within max_size.
    assembler: Assembler,
}

impl Driver {
    fn tick(&mut self) {
        self.now += self.step;
        self.p.handle_timeout(self.now);
        if let Some(deadline) = self.p.poll_timeout() {
            assert!(
                deadline > self.now,
                "a deadline is due right after handle_timeout"
            );
        }
        self.check_sticky();
    }

    /// Once failed, the error never changes.
    fn check_sticky(&mut self) {
        match (&self.failed, self.p.error()) {
            (Some(old), now) => assert_eq!(now, Some(old), "the connection error changed"),
            (None, Some(e)) => self.failed = Some(e.clone()),
            (None, None) => {}
        }
    }

    fn receive(&mut self, chunk: &[u8]) {
        let before = self.p.error().cloned();
        let result = self.p.receive_data(chunk);
        if let Some(e) = before {
            assert_eq!(result, Err(e), "receive_data after a failure");
        }
        if let Err(e) = &result {
            assert!(!matches!(e, Error::Misuse(_)), "peer data caused {e:?}");
            assert_eq!(self.p.error(), Some(e), "returned error not recorded");
        }
        self.check_sticky();
        self.drain_events();
        self.drain_output(chunk.len());
    }

    fn drain_events(&mut self) {
        // Each event may queue more (none should, but do not loop forever if one does).
        for _ in 0..100_000 {
            let Some(event) = self.p.poll_event() else {
                return;
            };
            match event {
                Event::Request(request) => {
                    assert_eq!(self.p.side(), Side::Server, "a client got a request");
                    let response = self.p.accept(&request);
                    let result = self.p.send_response(&response);
                    if let Err(e) = &result {
                        assert!(!matches!(e, Error::Misuse(_)), "send_response: {e:?}");
                    }
                    self.check_sticky();
                }
                Event::Response(response) => {
                    assert_eq!(self.p.side(), Side::Client, "a server got a response");
                    assert_eq!(response.status().as_u16(), 101, "non-101 opened");
                }
                Event::Message(message) => {
                    assert!(message.len() <= self.max_size, "message over max_size");
                    if let Message::Text(t) = &message {
                        assert!(std::str::from_utf8(t.as_bytes()).is_ok());
                    }
                    let result = self.p.send(&message);
                    self.echo(result);
                }
                Event::Fragment(f) => {
                    assert!(f.data.len() <= self.max_size, "fragment over max_size");
                    match self.assembler.push(f.clone()) {
                        Ok(Some(m)) => assert!(m.len() <= self.max_size, "joined over max_size"),
                        Ok(None) => {}
                        Err(e) => panic!("the assembler refused what the core accepted: {e:?}"),
                    }
                    let result = self.p.send_fragment(f.kind, &f.data, f.fin);
                    self.echo(result);
                }
                Event::Ping(payload) => assert!(payload.len() <= 125),
                Event::Pong { payload, .. } => assert!(payload.len() <= 125),
                Event::Close(_) => {}
            }
        }
        panic!("events keep coming");
    }

    fn echo(&mut self, result: Result<(), Error>) {
        match result {
            Ok(()) | Err(Error::ConnectionClosed) => {}
            // A fragmented echo cannot be continued once the connection failed mid-message,
            // but it must not be refused otherwise.
            Err(e) => panic!("echo refused: {e:?} in state {:?}", self.p.state()),
        }
        self.check_sticky();
    }

    fn drain_output(&mut self, fed: usize) {
        let n = self.p.pending_output_len();
        assert_eq!(n, self.p.pending_output().len());
        // Echoes, pongs, a close frame, a handshake response: proportional to the input,
        // plus inflated (at most max_size per message) data compressed again.
        let bound = 16 * fed + 4 * self.max_size + 64 * 1024;
        assert!(n <= bound, "{n} bytes of output after {fed} bytes of input");
        self.p.consume_output(n / 2);
        assert_eq!(self.p.pending_output_len(), n - n / 2);
        let mut sink = Vec::new();
        self.p.poll_transmit(&mut sink);
        assert_eq!(sink.len(), n - n / 2);
        assert_eq!(self.p.pending_output_len(), 0);
    }
}

fn run_connection(side: Side, data: &[u8]) {
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let control = Control(control);
    let config = connection_config(control);
    let max_size = 64 * 1024;
    let mut open_params_used = None;
    let p = if control.open() {
        let Some((&b, r)) = rest.split_first() else {
            return;
        };
        rest = r;
        open_params_used = open_params(b);
        Protocol::open(
            side,
            Arc::new(config),
            Some("chat".to_owned()),
            open_params_used,
        )
    } else {
        match side {
            Side::Server => Protocol::server(Arc::new(config)),
            Side::Client => Protocol::client(Arc::new(config)),
        }
    };
    let mut d = Driver {
        p,
        now: Instant::now(),
        step: control.step(),
        max_size,
        failed: None,
        assembler: Assembler::new(),
    };
    d.p.handle_timeout(d.now);

    if control.open() {
        assert_eq!(d.p.state(), State::Open);
        assert_eq!(d.p.deflate_params(), open_params_used.as_ref());
        // Something to send first, so that compression runs even without input.
        let result = d.p.send_text("Hello");
        d.echo(result);
        d.drain_output(0);
    } else if side == Side::Client {
        let mut request =
            d.p.connect_request(&"ws://example.com/chat".parse().expect("valid URI"))
                .expect("connect_request");
        request.headers_mut().insert(
            "sec-websocket-key",
            CLIENT_KEY.parse().expect("header value"),
        );
        d.p.send_request(&request).expect("send_request");
        d.drain_output(0);
    }

    let chunk = control.chunk();
    for (i, piece) in rest.chunks(chunk).enumerate() {
        d.tick();
        d.receive(piece);
        // Now and then a command of our own between the peer's bytes.
        if i % 5 == 4 && d.p.state() == State::Open {
            let _ = d.p.send_ping(&(i as u32).to_be_bytes());
            d.check_sticky();
            d.drain_output(0);
        }
    }

    // Let the timers run, then close and end the transport.
    for _ in 0..4 {
        d.tick();
        d.drain_output(0);
    }
    match d.p.close(CloseCode::NORMAL, "bye") {
        Ok(()) => {}
        Err(Error::Misuse(_)) => assert_eq!(d.p.state(), State::Connecting),
        Err(e) => panic!("close: {e:?}"),
    }
    d.check_sticky();
    d.drain_output(0);
    let failed = d.p.error().cloned();
    let eof = d.p.receive_eof();
    if let Some(e) = failed {
        assert_eq!(eof, Err(e), "receive_eof after a failure");
    }
    assert!(d.p.should_close_transport(), "EOF received, transport kept");
    assert_eq!(d.p.state(), State::Closed);
    d.check_sticky();
    let after = d.p.receive_data(b"\x81\x00");
    assert_eq!(after.err().as_ref(), d.p.error(), "receive_data after EOF");
    d.drain_output(2);
    d.tick();
}
