//! Behaviour of the event-loop server front end (`sockeye::reactor`) over real loopback
//! sockets: echo (text, binary, empty, fragmented, large, pipelined; compression on and off;
//! several clients on two loops), the callbacks (`on_open` first, `on_message` for frames
//! that came with the handshake, `on_close` once with how the connection ended), `max_size`
//! (1009), invalid UTF-8 (1007) and protocol errors (1002), a peer that ends its side,
//! `Socket::close`, keepalive pings and their timeout (1011), the open and close timeouts,
//! the `process_request`/`process_response` hooks and `origins`, subprotocols, graceful
//! shutdown (1001, 503), backpressure (`write_limit`, `on_drain`, a producer refilling in
//! `on_drain`), peers that stop reading (the keepalive and close timeouts still end them),
//! panics (handler, factory, `on_close`: the loop goes on), `Handle` and
//! `Server::broadcast`, interop with python-websockets' client, and the addresses and ids a
//! `Socket` reports.
//!
//! Peers are the blocking client (`sockeye::sync`), python-websockets, and, to misbehave,
//! raw `std::net::TcpStream`s that do the opening handshake by hand and read frames with
//! `sockeye::proto::frame::Frame::decode`. Handlers report what they see through channels
//! (the factory, which is `Send + Sync`, gives each handler its own `Sender`); where a test
//! needs the loop to find several things at once, a "gate" connection holds the loop thread
//! in a callback until the test has set them up. Timeouts are failure guards only.

use std::cell::Cell;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::StatusCode;
use sockeye::proto::frame::{Frame, OpCode};
use sockeye::proto::HandshakeError;
use sockeye::reactor::{Handle, Handler, Server, ServerBuilder, Socket};
use sockeye::sync::{self, ClientBuilder, Connection};
use sockeye::{CloseCode, CloseFrame, Closed, Error, Message, MessageKind, State};

/// Failure guard for anything that should happen promptly.
const GUARD: Duration = Duration::from_secs(10);
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

#[path = "support/raw_peer.rs"]
mod raw_peer;
use raw_peer::{
    handshake_request, letters, masked, noise, number_of, numbered, numbered_lines, raw_handshake,
    read_close, read_data_frame, read_frame, read_more, read_response_head,
};

fn uri_of(server: &Server) -> String {
    format!("ws://{}/", server.local_addr())
}

fn recv_guarded(ws: &Connection) -> sockeye::Result<Option<Message>> {
    match ws.recv_timeout(GUARD) {
        Err(Error::RecvTimeout) => panic!("timed out waiting for a message"),
        r => r,
    }
}

/// The next message, which must be there.
fn recv_message(ws: &Connection) -> Message {
    recv_guarded(ws)
        .expect("a message, not an error")
        .expect("a message, not the end")
}

/// The `Closed` of a connection that ended other than normally, as `recv` reports it.
fn recv_closed(ws: &Connection) -> Closed {
    match recv_guarded(ws) {
        Err(Error::ConnectionClosed(c)) => c,
        other => panic!("expected the connection to close, got {other:?}"),
    }
}

/// Waits (bounded) until `f` holds.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < GUARD, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Everything a channel receives until every sender is gone (bounded).
fn drain<T>(rx: &mpsc::Receiver<T>) -> Vec<T> {
    let mut all = Vec::new();
    loop {
        match rx.recv_timeout(GUARD) {
            Ok(v) => all.push(v),
            Err(mpsc::RecvTimeoutError::Disconnected) => return all,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("a sender is still alive"),
        }
    }
}

/// A handler that echoes every message and reports how its connection ended.
struct Echo {
    closed: mpsc::Sender<Closed>,
}

impl Handler for Echo {
    fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
        // Fails only once the connection is closing (a message before the peer's close).
        let _ = ws.send(message);
    }

    fn on_close(&mut self, closed: &Closed) {
        let _ = self.closed.send(closed.clone());
    }
}

/// An echo server; the receiver gets each connection's `Closed`, and is disconnected once
/// the server has shut down.
fn echo_server(builder: ServerBuilder) -> (Server, String, mpsc::Receiver<Closed>) {
    let (tx, rx) = mpsc::channel();
    let server = builder
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| Echo {
            closed: tx.clone(),
        })
        .unwrap();
    let uri = uri_of(&server);
    (server, uri, rx)
}

// ----- Raw peers -----------------------------------------------------------------------------

/// Reads until the end of the stream (or a reset): what arrived, and when it ended.
fn read_to_end_guarded(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut buf = BytesMut::new();
    while read_more(stream, &mut buf) > 0 {}
    (buf.to_vec(), Instant::now())
}

/// Asserts that the server ends the TCP connection next (no more frames), then closes ours,
/// as a well-behaved peer does (until then, the server lingers for up to `close_timeout`:
/// see `Protocol::linger_timeout`).
fn assert_end_of_stream(mut stream: TcpStream, buf: &mut BytesMut) {
    let frame = read_frame(&mut stream, buf);
    assert!(frame.is_none(), "expected end of stream, got {frame:?}");
}

fn masked_close(code: CloseCode, reason: &str) -> Vec<u8> {
    masked(OpCode::Close, &CloseFrame::new(code, reason).to_payload())
}

// ----- Echo ----------------------------------------------------------------------------------

#[test]
fn echoes_text_binary_large_fragmented_and_pipelined_messages() {
    const PIPELINED: usize = 1000;
    for compression in [true, false] {
        let (server, uri, closed_rx) = echo_server(
            Server::builder()
                .threads(1)
                .max_size(4 * MIB)
                .compression(compression),
        );
        let ws = ClientBuilder::default()
            .max_size(4 * MIB)
            .compression(compression)
            .connect(&uri)
            .unwrap();
        let negotiated = ws
            .response()
            .headers()
            .get("sec-websocket-extensions")
            .is_some_and(|v| v.to_str().unwrap().contains("permessage-deflate"));
        assert_eq!(negotiated, compression);

        // Small ones, empty ones.
        let small = [
            Message::from("Hello, κόσμε!"),
            Message::from(vec![0u8, 1, 0xfe, 0xff]),
            Message::from(""),
            Message::from(Vec::<u8>::new()),
        ];
        for message in small {
            ws.send(message.clone()).unwrap();
            let echo = recv_message(&ws);
            assert_eq!(echo, message, "compression {compression}");
        }

        // Large ones: 1 MiB, compressible or not, and (without compression, which is slow
        // in debug builds) 3 MiB, over the default max_size.
        let mut large = vec![noise(MIB, 1), numbered_lines(MIB)];
        if !compression {
            large.push(noise(3 * MIB, 2));
        }
        for data in large {
            ws.send(data.clone()).unwrap();
            let echo = recv_message(&ws);
            assert_eq!(echo.kind(), MessageKind::Binary);
            assert_eq!(echo.len(), data.len());
            assert!(echo.as_bytes() == &data[..], "large binary corrupted");
        }
        let text = String::from_utf8(letters(256 * KIB, 3)).unwrap();
        ws.send(text.clone()).unwrap();
        assert_eq!(recv_message(&ws).as_text(), Some(text.as_str()));

        // Fragmented messages arrive whole at the handler.
        ws.send_fragmented(MessageKind::Text, ["frag", "mented ", "text"])
            .unwrap();
        assert_eq!(recv_message(&ws), Message::from("fragmented text"));
        ws.send_fragmented(MessageKind::Binary, [&b"\x00\x01"[..], b"", b"\x02"])
            .unwrap();
        assert_eq!(recv_message(&ws), Message::from(vec![0u8, 1, 2]));

        // Pipelined: everything sent before anything is read, echoed in order.
        for i in 0..PIPELINED {
            if i % 2 == 0 {
                ws.send(format!("message {i}")).unwrap();
            } else {
                ws.send(numbered(i, 1 + i % 300 + 4)).unwrap();
            }
        }
        for i in 0..PIPELINED {
            let echo = recv_message(&ws);
            if i % 2 == 0 {
                assert_eq!(echo.as_text(), Some(format!("message {i}").as_str()));
            } else {
                assert_eq!(echo.as_bytes(), &numbered(i, 1 + i % 300 + 4)[..]);
            }
        }

        ws.close(CloseCode::NORMAL, "").unwrap();
        assert!(ws.closed().unwrap().is_ok(), "{}", ws.closed().unwrap());
        let closed = closed_rx.recv_timeout(GUARD).unwrap();
        assert!(closed.is_ok(), "the server saw {closed}");
        server.shutdown();
    }
}

