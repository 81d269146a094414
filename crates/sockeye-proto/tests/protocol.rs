//! Scenario tests: a client core and a server core driven against each other in memory, with a
//! simulated clock (no sockets, no sleeps). Grouped by RFC section.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sockeye_proto::frame::{Frame, OpCode};
use sockeye_proto::{
    CloseCode, CloseFrame, Config, DeflateConfig, Error, Event, HandshakeError, Limit,
    LimitExceeded, Message, MessageKind, Protocol, ProtocolError, Side, State, Timeout,
};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

struct Pair {
    client: Protocol,
    server: Protocol,
    now: Instant,
}

impl Pair {
    /// Both ends open, without a handshake and without compression.
    fn open(config: Config) -> Pair {
        let config = Arc::new(config);
        let now = Instant::now();
        let mut client = Protocol::open(Side::Client, config.clone(), None, None);
        let mut server = Protocol::open(Side::Server, config, None, None);
        client.handle_timeout(now);
        server.handle_timeout(now);
        Pair {
            client,
            server,
            now,
        }
    }

    /// Both ends through a real opening handshake.
    fn handshake(client_config: Config, server_config: Config) -> Pair {
        let now = Instant::now();
        let mut client = Protocol::client(Arc::new(client_config));
        let mut server = Protocol::server(Arc::new(server_config));
        client.handle_timeout(now);
        server.handle_timeout(now);
        let request = client
            .connect_request(&"ws://localhost:8765/chat".parse().unwrap())
            .unwrap();
        client.send_request(&request).unwrap();
        let mut pair = Pair {
            client,
            server,
            now,
        };
        pair.c2s().unwrap();
        let request = match pair.server.poll_event() {
            Some(Event::Request(r)) => r,
            other => panic!("expected a request, got {other:?}"),
        };
        let response = pair.server.accept(&request);
        assert_eq!(response.status(), 101);
        pair.server.send_response(&response).unwrap();
        assert_eq!(pair.server.state(), State::Open);
        pair.s2c().unwrap();
        assert!(matches!(pair.client.poll_event(), Some(Event::Response(_))));
        assert_eq!(pair.client.state(), State::Open);
        pair
    }

    fn c2s(&mut self) -> Result<(), Error> {
        let mut wire = Vec::new();
        self.client.poll_transmit(&mut wire);
        self.server.receive_data(&wire)
    }

    fn s2c(&mut self) -> Result<(), Error> {
        let mut wire = Vec::new();
        self.server.poll_transmit(&mut wire);
        self.client.receive_data(&wire)
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
    }
}

fn events(p: &mut Protocol) -> Vec<Event> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

fn messages(p: &mut Protocol) -> Vec<Message> {
    events(p)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// The frames in a byte stream (server to client: unmasked, or client to server: masked).
fn frames(wire: &[u8]) -> Vec<Frame> {
    let mut buf = bytes::BytesMut::from(wire);
    let mut out = Vec::new();
    while let Some(f) = Frame::decode(&mut buf, usize::MAX).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty(), "a partial frame in the output");
    out
}

fn output_frames(p: &mut Protocol) -> Vec<Frame> {
    let mut wire = Vec::new();
    p.poll_transmit(&mut wire);
    frames(&wire)
}

fn masked(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out, Some(MASK));
    out
}

fn close_of(frames: &[Frame]) -> Option<CloseFrame> {
    frames
        .iter()
        .find(|f| f.opcode == OpCode::Close)
        .map(|f| CloseFrame::parse(&f.payload).unwrap().unwrap())
}

fn server_open() -> Protocol {
    let mut p = Protocol::open(Side::Server, Arc::new(Config::new()), None, None);
    p.handle_timeout(Instant::now());
    p
}

/// Feeds a raw frame to a fresh server and returns the error and the close it sent.
fn server_rejects(wire: &[u8]) -> (Error, CloseFrame) {
    let mut server = server_open();
    let err = server.receive_data(wire).unwrap_err();
    let close = close_of(&output_frames(&mut server)).expect("a close frame");
    assert_eq!(Some(close.code), err.close_code());
    assert!(server.should_close_transport());
    (err, close)
}

// ----- RFC 6455 §4: opening handshake, end to end ---------------------------------------

mod s4_opening_handshake {
    use super::*;

    #[test]
    fn client_and_server_open_and_exchange_messages() {
        let mut pair = Pair::handshake(Config::new(), Config::new());
        pair.client.send_text("Hello!").unwrap();
        pair.c2s().unwrap();
        assert_eq!(messages(&mut pair.server), vec![Message::from("Hello!")]);
    }

    #[test]
    fn frames_pipelined_behind_the_request_are_kept() {
        let config = Arc::new(Config::new());
        let mut client = Protocol::client(config.clone());
        let mut server = Protocol::server(config);
        let request = client
            .connect_request(&"ws://localhost/".parse().unwrap())
            .unwrap();
        client.send_request(&request).unwrap();
        let mut wire = Vec::new();
        client.poll_transmit(&mut wire);
        wire.extend(masked(&Frame::new(OpCode::Text, "early")));
        server.receive_data(&wire).unwrap();
        let Some(Event::Request(request)) = server.poll_event() else {
            panic!("no request")
        };
        let response = server.accept(&request);
        server.send_response(&response).unwrap();
        assert_eq!(messages(&mut server), vec![Message::from("early")]);
    }

