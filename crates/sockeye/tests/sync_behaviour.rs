//! Behaviour of the blocking front end (`sockeye::sync`) over real loopback sockets: echo,
//! handler results, concurrency, recv_timeout, keepalive, timeouts, backpressure both ways,
//! large and fragmented messages, limits, subprotocols, hooks, shutdown, peers that stop
//! reading (the keepalive and close timeouts still end them), and interop with the tokio
//! front end.
//!
//! Misbehaving peers are raw `std::net::TcpStream`s that do the opening handshake by hand
//! and read frames with `sockeye::proto::frame::Frame::decode`. Threads synchronise through
//! channels; timeouts are failure guards only (and, where stated, the measure of a stall).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use sockeye::proto::frame::OpCode;
use sockeye::proto::CloseFrame;
use sockeye::sync::{self, ClientBuilder, Connection, Server};
use sockeye::{CloseCode, Error, Message, MessageKind, State};

/// Failure guard for anything that should happen promptly.
const GUARD: Duration = Duration::from_secs(10);
const MIB: usize = 1024 * 1024;

#[path = "support/raw_peer.rs"]
mod raw_peer;
use raw_peer::{
    letters, masked_into, number_of, numbered, numbered_lines, raw_handshake, read_close,
    read_frame, read_more,
};

fn uri_of(server: &Server) -> String {
    format!("ws://{}/", server.local_addr().unwrap())
}

fn echo(ws: Connection) -> Result<(), sockeye::BoxError> {
    while let Some(msg) = ws.recv()? {
        ws.send(msg)?;
    }
    Ok(())
}

fn echo_server(builder: sync::ServerBuilder) -> (Server, String) {
    let server = builder.serve("127.0.0.1:0", echo).unwrap();
    let uri = uri_of(&server);
    (server, uri)
}

fn recv_guarded(ws: &Connection) -> sockeye::Result<Option<Message>> {
    match ws.recv_timeout(GUARD) {
        Err(Error::RecvTimeout) => panic!("timed out waiting for a message"),
        r => r,
    }
}

// ----- Basics --------------------------------------------------------------------------------

#[test]
fn echo_round_trip() {
    let (server, uri) = echo_server(Server::builder());
    let ws = sync::connect(&uri).unwrap();
    assert_eq!(ws.state(), State::Open);
    assert_eq!(ws.side(), sockeye::proto::Side::Client);
    assert_eq!(ws.remote_addr(), server.local_addr());
    ws.send("Hello!").unwrap();
    assert_eq!(recv_guarded(&ws).unwrap(), Some(Message::from("Hello!")));
    ws.send(vec![1u8, 2, 3]).unwrap();
    assert_eq!(
        recv_guarded(&ws).unwrap(),
        Some(Message::from(vec![1u8, 2, 3]))
    );
    assert_eq!(server.connections().len(), 1);
    ws.close(CloseCode::NORMAL, "").unwrap();
    assert_eq!(ws.state(), State::Closed);
    let closed = ws.closed().unwrap();
    assert!(closed.is_ok(), "{closed}");
    assert_eq!(ws.recv().unwrap(), None);
    assert!(matches!(ws.send("late"), Err(Error::ConnectionClosed(_))));
    server.shutdown();
}

#[test]
fn handler_return_closes_with_1000() {
    let server = sync::serve("127.0.0.1:0", |ws| {
        ws.send("bye")?;
        Ok(())
    })
    .unwrap();
    let ws = sync::connect(&uri_of(&server)).unwrap();
    assert_eq!(recv_guarded(&ws).unwrap(), Some(Message::from("bye")));
    assert_eq!(recv_guarded(&ws).unwrap(), None);
    let closed = ws.closed().unwrap();
    assert_eq!(closed.code(), CloseCode::NORMAL);
    server.shutdown();
}

#[test]
fn dropping_the_last_handle_closes_with_1000() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = sync::serve("127.0.0.1:0", move |ws| {
        let r = ws.recv();
        tx.lock().unwrap().send((r, ws.closed())).unwrap();
        Ok(())
    })
    .unwrap();
    let ws = sync::connect(&uri_of(&server)).unwrap();
    let clone = ws.clone();
    drop(ws);
    assert_eq!(
        clone.state(),
        State::Open,
        "a clone keeps the connection open"
    );
    drop(clone);
    let (r, closed) = rx.recv_timeout(GUARD).unwrap();
    assert_eq!(r.unwrap(), None);
    assert_eq!(closed.unwrap().code(), CloseCode::NORMAL);
    server.shutdown();
}

#[test]
fn handler_error_closes_with_1011() {
    let server = sync::serve("127.0.0.1:0", |_ws| Err("boom".into())).unwrap();
    let ws = sync::connect(&uri_of(&server)).unwrap();
    match recv_guarded(&ws) {
        Err(Error::ConnectionClosed(c)) => assert_eq!(c.code(), CloseCode::INTERNAL_ERROR),
        other => panic!("{other:?}"),
    }
    server.shutdown();
}