#[test]
fn several_clients_at_once_on_two_loops() {
    const CLIENTS: usize = 8;
    const MESSAGES: usize = 200;
    // A handler that is not `Send` (an `Rc`): it lives in its loop's thread.
    struct Counting {
        count: Rc<Cell<usize>>,
        report: mpsc::Sender<(String, usize)>,
    }
    impl Handler for Counting {
        fn on_open(&mut self, _ws: &mut Socket<'_>) {
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            let _ = self.report.send((thread, 0));
        }
        fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
            self.count.set(self.count.get() + 1);
            let _ = ws.send(message);
        }
        fn on_close(&mut self, _closed: &Closed) {
            let _ = self.report.send((String::new(), self.count.get()));
        }
    }
    let (tx, rx) = mpsc::channel();
    let server = Server::builder()
        .threads(2)
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| Counting {
            count: Rc::new(Cell::new(0)),
            report: tx.clone(),
        })
        .unwrap();
    let uri = uri_of(&server);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                let ws = ClientBuilder::default()
                    .compression(c % 2 == 0)
                    .connect(&uri)
                    .unwrap();
                // Half pipelined, half one at a time.
                for i in 0..MESSAGES / 2 {
                    ws.send(format!("{c}:{i}")).unwrap();
                }
                for i in 0..MESSAGES / 2 {
                    assert_eq!(
                        recv_message(&ws).as_text(),
                        Some(format!("{c}:{i}").as_str())
                    );
                }
                for i in MESSAGES / 2..MESSAGES {
                    let data = letters(10 * i, c as u64);
                    ws.send(data.clone()).unwrap();
                    assert!(recv_message(&ws).as_bytes() == &data[..]);
                }
                ws.close(CloseCode::NORMAL, "").unwrap();
                assert!(ws.closed().unwrap().is_ok());
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_until("every connection is over", || {
        server.connection_count() == 0
    });
    server.shutdown();
    let reports = drain(&rx);
    let opens: Vec<_> = reports.iter().filter(|(t, _)| !t.is_empty()).collect();
    let closes: Vec<_> = reports.iter().filter(|(t, _)| t.is_empty()).collect();
    assert_eq!(opens.len(), CLIENTS);
    assert!(
        opens.iter().all(|(t, _)| t.starts_with("sockeye-loop-")),
        "handlers run in the loop threads: {opens:?}"
    );
    assert_eq!(closes.len(), CLIENTS);
    assert!(
        closes.iter().all(|(_, n)| *n == MESSAGES),
        "messages seen per connection: {closes:?}"
    );
}

// ----- Callbacks -----------------------------------------------------------------------------

#[test]
fn on_open_greets_first_and_on_close_runs_once_with_the_clients_code() {
    #[derive(Debug, PartialEq)]
    enum Seen {
        Open(u64),
        Message(u64, Message),
        Close(u64, Closed),
    }
    struct Greeter {
        id: u64,
        report: mpsc::Sender<Seen>,
    }
    impl Handler for Greeter {
        fn on_open(&mut self, ws: &mut Socket<'_>) {
            self.id = ws.id();
            let _ = self.report.send(Seen::Open(self.id));
            ws.send_text("welcome").unwrap();
        }
        fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
            let _ = self.report.send(Seen::Message(self.id, message.clone()));
            let _ = ws.send(message);
        }
        fn on_close(&mut self, closed: &Closed) {
            let _ = self.report.send(Seen::Close(self.id, closed.clone()));
        }
    }
    let (tx, rx) = mpsc::channel();
    let server = Server::builder()
        .threads(1)
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| Greeter {
            id: 0,
            report: tx.clone(),
        })
        .unwrap();
    let uri = uri_of(&server);
    for (code, reason) in [(4000, "bye"), (4001, "see you"), (4002, "")] {
        let ws = sync::connect(&uri).unwrap();
        // Sent before reading: the greeting still comes first.
        ws.send("first").unwrap();
        assert_eq!(recv_message(&ws), Message::from("welcome"));
        assert_eq!(recv_message(&ws), Message::from("first"));
        ws.close(CloseCode(code), reason).unwrap();
        let closed = ws.closed().unwrap();
        assert_eq!(closed.received, Some(CloseFrame::new(code, reason)));

        let Seen::Open(id) = rx.recv_timeout(GUARD).unwrap() else {
            panic!("on_open did not come first")
        };
        assert_eq!(
            rx.recv_timeout(GUARD).unwrap(),
            Seen::Message(id, Message::from("first"))
        );
        match rx.recv_timeout(GUARD).unwrap() {
            Seen::Close(i, closed) => {
                assert_eq!(i, id);
                assert_eq!(closed.code(), CloseCode(code));
                assert_eq!(closed.reason(), reason);
                assert_eq!(closed.received, Some(CloseFrame::new(code, reason)));
                assert_eq!(closed.sent, Some(CloseFrame::new(code, reason)));
            }
            other => panic!("{other:?}"),
        }
    }
    wait_until("every connection is over", || {
        server.connection_count() == 0
    });
    server.shutdown();
    // Nothing more: on_close ran once per connection.
    let rest = drain(&rx);
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn socket_close_from_on_message_reaches_the_client() {
    let (tx, rx) = mpsc::channel();
    struct Closer {
        report: mpsc::Sender<String>,
    }
    impl Handler for Closer {
        fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
            match message.as_text() {
                Some("close 4001") => {
                    // Codes that may not be sent are refused; the connection stays open.
                    let refused = ws.close(CloseCode::ABNORMAL, "");
                    let _ = self.report.send(format!(
                        "1006 refused: {}, {:?}",
                        matches!(refused, Err(Error::Misuse(_))),
                        ws.state()
                    ));
                    ws.close(CloseCode(4001), "done").unwrap();
                    let late = ws.send("late");
                    let _ = self.report.send(format!(
                        "after close: {:?}, send refused: {}",
                        ws.state(),
                        matches!(late, Err(Error::ConnectionClosed(_)))
                    ));
                }
                Some("close 1000") => ws.close(CloseCode::NORMAL, "bye").unwrap(),
                _ => {
                    let _ = ws.send(message);
                }
            }
        }
        fn on_close(&mut self, closed: &Closed) {
            let _ = self.report.send(format!(
                "on_close: sent {:?}, received {:?}",
                closed.sent, closed.received
            ));
        }
    }
    let server = Server::builder()
        .threads(1)
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| Closer {
            report: tx.clone(),
        })
        .unwrap();
    let uri = uri_of(&server);

    let ws = sync::connect(&uri).unwrap();
    ws.send("hi").unwrap();
    assert_eq!(recv_message(&ws), Message::from("hi"));
    ws.send("close 4001").unwrap();
    let closed = recv_closed(&ws);
    assert_eq!(closed.code(), CloseCode(4001));
    assert_eq!(closed.reason(), "done");
    assert_eq!(closed.received, Some(CloseFrame::new(4001, "done")));
    assert_eq!(closed.sent, Some(CloseFrame::new(4001, "done")));
    assert_eq!(ws.state(), State::Closed);
    assert_eq!(rx.recv_timeout(GUARD).unwrap(), "1006 refused: true, Open");
    assert_eq!(
        rx.recv_timeout(GUARD).unwrap(),
        "after close: Closing, send refused: true"
    );
    let frame = CloseFrame::new(4001, "done");
    assert_eq!(
        rx.recv_timeout(GUARD).unwrap(),
        format!(
            "on_close: sent {:?}, received {:?}",
            Some(&frame),
            Some(&frame)
        )
    );

    // A normal close: recv ends with None, both sides see a clean close.
    let ws = sync::connect(&uri).unwrap();
    ws.send("close 1000").unwrap();
    assert_eq!(recv_guarded(&ws).unwrap(), None);
    let closed = ws.closed().unwrap();
    assert!(closed.is_ok(), "{closed}");
    assert_eq!(closed.reason(), "bye");
    let frame = CloseFrame::new(CloseCode::NORMAL, "bye");
    assert_eq!(
        rx.recv_timeout(GUARD).unwrap(),
        format!(
            "on_close: sent {:?}, received {:?}",
            Some(&frame),
            Some(&frame)
        )
    );
    server.shutdown();
}

// ----- Limits and protocol errors ------------------------------------------------------------

#[test]
fn a_message_over_max_size_fails_the_connection_with_1009() {
    const LIMIT: usize = 1024;
    for compression in [false, true] {
        let (tx, rx) = mpsc::channel();
        struct Sizes {
            report: mpsc::Sender<Result<usize, Closed>>,
        }
        impl Handler for Sizes {
            fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
                let _ = self.report.send(Ok(message.len()));
                let _ = ws.send(message);
            }
            fn on_close(&mut self, closed: &Closed) {
                let _ = self.report.send(Err(closed.clone()));
            }
        }
        let server = Server::builder()
            .threads(1)
            .max_size(LIMIT)
            .compression(compression)
            .serve("127.0.0.1:0", move |_req: &http::Request<()>| Sizes {
                report: tx.clone(),
            })
            .unwrap();
        let ws = ClientBuilder::default()
            .compression(compression)
            .connect(&uri_of(&server))
            .unwrap();
        // At the limit: fine.
        ws.send(vec![7u8; LIMIT]).unwrap();
        assert_eq!(recv_message(&ws).len(), LIMIT);
        assert_eq!(rx.recv_timeout(GUARD).unwrap(), Ok(LIMIT));
        // Over it (with compression, only once inflated: zeros compress to a few bytes).
        let over = if compression { 64 * KIB } else { LIMIT + 1 };
        ws.send(vec![0u8; over]).unwrap();
        let closed = recv_closed(&ws);
        assert_eq!(
            closed.code(),
            CloseCode::MESSAGE_TOO_BIG,
            "compression {compression}: {closed}"
        );
        match rx.recv_timeout(GUARD).unwrap() {
            Err(closed) => assert_eq!(
                closed.sent.map(|f| f.code),
                Some(CloseCode::MESSAGE_TOO_BIG)
            ),
            Ok(len) => panic!("the handler got a message of {len} bytes"),
        }
        server.shutdown();
    }
}