    #[test]
    fn malformed_request_is_answered_with_400_and_closed() {
        let mut server = Protocol::server(Arc::new(Config::new()));
        let err = server
            .receive_data(b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n")
            .unwrap_err();
        assert!(matches!(err, Error::Handshake(_)), "{err:?}");
        let out = String::from_utf8_lossy(server.pending_output()).into_owned();
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(server.should_close_transport());
        assert_eq!(server.state(), State::Closed);
        // Sticky.
        assert_eq!(server.receive_data(b"x").unwrap_err(), err);
    }

    #[test]
    fn invalid_upgrade_request_is_answered_by_accept_with_its_status() {
        let mut server = Protocol::server(Arc::new(Config::new()));
        server
            .receive_data(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let Some(Event::Request(request)) = server.poll_event() else {
            panic!("no request")
        };
        let response = server.accept(&request);
        assert_eq!(response.status(), 426);
        server.send_response(&response).unwrap();
        assert!(matches!(server.error(), Some(Error::Handshake(_))));
        assert!(server.should_close_transport());
    }

    #[test]
    fn application_rejection_is_sent_and_closes() {
        let mut server = Protocol::server(Arc::new(Config::new()));
        server
            .receive_data(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        assert!(matches!(server.poll_event(), Some(Event::Request(_))));
        let response = server.reject(http::StatusCode::OK, "OK\n");
        server.send_response(&response).unwrap();
        let out = String::from_utf8_lossy(server.pending_output()).into_owned();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nOK\n"), "{out}");
        assert!(server.should_close_transport());
    }

    #[test]
    fn a_101_that_was_not_accepted_is_misuse() {
        let mut server = Protocol::server(Arc::new(Config::new()));
        server
            .receive_data(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let response = http::Response::builder()
            .status(101)
            .body(Bytes::new())
            .unwrap();
        assert!(matches!(
            server.send_response(&response),
            Err(Error::Misuse(_))
        ));
    }

    #[test]
    fn client_reports_non_101_with_body_for_redirects() {
        let mut client = Protocol::client(Arc::new(Config::new()));
        let request = client
            .connect_request(&"ws://localhost/".parse().unwrap())
            .unwrap();
        client.send_request(&request).unwrap();
        let response =
            b"HTTP/1.1 302 Found\r\nLocation: ws://elsewhere/\r\nContent-Length: 5\r\n\r\nmoved";
        // Byte by byte: the error comes with the last byte of the body.
        for (i, b) in response.iter().enumerate() {
            let r = client.receive_data(&[*b]);
            if i + 1 < response.len() {
                r.unwrap();
            } else {
                let Err(Error::Handshake(HandshakeError::UnexpectedStatus(resp))) = r else {
                    panic!("{r:?}")
                };
                assert_eq!(resp.status, 302);
                assert_eq!(resp.headers["location"], "ws://elsewhere/");
                assert_eq!(resp.body, "moved");
            }
        }
        assert!(client.should_close_transport());
    }

    #[test]
    fn client_reads_a_body_delimited_by_eof() {
        let mut client = Protocol::client(Arc::new(Config::new()));
        let request = client
            .connect_request(&"ws://localhost/".parse().unwrap())
            .unwrap();
        client.send_request(&request).unwrap();
        client
            .receive_data(b"HTTP/1.1 500 Internal Server Error\r\n\r\nboom")
            .unwrap();
        let Err(Error::Handshake(HandshakeError::UnexpectedStatus(resp))) = client.receive_eof()
        else {
            panic!()
        };
        assert_eq!(resp.status, 500);
        assert_eq!(resp.body, "boom");
    }

    #[test]
    fn client_rejects_a_wrong_accept_key() {
        let mut client = Protocol::client(Arc::new(Config::new()));
        let request = client
            .connect_request(&"ws://localhost/".parse().unwrap())
            .unwrap();
        client.send_request(&request).unwrap();
        let err = client
            .receive_data(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            )
            .unwrap_err();
        assert_eq!(err, Error::Handshake(HandshakeError::InvalidAccept));
        assert_eq!(client.state(), State::Closed);
    }

    #[test]
    fn eof_during_handshake_is_an_error() {
        let mut server = Protocol::server(Arc::new(Config::new()));
        server.receive_data(b"GET / HTTP/1.1\r\n").unwrap();
        assert_eq!(
            server.receive_eof(),
            Err(Error::Handshake(HandshakeError::UnexpectedEof))
        );
    }

    #[test]
    fn handshake_size_limit_gives_431() {
        let mut config = Config::new();
        config.max_handshake_size(1024);
        let mut server = Protocol::server(Arc::new(config));
        let mut request = b"GET / HTTP/1.1\r\nHost: localhost\r\n".to_vec();
        for i in 0..40 {
            request.extend(format!("X-Header-{i}: {}\r\n", "v".repeat(30)).as_bytes());
        }
        let err = server.receive_data(&request).unwrap_err();
        assert!(matches!(
            err,
            Error::Handshake(HandshakeError::LimitExceeded(LimitExceeded {
                limit: Limit::HandshakeSize,
                ..
            }))
        ));
        let out = String::from_utf8_lossy(server.pending_output()).into_owned();
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    }

    #[test]
    fn subprotocol_negotiated() {
        let mut c = Config::new();
        c.subprotocols(["chat.v2", "chat.v1"]);
        let mut s = Config::new();
        s.subprotocols(["chat.v1", "chat.v2"]);
        let pair = Pair::handshake(c, s);
        // Server preference order.
        assert_eq!(pair.server.subprotocol(), Some("chat.v1"));
        assert_eq!(pair.client.subprotocol(), Some("chat.v1"));
    }

    #[test]
    fn open_timeout() {
        let mut server = Protocol::server(Arc::new(Config::new()));
        let t0 = Instant::now();
        server.handle_timeout(t0);
        assert_eq!(server.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        server.handle_timeout(t0 + Duration::from_secs(9));
        assert_eq!(server.state(), State::Connecting);
        server.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(server.error(), Some(&Error::Timeout(Timeout::Open)));
        assert!(server.should_close_transport());
    }
}

// ----- RFC 6455 §5.1-5.3: framing, masking ----------------------------------------------

mod s5_framing {
    use super::*;

    #[test]
    fn client_frames_are_masked_server_frames_are_not() {
        let mut pair = Pair::open(Config::new());
        pair.client.send_text("hi").unwrap();
        assert_ne!(pair.client.pending_output()[1] & 0x80, 0);
        pair.server.send_text("hi").unwrap();
        assert_eq!(pair.server.pending_output()[1] & 0x80, 0);
    }

    #[test]
    fn server_rejects_unmasked_frame() {
        // RFC 6455 §5.7 unmasked "Hello".
        let (err, close) = server_rejects(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
        assert_eq!(err, Error::Protocol(ProtocolError::UnmaskedFrame));
        assert_eq!(close.code, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn client_rejects_masked_frame() {
        let mut client = Protocol::open(Side::Client, Arc::new(Config::new()), None, None);
        let err = client
            .receive_data(&masked(&Frame::new(OpCode::Text, "x")))
            .unwrap_err();
        assert_eq!(err, Error::Protocol(ProtocolError::MaskedFrame));
        // A client waits for the server to close the TCP connection.
        assert!(!client.should_close_transport());
        assert!(client.close_expected());
    }

    #[test]
    fn reserved_bits_rejected() {
        for (rsv1, rsv2, rsv3) in [
            (true, false, false),
            (false, true, false),
            (false, false, true),
        ] {
            let mut f = Frame::new(OpCode::Binary, "x");
            (f.rsv1, f.rsv2, f.rsv3) = (rsv1, rsv2, rsv3);
            let (err, _) = server_rejects(&masked(&f));
            assert_eq!(err, Error::Protocol(ProtocolError::ReservedBits));
        }
    }

    #[test]
    fn reserved_opcode_rejected() {
        let (err, close) = server_rejects(&[0x83, 0x80, 1, 2, 3, 4]);
        assert_eq!(err, Error::Protocol(ProtocolError::UnknownOpcode(3)));
        assert_eq!(close.code, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn byte_by_byte_delivery_gives_the_same_messages() {
        let mut server = server_open();
        let mut wire = Vec::new();
        for i in 0..5 {
            wire.extend(masked(&Frame::new(OpCode::Binary, vec![i; 200])));
        }
        for b in &wire {
            server.receive_data(&[*b]).unwrap();
        }
        let got = messages(&mut server);
        assert_eq!(got.len(), 5);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.as_bytes(), &vec![i as u8; 200][..]);
        }
    }

    #[test]
    fn corked_output_for_one_batch_of_input() {
        // Three messages in one read: three echoes in one pending buffer, one write.
        let mut pair = Pair::open(Config::new());
        for text in ["a", "b", "c"] {
            pair.client.send_text(text).unwrap();
        }
        pair.c2s().unwrap();
        for m in messages(&mut pair.server) {
            pair.server.send(&m).unwrap();
        }
        let out = output_frames(&mut pair.server);
        let texts: Vec<_> = out.iter().map(|f| f.payload.clone()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        assert_eq!(pair.server.pending_output_len(), 0);
    }

    #[test]
    fn partial_write_then_rest() {
        let mut server = server_open();
        server.send_binary(&[7u8; 1000]).unwrap();
        let total = server.pending_output_len();
        let first: Vec<u8> = server.pending_output()[..10].to_vec();
        server.consume_output(10);
        assert_eq!(server.pending_output_len(), total - 10);
        let mut all = first;
        all.extend_from_slice(server.pending_output());
        server.consume_output(total - 10);
        assert_eq!(server.pending_output_len(), 0);
        assert_eq!(frames(&all)[0].payload.len(), 1000);
    }
}

// ----- RFC 6455 §5.4: fragmentation ------------------------------------------------------

mod s5_4_fragmentation {
    use super::*;

    fn frag(op: OpCode, data: &str, fin: bool) -> Vec<u8> {
        let mut f = Frame::new(op, Bytes::copy_from_slice(data.as_bytes()));
        f.fin = fin;
        masked(&f)
    }

    #[test]
    fn fragments_are_assembled_with_control_frames_between() {
        let mut server = server_open();
        let mut wire = frag(OpCode::Text, "Hel", false);
        wire.extend(masked(&Frame::new(OpCode::Ping, "p")));
        wire.extend(frag(OpCode::Continuation, "lo", false));
        wire.extend(frag(OpCode::Continuation, "!", true));
        server.receive_data(&wire).unwrap();
        let ev = events(&mut server);
        assert!(matches!(&ev[0], Event::Ping(p) if p == "p"));
        assert!(matches!(&ev[1], Event::Message(m) if *m == Message::from("Hello!")));
        let out = output_frames(&mut server);
        assert_eq!(out, vec![Frame::new(OpCode::Pong, "p")]);
    }

    #[test]
    fn continuation_without_start_rejected() {
        let (err, _) = server_rejects(&frag(OpCode::Continuation, "x", true));
        assert_eq!(err, Error::Protocol(ProtocolError::UnexpectedContinuation));
    }

    #[test]
    fn new_message_inside_fragmented_one_rejected() {
        let mut wire = frag(OpCode::Text, "a", false);
        wire.extend(frag(OpCode::Binary, "b", true));
        let (err, _) = server_rejects(&wire);
        assert_eq!(err, Error::Protocol(ProtocolError::ExpectedContinuation));
    }

    #[test]
    fn fragmented_send_is_received_whole() {
        let mut pair = Pair::open(Config::new());
        let text = "κόσμε";
        let bytes = text.as_bytes();
        // Cut inside a character: allowed.
        pair.client
            .send_fragment(MessageKind::Text, &bytes[..3], false)
            .unwrap();
        pair.client.send_ping(b"between").unwrap();
        pair.client
            .send_fragment(MessageKind::Text, &bytes[3..], true)
            .unwrap();
        pair.c2s().unwrap();
        let ev = events(&mut pair.server);
        assert!(matches!(&ev[0], Event::Ping(_)));
        assert!(matches!(&ev[1], Event::Message(m) if *m == Message::from("κόσμε")));
    }

    #[test]
    fn fragmented_send_rules() {
        let mut pair = Pair::open(Config::new());
        pair.client
            .send_fragment(MessageKind::Binary, b"a", false)
            .unwrap();
        assert!(matches!(pair.client.send_text("x"), Err(Error::Misuse(_))));
        assert!(matches!(
            pair.client.send_fragment(MessageKind::Text, b"b", true),
            Err(Error::Misuse(_))
        ));
        pair.client
            .send_fragment(MessageKind::Binary, b"b", true)
            .unwrap();
        pair.c2s().unwrap();
        assert_eq!(
            messages(&mut pair.server),
            vec![Message::from(b"ab".to_vec())]
        );
        assert!(matches!(
            pair.client.send_fragment(MessageKind::Text, b"\xff", true),
            Err(Error::Misuse(_))
        ));
    }

    #[test]
    fn streaming_mode_delivers_fragments_as_they_come() {
        let mut config = Config::new();
        config.stream_fragments(true);
        let mut server = Protocol::open(Side::Server, Arc::new(config), None, None);
        server
            .receive_data(&frag(OpCode::Text, "Hel", false))
            .unwrap();
        let ev = events(&mut server);
        assert!(
            matches!(&ev[..], [Event::Fragment(f)] if f.first && !f.fin && f.data == "Hel" && f.kind == MessageKind::Text)
        );
        server
            .receive_data(&frag(OpCode::Continuation, "lo", true))
            .unwrap();
        let ev = events(&mut server);
        assert!(matches!(&ev[..], [Event::Fragment(f)] if !f.first && f.fin && f.data == "lo"));
    }

    /// A message in one frame is its own only fragment: it comes whole, checked the same.
    #[test]
    fn streaming_mode_delivers_a_single_frame_message_whole() {
        let mut config = Config::new();
        config.stream_fragments(true).max_size(10);
        let mut server = Protocol::open(Side::Server, Arc::new(config), None, None);
        server
            .receive_data(&frag(OpCode::Text, "héllo", true))
            .unwrap();
        server
            .receive_data(&frag(OpCode::Binary, "\u{0}\u{1}", true))
            .unwrap();
        let ev = events(&mut server);
        assert!(
            matches!(&ev[..], [Event::Message(Message::Text(t)), Event::Message(Message::Binary(b))] if t.as_str() == "héllo" && b[..] == [0, 1]),
            "{ev:?}"
        );
        // Too big: refused on the declared length.
        let err = server
            .receive_data(&frag(OpCode::Binary, "0123456789x", true))
            .unwrap_err();
        assert!(matches!(err, Error::LimitExceeded(_)), "{err:?}");

        // Invalid UTF-8 in a single frame: 1007, as for a fragmented message.
        let mut config = Config::new();
        config.stream_fragments(true);
        let mut server = Protocol::open(Side::Server, Arc::new(config), None, None);
        let mut frame = Vec::new();
        Frame::new(OpCode::Text, b"ok \xff".to_vec()).encode(&mut frame, Some(MASK));
        assert_eq!(server.receive_data(&frame).unwrap_err(), Error::InvalidUtf8);
        let close = close_of(&output_frames(&mut server)).unwrap();
        assert_eq!(close.code, CloseCode::INVALID_PAYLOAD);
        assert!(events(&mut server)
            .iter()
            .all(|e| !matches!(e, Event::Message(_))));
    }
}

// ----- RFC 6455 §5.5: control frames -----------------------------------------------------

mod s5_5_control_frames {
    use super::*;

    #[test]
    fn ping_is_answered_with_the_same_payload() {
        let mut pair = Pair::open(Config::new());
        let id = pair.client.send_ping(b"abc").unwrap();
        pair.c2s().unwrap();
        assert!(matches!(&events(&mut pair.server)[..], [Event::Ping(p)] if p == "abc"));
        pair.advance(Duration::from_millis(30));
        pair.s2c().unwrap();
        let ev = events(&mut pair.client);
        assert!(
            matches!(&ev[..], [Event::Pong { payload, acked: Some(a) }] if payload == "abc" && *a == id)
        );
        assert_eq!(pair.client.latency(), Some(Duration::from_millis(30)));
    }

    #[test]
    fn a_pong_acknowledges_every_older_ping() {
        let mut pair = Pair::open(Config::new());
        let a = pair.client.send_ping(b"1").unwrap();
        let b = pair.client.send_ping(b"2").unwrap();
        assert!(a < b);
        // The peer answers only the latest (RFC 6455 §5.5.3 allows it).
        pair.client.receive_data(&[0x8a, 0x01, b'2']).unwrap();
        let ev = events(&mut pair.client);
        assert!(matches!(&ev[..], [Event::Pong { acked: Some(x), .. }] if *x == b));
        // An unsolicited pong acknowledges nothing.
        pair.client.receive_data(&[0x8a, 0x01, b'1']).unwrap();
        let ev = events(&mut pair.client);
        assert!(matches!(&ev[..], [Event::Pong { acked: None, .. }]));
    }

    #[test]
    fn ping_payload_rules() {
        let mut pair = Pair::open(Config::new());
        assert!(matches!(
            pair.client.send_ping(&[0; 126]),
            Err(Error::Misuse(_))
        ));
        pair.client.send_ping(&[0; 125]).unwrap();
        assert!(matches!(
            pair.client.send_ping(&[0; 125]),
            Err(Error::Misuse(_))
        ));
    }

    #[test]
    fn oversized_and_fragmented_control_frames_rejected() {
        let mut f = Frame::new(OpCode::Ping, vec![0u8; 126]);
        let (err, _) = server_rejects(&masked(&f));
        assert_eq!(err, Error::Protocol(ProtocolError::ControlFrameTooLong));
        f = Frame::new(OpCode::Ping, "x");
        f.fin = false;
        let (err, _) = server_rejects(&masked(&f));
        assert_eq!(err, Error::Protocol(ProtocolError::FragmentedControlFrame));
    }
}

// ----- RFC 6455 §5.6, §8.1: UTF-8 ---------------------------------------------------------

mod s8_1_utf8 {
    use super::*;

    #[test]
    fn invalid_text_closes_with_1007() {
        let (err, close) = server_rejects(&masked(&Frame::new(OpCode::Text, &b"\xce\xba\xff"[..])));
        assert_eq!(err, Error::InvalidUtf8);
        assert_eq!(close.code, CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn invalid_prefix_fails_before_the_message_ends() {
        // Autobahn 6.4.x: the first fragment is already invalid; fail without waiting.
        let mut f = Frame::new(OpCode::Text, &b"\xce\xba\xf4\x90"[..]);
        f.fin = false;
        let (err, _) = server_rejects(&masked(&f));
        assert_eq!(err, Error::InvalidUtf8);
    }

    #[test]
    fn character_split_across_frames_is_fine() {
        let mut server = server_open();
        let mut a = Frame::new(OpCode::Text, &b"\xce"[..]);
        a.fin = false;
        let b = Frame::new(OpCode::Continuation, &b"\xba"[..]);
        let mut wire = masked(&a);
        wire.extend(masked(&b));
        server.receive_data(&wire).unwrap();
        assert_eq!(messages(&mut server), vec![Message::from("κ")]);
    }

    #[test]
    fn truncated_character_at_message_end_fails() {
        let (err, _) = server_rejects(&masked(&Frame::new(OpCode::Text, &b"ab\xe2\x82"[..])));
        assert_eq!(err, Error::InvalidUtf8);
    }
}

// ----- RFC 6455 §7: closing the connection ----------------------------------------------

mod s7_closing {
    use super::*;

    #[test]
    fn client_initiated_close_handshake() {
        let mut pair = Pair::open(Config::new());
        pair.client.close(CloseCode::NORMAL, "bye").unwrap();
        assert_eq!(pair.client.state(), State::Closing);
        assert!(pair.client.close_expected());
        assert!(matches!(
            pair.client.send_text("late"),
            Err(Error::ConnectionClosed)
        ));
        pair.c2s().unwrap();
        let ev = events(&mut pair.server);
        assert!(
            matches!(&ev[..], [Event::Close(c)] if c.code == CloseCode::NORMAL && c.reason == "bye")
        );
        // The server echoes and closes the TCP connection first (RFC 6455 §7.1.1).
        assert!(pair.server.should_close_transport());
        pair.s2c().unwrap();
        assert!(matches!(&events(&mut pair.client)[..], [Event::Close(_)]));
        assert!(!pair.client.should_close_transport());
        pair.client.receive_eof().unwrap();
        assert_eq!(pair.client.state(), State::Closed);
        assert!(pair.client.close_ok());
        assert!(pair.server.close_ok());
        assert_eq!(pair.client.close_code(), CloseCode::NORMAL);
    }

    #[test]
    fn server_initiated_close_handshake() {
        let mut pair = Pair::open(Config::new());
        pair.server.close(CloseCode::GOING_AWAY, "").unwrap();
        pair.s2c().unwrap();
        let ev = events(&mut pair.client);
        assert!(matches!(&ev[..], [Event::Close(c)] if c.code == CloseCode::GOING_AWAY));
        pair.c2s().unwrap();
        assert!(pair.server.should_close_transport());
        assert!(pair.server.close_ok());
    }

    #[test]
    fn messages_sent_before_the_close_are_delivered() {
        let mut pair = Pair::open(Config::new());
        pair.server.close(CloseCode::NORMAL, "").unwrap();
        pair.client.send_text("in flight").unwrap();
        pair.c2s().unwrap();
        pair.s2c().unwrap();
        pair.c2s().unwrap();
        assert_eq!(messages(&mut pair.server), vec![Message::from("in flight")]);
    }

    #[test]
    fn empty_close_frame_is_1005_and_echoed_empty() {
        let mut server = server_open();
        server
            .receive_data(&masked(&Frame::new(OpCode::Close, "")))
            .unwrap();
        assert_eq!(server.close_code(), CloseCode::NO_STATUS);
        let out = output_frames(&mut server);
        assert_eq!(out, vec![Frame::new(OpCode::Close, "")]);
        assert!(server.close_ok());
    }

    #[test]
    fn invalid_close_payloads() {
        let (err, _) = server_rejects(&masked(&Frame::new(OpCode::Close, &b"\x03"[..])));
        assert_eq!(err, Error::Protocol(ProtocolError::CloseFrameTooShort));
        for code in [999u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let (err, _) = server_rejects(&masked(&Frame::new(
                OpCode::Close,
                code.to_be_bytes().to_vec(),
            )));
            assert_eq!(err, Error::Protocol(ProtocolError::InvalidCloseCode(code)));
        }
        let (err, close) =
            server_rejects(&masked(&Frame::new(OpCode::Close, &b"\x03\xe8\xff"[..])));
        assert_eq!(err, Error::InvalidUtf8);
        assert_eq!(close.code, CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn peer_vanishing_is_1006() {
        let mut pair = Pair::open(Config::new());
        pair.server.receive_eof().unwrap();
        assert_eq!(pair.server.state(), State::Closed);
        assert_eq!(pair.server.close_code(), CloseCode::ABNORMAL);
        assert!(!pair.server.close_ok());
        assert!(matches!(
            pair.server.send_text("x"),
            Err(Error::ConnectionClosed)
        ));
    }

    #[test]
    fn close_timeout_when_the_peer_never_answers() {
        let mut pair = Pair::open(Config::new());
        pair.client.close(CloseCode::NORMAL, "").unwrap();
        assert_eq!(
            pair.client.poll_timeout(),
            Some(pair.now + Duration::from_secs(10))
        );
        pair.advance(Duration::from_secs(10));
        assert_eq!(pair.client.state(), State::Closed);
        assert!(pair.client.should_close_transport());
        assert_eq!(pair.client.close_code(), CloseCode::ABNORMAL);
    }

    #[test]
    fn client_gives_up_waiting_for_the_server_to_close_tcp() {
        let mut pair = Pair::open(Config::new());
        pair.server.close(CloseCode::NORMAL, "").unwrap();
        pair.s2c().unwrap();
        assert!(!pair.client.should_close_transport());
        pair.advance(Duration::from_secs(10));
        assert!(pair.client.should_close_transport());
        // The handshake itself completed: still a clean close.
        assert!(pair.client.close_ok());
    }

    #[test]
    fn close_codes_that_may_not_be_sent_are_misuse() {
        let mut pair = Pair::open(Config::new());
        assert!(matches!(
            pair.client.close(CloseCode::ABNORMAL, ""),
            Err(Error::Misuse(_))
        ));
        pair.client.close(CloseCode(4000), "app").unwrap();
        // A second close does nothing.
        pair.client.close(CloseCode::NORMAL, "").unwrap();
        assert_eq!(
            close_of(&output_frames(&mut pair.client)).unwrap().code,
            CloseCode(4000)
        );
    }

    #[test]
    fn fail_from_the_application_sends_1011() {
        let mut pair = Pair::open(Config::new());
        pair.server
            .fail(CloseCode::INTERNAL_ERROR, "handler failed");
        assert!(pair.server.should_close_transport());
        let close = close_of(&output_frames(&mut pair.server)).unwrap();
        assert_eq!(close.code, CloseCode::INTERNAL_ERROR);
    }

    #[test]
    fn errors_are_sticky_and_input_after_failure_is_ignored() {
        let mut server = server_open();
        let err = server.receive_data(&[0x81, 0x00]).unwrap_err();
        assert_eq!(server.receive_data(&[]).unwrap_err(), err);
        assert_eq!(server.error(), Some(&err));
    }
}

// ----- Limits ------------------------------------------------------------------------------

mod limits {
    use super::*;

    fn server_with(config: Config) -> Protocol {
        Protocol::open(Side::Server, Arc::new(config), None, None)
    }

    #[test]
    fn max_size_checked_on_the_declared_length() {
        let mut config = Config::new();
        config.max_size(1000);
        let mut server = server_with(config);
        // Only the header of a 1001-byte frame: rejected before the payload arrives.
        let err = server
            .receive_data(&[0x82, 0xfe, 0x03, 0xe9, 1, 2, 3, 4])
            .unwrap_err();
        assert_eq!(
            err,
            Error::LimitExceeded(LimitExceeded {
                limit: Limit::MessageSize,
                max: 1000
            })
        );
        let close = close_of(&output_frames(&mut server)).unwrap();
        assert_eq!(close.code, CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn max_size_exactly_is_accepted() {
        let mut config = Config::new();
        config.max_size(1000);
        let mut server = server_with(config);
        server
            .receive_data(&masked(&Frame::new(OpCode::Binary, vec![1u8; 1000])))
            .unwrap();
        assert_eq!(messages(&mut server)[0].len(), 1000);
    }

    #[test]
    fn max_size_across_fragments() {
        let mut config = Config::new();
        config.max_size(1000);
        let mut server = server_with(config);
        let mut a = Frame::new(OpCode::Binary, vec![1u8; 600]);
        a.fin = false;
        server.receive_data(&masked(&a)).unwrap();
        let b = Frame::new(OpCode::Continuation, vec![1u8; 401]);
        let err = server.receive_data(&masked(&b)).unwrap_err();
        assert!(matches!(
            err,
            Error::LimitExceeded(LimitExceeded {
                limit: Limit::MessageSize,
                ..
            })
        ));
    }

    #[test]
    fn max_frame_size() {
        let mut config = Config::new();
        config.max_frame_size(100).max_size(10_000);
        let mut server = server_with(config);
        let mut a = Frame::new(OpCode::Binary, vec![1u8; 100]);
        a.fin = false;
        server.receive_data(&masked(&a)).unwrap();
        let b = Frame::new(OpCode::Continuation, vec![1u8; 101]);
        let err = server.receive_data(&masked(&b)).unwrap_err();
        assert_eq!(
            err,
            Error::LimitExceeded(LimitExceeded {
                limit: Limit::FrameSize,
                max: 100
            })
        );
        assert_eq!(err.close_code(), Some(CloseCode::MESSAGE_TOO_BIG));
    }

    #[test]
    fn max_fragments() {
        let mut config = Config::new();
        config.max_fragments(3);
        let mut server = server_with(config.clone());
        let mut wire = Vec::new();
        let mut f = Frame::new(OpCode::Binary, "a");
        f.fin = false;
        wire.extend(masked(&f));
        f.opcode = OpCode::Continuation;
        wire.extend(masked(&f));
        f.fin = true;
        wire.extend(masked(&f));
        server.receive_data(&wire).unwrap();
        assert_eq!(messages(&mut server), vec![Message::from(b"aaa".to_vec())]);

        let mut server = server_with(config);
        let mut f = Frame::new(OpCode::Binary, "");
        f.fin = false;
        let mut wire = masked(&f);
        f.opcode = OpCode::Continuation;
        for _ in 0..3 {
            wire.extend(masked(&f));
        }
        let err = server.receive_data(&wire).unwrap_err();
        assert_eq!(
            err,
            Error::LimitExceeded(LimitExceeded {
                limit: Limit::Fragments,
                max: 3
            })
        );
    }
}

// ----- Keepalive ---------------------------------------------------------------------------

mod keepalive {
    use super::*;

    #[test]
    fn pings_are_sent_and_answered_without_the_application() {
        let mut pair = Pair::open(Config::new());
        assert_eq!(
            pair.server.poll_timeout(),
            Some(pair.now + Duration::from_secs(20))
        );
        pair.advance(Duration::from_secs(20));
        let out = frames(pair.server.pending_output());
        assert!(out.iter().any(|f| f.opcode == OpCode::Ping));
        pair.s2c().unwrap();
        // The client core queued the pong by itself.
        pair.advance(Duration::from_millis(5));
        pair.c2s().unwrap();
        assert_eq!(pair.server.latency(), Some(Duration::from_millis(5)));
        // Next ping 20 s after the first; no timeout pending.
        pair.advance(Duration::from_secs(19));
        assert_eq!(pair.server.state(), State::Open);
    }

    #[test]
    fn no_pong_within_ping_timeout_fails_with_1011() {
        let mut pair = Pair::open(Config::new());
        pair.advance(Duration::from_secs(20));
        let _ = output_frames(&mut pair.server); // the ping is lost
        pair.advance(Duration::from_secs(19));
        assert_eq!(pair.server.state(), State::Open);
        pair.advance(Duration::from_secs(1));
        assert_eq!(
            pair.server.error(),
            Some(&Error::Timeout(Timeout::KeepalivePing))
        );
        let close = close_of(&output_frames(&mut pair.server)).unwrap();
        assert_eq!(close.code, CloseCode::INTERNAL_ERROR);
    }

    /// After a failure the server lingers (half-close, discard until the peer closes, at
    /// most close_timeout); not when the peer has closed already, nor after a timeout.
    #[test]
    fn linger_after_a_failure_but_not_after_eof_or_a_timeout() {
        let mut config = Config::new();
        config.max_size(1000).close_timeout(Duration::from_secs(3));
        let mut server = Protocol::open(Side::Server, Arc::new(config), None, None);
        assert_eq!(server.linger_timeout(), Some(Duration::from_secs(3)));
        server
            .receive_data(&[0x82, 0xfe, 0x03, 0xe9, 1, 2, 3, 4])
            .unwrap_err();
        assert!(server.should_close_transport());
        assert_eq!(server.linger_timeout(), Some(Duration::from_secs(3)));
        // What the peer goes on sending is discarded without a new error.
        server.receive_data(&[0u8; 4096]).unwrap_err();
        assert_eq!(server.linger_timeout(), Some(Duration::from_secs(3)));
        server.receive_eof().unwrap_err();
        assert_eq!(server.linger_timeout(), None);

        // A keepalive timeout: the peer is not answering, no lingering.
        let mut pair = Pair::open(Config::new());
        pair.advance(Duration::from_secs(20));
        let _ = output_frames(&mut pair.server);
        pair.advance(Duration::from_secs(20));
        assert!(pair.server.should_close_transport());
        assert_eq!(pair.server.linger_timeout(), None);
    }

    /// Output still unwritten when the transport is to close: flushed for at most
    /// close_timeout (the peer may be slow), not at all after a timeout (it is not reading),
    /// whether or not it closed its side.
    #[test]
    fn flush_bound_is_close_timeout_but_none_after_a_timeout() {
        let mut config = Config::new();
        config.max_size(1000).close_timeout(Duration::from_secs(3));
        let mut server = Protocol::open(Side::Server, Arc::new(config), None, None);
        server
            .receive_data(&[0x82, 0xfe, 0x03, 0xe9, 1, 2, 3, 4])
            .unwrap_err();
        assert!(server.should_close_transport());
        assert_eq!(server.flush_timeout(), Some(Duration::from_secs(3)));
        server.receive_eof().unwrap_err();
        assert_eq!(server.flush_timeout(), Some(Duration::from_secs(3)));

        // Keepalive timeout.
        let mut pair = Pair::open(Config::new());
        pair.advance(Duration::from_secs(20));
        let _ = output_frames(&mut pair.server);
        assert_eq!(pair.server.flush_timeout(), Some(Duration::from_secs(10)));
        pair.advance(Duration::from_secs(20));
        assert!(pair.server.should_close_transport());
        assert_eq!(pair.server.flush_timeout(), None);

        // Close timeout: the server's close frame was never answered.
        let mut pair = Pair::open(Config::new());
        pair.server.close(CloseCode::GOING_AWAY, "").unwrap();
        let _ = output_frames(&mut pair.server);
        assert!(!pair.server.should_close_transport());
        pair.advance(Duration::from_secs(10));
        assert!(pair.server.should_close_transport());
        assert_eq!(pair.server.flush_timeout(), None);
    }

    #[test]
    fn keepalive_off() {
        let mut config = Config::new();
        config.ping_interval(None);
        let mut pair = Pair::open(config);
        assert_eq!(pair.server.poll_timeout(), None);
        pair.advance(Duration::from_secs(3600));
        assert_eq!(pair.server.pending_output_len(), 0);
    }
}

// ----- RFC 7692: permessage-deflate --------------------------------------------------------

mod rfc7692_deflate {
    use super::*;

    #[test]
    fn compressed_messages_both_ways() {
        let mut pair = Pair::handshake(Config::new(), Config::new());
        assert!(pair.client.deflate_params().is_some());
        let text = "{\"hello\": \"world\"} ".repeat(50);
        for _ in 0..3 {
            pair.client.send_text(&text).unwrap();
        }
        // RSV1 is set on the wire and the frames are smaller than the text.
        let wire = pair.client.pending_output().to_vec();
        assert_ne!(wire[0] & 0x40, 0);
        assert!(wire.len() < text.len());
        pair.server.receive_data(&wire).unwrap();
        let got = messages(&mut pair.server);
        assert_eq!(got.len(), 3);
        for m in &got {
            assert_eq!(m.as_text(), Some(text.as_str()));
            pair.server.send(m).unwrap();
        }
        pair.s2c().unwrap();
        assert_eq!(messages(&mut pair.client).len(), 3);
    }

    #[test]
    fn compression_off_on_either_side_means_off() {
        let mut off = Config::new();
        off.compression(None);
        let pair = Pair::handshake(off.clone(), Config::new());
        assert!(pair.client.deflate_params().is_none());
        let pair = Pair::handshake(Config::new(), off);
        assert!(pair.server.deflate_params().is_none());
    }

    #[test]
    fn every_parameter_combination_negotiates_and_round_trips() {
        for bits in 0..16u32 {
            let dc = DeflateConfig {
                server_no_context_takeover: bits & 1 != 0,
                client_no_context_takeover: bits & 2 != 0,
                server_max_window_bits: (bits & 4 != 0).then_some(10),
                client_max_window_bits: (bits & 8 != 0).then_some(9),
                ..DeflateConfig::default()
            };
            let mut c = Config::new();
            c.compression(Some(dc));
            let mut pair = Pair::handshake(c, Config::new());
            let params = *pair.client.deflate_params().unwrap();
            assert_eq!(pair.server.deflate_params(), Some(&params));
            assert_eq!(params.server_no_context_takeover, bits & 1 != 0);
            assert_eq!(params.client_no_context_takeover, bits & 2 != 0);
            let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
            for _ in 0..2 {
                pair.client.send_binary(&payload).unwrap();
                pair.server.send_binary(&payload).unwrap();
            }
            pair.c2s().unwrap();
            pair.s2c().unwrap();
            assert_eq!(messages(&mut pair.server).len(), 2, "{bits}");
            assert_eq!(messages(&mut pair.client).len(), 2, "{bits}");
        }
    }

    #[test]
    fn several_offers_are_sent_in_order_and_the_accepted_one_applies() {
        let second = DeflateConfig {
            client_no_context_takeover: true,
            ..DeflateConfig::default()
        };
        let mut c = Config::new();
        c.deflate_offers(vec![DeflateConfig::default(), second]);
        let mut client = Protocol::client(Arc::new(c));
        let request = client
            .connect_request(&"ws://localhost/".parse().unwrap())
            .unwrap();
        let offer = request.headers()["sec-websocket-extensions"]
            .to_str()
            .unwrap();
        assert_eq!(
            offer,
            "permessage-deflate; client_max_window_bits, \
             permessage-deflate; client_no_context_takeover; client_max_window_bits"
        );
        // A server that wants the client to reset its context: the response fits.
        let mut s = Config::new();
        s.compression(Some(DeflateConfig {
            client_no_context_takeover: true,
            ..DeflateConfig::default()
        }));
        let mut server = Protocol::server(Arc::new(s));
        client.send_request(&request).unwrap();
        let mut wire = Vec::new();
        client.poll_transmit(&mut wire);
        server.receive_data(&wire).unwrap();
        let Some(Event::Request(req)) = server.poll_event() else {
            panic!()
        };
        let response = server.accept(&req);
        server.send_response(&response).unwrap();
        wire.clear();
        server.poll_transmit(&mut wire);
        client.receive_data(&wire).unwrap();
        assert!(client.deflate_params().unwrap().client_no_context_takeover);
        assert_eq!(client.deflate_params(), server.deflate_params());
    }

    #[test]
    fn inflating_past_max_size_fails_with_1009() {
        let mut small = Config::new();
        small.max_size(64 * 1024);
        let mut pair = Pair::handshake(Config::new(), small);
        pair.client.send_binary(&vec![0u8; 1 << 20]).unwrap();
        // A megabyte of zeros compresses to about a kilobyte.
        assert!(pair.client.pending_output_len() < 8 * 1024);
        let err = pair.c2s().unwrap_err();
        assert!(matches!(
            err,
            Error::LimitExceeded(LimitExceeded {
                limit: Limit::MessageSize,
                ..
            })
        ));
        let close = close_of(&output_frames(&mut pair.server)).unwrap();
        assert_eq!(close.code, CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn fragmented_compressed_send() {
        let mut pair = Pair::handshake(Config::new(), Config::new());
        pair.client
            .send_fragment(MessageKind::Text, b"Hello, ", false)
            .unwrap();
        pair.client
            .send_fragment(MessageKind::Text, b"world", true)
            .unwrap();
        pair.c2s().unwrap();
        assert_eq!(
            messages(&mut pair.server),
            vec![Message::from("Hello, world")]
        );
    }

    #[test]
    fn rsv1_on_a_continuation_is_rejected() {
        let mut pair = Pair::handshake(Config::new(), Config::new());
        let mut a = Frame::new(OpCode::Binary, "a");
        a.fin = false;
        let mut b = Frame::new(OpCode::Continuation, "b");
        b.rsv1 = true;
        let mut wire = masked(&a);
        wire.extend(masked(&b));
        let err = pair.server.receive_data(&wire).unwrap_err();
        assert_eq!(
            err,
            Error::Protocol(ProtocolError::CompressedControlOrContinuation)
        );
    }

    #[test]
    fn corrupt_compressed_data_is_a_protocol_error() {
        let mut pair = Pair::handshake(Config::new(), Config::new());
        let mut f = Frame::new(OpCode::Binary, &b"\xff\xff\xff\xff"[..]);
        f.rsv1 = true;
        let err = pair.server.receive_data(&masked(&f)).unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ProtocolError::Inflate(_))),
            "{err:?}"
        );
    }
}

// ----- Prepared messages (broadcast) ---------------------------------------------------------

mod prepared {
    use super::*;
    use sockeye_proto::PreparedMessage;

    #[test]
    fn server_copies_the_prepared_frame_exactly_as_send_would_write_it() {
        let prepared = PreparedMessage::new("hello everyone");
        let mut a = server_open();
        let mut b = server_open();
        a.send_prepared(&prepared).unwrap();
        b.send_text("hello everyone").unwrap();
        assert_eq!(a.pending_output(), b.pending_output());
        assert_eq!(a.pending_output(), &prepared.frame()[..]);
    }

    #[test]
    fn compressing_and_client_connections_encode_it_themselves() {
        let prepared = PreparedMessage::new("{\"x\": 1} ".repeat(20));
        let mut pair = Pair::handshake(Config::new(), Config::new());
        pair.server.send_prepared(&prepared).unwrap();
        assert_ne!(
            pair.server.pending_output()[0] & 0x40,
            0,
            "RSV1: compressed"
        );
        pair.client.send_prepared(&prepared).unwrap();
        assert_ne!(pair.client.pending_output()[1] & 0x80, 0, "masked");
        pair.s2c().unwrap();
        pair.c2s().unwrap();
        assert_eq!(messages(&mut pair.client), vec![prepared.message().clone()]);
        assert_eq!(messages(&mut pair.server), vec![prepared.message().clone()]);
    }

    #[test]
    fn prepared_respects_the_connection_state() {
        let mut server = server_open();
        server.close(CloseCode::NORMAL, "").unwrap();
        assert_eq!(
            server.send_prepared(&PreparedMessage::new("late")),
            Err(Error::ConnectionClosed)
        );
    }
}