#[test]
fn send_from_another_thread_while_recv_blocks() {
    let (server, uri) = echo_server(Server::builder());
    let ws = sync::connect(&uri).unwrap();
    let reader = {
        let ws = ws.clone();
        std::thread::spawn(move || {
            (0..50)
                .map(|_| recv_guarded(&ws).unwrap().unwrap())
                .collect::<Vec<_>>()
        })
    };
    // The reader blocks in recv (or is about to); sending from here must not wait for it.
    // A second recv meanwhile is refused.
    let senders: Vec<_> = (0..5)
        .map(|t| {
            let ws = ws.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    ws.send(format!("{t}:{i}")).unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let got = reader.join().unwrap();
    for t in 0..5 {
        let mine: Vec<String> = got
            .iter()
            .filter_map(|m| m.as_text())
            .filter(|s| s.starts_with(&format!("{t}:")))
            .map(str::to_owned)
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("{t}:{i}")).collect();
        assert_eq!(mine, expected);
    }
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

#[test]
fn second_concurrent_recv_is_refused() {
    let (server, uri) = echo_server(Server::builder());
    let ws = sync::connect(&uri).unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = {
        let ws = ws.clone();
        std::thread::spawn(move || {
            tx.send(()).unwrap();
            // The main thread's probes may hold recv for a moment: retry those.
            loop {
                match recv_guarded(&ws) {
                    Err(Error::ConcurrentRecv) => std::thread::yield_now(),
                    r => return r.unwrap(),
                }
            }
        })
    };
    rx.recv().unwrap();
    // The reader may not be inside recv yet: probe until refused (bounded).
    let start = Instant::now();
    loop {
        match ws.recv_timeout(Duration::from_millis(1)) {
            Err(Error::ConcurrentRecv) => break,
            Err(Error::RecvTimeout) => assert!(start.elapsed() < GUARD),
            other => panic!("{other:?}"),
        }
    }
    ws.send("x").unwrap();
    assert_eq!(reader.join().unwrap(), Some(Message::from("x")));
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

#[test]
fn recv_timeout_times_out_and_connection_stays_usable() {
    let (server, uri) = echo_server(Server::builder());
    let ws = sync::connect(&uri).unwrap();
    let start = Instant::now();
    assert!(matches!(
        ws.recv_timeout(Duration::from_millis(50)),
        Err(Error::RecvTimeout)
    ));
    assert!(start.elapsed() >= Duration::from_millis(45));
    assert_eq!(ws.state(), State::Open);
    ws.send("after").unwrap();
    assert_eq!(recv_guarded(&ws).unwrap(), Some(Message::from("after")));
    let pong = ws.ping().unwrap();
    let rtt = pong.wait(GUARD).unwrap();
    assert!(rtt < GUARD);
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

// ----- Keepalive and timeouts ----------------------------------------------------------------

#[test]
fn keepalive_runs_while_handler_only_sends() {
    const COUNT: usize = 100;
    let (conn_tx, conn_rx) = mpsc::channel();
    let conn_tx = std::sync::Mutex::new(conn_tx);
    let server = Server::builder()
        .ping_interval(Some(Duration::from_millis(50)))
        .ping_timeout(Some(Duration::from_secs(2)))
        .serve("127.0.0.1:0", move |ws| {
            conn_tx.lock().unwrap().send(ws.clone()).unwrap();
            for i in 0..COUNT {
                ws.send(i.to_string())?;
                // Pacing only: the handler spends ~500 ms never calling recv.
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        })
        .unwrap();
    let ws = sync::connect(&uri_of(&server)).unwrap();
    for i in 0..COUNT {
        assert_eq!(
            recv_guarded(&ws).unwrap(),
            Some(Message::from(i.to_string()))
        );
    }
    assert_eq!(recv_guarded(&ws).unwrap(), None);
    let server_conn = conn_rx.recv_timeout(GUARD).unwrap();
    assert!(
        server_conn.latency().is_some(),
        "no keepalive ping was answered while the handler did not call recv"
    );
    server.shutdown();
}

#[test]
fn missing_pong_closes_with_1011() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = Server::builder()
        .ping_interval(Some(Duration::from_millis(50)))
        .ping_timeout(Some(Duration::from_millis(100)))
        .serve("127.0.0.1:0", move |ws| {
            let r = ws.recv();
            tx.lock().unwrap().send(r).unwrap();
            Ok(())
        })
        .unwrap();
    let (mut stream, mut buf) = raw_handshake(server.local_addr().unwrap());
    match rx.recv_timeout(GUARD).unwrap() {
        Err(Error::ConnectionClosed(c)) => {
            assert_eq!(
                c.sent.as_ref().map(|f| f.code),
                Some(CloseCode::INTERNAL_ERROR),
                "{c}"
            );
            assert_eq!(c.received, None);
            assert_eq!(c.code(), CloseCode::ABNORMAL);
        }
        other => panic!("{other:?}"),
    }
    let close = read_close(&mut stream, &mut buf);
    assert_eq!(close.code, CloseCode::INTERNAL_ERROR);
    assert!(
        read_frame(&mut stream, &mut buf).is_none(),
        "expected end of stream"
    );
    server.shutdown();
}

#[test]
fn close_gives_up_after_close_timeout() {
    let close_timeout = Duration::from_millis(200);
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = Server::builder()
        .close_timeout(close_timeout)
        .ping_interval(None)
        .serve("127.0.0.1:0", move |ws| {
            let start = Instant::now();
            let result = ws.close(CloseCode::NORMAL, "bye");
            tx.lock()
                .unwrap()
                .send((start.elapsed(), result, ws.state(), ws.closed()))
                .unwrap();
            Ok(())
        })
        .unwrap();
    let (mut stream, mut buf) = raw_handshake(server.local_addr().unwrap());
    let (elapsed, result, state, closed) = rx.recv_timeout(GUARD).unwrap();
    result.unwrap();
    assert_eq!(state, State::Closed);
    assert!(
        elapsed >= close_timeout - Duration::from_millis(20),
        "{elapsed:?}"
    );
    assert!(elapsed < close_timeout * 5, "close() took {elapsed:?}");
    let closed = closed.unwrap();
    assert_eq!(closed.sent, Some(CloseFrame::new(CloseCode::NORMAL, "bye")));
    assert_eq!(closed.received, None);
    let close = read_close(&mut stream, &mut buf);
    assert_eq!(close, CloseFrame::new(CloseCode::NORMAL, "bye"));
    assert!(
        read_frame(&mut stream, &mut buf).is_none(),
        "expected end of stream"
    );
    server.shutdown();
}

#[test]
fn vanished_peer_gives_1006() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = sync::serve("127.0.0.1:0", move |ws| {
        let r = ws.recv();
        tx.lock().unwrap().send(r).unwrap();
        Ok(())
    })
    .unwrap();
    let (stream, _) = raw_handshake(server.local_addr().unwrap());
    drop(stream);
    match rx.recv_timeout(GUARD).unwrap() {
        Err(Error::ConnectionClosed(c)) => {
            assert_eq!(c.code(), CloseCode::ABNORMAL, "{c}");
            assert_eq!(c.received, None);
        }
        other => panic!("{other:?}"),
    }
    server.shutdown();
}

// ----- Backpressure --------------------------------------------------------------------------

/// Runs `send(i)` in a thread for i in 0..limit, reporting each completion; returns how
/// many completed before one took longer than `stall` (the measure of a stall), and the
/// thread's handle (which goes on sending `more` messages once unblocked).
fn sends_until_stall(
    ws: Connection,
    limit: usize,
    len: usize,
    stall: Duration,
) -> (
    usize,
    bool,
    mpsc::Receiver<usize>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        for i in 0..limit {
            if ws.send(numbered(i, len)).is_err() {
                return;
            }
            if tx.send(i + 1).is_err() {
                return;
            }
        }
    });
    let mut sent = 0;
    let stalled = loop {
        match rx.recv_timeout(stall) {
            Ok(n) => {
                sent = n;
                if n == limit {
                    break false;
                }
            }
            Err(_) => break true,
        }
    };
    (sent, stalled, rx, handle)
}

#[test]
fn reading_pauses_when_max_queue_messages_wait() {
    const LIMIT: usize = 64;
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let (count_tx, count_rx) = mpsc::channel();
    let count_tx = std::sync::Mutex::new(count_tx);
    let server = Server::builder()
        .max_queue(4)
        .max_size(2 * MIB)
        .serve("127.0.0.1:0", move |ws| {
            release_rx.lock().unwrap().recv()?;
            let mut count = 0;
            while let Some(msg) = ws.recv()? {
                if msg.as_text() == Some("done") {
                    break;
                }
                let data = msg.as_bytes();
                assert_eq!(data.len(), MIB);
                assert_eq!(number_of(data), count, "lost or duplicated message");
                count += 1;
            }
            count_tx.lock().unwrap().send(count).unwrap();
            Ok(())
        })
        .unwrap();
    let ws = ClientBuilder::default()
        .compression(false)
        .max_size(2 * MIB)
        .connect(&uri_of(&server))
        .unwrap();
    let (sent, stalled, rx, sender) =
        sends_until_stall(ws.clone(), LIMIT, MIB, Duration::from_millis(500));
    assert!(
        stalled,
        "{LIMIT} MiB sent to a handler that reads nothing: reading never paused"
    );
    assert!(
        sent >= 4,
        "blocked after {sent} sends, before max_queue filled"
    );
    // The handler starts reading: the sends go on to the end.
    release_tx.send(()).unwrap();
    loop {
        if rx.recv_timeout(GUARD).expect("sends resumed") == LIMIT {
            break;
        }
    }
    sender.join().unwrap();
    ws.send("done").unwrap();
    assert_eq!(count_rx.recv_timeout(GUARD).unwrap(), LIMIT);
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

#[test]
fn send_waits_while_write_limit_bytes_are_buffered() {
    const WRITE_LIMIT: usize = 32 * 1024;
    const CHUNK: usize = 64 * 1024;
    const LIMIT: usize = 1024; // 64 MiB: far more than loopback socket buffers hold
    let (report_tx, report_rx) = mpsc::channel();
    let report_tx = std::sync::Mutex::new(report_tx);
    let server = Server::builder()
        .write_limit(WRITE_LIMIT)
        .close_timeout(Duration::from_millis(200))
        .serve("127.0.0.1:0", move |ws| {
            let report = report_tx.lock().unwrap().clone();
            let (sent, stalled, rx, sender) =
                sends_until_stall(ws.clone(), LIMIT, CHUNK, Duration::from_millis(500));
            report.send((sent, stalled, ws.buffered_amount())).unwrap();
            while ws.recv()?.is_some() {}
            drop(rx);
            let _ = sender.join();
            Ok(())
        })
        .unwrap();
    // A client that does not read.
    let (mut stream, mut buf) = raw_handshake(server.local_addr().unwrap());
    let (sent, stalled, buffered) = report_rx.recv_timeout(GUARD).unwrap();
    assert!(
        stalled,
        "{sent} messages of 64 KiB sent to a client that reads nothing"
    );
    assert!(
        buffered <= WRITE_LIMIT + CHUNK + 14,
        "buffered_amount {buffered}"
    );
    // Everything that send accepted arrives, in order.
    for i in 0..sent {
        let frame = read_frame(&mut stream, &mut buf).expect("a message");
        assert_eq!(frame.opcode, OpCode::Binary);
        assert_eq!(frame.payload.len(), CHUNK);
        assert_eq!(number_of(&frame.payload), i);
    }
    let mut close = Vec::new();
    let payload = CloseFrame::new(CloseCode::NORMAL, "").to_payload();
    masked_into(OpCode::Close, &payload, &mut close);
    stream.write_all(&close).unwrap();
    // The blocked send completes once read; then the close is answered.
    let reply = loop {
        let frame = read_frame(&mut stream, &mut buf).expect("frames then a close");
        if frame.opcode == OpCode::Close {
            break CloseFrame::parse(&frame.payload).unwrap().unwrap();
        }
    };
    assert_eq!(reply.code, CloseCode::NORMAL);
    server.shutdown();
}

// ----- Large, fragmented, limits -------------------------------------------------------------

fn large_and_fragmented_echo(compression: bool) {
    let (server, uri) = echo_server(Server::builder().max_size(8 * MIB).compression(compression));
    let ws = ClientBuilder::default()
        .max_size(8 * MIB)
        .compression(compression)
        .connect(&uri)
        .unwrap();
    let negotiated = ws
        .response()
        .headers()
        .contains_key("sec-websocket-extensions");
    assert_eq!(negotiated, compression);
    let big = if compression {
        numbered_lines(4 * MIB)
    } else {
        letters(4 * MIB, 1)
    };
    ws.send(big.clone()).unwrap();
    let echo = recv_guarded(&ws).unwrap().unwrap();
    assert_eq!(echo.kind(), MessageKind::Binary);
    assert!(echo.as_bytes() == &big[..], "4 MiB binary corrupted");

    let total = if compression { 256 * 1024 } else { 4 * MIB };
    let data = &big[..total];
    let chunks: Vec<&[u8]> = vec![
        &data[..1],
        &data[1..70_000],
        &data[70_000..70_000],
        &data[70_000..total / 2],
        &data[total / 2..],
    ];
    ws.send_fragmented(MessageKind::Binary, chunks).unwrap();
    let echo = recv_guarded(&ws).unwrap().unwrap();
    assert!(echo.as_bytes() == data, "fragmented binary corrupted");

    let text = "héllo wörld ✓ ".repeat(500);
    let pieces: Vec<&str> = text.split_inclusive('✓').collect();
    ws.send_fragmented(MessageKind::Text, pieces).unwrap();
    let echo = recv_guarded(&ws).unwrap().unwrap();
    assert_eq!(echo.as_text(), Some(text.as_str()));

    ws.send_fragmented(MessageKind::Text, Vec::<&[u8]>::new())
        .unwrap();
    assert_eq!(recv_guarded(&ws).unwrap(), Some(Message::from("")));
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

#[test]
fn large_and_fragmented_messages_echo_intact_with_compression() {
    large_and_fragmented_echo(true);
}

#[test]
fn large_and_fragmented_messages_echo_intact_without_compression() {
    large_and_fragmented_echo(false);
}

#[test]
fn message_over_max_size_closes_with_1009() {
    for compression in [true, false] {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let server = Server::builder()
            .max_size(MIB)
            .compression(compression)
            .serve("127.0.0.1:0", move |ws| {
                let r = ws.recv();
                tx.lock().unwrap().send(r).unwrap();
                Ok(())
            })
            .unwrap();
        let ws = ClientBuilder::default()
            .compression(compression)
            .connect(&uri_of(&server))
            .unwrap();
        // With compression, the limit applies to the inflated size. Without it, the server
        // may fail the connection while the frame is still being written.
        let _ = ws.send(vec![0u8; MIB + 1]);
        match rx.recv_timeout(GUARD).unwrap() {
            Err(Error::ConnectionClosed(c)) => assert_eq!(
                c.sent.as_ref().map(|f| f.code),
                Some(CloseCode::MESSAGE_TOO_BIG),
                "compression {compression}: {c}"
            ),
            other => panic!("compression {compression}: {other:?}"),
        }
        match recv_guarded(&ws) {
            Err(Error::ConnectionClosed(c)) => {
                assert_eq!(
                    c.code(),
                    CloseCode::MESSAGE_TOO_BIG,
                    "compression {compression}: {c}"
                )
            }
            other => panic!("compression {compression}: {other:?}"),
        }
        server.shutdown();
    }
}

/// A server that fails a connection while the client is still sending a large frame must
/// not reset it: closing a socket with unread data sends a TCP reset, the client's write
/// fails, and it never reads the close frame (1006 instead of 1009). The server shuts down
/// its writing side and discards what arrives until the client closes.
#[test]
fn a_server_failing_mid_frame_lingers_so_the_client_gets_the_close_code() {
    for round in 0..5 {
        let server = Server::builder()
            .max_size(64 * 1024)
            .compression(false)
            .serve("127.0.0.1:0", |ws| {
                let _ = ws.recv();
                Ok(())
            })
            .unwrap();
        let ws = ClientBuilder::default()
            .compression(false)
            .connect(&uri_of(&server))
            .unwrap();
        // 16 MiB: still being written when the server reads the header and fails.
        let _ = ws.send(vec![7u8; 16 * MIB]);
        match ws.recv_timeout(GUARD) {
            Err(Error::ConnectionClosed(c)) => {
                assert_eq!(c.code(), CloseCode::MESSAGE_TOO_BIG, "round {round}: {c}")
            }
            other => panic!("round {round}: {other:?}"),
        }
        server.shutdown();
    }
}

/// Lingering is bounded by close_timeout: a peer that goes on sending and never closes its
/// side is cut off, after it was sent the close frame.
#[test]
fn lingering_ends_after_close_timeout_when_the_peer_never_closes() {
    let server = Server::builder()
        .max_size(1024)
        .close_timeout(Duration::from_millis(300))
        .serve("127.0.0.1:0", |ws| {
            let _ = ws.recv();
            Ok(())
        })
        .unwrap();
    let (mut stream, mut buf) = raw_handshake(server.local_addr().unwrap());
    // A frame header announcing 1 GiB, then bytes, until the server is gone.
    let mut header = vec![0x82, 0xff];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    stream.write_all(&header).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let chunk = vec![0u8; 16 * 1024];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if writer.write_all(&chunk).is_err() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the server still reads after 30 s");
    });
    // The close frame arrives (the server half-closed, it did not reset)...
    assert_eq!(
        read_close(&mut stream, &mut buf).code,
        CloseCode::MESSAGE_TOO_BIG
    );
    // ...then the end of stream, while the client goes on sending...
    assert_eq!(read_more(&mut stream, &mut buf), 0);
    // ...and after close_timeout the server closes the socket: writes fail.
    let cut_off = sending.join().unwrap();
    assert!(cut_off >= Duration::from_millis(250), "{cut_off:?}");
    server.shutdown();
}

// ----- Handshake options ---------------------------------------------------------------------

#[test]
fn subprotocol_is_negotiated() {
    let server = Server::builder()
        .subprotocols(["chat.v2", "chat.v1"])
        .serve("127.0.0.1:0", |ws| {
            let proto = ws.subprotocol().unwrap_or("none").to_owned();
            ws.send(proto)?;
            Ok(())
        })
        .unwrap();
    let ws = ClientBuilder::default()
        .subprotocols(["chat.v1"])
        .connect(&uri_of(&server))
        .unwrap();
    assert_eq!(ws.subprotocol(), Some("chat.v1"));
    assert_eq!(recv_guarded(&ws).unwrap(), Some(Message::from("chat.v1")));
    let ws = sync::connect(&uri_of(&server)).unwrap();
    assert_eq!(ws.subprotocol(), None);
    assert_eq!(recv_guarded(&ws).unwrap(), Some(Message::from("none")));
    server.shutdown();
}

/// A response as comparable text: status, then every header as `name: value`, sorted.
fn response_text(response: &http::Response<()>) -> String {
    let mut lines: Vec<String> = response
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
        .collect();
    lines.sort();
    format!("{}\n{}", response.status(), lines.join("\n"))
}

/// Each server's `response()` is the 101 its client received, header for header, on both
/// front ends: with and without a `process_response` hook (without one, the server builds
/// the response again on first use instead of keeping it), compression, a subprotocol.
#[test]
fn servers_see_the_response_their_clients_received() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for hooked in [false, true] {
        // The same settings on either builder (their setters share names).
        macro_rules! configure {
            ($builder:expr) => {{
                let builder = $builder
                    .subprotocols(["chat.v2", "chat.v1"])
                    .server_header(Some("response-test/1".into()));
                if hooked {
                    builder.process_response(|_, response| {
                        response
                            .headers_mut()
                            .insert("x-hooked", http::HeaderValue::from_static("yes"));
                    })
                } else {
                    builder
                }
            }};
        }
        let blocking = configure!(Server::builder())
            .serve("127.0.0.1:0", |ws| {
                while ws.recv()?.is_some() {
                    ws.send(response_text(ws.response()))?;
                }
                Ok(())
            })
            .unwrap();
        let tokio = rt
            .block_on(configure!(sockeye::Server::builder()).serve(
                "127.0.0.1:0",
                |ws: sockeye::Connection| async move {
                    while ws.recv().await?.is_some() {
                        ws.send(response_text(ws.response())).await?;
                    }
                    Ok(())
                },
            ))
            .unwrap();
        let uris = [
            ("blocking", uri_of(&blocking)),
            ("tokio", format!("ws://{}/", tokio.local_addr().unwrap())),
        ];
        for (front, uri) in uris {
            for (compression, offered) in [(true, &["chat.v1"][..]), (false, &[][..])] {
                let ws = ClientBuilder::default()
                    .compression(compression)
                    .subprotocols(offered.iter().copied())
                    .connect(&uri)
                    .unwrap();
                let received = response_text(ws.response());
                assert_eq!(
                    received.contains("sec-websocket-extensions"),
                    compression,
                    "{received}"
                );
                assert_eq!(received.contains("x-hooked: yes"), hooked, "{received}");
                ws.send("response?").unwrap();
                let seen = recv_guarded(&ws).unwrap().unwrap();
                assert_eq!(
                    seen.as_text(),
                    Some(received.as_str()),
                    "{front} server, hooked {hooked}, compression {compression}"
                );
                ws.close(CloseCode::NORMAL, "").unwrap();
            }
        }
        blocking.shutdown();
        rt.block_on(tokio.close());
    }
}