#[test]
fn invalid_utf8_gives_1007_and_protocol_errors_give_1002() {
    let (server, _uri, closed_rx) = echo_server(Server::builder().threads(1));
    let addr = server.local_addr();
    let mut unmasked = Vec::new();
    Frame::new(OpCode::Text, &b"hi"[..]).encode(&mut unmasked, None);
    let cases: [(&str, Vec<u8>, CloseCode); 5] = [
        (
            "invalid UTF-8",
            masked(OpCode::Text, b"ok \xff\xfe"),
            CloseCode::INVALID_PAYLOAD,
        ),
        (
            "invalid UTF-8 across fragments",
            {
                let mut out = Vec::new();
                let mut first = Frame::new(OpCode::Text, &b"caf\xc3"[..]);
                first.fin = false;
                first.encode(&mut out, Some([1, 2, 3, 4]));
                Frame::new(OpCode::Continuation, &b"("[..]).encode(&mut out, Some([5, 6, 7, 8]));
                out
            },
            CloseCode::INVALID_PAYLOAD,
        ),
        ("unmasked frame", unmasked, CloseCode::PROTOCOL_ERROR),
        (
            "reserved opcode 0x3",
            vec![0x83, 0x80, 1, 2, 3, 4],
            CloseCode::PROTOCOL_ERROR,
        ),
        (
            "RSV2 without an extension",
            vec![0x81 | 0x20, 0x80, 1, 2, 3, 4],
            CloseCode::PROTOCOL_ERROR,
        ),
    ];
    for (what, bad, code) in cases {
        let (mut stream, mut buf) = raw_handshake(addr);
        // The connection works...
        stream.write_all(&masked(OpCode::Text, b"fine")).unwrap();
        let echo = read_data_frame(&mut stream, &mut buf);
        assert_eq!(
            (echo.opcode, &echo.payload[..]),
            (OpCode::Text, &b"fine"[..])
        );
        // ...until the bad frame.
        stream.write_all(&bad).unwrap();
        let close = read_close(&mut stream, &mut buf);
        assert_eq!(close.code, code, "{what}: {close:?}");
        assert_end_of_stream(stream, &mut buf);
        let closed = closed_rx.recv_timeout(GUARD).unwrap();
        assert_eq!(closed.sent.map(|f| f.code), Some(code), "{what}");
        assert_eq!(closed.received, None, "{what}");
    }
    server.shutdown();
}

#[test]
fn frames_sent_with_the_handshake_request_follow_on_open() {
    struct Greeter;
    impl Handler for Greeter {
        fn on_open(&mut self, ws: &mut Socket<'_>) {
            ws.send_text("welcome").unwrap();
        }
        fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
            let _ = ws.send(message);
        }
    }
    let server = Server::builder()
        .threads(1)
        .serve("127.0.0.1:0", |_req: &http::Request<()>| Greeter)
        .unwrap();
    let addr = server.local_addr();
    let mut stream = TcpStream::connect(addr).unwrap();
    // The request and two frames in one write.
    let mut out = handshake_request(addr);
    out.extend_from_slice(&masked(OpCode::Text, b"one"));
    out.extend_from_slice(&masked(OpCode::Binary, b"two"));
    stream.write_all(&out).unwrap();
    let mut buf = BytesMut::new();
    let head = read_response_head(&mut stream, &mut buf);
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    for (opcode, payload) in [
        (OpCode::Text, &b"welcome"[..]),
        (OpCode::Text, b"one"),
        (OpCode::Binary, b"two"),
    ] {
        let frame = read_data_frame(&mut stream, &mut buf);
        assert_eq!((frame.opcode, &frame.payload[..]), (opcode, payload));
    }
    stream
        .write_all(&masked_close(CloseCode::NORMAL, ""))
        .unwrap();
    assert_eq!(read_close(&mut stream, &mut buf).code, CloseCode::NORMAL);
    assert_end_of_stream(stream, &mut buf);
    server.shutdown();
}

/// A handler that echoes, reports how its connection ended, and, on the connection to
/// `/gate`, holds the loop thread in `on_message` until the test opens the gate: a test sets
/// up what the loop finds when it polls next.
struct Gated {
    gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    closed: mpsc::Sender<Closed>,
}

impl Handler for Gated {
    fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
        if let Some((held, open)) = &self.gate {
            held.send(()).unwrap();
            open.recv_timeout(GUARD).expect("the gate was never opened");
        }
        let _ = ws.send(message);
    }

    fn on_close(&mut self, closed: &Closed) {
        let _ = self.closed.send(closed.clone());
    }
}

/// A one-loop echo server with a gate (see [`Gated`]): the receiver of each non-gate
/// connection's `Closed`, and a function that holds the loop while it runs `f`.
fn gated_echo_server(
    builder: ServerBuilder,
) -> (
    Server,
    mpsc::Receiver<Closed>,
    impl FnOnce(&mut dyn FnMut()),
) {
    let (closed_tx, closed_rx) = mpsc::channel();
    let (held_tx, held_rx) = mpsc::channel();
    let (open_tx, open_rx) = mpsc::channel();
    let gate = std::sync::Mutex::new(Some((held_tx, open_rx)));
    let server = builder
        .threads(1)
        .serve("127.0.0.1:0", move |req: &http::Request<()>| {
            let gated = req.uri().path() == "/gate";
            Gated {
                gate: if gated {
                    gate.lock().unwrap().take()
                } else {
                    None
                },
                closed: if gated {
                    mpsc::channel().0
                } else {
                    closed_tx.clone()
                },
            }
        })
        .unwrap();
    let gate_uri = format!("ws://{}/gate", server.local_addr());
    let hold = move |f: &mut dyn FnMut()| {
        let ws = sync::connect(&gate_uri).unwrap();
        ws.send("hold").unwrap();
        held_rx.recv_timeout(GUARD).expect("the loop was not held");
        f();
        open_tx.send(()).unwrap();
        assert_eq!(recv_message(&ws), Message::from("hold"));
        ws.close(CloseCode::NORMAL, "").unwrap();
    };
    (server, closed_rx, hold)
}

#[test]
fn a_peer_that_ends_its_side_gets_its_echoes_and_on_close_sees_1006() {
    let (server, closed_rx, hold) = gated_echo_server(Server::builder());
    let (mut stream, mut buf) = raw_handshake(server.local_addr());
    // Three messages and the TCP FIN (no close frame), all there when the loop looks.
    hold(&mut || {
        let mut out = Vec::new();
        for i in 0..3 {
            out.extend_from_slice(&masked(OpCode::Text, format!("m{i}").as_bytes()));
        }
        stream.write_all(&out).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    });
    for i in 0..3 {
        let frame = read_data_frame(&mut stream, &mut buf);
        assert_eq!(&frame.payload[..], format!("m{i}").as_bytes());
    }
    assert_end_of_stream(stream, &mut buf);
    let closed = closed_rx.recv_timeout(GUARD).unwrap();
    assert_eq!(closed.code(), CloseCode::ABNORMAL, "{closed}");
    assert_eq!((closed.sent, closed.received), (None, None));
    wait_until("the connection is over", || server.connection_count() == 0);
    server.shutdown();
}

#[test]
fn a_peer_that_ends_its_side_after_its_data_arrived_is_noticed() {
    // The same, with the FIN coming on its own: a new edge for the loop.
    let (server, closed_rx, hold) = gated_echo_server(Server::builder());
    let (mut stream, mut buf) = raw_handshake(server.local_addr());
    hold(&mut || stream.write_all(&masked(OpCode::Text, b"m0")).unwrap());
    let frame = read_data_frame(&mut stream, &mut buf);
    assert_eq!(&frame.payload[..], b"m0");
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_end_of_stream(stream, &mut buf);
    let closed = closed_rx.recv_timeout(GUARD).unwrap();
    assert_eq!(closed.code(), CloseCode::ABNORMAL, "{closed}");
    server.shutdown();
}

#[test]
fn keepalive_pings_are_sent_and_pongs_measure_latency() {
    struct Latency;
    impl Handler for Latency {
        fn on_message(&mut self, ws: &mut Socket<'_>, _message: Message) {
            let latency = ws.latency();
            ws.send(format!("latency measured: {}", latency.is_some()))
                .unwrap();
        }
    }
    let server = Server::builder()
        .threads(1)
        .ping_interval(Some(Duration::from_millis(200)))
        .ping_timeout(Some(Duration::from_secs(3)))
        .serve("127.0.0.1:0", |_req: &http::Request<()>| Latency)
        .unwrap();
    let (mut stream, mut buf) = raw_handshake(server.local_addr());
    stream.write_all(&masked(OpCode::Text, b"?")).unwrap();
    let frame = read_data_frame(&mut stream, &mut buf);
    assert_eq!(&frame.payload[..], b"latency measured: false");
    // Our pings are answered.
    stream
        .write_all(&masked(OpCode::Ping, b"peer ping"))
        .unwrap();
    let mut ping = None;
    let mut pong = None;
    while ping.is_none() || pong.is_none() {
        let frame = read_frame(&mut stream, &mut buf).expect("a frame");
        match frame.opcode {
            OpCode::Ping => ping = ping.or(Some(frame.payload)),
            OpCode::Pong => pong = Some(frame.payload),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(&pong.unwrap()[..], b"peer ping");
    // The server's keepalive ping, answered: the latency is measured.
    let ping = ping.unwrap();
    assert_eq!(ping.len(), 4, "{ping:?}");
    stream.write_all(&masked(OpCode::Pong, &ping)).unwrap();
    // And the pings go on.
    let next = loop {
        let frame = read_frame(&mut stream, &mut buf).expect("a frame");
        if frame.opcode == OpCode::Ping && frame.payload != ping {
            break frame.payload;
        }
    };
    stream.write_all(&masked(OpCode::Pong, &next)).unwrap();
    stream.write_all(&masked(OpCode::Text, b"?")).unwrap();
    let frame = read_data_frame(&mut stream, &mut buf);
    assert_eq!(&frame.payload[..], b"latency measured: true");
    stream
        .write_all(&masked_close(CloseCode::NORMAL, ""))
        .unwrap();
    assert_eq!(read_close(&mut stream, &mut buf).code, CloseCode::NORMAL);
    assert_end_of_stream(stream, &mut buf);
    server.shutdown();
}

#[test]
fn a_peer_that_never_answers_pings_is_closed_with_1011() {
    let ping_interval = Duration::from_millis(200);
    let ping_timeout = Duration::from_millis(300);
    let (server, _uri, closed_rx) = echo_server(
        Server::builder()
            .threads(1)
            .ping_interval(Some(ping_interval))
            .ping_timeout(Some(ping_timeout)),
    );
    let start = Instant::now();
    let (mut stream, mut buf) = raw_handshake(server.local_addr());
    let ping = read_frame(&mut stream, &mut buf).expect("a ping");
    assert_eq!(ping.opcode, OpCode::Ping);
    // Not answered.
    let close = read_close(&mut stream, &mut buf);
    assert_eq!(close.code, CloseCode::INTERNAL_ERROR, "{close:?}");
    assert_end_of_stream(stream, &mut buf);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= ping_interval + ping_timeout - Duration::from_millis(50),
        "closed after {elapsed:?}"
    );
    let closed = closed_rx.recv_timeout(GUARD).unwrap();
    assert_eq!(
        closed.sent.as_ref().map(|f| f.code),
        Some(CloseCode::INTERNAL_ERROR),
        "{closed}"
    );
    assert_eq!(closed.received, None);
    assert_eq!(closed.code(), CloseCode::ABNORMAL);
    assert_eq!(server.connection_count(), 0);
    server.shutdown();
}

#[test]
fn open_timeout_disconnects_peers_that_do_not_finish_the_handshake() {
    let open_timeout = Duration::from_millis(300);
    let (server, uri, _closed_rx) = echo_server(
        Server::builder()
            .threads(1)
            .open_timeout(Some(open_timeout)),
    );
    // A WebSocket connection opened first is not affected.
    let ws = sync::connect(&uri).unwrap();
    let addr = server.local_addr();
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    let mut partial = TcpStream::connect(addr).unwrap();
    partial
        .write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .unwrap();
    for (what, stream) in [("silent", &mut silent), ("partial", &mut partial)] {
        let (received, ended) = read_to_end_guarded(stream);
        assert!(
            received.is_empty(),
            "{what}: {:?}",
            String::from_utf8_lossy(&received)
        );
        let elapsed = ended - start;
        assert!(
            elapsed >= open_timeout - Duration::from_millis(50),
            "{what}: disconnected after {elapsed:?}"
        );
    }
    // Only the WebSocket connection counts, and it still works.
    assert_eq!(server.connection_count(), 1);
    ws.send("still here").unwrap();
    assert_eq!(recv_message(&ws), Message::from("still here"));
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

#[test]
fn close_timeout_ends_a_close_the_peer_never_answers() {
    let close_timeout = Duration::from_millis(300);
    let (tx, rx) = mpsc::channel();
    struct CloseOnMessage {
        report: mpsc::Sender<(Instant, Option<Closed>)>,
    }
    impl Handler for CloseOnMessage {
        fn on_message(&mut self, ws: &mut Socket<'_>, _message: Message) {
            ws.close(CloseCode::NORMAL, "bye").unwrap();
            let _ = self.report.send((Instant::now(), None));
        }
        fn on_close(&mut self, closed: &Closed) {
            let _ = self.report.send((Instant::now(), Some(closed.clone())));
        }
    }
    let server = Server::builder()
        .threads(1)
        .close_timeout(close_timeout)
        .ping_interval(None)
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| {
            CloseOnMessage { report: tx.clone() }
        })
        .unwrap();
    let (mut stream, mut buf) = raw_handshake(server.local_addr());
    stream.write_all(&masked(OpCode::Text, b"close")).unwrap();
    let close = read_close(&mut stream, &mut buf);
    assert_eq!(close, CloseFrame::new(CloseCode::NORMAL, "bye"));
    // Not answered: the server gives up after close_timeout.
    assert_end_of_stream(stream, &mut buf);
    let (started, none) = rx.recv_timeout(GUARD).unwrap();
    assert!(none.is_none());
    let (ended, closed) = rx.recv_timeout(GUARD).unwrap();
    let closed = closed.expect("on_close");
    assert_eq!(closed.sent, Some(CloseFrame::new(CloseCode::NORMAL, "bye")));
    assert_eq!(closed.received, None);
    assert_eq!(closed.code(), CloseCode::ABNORMAL);
    let elapsed = ended - started;
    assert!(
        elapsed >= close_timeout - Duration::from_millis(50),
        "on_close after {elapsed:?}"
    );
    assert_eq!(server.connection_count(), 0);
    server.shutdown();
}

// ----- Hooks, origins, subprotocols ----------------------------------------------------------

#[test]
fn process_request_answers_http_and_refusals_reach_the_client() {
    let factory_calls = Arc::new(AtomicUsize::new(0));
    let server = {
        let factory_calls = factory_calls.clone();
        Server::builder()
            .threads(1)
            .process_request(|req| match req.uri().path() {
                "/healthz" => Some(sockeye::respond(StatusCode::OK, "OK\n")),
                "/forbidden" => Some(sockeye::respond(StatusCode::FORBIDDEN, "Go away.\n")),
                _ => None,
            })
            .process_response(|_req, resp| {
                resp.headers_mut()
                    .insert("x-served-by", http::HeaderValue::from_static("reactor"));
            })
            .serve("127.0.0.1:0", move |_req: &http::Request<()>| {
                factory_calls.fetch_add(1, Ordering::SeqCst);
                |ws: &mut Socket<'_>, message: Message| {
                    let _ = ws.send(message);
                }
            })
            .unwrap()
    };
    let addr = server.local_addr();

    // Plain HTTP, no upgrade.
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let (raw, _) = read_to_end_guarded(&mut stream);
    drop(stream);
    let response = String::from_utf8(raw).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, "OK\n");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nx-served-by: reactor"),
        "{head}"
    );

    // A refusal, as the client sees it.
    match sync::connect(&format!("ws://{addr}/forbidden")) {
        Err(Error::Handshake(HandshakeError::UnexpectedStatus(resp))) => {
            assert_eq!(resp.status, StatusCode::FORBIDDEN);
            assert_eq!(&resp.body[..], b"Go away.\n");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(factory_calls.load(Ordering::SeqCst), 0);

    // Other paths open.
    let ws = sync::connect(&format!("ws://{addr}/chat")).unwrap();
    assert_eq!(ws.response().headers()["x-served-by"], "reactor");
    ws.send("in").unwrap();
    assert_eq!(recv_message(&ws), Message::from("in"));
    ws.close(CloseCode::NORMAL, "").unwrap();
    assert_eq!(factory_calls.load(Ordering::SeqCst), 1);
    server.shutdown();
}

#[test]
fn origins_refuses_other_origins_with_403() {
    let (server, uri, _closed_rx) = echo_server(
        Server::builder()
            .threads(1)
            .origins(Some(vec![Some("https://good.example".into())])),
    );
    let status_of = |result: sockeye::Result<Connection>| match result {
        Err(Error::Handshake(HandshakeError::UnexpectedStatus(resp))) => resp.status,
        Ok(_) => panic!("connected"),
        Err(e) => panic!("{e:?}"),
    };
    let bad = ClientBuilder::default()
        .origin("https://evil.example")
        .unwrap()
        .connect(&uri);
    assert_eq!(status_of(bad), StatusCode::FORBIDDEN);
    // No Origin at all is not in the list either.
    assert_eq!(status_of(sync::connect(&uri)), StatusCode::FORBIDDEN);
    let ws = ClientBuilder::default()
        .origin("https://good.example")
        .unwrap()
        .connect(&uri)
        .unwrap();
    ws.send("welcome?").unwrap();
    assert_eq!(recv_message(&ws), Message::from("welcome?"));
    ws.close(CloseCode::NORMAL, "").unwrap();
    assert_eq!(server.connection_count(), 0);
    server.shutdown();
}

#[test]
fn subprotocol_is_negotiated_and_seen_by_the_socket() {
    let (tx, rx) = mpsc::channel();
    struct Proto {
        report: mpsc::Sender<Option<String>>,
    }
    impl Handler for Proto {
        fn on_open(&mut self, ws: &mut Socket<'_>) {
            let _ = self.report.send(ws.subprotocol().map(str::to_owned));
        }
        fn on_message(&mut self, ws: &mut Socket<'_>, _message: Message) {
            let seen = ws.subprotocol().unwrap_or("none").to_owned();
            let _ = ws.send(seen);
        }
    }
    let server = Server::builder()
        .threads(1)
        .subprotocols(["chat"])
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| Proto {
            report: tx.clone(),
        })
        .unwrap();
    let uri = uri_of(&server);
    for (offered, expected) in [(&["superchat", "chat"][..], Some("chat")), (&[][..], None)] {
        let ws = ClientBuilder::default()
            .subprotocols(offered.iter().copied())
            .connect(&uri)
            .unwrap();
        assert_eq!(ws.subprotocol(), expected);
        assert_eq!(
            rx.recv_timeout(GUARD).unwrap().as_deref(),
            expected,
            "offered {offered:?}"
        );
        ws.send("which?").unwrap();
        assert_eq!(
            recv_message(&ws).as_text(),
            Some(expected.unwrap_or("none"))
        );
        ws.close(CloseCode::NORMAL, "").unwrap();
    }
    server.shutdown();
}

// ----- Shutdown ------------------------------------------------------------------------------