#[test]
fn process_request_answers_health_checks() {
    let server = Server::builder()
        .process_request(|req| {
            (req.uri().path() == "/healthz").then(|| sockeye::respond(StatusCode::OK, "OK\n"))
        })
        .process_response(|_req, resp| {
            resp.headers_mut()
                .insert("x-served-by", http::HeaderValue::from_static("sync"));
        })
        .serve("127.0.0.1:0", echo)
        .unwrap();
    let addr = server.local_addr().unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    stream.set_read_timeout(Some(GUARD)).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("OK\n"), "{response}");

    let ws = sync::connect(&uri_of(&server)).unwrap();
    assert_eq!(ws.response().headers()["x-served-by"], "sync");
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

// ----- Server shutdown, broadcast ------------------------------------------------------------

#[test]
fn shutdown_closes_connections_with_1001_and_joins_handlers() {
    let returned = Arc::new(AtomicBool::new(false));
    let (open_tx, open_rx) = mpsc::channel();
    let open_tx = std::sync::Mutex::new(open_tx);
    let server = {
        let returned = returned.clone();
        sync::serve("127.0.0.1:0", move |ws| {
            open_tx.lock().unwrap().send(()).unwrap();
            while ws.recv()?.is_some() {}
            returned.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap()
    };
    let uri = uri_of(&server);
    let clients: Vec<Connection> = (0..3).map(|_| sync::connect(&uri).unwrap()).collect();
    for _ in 0..3 {
        open_rx.recv_timeout(GUARD).unwrap();
    }
    assert_eq!(server.connections().len(), 3);
    let forever = {
        let server = server.clone();
        std::thread::spawn(move || server.serve_forever())
    };
    server.shutdown();
    assert!(
        returned.load(Ordering::SeqCst),
        "shutdown returned before the handlers"
    );
    assert!(server.connections().is_empty());
    forever.join().unwrap().unwrap();
    for ws in &clients {
        assert_eq!(recv_guarded(ws).unwrap(), None);
        assert_eq!(ws.closed().unwrap().code(), CloseCode::GOING_AWAY);
    }
    assert!(
        sync::connect(&uri).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn broadcast_reaches_open_connections_and_skips_closed_ones() {
    let server = sync::serve("127.0.0.1:0", |ws| {
        while ws.recv()?.is_some() {}
        Ok(())
    })
    .unwrap();
    let uri = uri_of(&server);
    let a = sync::connect(&uri).unwrap();
    let b = sync::connect(&uri).unwrap();
    let start = Instant::now();
    while server.connections().len() < 2 {
        assert!(start.elapsed() < GUARD);
        std::thread::yield_now();
    }
    b.close(CloseCode::NORMAL, "").unwrap();
    let start = Instant::now();
    let conns = loop {
        let conns = server.connections();
        if conns.len() == 1 {
            break conns;
        }
        assert!(start.elapsed() < GUARD);
        std::thread::yield_now();
    };
    let skipped = sync::broadcast(&conns, "news");
    assert!(skipped.is_empty());
    assert_eq!(recv_guarded(&a).unwrap(), Some(Message::from("news")));
    let skipped = sync::broadcast([&b], "late");
    assert_eq!(skipped.len(), 1);
    a.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

// ----- Interop with the tokio front end ------------------------------------------------------

#[test]
fn sync_client_talks_to_tokio_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(sockeye::serve(
            "127.0.0.1:0",
            |ws: sockeye::Connection| async move {
                while let Some(m) = ws.recv().await? {
                    ws.send(m).await?;
                }
                Ok(())
            },
        ))
        .unwrap();
    let ws = sync::connect(&format!("ws://{}/", server.local_addr().unwrap())).unwrap();
    for i in 0..20 {
        ws.send(numbered_lines(1000 * i + 1)).unwrap();
        let echo = recv_guarded(&ws).unwrap().unwrap();
        assert!(echo.as_bytes() == &numbered_lines(1000 * i + 1)[..]);
    }
    ws.close(CloseCode::NORMAL, "").unwrap();
    assert!(ws.closed().unwrap().is_ok());
    rt.block_on(server.close());
}

#[test]
fn tokio_client_talks_to_sync_server() {
    let (server, uri) = echo_server(Server::builder());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ws = sockeye::connect(&uri).await.unwrap();
        for i in 0..20 {
            let data = letters(1000 * i + 1, i as u64);
            ws.send(data.clone()).await.unwrap();
            let echo = tokio::time::timeout(GUARD, ws.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(echo.as_bytes() == &data[..]);
        }
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        assert!(ws.closed().unwrap().is_ok());
    });
    server.shutdown();
}

#[test]
fn open_timeout_when_the_server_never_answers() {
    // A listener that accepts (the kernel does) and never answers the handshake.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("ws://{}/", listener.local_addr().unwrap());
    let start = Instant::now();
    let result = ClientBuilder::default()
        .open_timeout(Some(Duration::from_millis(100)))
        .connect(&uri);
    assert!(matches!(result, Err(Error::OpenTimeout)), "{result:?}");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(90) && elapsed < GUARD,
        "{elapsed:?}"
    );
    drop(listener);
}

// ----- Streaming: fragments in, fragments out ---------------------------------------------

/// A server whose one connection sends a binary message fragmented from `feed` (a blocking
/// iterator: the test decides when each item exists), then "next", then x/y/z fragmented,
/// then "last".
fn fragmenting_server(feed: mpsc::Receiver<Vec<u8>>) -> (Server, String) {
    let feed = std::sync::Mutex::new(Some(feed));
    let server = Server::builder()
        .serve("127.0.0.1:0", move |ws: Connection| {
            if let Some(rx) = feed.lock().unwrap().take() {
                ws.send_fragmented(MessageKind::Binary, rx.iter())?;
                ws.send("next")?;
                ws.send_fragmented(MessageKind::Binary, [&b"x"[..], b"y", b"z"])?;
                ws.send("last")?;
            }
            ws.wait_closed();
            Ok(())
        })
        .unwrap();
    let uri = uri_of(&server);
    (server, uri)
}

#[test]
fn recv_streaming_hands_out_fragments_as_they_arrive() {
    let (feed, rx) = mpsc::channel();
    let (server, uri) = fragmenting_server(rx);
    let ws = sync::connect(&uri).unwrap();
    // One item ahead: the first frame leaves once the second item exists.
    feed.send(b"abc".to_vec()).unwrap();
    feed.send(b"def".to_vec()).unwrap();
    let mut fragments = ws.recv_streaming().unwrap();
    assert!(matches!(ws.recv(), Err(Error::ConcurrentRecv)));
    let first = fragments.next_timeout(GUARD).unwrap().unwrap();
    assert!(
        first.first && !first.fin && &first.data[..] == b"abc",
        "{first:?}"
    );
    // The message is still open: nothing more comes until the feed moves.
    assert!(matches!(
        fragments.next_timeout(Duration::from_millis(100)),
        Some(Err(Error::RecvTimeout))
    ));
    feed.send(b"ghi".to_vec()).unwrap();
    let second = fragments.next_timeout(GUARD).unwrap().unwrap();
    assert!(!second.first && !second.fin && &second.data[..] == b"def");
    drop(feed);
    let last = fragments.next_timeout(GUARD).unwrap().unwrap();
    assert!(last.fin && &last.data[..] == b"ghi", "{last:?}");
    assert!(fragments.next().is_none());
    drop(fragments);
    assert_eq!(recv_guarded(&ws).unwrap(), Some(Message::from("next")));
    // Dropping Fragments in the middle of a message drops the rest of it.
    let mut fragments = ws.recv_streaming().unwrap();
    let x = fragments.next_timeout(GUARD).unwrap().unwrap();
    assert_eq!(&x.data[..], b"x");
    drop(fragments);
    assert_eq!(recv_guarded(&ws).unwrap(), Some(Message::from("last")));
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

#[test]
fn a_timed_out_recv_keeps_its_partial_message_for_recv_streaming() {
    let (feed, rx) = mpsc::channel();
    let (server, uri) = fragmenting_server(rx);
    let ws = sync::connect(&uri).unwrap();
    feed.send(b"abc".to_vec()).unwrap();
    feed.send(b"def".to_vec()).unwrap();
    // "abc" arrives; recv times out in the middle of the message...
    assert!(matches!(
        ws.recv_timeout(Duration::from_millis(300)),
        Err(Error::RecvTimeout)
    ));
    drop(feed);
    // ...and recv_streaming hands out what recv had, then the rest. (Whether "def" came
    // before the timeout or not, the bytes add up.)
    let mut data = Vec::new();
    for (i, fragment) in ws.recv_streaming().unwrap().enumerate() {
        let fragment = fragment.unwrap();
        assert_eq!(fragment.first, i == 0);
        data.extend_from_slice(&fragment.data);
    }
    assert_eq!(data, b"abcdef");
    assert_eq!(recv_guarded(&ws).unwrap(), Some(Message::from("next")));
    // recv joins fragmented messages as before.
    assert_eq!(
        recv_guarded(&ws).unwrap(),
        Some(Message::Binary(bytes::Bytes::from_static(b"xyz")))
    );
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

#[test]
fn other_senders_wait_for_a_fragmented_message_but_pings_do_not() {
    let (server, uri) = echo_server(Server::builder());
    let ws = sync::connect(&uri).unwrap();
    let (feed, rx) = mpsc::channel::<Vec<u8>>();
    // send_fragmented looks one item ahead: it asks for a third item only once the first
    // fragment is in the connection. That request tells the test the message is open.
    let (open_tx, open) = mpsc::channel::<()>();
    let mut asked = 0;
    let fragments = std::iter::from_fn(move || {
        asked += 1;
        if asked == 3 {
            let _ = open_tx.send(());
        }
        rx.recv().ok()
    });
    let fragmented = {
        let ws = ws.clone();
        std::thread::spawn(move || ws.send_fragmented(MessageKind::Text, fragments))
    };
    feed.send(b"part one, ".to_vec()).unwrap();
    feed.send(b"part two".to_vec()).unwrap();
    open.recv_timeout(GUARD).unwrap();
    // The message is open: a ping still goes out and its pong comes back.
    let started = Instant::now();
    ws.ping().unwrap().wait(GUARD).unwrap();
    assert!(started.elapsed() < GUARD);
    let whole = {
        let ws = ws.clone();
        std::thread::spawn(move || ws.send("sent meanwhile"))
    };
    drop(feed);
    fragmented.join().unwrap().unwrap();
    whole.join().unwrap().unwrap();
    assert_eq!(
        recv_guarded(&ws).unwrap(),
        Some(Message::from("part one, part two"))
    );
    assert_eq!(
        recv_guarded(&ws).unwrap(),
        Some(Message::from("sent meanwhile"))
    );
    ws.close(CloseCode::NORMAL, "").unwrap();
    server.shutdown();
}

// ----- Peers that stop reading ---------------------------------------------------------------

/// What [`flood`] reports.
#[derive(Debug)]
enum Flood {
    /// A `send` returned.
    Sent,
    /// A `send` failed with this error (and the handler returned).
    Ended(Error),
    /// Every send went through: the peer was never slow, the test proved nothing.
    AllSent,
}

/// A handler's body that sends 64 KiB binary messages, 64 MiB at most (far more than
/// loopback socket buffers hold), until a `send` fails, and reports each one; for a peer
/// that reads nothing, a send soon blocks writing.
fn flood(ws: &Connection, tx: &mpsc::Sender<Flood>) {
    const LIMIT: usize = 1024;
    const CHUNK: usize = 64 * 1024;
    for i in 0..LIMIT {
        if let Err(e) = ws.send(numbered(i, CHUNK)) {
            let _ = tx.send(Flood::Ended(e));
            return;
        }
        let _ = tx.send(Flood::Sent);
    }
    let _ = tx.send(Flood::AllSent);
}

/// Waits (bounded) until [`flood`] stalls: no send returned for 200 ms.
fn wait_for_stall(rx: &mpsc::Receiver<Flood>) {
    let start = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Flood::Sent) => assert!(start.elapsed() < GUARD, "the sends never stalled"),
            Err(mpsc::RecvTimeoutError::Timeout) => return,
            other => panic!("expected the sends to stall, got {other:?}"),
        }
    }
}

/// The error that ended [`flood`], skipping the sends that returned first (bounded).
fn flood_error(rx: &mpsc::Receiver<Flood>) -> Error {
    loop {
        match rx.recv_timeout(GUARD) {
            Ok(Flood::Sent) => {}
            Ok(Flood::Ended(e)) => return e,
            other => panic!("expected a send to fail, got {other:?}"),
        }
    }
}

// Guards against the I/O thread waiting for ever for output the peer never reads to be
// written: after the keepalive timeout the core wants the transport closed, but its 1011
// close frame is queued behind the backlog and the core has no timer left. Before the fix
// (`flush_until` in `run`, `Protocol::flush_timeout`) the I/O thread waited on the condvar
// with no deadline, the handler stayed blocked writing in its send, and the connection was
// never dropped. `close_timeout` is long on purpose: a timeout ended the connection, so the
// output is dropped at once (the socket shut down, which fails the blocked write), not
// after `close_timeout`.
#[test]
fn a_peer_that_stops_reading_is_dropped_after_the_keepalive_timeout() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = Server::builder()
        .ping_interval(Some(Duration::from_millis(200)))
        .ping_timeout(Some(Duration::from_millis(300)))
        .close_timeout(Duration::from_secs(30))
        .serve("127.0.0.1:0", move |ws| {
            let tx = tx.lock().unwrap().clone();
            flood(&ws, &tx);
            Ok(())
        })
        .unwrap();
    // Completes the handshake, then reads nothing.
    let (stream, _buf) = raw_handshake(server.local_addr().unwrap());
    let start = Instant::now();
    // The keepalive ping (at 200 ms) waits behind the backlog; no pong comes, and 300 ms
    // later the connection fails with 1011 and must end at once. Meanwhile a send blocks.
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    let ended = loop {
        let report = rx
            .recv_timeout(GUARD)
            .expect("the connection was never dropped");
        longest = longest.max(last.elapsed());
        last = Instant::now();
        match report {
            Flood::Sent => {}
            Flood::Ended(e) => break e,
            Flood::AllSent => panic!("64 MiB sent to a peer that reads nothing"),
        }
    };
    let elapsed = start.elapsed();
    assert!(
        longest >= Duration::from_millis(100),
        "no send blocked (longest {longest:?}): the test proved nothing"
    );
    match ended {
        Error::ConnectionClosed(c) => {
            assert_eq!(
                c.sent.as_ref().map(|f| f.code),
                Some(CloseCode::INTERNAL_ERROR),
                "{c}"
            );
            assert_eq!(c.received, None);
        }
        other => panic!("expected the send to fail with ConnectionClosed, got {other:?}"),
    }
    assert!(
        elapsed < Duration::from_secs(5),
        "the connection ended {elapsed:?} after the handshake"
    );
    let start = Instant::now();
    while !server.connections().is_empty() {
        assert!(
            start.elapsed() < GUARD,
            "the connection stayed in the server"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(stream);
    server.shutdown();
}

// Guards against `Server::shutdown` never returning: it closes each connection with 1001 and
// joins its thread, but the close frame is queued behind output the peer never reads.
// Before the fix the close timeout fired in the core (which then wanted the transport
// closed, with no timer left), the I/O thread waited on the condvar with no deadline, the
// handler stayed blocked writing in its send, and shutdown() waited for ever.
#[test]
fn shutdown_is_bounded_by_close_timeout_for_a_peer_that_does_not_read() {
    let close_timeout = Duration::from_millis(300);
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = Server::builder()
        .ping_interval(None)
        .close_timeout(close_timeout)
        .serve("127.0.0.1:0", move |ws| {
            let tx = tx.lock().unwrap().clone();
            flood(&ws, &tx);
            Ok(())
        })
        .unwrap();
    let (stream, _buf) = raw_handshake(server.local_addr().unwrap());
    // The handler is blocked writing.
    wait_for_stall(&rx);
    assert_eq!(server.connections().len(), 1);
    let (done_tx, done_rx) = mpsc::channel();
    let shutdown = {
        let server = server.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            server.shutdown();
            let _ = done_tx.send(start.elapsed());
        })
    };
    let elapsed = done_rx
        .recv_timeout(GUARD)
        .expect("shutdown() did not return");
    shutdown.join().unwrap();
    // The close frame could not be delivered: shutdown() waited for the close timeout, and
    // not much more.
    assert!(
        elapsed >= close_timeout - Duration::from_millis(20),
        "{elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "shutdown() took {elapsed:?}"
    );
    // shutdown() returned after the handler did.
    match flood_error(&rx) {
        Error::ConnectionClosed(c) => {
            assert_eq!(
                c.sent.as_ref().map(|f| f.code),
                Some(CloseCode::GOING_AWAY),
                "{c}"
            );
            assert_eq!(c.received, None);
        }
        other => panic!("expected the send to fail with ConnectionClosed, got {other:?}"),
    }
    assert!(server.connections().is_empty());
    drop(stream);
}