#[test]
fn shutdown_closes_with_1001_answers_handshakes_with_503_and_stops_accepting() {
    const CLIENTS: usize = 3;
    let (server, uri, closed_rx) = echo_server(
        Server::builder()
            .threads(2)
            .open_timeout(Some(Duration::from_secs(5))),
    );
    let addr = server.local_addr();
    // A connection whose handshake is still to come when the server shuts down. Accepted
    // before the clients below are (each loop accepts in order), so before shutdown.
    let mut pending = TcpStream::connect(addr).unwrap();
    let clients: Vec<Connection> = (0..CLIENTS).map(|_| sync::connect(&uri).unwrap()).collect();
    wait_until("the clients are counted", || {
        server.connection_count() == CLIENTS
    });
    let forever = {
        let server = server.clone();
        std::thread::spawn(move || server.serve_forever())
    };
    let shutdown = {
        let server = server.clone();
        std::thread::spawn(move || server.shutdown())
    };
    for ws in &clients {
        // 1001 is a normal close: recv ends with None.
        assert_eq!(recv_guarded(ws).unwrap(), None);
        let closed = ws.closed().unwrap();
        assert_eq!(closed.code(), CloseCode::GOING_AWAY, "{closed}");
        assert!(closed.is_ok(), "{closed}");
    }
    // The handshake that arrives now is refused with 503.
    pending.write_all(&handshake_request(addr)).unwrap();
    let (raw, _) = read_to_end_guarded(&mut pending);
    drop(pending);
    let response = String::from_utf8_lossy(&raw);
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    // shutdown() and serve_forever() return once every connection is over.
    let start = Instant::now();
    while !shutdown.is_finished() {
        assert!(start.elapsed() < GUARD, "shutdown() did not return");
        std::thread::sleep(Duration::from_millis(5));
    }
    shutdown.join().unwrap();
    forever.join().unwrap();
    assert_eq!(server.connection_count(), 0);
    let closes = drain(&closed_rx);
    assert_eq!(closes.len(), CLIENTS);
    for closed in closes {
        assert_eq!(closed.sent.map(|f| f.code), Some(CloseCode::GOING_AWAY));
        assert_eq!(closed.received.map(|f| f.code), Some(CloseCode::GOING_AWAY));
    }
    assert!(
        sync::connect(&uri).is_err(),
        "still accepting after shutdown"
    );
    // Idempotent.
    server.shutdown();
}

// ----- Backpressure --------------------------------------------------------------------------

#[test]
fn reading_pauses_over_write_limit_and_on_drain_follows() {
    // 32 MiB: far more than loopback socket buffers hold.
    pauses_over_write_limit_and_resumes(16 * KIB, 2048);
}

#[test]
fn large_echoes_sent_without_a_copy_survive_partial_writes() {
    // Payloads of 64 KiB and more are written from the received buffer (vectored writes of
    // frame headers and payloads): with a peer that reads nothing for a while, writes stop
    // inside payloads and resume there. 24 MiB, every byte checked.
    pauses_over_write_limit_and_resumes(96 * KIB + 5, 256);
}

fn pauses_over_write_limit_and_resumes(len: usize, count: usize) {
    const WRITE_LIMIT: usize = 64 * KIB;
    struct Counting {
        seen: Arc<AtomicUsize>,
        drains: Arc<AtomicUsize>,
        max_buffered: Arc<AtomicUsize>,
    }
    impl Handler for Counting {
        fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
            self.seen.fetch_add(1, Ordering::SeqCst);
            ws.send(message).unwrap();
            self.max_buffered
                .fetch_max(ws.buffered_amount(), Ordering::SeqCst);
        }
        fn on_drain(&mut self, ws: &mut Socket<'_>) {
            assert!(ws.buffered_amount() <= WRITE_LIMIT);
            self.drains.fetch_add(1, Ordering::SeqCst);
        }
    }
    let seen = Arc::new(AtomicUsize::new(0));
    let drains = Arc::new(AtomicUsize::new(0));
    let max_buffered = Arc::new(AtomicUsize::new(0));
    let server = {
        let (seen, drains, max_buffered) = (seen.clone(), drains.clone(), max_buffered.clone());
        Server::builder()
            .threads(1)
            .write_limit(WRITE_LIMIT)
            .ping_interval(None)
            .serve("127.0.0.1:0", move |_req: &http::Request<()>| Counting {
                seen: seen.clone(),
                drains: drains.clone(),
                max_buffered: max_buffered.clone(),
            })
            .unwrap()
    };
    let (mut stream, mut buf) = raw_handshake(server.local_addr());
    // A peer that sends everything and reads nothing (its writes block once the buffers
    // between it and the server are full).
    let (written_tx, written_rx) = mpsc::channel();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for i in 0..count {
                stream
                    .write_all(&masked(OpCode::Binary, &numbered(i, len)))
                    .unwrap();
            }
            let _ = written_tx.send(());
        })
    };
    // The handler's count stops growing while nobody reads.
    let start = Instant::now();
    let mut previous = usize::MAX;
    let stalled = loop {
        // Pacing of the samples; the stall is the measure.
        std::thread::sleep(Duration::from_millis(300));
        let now = seen.load(Ordering::SeqCst);
        if now == previous {
            break now;
        }
        previous = now;
        assert!(start.elapsed() < GUARD, "the count never stopped growing");
    };
    assert!(
        stalled < count / 2,
        "the handler saw {stalled} of {count} messages of 16 KiB while the peer read nothing"
    );
    assert!(
        written_rx.try_recv().is_err(),
        "the peer wrote everything: the server kept reading"
    );
    let max = max_buffered.load(Ordering::SeqCst);
    assert!(
        max <= WRITE_LIMIT + 64 * KIB + len + 14,
        "buffered_amount reached {max}"
    );
    // The peer reads: everything comes back, in order, and reading resumed.
    for i in 0..count {
        let frame = read_data_frame(&mut stream, &mut buf);
        assert_eq!(frame.opcode, OpCode::Binary);
        assert_eq!(frame.payload.len(), len);
        assert_eq!(number_of(&frame.payload), i, "lost or reordered");
        assert!(
            frame.payload[..] == numbered(i, len)[..],
            "message {i} corrupted"
        );
    }
    written_rx.recv_timeout(GUARD).unwrap();
    writer.join().unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), count);
    assert!(
        drains.load(Ordering::SeqCst) >= 1,
        "on_drain was not called"
    );
    stream
        .write_all(&masked_close(CloseCode::NORMAL, ""))
        .unwrap();
    assert_eq!(read_close(&mut stream, &mut buf).code, CloseCode::NORMAL);
    assert_end_of_stream(stream, &mut buf);
    server.shutdown();
}

#[test]
fn a_producer_refills_in_on_drain_and_stays_within_write_limit() {
    const WRITE_LIMIT: usize = 64 * KIB;
    const LEN: usize = 16 * KIB;
    const TOTAL: usize = 1024; // 16 MiB
    struct Producer {
        next: usize,
        drains: Arc<AtomicUsize>,
        max_buffered: Arc<AtomicUsize>,
    }
    impl Producer {
        fn fill(&mut self, ws: &mut Socket<'_>) {
            while self.next < TOTAL && ws.buffered_amount() <= WRITE_LIMIT {
                ws.send_binary(&numbered(self.next, LEN)).unwrap();
                self.next += 1;
                self.max_buffered
                    .fetch_max(ws.buffered_amount(), Ordering::SeqCst);
            }
        }
    }
    impl Handler for Producer {
        fn on_open(&mut self, ws: &mut Socket<'_>) {
            self.fill(ws);
        }
        fn on_message(&mut self, _ws: &mut Socket<'_>, _message: Message) {}
        fn on_drain(&mut self, ws: &mut Socket<'_>) {
            self.drains.fetch_add(1, Ordering::SeqCst);
            self.fill(ws);
        }
    }
    let drains = Arc::new(AtomicUsize::new(0));
    let max_buffered = Arc::new(AtomicUsize::new(0));
    let server = {
        let (drains, max_buffered) = (drains.clone(), max_buffered.clone());
        Server::builder()
            .threads(1)
            .write_limit(WRITE_LIMIT)
            .serve("127.0.0.1:0", move |_req: &http::Request<()>| Producer {
                next: 0,
                drains: drains.clone(),
                max_buffered: max_buffered.clone(),
            })
            .unwrap()
    };
    let ws = ClientBuilder::default()
        .compression(false)
        .connect(&uri_of(&server))
        .unwrap();
    for i in 0..TOTAL {
        let message = recv_message(&ws);
        assert_eq!(message.len(), LEN);
        assert_eq!(number_of(message.as_bytes()), i, "lost or reordered");
    }
    assert!(
        drains.load(Ordering::SeqCst) >= 1,
        "on_drain was not called"
    );
    let max = max_buffered.load(Ordering::SeqCst);
    assert!(
        max <= WRITE_LIMIT + LEN + 14,
        "buffered_amount reached {max}"
    );
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

// ----- Peers that stop reading ---------------------------------------------------------------

/// A handler that sends `MIB`-sized messages, `total` of them, from `on_open`, and reports
/// how its connection ended.
struct Flood {
    total: usize,
    closed: mpsc::Sender<Closed>,
}

impl Handler for Flood {
    fn on_open(&mut self, ws: &mut Socket<'_>) {
        for i in 0..self.total {
            ws.send(numbered(i, MIB)).unwrap();
        }
    }

    fn on_message(&mut self, _ws: &mut Socket<'_>, _message: Message) {}

    fn on_close(&mut self, closed: &Closed) {
        let _ = self.closed.send(closed.clone());
    }
}

#[test]
fn a_peer_that_stops_reading_is_dropped_after_the_keepalive_timeout() {
    let (tx, rx) = mpsc::channel();
    let server = Server::builder()
        .threads(1)
        .ping_interval(Some(Duration::from_millis(200)))
        .ping_timeout(Some(Duration::from_millis(300)))
        .close_timeout(Duration::from_millis(300))
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| Flood {
            total: 16,
            closed: tx.clone(),
        })
        .unwrap();
    // 16 MiB to a peer that reads nothing: far more than the socket buffers hold, so the
    // keepalive ping, then the 1011 close frame, wait behind the backlog.
    let (stream, _buf) = raw_handshake(server.local_addr());
    let closed = rx
        .recv_timeout(GUARD)
        .expect("on_close: the connection was never dropped");
    assert_eq!(
        closed.sent.as_ref().map(|f| f.code),
        Some(CloseCode::INTERNAL_ERROR),
        "{closed}"
    );
    assert_eq!(closed.received, None);
    assert_eq!(server.connection_count(), 0);
    drop(stream);
    server.shutdown();
}

#[test]
fn shutdown_is_bounded_by_close_timeout_for_a_peer_that_does_not_read() {
    let close_timeout = Duration::from_millis(300);
    let (tx, rx) = mpsc::channel();
    let server = Server::builder()
        .threads(1)
        .ping_interval(None)
        .close_timeout(close_timeout)
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| Flood {
            total: 16,
            closed: tx.clone(),
        })
        .unwrap();
    let (stream, _buf) = raw_handshake(server.local_addr());
    wait_until("the connection is counted", || {
        server.connection_count() == 1
    });
    let shutdown = {
        let server = server.clone();
        std::thread::spawn(move || server.shutdown())
    };
    // The 1001 close frame waits behind the backlog; close_timeout ends the connection.
    let closed = rx
        .recv_timeout(GUARD)
        .expect("on_close: the connection was never dropped");
    assert_eq!(
        closed.sent.as_ref().map(|f| f.code),
        Some(CloseCode::GOING_AWAY),
        "{closed}"
    );
    let start = Instant::now();
    while !shutdown.is_finished() {
        assert!(start.elapsed() < GUARD, "shutdown() did not return");
        std::thread::sleep(Duration::from_millis(5));
    }
    shutdown.join().unwrap();
    assert_eq!(server.connection_count(), 0);
    drop(stream);
}

// ----- Failures ------------------------------------------------------------------------------

#[test]
fn a_panicking_handler_fails_its_connection_with_1011_only() {
    struct Fragile {
        closed: mpsc::Sender<Closed>,
    }
    impl Handler for Fragile {
        fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
            if message.as_text() == Some("panic") {
                panic!("a handler panics (expected by the test)");
            }
            let _ = ws.send(message);
        }
        fn on_close(&mut self, closed: &Closed) {
            let _ = self.closed.send(closed.clone());
        }
    }
    let (tx, rx) = mpsc::channel();
    let server = Server::builder()
        .threads(1)
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| Fragile {
            closed: tx.clone(),
        })
        .unwrap();
    let uri = uri_of(&server);
    let good = sync::connect(&uri).unwrap();
    let bad = sync::connect(&uri).unwrap();
    good.send("before").unwrap();
    assert_eq!(recv_message(&good), Message::from("before"));
    bad.send("panic").unwrap();
    let closed = recv_closed(&bad);
    assert_eq!(closed.code(), CloseCode::INTERNAL_ERROR, "{closed}");
    let server_side = rx.recv_timeout(GUARD).unwrap();
    assert_eq!(
        server_side.sent.map(|f| f.code),
        Some(CloseCode::INTERNAL_ERROR)
    );
    wait_until("the failed connection is over", || {
        server.connection_count() == 1
    });
    // The other connection, on the same loop, goes on; new ones open.
    for i in 0..10 {
        good.send(format!("after {i}")).unwrap();
        assert_eq!(recv_message(&good), Message::from(format!("after {i}")));
    }
    let third = sync::connect(&uri).unwrap();
    third.send("new").unwrap();
    assert_eq!(recv_message(&third), Message::from("new"));
    good.close(CloseCode::NORMAL, "").unwrap();
    third.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

#[test]
fn panics_in_the_factory_or_in_on_close_do_not_stop_the_loop() {
    struct LoudClose;
    impl Handler for LoudClose {
        fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
            let _ = ws.send(message);
        }
        fn on_close(&mut self, _closed: &Closed) {
            panic!("on_close panics (expected by the test)");
        }
    }
    let server = Server::builder()
        .threads(1)
        .serve("127.0.0.1:0", |req: &http::Request<()>| {
            if req.uri().path() == "/panic" {
                panic!("the factory panics (expected by the test)");
            }
            LoudClose
        })
        .unwrap();
    let addr = server.local_addr();
    // The factory runs after the 101 is decided: the client opens, then gets 1011.
    let ws = sync::connect(&format!("ws://{addr}/panic")).unwrap();
    let closed = recv_closed(&ws);
    assert_eq!(closed.code(), CloseCode::INTERNAL_ERROR, "{closed}");
    assert_eq!(server.connection_count(), 0);
    // on_close panics: the connection still ends normally for the client.
    let ws = sync::connect(&format!("ws://{addr}/")).unwrap();
    ws.send("x").unwrap();
    assert_eq!(recv_message(&ws), Message::from("x"));
    ws.close(CloseCode::NORMAL, "").unwrap();
    assert!(ws.closed().unwrap().is_ok());
    wait_until("the connection is over", || server.connection_count() == 0);
    // The loop goes on.
    let ws = sync::connect(&format!("ws://{addr}/")).unwrap();
    ws.send("still serving").unwrap();
    assert_eq!(recv_message(&ws), Message::from("still serving"));
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

// ----- Interop with python-websockets --------------------------------------------------------

/// The interpreter, as in `tests/interop_python.rs`: `SOCKEYE_PYTHON` (set by
/// `scripts/test.sh` to a venv with `websockets` installed), else `python3`. A missing
/// `websockets` package is a test failure, not a skip.
fn python() -> String {
    std::env::var("SOCKEYE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

const PY_CLIENT: &str = r#"
import asyncio, sys
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

async def main(uri, compression):
    kw = {} if compression == "on" else {"compression": None}
    async with connect(uri, max_size=2**20, **kw) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        print("extensions", "deflate" if "permessage-deflate" in ext else "none")
        await ws.send("Hello, κόσμε!")
        assert await ws.recv() == "Hello, κόσμε!"
        big = bytes(range(256)) * 1024  # 256 KiB
        await ws.send(big)
        assert await ws.recv() == big
        await ws.send(["frag", "mented ", "text"])
        assert await ws.recv() == "fragmented text"
        await ws.send([b"\x00\x01", b"", b"\x02"])
        assert await ws.recv() == b"\x00\x01\x02"
        await (await ws.ping(b"py"))
        print("echoes ok")
        await ws.send("close please")
        try:
            await ws.recv()
            print("no close")
        except ConnectionClosedOK:
            pass
        print("close", ws.close_code, ws.close_reason)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[tokio::test]
async fn python_client_against_the_reactor_server() {
    struct EchoUntilAsked {
        closed: mpsc::Sender<Closed>,
    }
    impl Handler for EchoUntilAsked {
        fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
            if message.as_text() == Some("close please") {
                ws.close(CloseCode::NORMAL, "done").unwrap();
            } else {
                let _ = ws.send(message);
            }
        }
        fn on_close(&mut self, closed: &Closed) {
            let _ = self.closed.send(closed.clone());
        }
    }
    let (tx, rx) = mpsc::channel();
    let server = Server::builder()
        .threads(1)
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| {
            EchoUntilAsked { closed: tx.clone() }
        })
        .unwrap();
    let uri = uri_of(&server);
    for compression in ["on", "off"] {
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg("-c").arg(PY_CLIENT).args([&uri, compression]);
        cmd.kill_on_drop(true);
        let out = tokio::time::timeout(GUARD, cmd.output())
            .await
            .expect("python script timed out")
            .expect("cannot run python (set SOCKEYE_PYTHON)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "python failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        let expected = if compression == "on" {
            "deflate"
        } else {
            "none"
        };
        assert!(
            stdout.contains(&format!("extensions {expected}")),
            "{stdout}"
        );
        assert!(stdout.contains("echoes ok"), "{stdout}");
        assert!(stdout.contains("close 1000 done"), "{stdout}");
        let closed = rx.recv_timeout(GUARD).unwrap();
        assert!(closed.is_ok(), "{closed}");
        assert_eq!(
            closed.sent,
            Some(CloseFrame::new(CloseCode::NORMAL, "done"))
        );
    }
    server.shutdown();
}

// ----- Handles and broadcast -----------------------------------------------------------------

/// Echoes; reports its connection's `Handle` on open and how it ended on close.
struct Handed {
    report: mpsc::Sender<Handle>,
    closed: mpsc::Sender<Closed>,
}

impl Handler for Handed {
    fn on_open(&mut self, ws: &mut Socket<'_>) {
        let _ = self.report.send(ws.handle());
    }
    fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
        let _ = ws.send(message);
    }
    fn on_close(&mut self, closed: &Closed) {
        let _ = self.closed.send(closed.clone());
    }
}