/// A peer that floods pings and never reads: the pongs fill the socket, and the thread
/// writing them blocks. The keepalive timeout, fired by the handler's `recv` (the I/O thread
/// is stuck in that write), must still end the connection (it gives up on the output and
/// shuts the socket down, which fails the blocked write), and shutdown must not wait for
/// the peer. Before the flush bound was shared by every waiting thread, `recv` never
/// returned and `shutdown()` waited until the peer closed its socket.
#[test]
fn a_peer_that_floods_pings_and_never_reads_is_dropped() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = Server::builder()
        .ping_interval(Some(Duration::from_millis(200)))
        .ping_timeout(Some(Duration::from_millis(300)))
        .close_timeout(Duration::from_millis(300))
        .serve("127.0.0.1:0", move |ws| {
            let tx = tx.lock().unwrap().clone();
            let end = loop {
                match ws.recv() {
                    Ok(Some(_)) => {}
                    other => break other,
                }
            };
            let _ = tx.send(end.map(|_| ()).map_err(|e| e.to_string()));
            Ok(())
        })
        .unwrap();
    let (stream, _buf) = raw_handshake(server.local_addr().unwrap());
    let mut writer = stream.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut ping = Vec::new();
    masked_into(OpCode::Ping, &[0x61; 125], &mut ping);
    let batch: Vec<u8> = ping.repeat(512);
    let start = Instant::now();
    // Until the server stops reading (our write times out) or it drops us.
    while start.elapsed() < GUARD {
        if writer.write(&batch).is_err() {
            break;
        }
    }
    let end = rx.recv_timeout(GUARD).expect("recv never returned");
    assert!(
        end.is_err(),
        "recv should fail (keepalive timeout): {end:?}"
    );
    let t = Instant::now();
    while !server.connections().is_empty() {
        assert!(t.elapsed() < GUARD, "the connection is still listed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (done_tx, done_rx) = mpsc::channel();
    let closer = server.clone();
    std::thread::spawn(move || {
        closer.shutdown();
        let _ = done_tx.send(());
    });
    // The peer is still connected (and still not reading).
    done_rx
        .recv_timeout(GUARD)
        .expect("shutdown waited for a peer that does not read");
    drop(writer);
    drop(stream);
}