#[test]
fn a_handle_sends_posts_and_closes_from_another_thread() {
    let (handle_tx, handle_rx) = mpsc::channel();
    let (closed_tx, closed_rx) = mpsc::channel();
    let server = Server::builder()
        .threads(1)
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| Handed {
            report: handle_tx.clone(),
            closed: closed_tx.clone(),
        })
        .unwrap();
    let uri = uri_of(&server);

    let a = sync::connect(&uri).unwrap();
    let handle_a: Handle = handle_rx.recv_timeout(GUARD).unwrap();
    // From another thread, in order.
    {
        let handle = handle_a.clone();
        std::thread::spawn(move || {
            handle.send("from outside");
            handle.post(|ws| {
                let id = ws.id();
                ws.send(format!("posted on {id}")).unwrap();
            });
        })
        .join()
        .unwrap();
    }
    assert_eq!(recv_message(&a), Message::from("from outside"));
    assert_eq!(
        recv_message(&a).as_text(),
        Some(format!("posted on {}", handle_a.id()).as_str())
    );
    handle_a.close(CloseCode(4002), "closed by a handle");
    let closed = recv_closed(&a);
    assert_eq!(closed.code(), CloseCode(4002));
    assert_eq!(closed.reason(), "closed by a handle");
    let server_side = closed_rx.recv_timeout(GUARD).unwrap();
    assert_eq!(
        server_side.sent,
        Some(CloseFrame::new(4002, "closed by a handle"))
    );
    wait_until("the connection is over", || server.connection_count() == 0);

    // The next connection (usually in the same slot of the loop, once the first one's
    // socket is gone) does not get what is sent through the old handle: it would arrive
    // before the marker, sent through its own handle after.
    let b = sync::connect(&uri).unwrap();
    let handle_b = handle_rx.recv_timeout(GUARD).unwrap();
    assert_ne!(handle_a.id(), handle_b.id());
    handle_a.send("for a, which is gone");
    handle_a.post(|ws| ws.send("posted for a, which is gone").unwrap());
    handle_b.send("marker");
    assert_eq!(recv_message(&b), Message::from("marker"));
    b.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();

    // After the shutdown, what a kept handle asks for is dropped at once, not queued for a
    // loop that is gone (a token the closure holds is released), and so is a publish.
    let token = Arc::new(());
    let held = token.clone();
    handle_b.post(move |_ws| drop(held));
    handle_b.send("nobody reads this");
    server.publish("/", "nor this");
    server.broadcast("nor this");
    assert_eq!(
        Arc::strong_count(&token),
        1,
        "a closure is kept after shutdown"
    );
}

#[test]
fn broadcast_reaches_every_open_connection_and_skips_backlogged_ones() {
    /// Echoes, but floods the connection to `/flood` on open.
    struct Mixed {
        flood: bool,
    }
    impl Handler for Mixed {
        fn on_open(&mut self, ws: &mut Socket<'_>) {
            if self.flood {
                for i in 0..16 {
                    ws.send(numbered(i, MIB)).unwrap();
                }
            }
        }
        fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
            let _ = ws.send(message);
        }
    }
    let server = Server::builder()
        .threads(2)
        .write_limit(64 * KIB)
        .serve("127.0.0.1:0", |req: &http::Request<()>| Mixed {
            flood: req.uri().path() == "/flood",
        })
        .unwrap();
    let uri = uri_of(&server);
    let clients: Vec<Connection> = (0..4)
        .map(|c| {
            ClientBuilder::default()
                .compression(c % 2 == 0)
                .connect(&uri)
                .unwrap()
        })
        .collect();
    // A raw peer that reads nothing, with 16 MiB waiting for it.
    let addr = server.local_addr();
    let mut stream = TcpStream::connect(addr).unwrap();
    let request = String::from_utf8(handshake_request(addr))
        .unwrap()
        .replacen("GET / ", "GET /flood ", 1);
    stream.write_all(request.as_bytes()).unwrap();
    wait_until("every connection is open", || {
        server.connection_count() == clients.len() + 1
    });
    server.broadcast("news");
    server.broadcast(vec![1u8, 2, 3]);
    for ws in &clients {
        assert_eq!(recv_message(ws), Message::from("news"));
        assert_eq!(recv_message(ws), Message::from(vec![1u8, 2, 3]));
        // Echo still works after.
        ws.send("echo").unwrap();
        assert_eq!(recv_message(ws), Message::from("echo"));
    }
    // The backlogged connection was skipped: after its 16 MiB, the next frame is the pong
    // to our ping, not the news.
    let mut buf = BytesMut::new();
    assert!(read_response_head(&mut stream, &mut buf).starts_with(b"HTTP/1.1 101"));
    stream.write_all(&masked(OpCode::Ping, b"after")).unwrap();
    for i in 0..16 {
        let frame = read_data_frame(&mut stream, &mut buf);
        assert_eq!(frame.opcode, OpCode::Binary);
        assert_eq!(number_of(&frame.payload), i);
    }
    let next = read_frame(&mut stream, &mut buf).expect("a frame");
    assert_eq!(
        (next.opcode, &next.payload[..]),
        (OpCode::Pong, &b"after"[..]),
        "the broadcast reached a connection over write_limit"
    );
    stream
        .write_all(&masked_close(CloseCode::NORMAL, ""))
        .unwrap();
    assert_eq!(read_close(&mut stream, &mut buf).code, CloseCode::NORMAL);
    assert_end_of_stream(stream, &mut buf);
    for ws in &clients {
        ws.close(CloseCode::NORMAL, "").unwrap();
    }
    server.shutdown();
}

// ----- What a Socket knows -------------------------------------------------------------------

#[test]
fn socket_reports_its_addresses_id_and_the_request() {
    #[derive(Debug)]
    struct Info {
        id: u64,
        remote: Option<SocketAddr>,
        local: Option<SocketAddr>,
        path: String,
    }
    struct Reporter {
        path: String,
        report: mpsc::Sender<Info>,
    }
    impl Handler for Reporter {
        fn on_open(&mut self, ws: &mut Socket<'_>) {
            let _ = self.report.send(Info {
                id: ws.id(),
                remote: ws.remote_addr(),
                local: ws.local_addr(),
                path: self.path.clone(),
            });
            ws.send(ws.id().to_string()).unwrap();
        }
        fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
            let _ = ws.send(message);
        }
    }
    let (tx, rx) = mpsc::channel();
    let server = Server::builder()
        .threads(2)
        .serve("127.0.0.1:0", move |req: &http::Request<()>| Reporter {
            path: req.uri().to_string(),
            report: tx.clone(),
        })
        .unwrap();
    assert_eq!(server.local_addr().ip().to_string(), "127.0.0.1");
    assert_ne!(server.local_addr().port(), 0);
    let addr = server.local_addr();
    let mut ids = Vec::new();
    for n in 0..3 {
        let ws = sync::connect(&format!("ws://{addr}/room/{n}?x=1")).unwrap();
        let info = rx.recv_timeout(GUARD).unwrap();
        assert_eq!(info.remote, ws.local_addr(), "{info:?}");
        assert_eq!(info.remote.unwrap().port(), ws.local_addr().unwrap().port());
        assert_eq!(info.local, Some(addr), "{info:?}");
        assert_eq!(info.path, format!("/room/{n}?x=1"));
        assert_eq!(
            recv_message(&ws).as_text(),
            Some(info.id.to_string().as_str())
        );
        assert_ne!(info.id, ws.id(), "one numbering for every connection");
        ids.push(info.id);
        ids.push(ws.id());
        ws.close(CloseCode::NORMAL, "").unwrap();
    }
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "ids are unique: {ids:?}");
    server.shutdown();
}

/// A close asked for through a `Handle` after the connection was quiet for longer than
/// close_timeout still gets its whole close_timeout: the loop reads the clock before it
/// runs the closure. (It used to arm the close timer from the core's last reading, long
/// past, so the handshake timed out at once and the server recorded no close frame back.)
#[test]
fn a_handle_close_after_a_quiet_spell_gets_its_whole_close_timeout() {
    let (handle_tx, handle_rx) = mpsc::channel();
    let (closed_tx, closed_rx) = mpsc::channel();
    let close_timeout = Duration::from_millis(300);
    let server = Server::builder()
        .threads(1)
        .ping_interval(None)
        .close_timeout(close_timeout)
        .serve("127.0.0.1:0", move |_req: &http::Request<()>| Handed {
            report: handle_tx.clone(),
            closed: closed_tx.clone(),
        })
        .unwrap();
    let ws = sync::connect(&uri_of(&server)).unwrap();
    let handle: Handle = handle_rx.recv_timeout(GUARD).unwrap();
    ws.send("hello").unwrap();
    assert_eq!(recv_message(&ws), Message::from("hello"));
    // Quiet for twice the close timeout: no input, no keepalive, no clock reading.
    std::thread::sleep(close_timeout * 2);
    handle.close(CloseCode::NORMAL, "late");
    assert_eq!(recv_guarded(&ws).unwrap(), None, "a normal close");
    assert_eq!(ws.closed().unwrap().reason(), "late");
    let server_side = closed_rx.recv_timeout(GUARD).unwrap();
    assert_eq!(
        server_side.sent,
        Some(CloseFrame::new(CloseCode::NORMAL, "late"))
    );
    assert_eq!(
        server_side.received.as_ref().map(|f| f.code),
        Some(CloseCode::NORMAL),
        "the client's answer was not waited for: {server_side:?}"
    );
    server.shutdown();
}

// ----- Pub/sub -------------------------------------------------------------------------------

/// A relay member: subscribes to its path on open and greets with its loop thread's name;
/// "unsub" and "sub TOPIC" change its topics (answered directly); anything else is
/// published to its path.
struct Member {
    topic: String,
}

impl Handler for Member {
    fn on_open(&mut self, ws: &mut Socket<'_>) {
        assert!(ws.subscribe(&self.topic));
        assert!(ws.is_subscribed(&self.topic));
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        ws.send(format!("open {thread}")).unwrap();
    }

    fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
        match message.as_text() {
            Some("unsub") => {
                let was = ws.unsubscribe(&self.topic);
                ws.send(format!("unsub {was}")).unwrap();
            }
            Some(text) if text.starts_with("sub ") => {
                let topic = &text[4..];
                let new = ws.subscribe(topic);
                ws.send(format!("sub {topic} {new}")).unwrap();
            }
            _ => ws.publish(&self.topic, message),
        }
    }
}

fn relay_server(threads: usize) -> Server {
    Server::builder()
        .threads(threads)
        .serve("127.0.0.1:0", |req: &http::Request<()>| Member {
            topic: req.uri().path().to_owned(),
        })
        .unwrap()
}

/// A client of `path`, and the name of the loop thread that serves it.
fn member(server: &Server, path: &str, compression: bool) -> (Connection, String) {
    let uri = format!("ws://{}{path}", server.local_addr());
    let ws = ClientBuilder::default()
        .compression(compression)
        .connect(&uri)
        .unwrap();
    let greeting = recv_message(&ws);
    let thread = greeting.as_text().unwrap().strip_prefix("open ").unwrap();
    (ws, thread.to_owned())
}

fn assert_next_text(ws: &Connection, expected: &str) {
    assert_eq!(recv_message(ws).as_text(), Some(expected));
}

#[test]
fn a_publish_reaches_the_topics_subscribers_on_every_loop_but_its_author() {
    let server = relay_server(2);
    // Members of /room until both loops have some (which loop accepts is up to the kernel).
    let mut room = Vec::new();
    let mut loops = std::collections::HashSet::new();
    while loops.len() < 2 || room.len() < 3 {
        assert!(
            room.len() < 32,
            "every connection went to one loop: {loops:?}"
        );
        let (ws, thread) = member(&server, "/room", room.len() % 2 == 1);
        loops.insert(thread);
        room.push(ws);
    }
    let (other, _) = member(&server, "/other", false);
    let (author, rest) = room.split_first().unwrap();

    // Text, a large binary message (over the splice threshold), then a burst: every other
    // member gets all of them, in order, whatever its loop and its compression.
    let big = letters(200 * KIB, 7);
    author.send("hello").unwrap();
    author.send(big.clone()).unwrap();
    for i in 0..50 {
        author.send(format!("burst {i}")).unwrap();
    }
    for ws in rest {
        assert_next_text(ws, "hello");
        assert!(recv_message(ws).as_bytes() == &big[..]);
        for i in 0..50 {
            assert_next_text(ws, &format!("burst {i}"));
        }
    }
    // The author and the other topic got none of it: what comes next for them is what
    // the server publishes now (every loop delivered the author's messages already).
    server.publish("/room", "from the server");
    server.publish("/other", "to the other topic");
    for ws in &room {
        assert_next_text(ws, "from the server");
    }
    assert_next_text(&other, "to the other topic");

    for ws in room.iter().chain([&other]) {
        ws.close(CloseCode::NORMAL, "").unwrap();
        assert!(ws.closed().unwrap().is_ok());
    }
    server.shutdown();
}

#[test]
fn unsubscribing_and_closing_leave_topics() {
    let server = relay_server(1);
    let (a, _) = member(&server, "/room", false);
    let (b, _) = member(&server, "/room", true);
    let (c, _) = member(&server, "/room", false);

    b.send("unsub").unwrap();
    assert_next_text(&b, "unsub true");
    b.send("unsub").unwrap();
    assert_next_text(&b, "unsub false");
    a.send("x").unwrap();
    assert_next_text(&c, "x");
    // One loop: the publish was delivered to every subscriber at once, before this.
    server.broadcast("marker 1");
    assert_next_text(&b, "marker 1");
    assert_next_text(&c, "marker 1");
    assert_next_text(&a, "marker 1");

    // C leaves; D takes a free slot (perhaps C's) on another topic; E joins the room.
    c.close(CloseCode::NORMAL, "").unwrap();
    assert!(c.closed().unwrap().is_ok());
    wait_until("C is gone", || server.connection_count() == 2);
    let (d, _) = member(&server, "/other", false);
    let (e, _) = member(&server, "/room", false);
    a.send("y").unwrap();
    assert_next_text(&e, "y");
    server.broadcast("marker 2");
    assert_next_text(&d, "marker 2");
    assert_next_text(&b, "marker 2");

    // A second topic for B.
    b.send("sub /other").unwrap();
    assert_next_text(&b, "sub /other true");
    b.send("sub /other").unwrap();
    assert_next_text(&b, "sub /other false");
    server.publish("/other", "o");
    assert_next_text(&b, "o");
    assert_next_text(&d, "o");

    for ws in [&a, &b, &d, &e] {
        ws.close(CloseCode::NORMAL, "").unwrap();
        assert!(ws.closed().unwrap().is_ok());
    }
    server.shutdown();
}

#[test]
fn a_subscriber_that_does_not_read_misses_messages_and_holds_up_no_one() {
    const LEN: usize = 16 * KIB;
    const COUNT: usize = 2000; // 32 MiB: far more than the socket buffers hold
    const WRITE_LIMIT: usize = 64 * KIB;
    let server = Server::builder()
        .threads(1)
        .write_limit(WRITE_LIMIT)
        .ping_interval(None)
        .serve("127.0.0.1:0", |req: &http::Request<()>| Member {
            topic: req.uri().path().to_owned(),
        })
        .unwrap();
    // The slow one: a raw peer of topic "/" that reads nothing for now.
    let (mut slow, mut slow_buf) = raw_handshake(server.local_addr());
    assert_eq!(read_data_frame(&mut slow, &mut slow_buf).payload.len(), 19); // its greeting
    let (fast, _) = member(&server, "/", false);
    let (author, _) = member(&server, "/", false);
    // The author keeps at most two messages ahead of the fast subscriber (under its
    // write_limit), so that one never falls behind; the slow one soon does.
    for i in 0..COUNT {
        author.send(numbered(i, LEN)).unwrap();
        if i > 0 {
            let m = recv_message(&fast);
            assert_eq!(
                number_of(m.as_bytes()),
                i - 1,
                "the fast subscriber lost one"
            );
        }
    }
    assert_eq!(number_of(recv_message(&fast).as_bytes()), COUNT - 1);
    // The slow one now reads: it gets what was queued for it before it fell behind, in
    // order (a prefix with gaps, none of the rest), then, once it has caught up, what is
    // published from then on: "caught up", published until it arrives.
    let (done_tx, done_rx) = mpsc::channel();
    let slow_reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            let frame = read_data_frame(&mut slow, &mut slow_buf);
            if frame.opcode == OpCode::Text {
                assert_eq!(&frame.payload[..], b"caught up");
                done_tx.send(()).unwrap();
                return (slow, slow_buf, got);
            }
            got.push(number_of(&frame.payload));
        }
    });
    let start = Instant::now();
    loop {
        author.send("caught up").unwrap();
        assert_next_text(&fast, "caught up");
        if done_rx.recv_timeout(Duration::from_millis(20)).is_ok() {
            break;
        }
        assert!(
            start.elapsed() < GUARD,
            "the slow subscriber never caught up"
        );
    }
    let (mut slow, mut slow_buf, got) = slow_reader.join().unwrap();
    assert!(
        !got.is_empty() && got.len() < COUNT / 2,
        "the slow subscriber got {} of {COUNT} messages",
        got.len()
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    slow.write_all(&masked_close(CloseCode::NORMAL, ""))
        .unwrap();
    loop {
        // Skips the other "caught up" messages that may have followed.
        let frame = read_data_frame(&mut slow, &mut slow_buf);
        if frame.opcode == OpCode::Close {
            assert_eq!(
                CloseFrame::parse(&frame.payload).unwrap().unwrap().code,
                CloseCode::NORMAL
            );
            break;
        }
    }
    assert_end_of_stream(slow, &mut slow_buf);
    for ws in [&fast, &author] {
        ws.close(CloseCode::NORMAL, "").unwrap();
        assert!(ws.closed().unwrap().is_ok());
    }
    server.shutdown();
}

#[test]
fn a_publish_keeps_its_place_among_the_handle_sends_of_the_same_callback() {
    // X publishes m1 to /t, then sends m2 to Y through Y's handle, in one callback; Y (a
    // subscriber of /t on the other loop) gets m1 first.
    type Slot = Arc<std::sync::Mutex<Option<Handle>>>;
    struct Node {
        path: String,
        y: Slot,
    }
    impl Handler for Node {
        fn on_open(&mut self, ws: &mut Socket<'_>) {
            if self.path == "/t" {
                ws.subscribe("/t");
                *self.y.lock().unwrap() = Some(ws.handle());
            }
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            ws.send(format!("open {thread}")).unwrap();
        }
        fn on_message(&mut self, ws: &mut Socket<'_>, message: Message) {
            let n = message.as_text().unwrap().to_owned();
            ws.publish("/t", format!("m1 {n}"));
            let y = self.y.lock().unwrap().clone().unwrap();
            y.send(format!("m2 {n}"));
        }
    }
    let y_slot: Slot = Arc::default();
    let server = {
        let y_slot = y_slot.clone();
        Server::builder()
            .threads(2)
            .serve("127.0.0.1:0", move |req: &http::Request<()>| Node {
                path: req.uri().path().to_owned(),
                y: y_slot.clone(),
            })
            .unwrap()
    };
    // Y on /t, then clients on /x until one is on the other loop.
    let (y, y_loop) = member(&server, "/t", false);
    let mut xs = Vec::new();
    let x = loop {
        assert!(xs.len() < 32, "every connection went to one loop");
        let (x, x_loop) = member(&server, "/x", false);
        if x_loop != y_loop {
            break x;
        }
        xs.push(x);
    };
    for i in 0..20 {
        x.send(i.to_string()).unwrap();
        assert_next_text(&y, &format!("m1 {i}"));
        assert_next_text(&y, &format!("m2 {i}"));
    }
    for ws in xs.iter().chain([&x, &y]) {
        ws.close(CloseCode::NORMAL, "").unwrap();
        assert!(ws.closed().unwrap().is_ok());
    }
    server.shutdown();
}
