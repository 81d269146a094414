//! Behaviour of the tokio front end over real loopback sockets: concurrency, cancel safety,
//! keepalive, timeouts, backpressure both ways, corked writes, cooperative scheduling,
//! broadcast, server shutdown, handshake hooks, subprotocols, large and fragmented messages,
//! peers that stop reading (the keepalive and close timeouts still end them).
//!
//! Misbehaving peers are raw `TcpStream`s that do the opening handshake by hand and then read
//! frames with `sockeye::proto::frame::Frame::decode`. Timeouts are failure guards only;
//! tasks synchronise through channels and `Notify`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::StatusCode;
use sockeye::proto::frame::{Frame, OpCode};
use sockeye::proto::{CloseFrame, HandshakeError};
use sockeye::{ClientBuilder, CloseCode, Connection, Error, Message, MessageKind, Server, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::timeout;

/// Failure guard for anything that should happen promptly.
const GUARD: Duration = Duration::from_secs(5);

#[path = "support/raw_peer.rs"]
mod raw_peer;
use raw_peer::{find, letters, masked_into, number_of, numbered, numbered_lines};

async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn uri_of(server: &Server) -> String {
    format!("ws://{}/", server.local_addr().unwrap())
}

async fn echo(ws: Connection) -> Result<(), sockeye::BoxError> {
    while let Some(msg) = ws.recv().await? {
        ws.send(msg).await?;
    }
    Ok(())
}

async fn echo_server(builder: sockeye::ServerBuilder) -> (Server, String) {
    let server = builder.serve("127.0.0.1:0", echo).await.unwrap();
    let uri = uri_of(&server);
    (server, uri)
}

// ----- Raw peers -----------------------------------------------------------------------------

/// Opens a WebSocket connection by hand (no extensions offered) and returns the stream with
/// whatever arrived after the 101 response head.
async fn raw_handshake(addr: SocketAddr) -> (TcpStream, BytesMut) {
    raw_handshake_with(addr, &[]).await
}

/// Like [`raw_handshake`], with `pipelined` bytes written in the same write as the request.
async fn raw_handshake_with(addr: SocketAddr, pipelined: &[u8]) -> (TcpStream, BytesMut) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(pipelined);
    stream.write_all(&request).await.unwrap();
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = guard("handshake response", stream.read_buf(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "EOF during the handshake");
    };
    let head = buf.split_to(end);
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // RFC 6455 §1.3's example key and its accept value.
    assert!(head.contains("s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    (stream, buf)
}

/// Reads the next frame; `None` at end of stream (or on a reset).
async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(frame) = Frame::decode(buf, usize::MAX).unwrap() {
            return Some(frame);
        }
        match guard("a frame", stream.read_buf(buf)).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Reads frames until a close frame, skipping pings; returns its parsed payload.
async fn read_close(stream: &mut TcpStream, buf: &mut BytesMut) -> CloseFrame {
    loop {
        let frame = read_frame(stream, buf)
            .await
            .expect("end of stream before a close frame");
        match frame.opcode {
            OpCode::Ping | OpCode::Pong => continue,
            OpCode::Close => {
                return CloseFrame::parse(&frame.payload)
                    .unwrap()
                    .expect("close frame without a code")
            }
            other => panic!("unexpected {other:?} frame"),
        }
    }
}

// ----- 1. Concurrent senders -----------------------------------------------------------------

fn task_message(task: usize, seq: usize) -> String {
    let fill = char::from(b'a' + task as u8)
        .to_string()
        .repeat(20 + seq % 300);
    format!("{task}:{seq}:{fill}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloned_handles_send_concurrently_without_interleaving() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 200;
    let (server, uri) = echo_server(Server::builder()).await;
    let ws = sockeye::connect(&uri).await.unwrap();

    let mut senders = Vec::new();
    for task in 0..TASKS {
        let ws = ws.clone();
        senders.push(tokio::spawn(async move {
            for seq in 0..PER_TASK {
                ws.send(task_message(task, seq)).await.unwrap();
            }
        }));
    }

    let mut next = [0usize; TASKS];
    for _ in 0..TASKS * PER_TASK {
        let msg = guard("an echo", ws.recv()).await.unwrap().unwrap();
        let text = msg.as_text().expect("a text message");
        let mut parts = text.splitn(3, ':');
        let task: usize = parts.next().unwrap().parse().unwrap();
        let seq: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(text, task_message(task, seq), "corrupted echo");
        // Each task sends in order, so its echoes come back in order, each exactly once.
        assert_eq!(seq, next[task], "task {task}: out of order or duplicated");
        next[task] += 1;
    }
    assert_eq!(next, [PER_TASK; TASKS]);
    for s in senders {
        s.await.unwrap();
    }
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    guard("server close", server.close()).await;
}

// ----- 2. One reader at a time ---------------------------------------------------------------

#[tokio::test]
async fn second_concurrent_recv_gets_concurrent_recv_error() {
    let go = Arc::new(Notify::new());
    let server = {
        let go = go.clone();
        sockeye::serve("127.0.0.1:0", move |ws| {
            let go = go.clone();
            async move {
                go.notified().await;
                ws.send("first").await?;
                go.notified().await;
                ws.send("second").await?;
                while ws.recv().await?.is_some() {}
                Ok(())
            }
        })
        .await
        .unwrap()
    };
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();

    // Start a recv and poll it once: it is now waiting for a message.
    let first = ws.recv();
    tokio::pin!(first);
    let pending =
        std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx).is_pending())).await;
    assert!(pending, "no message was sent yet");

    // A second recv, on the same handle or a clone in another task, is refused.
    assert!(matches!(ws.recv().await, Err(Error::ConcurrentRecv)));
    let clone = ws.clone();
    let other = tokio::spawn(async move { clone.recv().await })
        .await
        .unwrap();
    assert!(matches!(other, Err(Error::ConcurrentRecv)), "{other:?}");

    // The first one still gets the message.
    go.notify_one();
    let msg = guard("first message", first).await.unwrap();
    assert_eq!(msg, Some(Message::from("first")));

    // And recv works again afterwards.
    go.notify_one();
    let msg = guard("second message", ws.recv()).await.unwrap();
    assert_eq!(msg, Some(Message::from("second")));
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    guard("server close", server.close()).await;
}

// ----- 3. Cancel safety of recv --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_is_cancel_safe() {
    const BATCH: usize = 50;
    const BATCHES: usize = 10;
    let server = sockeye::serve("127.0.0.1:0", |ws| async move {
        assert_eq!(ws.recv().await?, Some(Message::from("start")));
        let mut n = 0;
        for batch in 0..BATCHES {
            // A pause before each batch: the client's recv waits (and is cancelled) then,
            // however fast the batch itself comes.
            tokio::time::sleep(Duration::from_millis(2)).await;
            for _ in 0..BATCH {
                ws.send(n.to_string()).await?;
                n += 1;
            }
            if batch + 1 < BATCHES {
                assert_eq!(ws.recv().await?, Some(Message::from("more")));
            }
        }
        while ws.recv().await?.is_some() {}
        Ok(())
    })
    .await
    .unwrap();
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    ws.send("start").await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = 0usize;
    let mut cancelled = 0usize;
    let mut attempt = 0u64;
    while received < BATCH * BATCHES {
        assert!(
            Instant::now() < deadline,
            "only {received} messages arrived"
        );
        // 0 to 900 µs: a zero timeout cancels recv right after its first poll.
        let tiny = Duration::from_micros(attempt % 4 * 300);
        attempt += 1;
        match timeout(tiny, ws.recv()).await {
            Err(_) => cancelled += 1,
            Ok(r) => {
                let msg = r.unwrap().expect("connection closed early");
                assert_eq!(msg.as_text(), Some(received.to_string().as_str()), "lost");
                received += 1;
                if received % BATCH == 0 && received < BATCH * BATCHES {
                    ws.send("more").await.unwrap();
                }
            }
        }
    }
    assert!(
        cancelled > 0,
        "no recv was cancelled: the test proved nothing"
    );
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    guard("server close", server.close()).await;
}

// ----- 4. Keepalive without recv -------------------------------------------------------------

#[tokio::test]
async fn keepalive_runs_while_handler_only_sends() {
    const COUNT: usize = 100;
    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel();
    let server = Server::builder()
        .ping_interval(Some(Duration::from_millis(50)))
        .ping_timeout(Some(Duration::from_secs(2)))
        .serve("127.0.0.1:0", move |ws| {
            let conn_tx = conn_tx.clone();
            async move {
                conn_tx.send(ws.clone()).unwrap();
                for i in 0..COUNT {
                    ws.send(i.to_string()).await?;
                    // Pacing only: the handler spends ~500 ms never calling recv.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(())
            }
        })
        .await
        .unwrap();
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    for i in 0..COUNT {
        let msg = guard("a message", ws.recv()).await.unwrap();
        assert_eq!(msg, Some(Message::from(i.to_string())));
    }
    assert_eq!(guard("the close", ws.recv()).await.unwrap(), None);
    let server_conn = conn_rx.recv().await.unwrap();
    assert!(
        server_conn.latency().is_some(),
        "no keepalive ping was answered while the handler did not call recv"
    );
    guard("server close", server.close()).await;
}

// ----- 5. Keepalive timeout ------------------------------------------------------------------

#[tokio::test]
async fn missing_pong_closes_with_1011() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = Server::builder()
        .ping_interval(Some(Duration::from_millis(50)))
        .ping_timeout(Some(Duration::from_millis(100)))
        .serve("127.0.0.1:0", move |ws| {
            let tx = tx.clone();
            async move {
                tx.send(ws.recv().await).unwrap();
                Ok(())
            }
        })
        .await
        .unwrap();
    let (mut stream, mut buf) = raw_handshake(server.local_addr().unwrap()).await;

    // The raw client reads nothing and answers nothing until the server gave up.
    match guard("keepalive timeout", rx.recv()).await.unwrap() {
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
    let close = read_close(&mut stream, &mut buf).await;
    assert_eq!(close.code, CloseCode::INTERNAL_ERROR);
    assert!(
        read_frame(&mut stream, &mut buf).await.is_none(),
        "expected end of stream"
    );
    guard("server close", server.close()).await;
}

// ----- 6. Close timeout ----------------------------------------------------------------------

#[tokio::test]
async fn close_gives_up_after_close_timeout() {
    let close_timeout = Duration::from_millis(200);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = Server::builder()
        .close_timeout(close_timeout)
        .serve("127.0.0.1:0", move |ws| {
            let tx = tx.clone();
            async move {
                let start = Instant::now();
                let result = ws.close(CloseCode::NORMAL, "bye").await;
                tx.send((start.elapsed(), result, ws.state(), ws.closed()))
                    .unwrap();
                Ok(())
            }
        })
        .await
        .unwrap();
    let (mut stream, mut buf) = raw_handshake(server.local_addr().unwrap()).await;

    let (elapsed, result, state, closed) = guard("close()", rx.recv()).await.unwrap();
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

    // The close frame was sent; then the server closed the TCP connection.
    let close = read_close(&mut stream, &mut buf).await;
    assert_eq!(close, CloseFrame::new(CloseCode::NORMAL, "bye"));
    assert!(
        read_frame(&mut stream, &mut buf).await.is_none(),
        "expected end of stream"
    );
    guard("server close", server.close()).await;
}

// ----- 7. Vanishing peer ---------------------------------------------------------------------

#[tokio::test]
async fn vanished_peer_gives_1006() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = sockeye::serve("127.0.0.1:0", move |ws| {
        let tx = tx.clone();
        async move {
            tx.send(ws.recv().await).unwrap();
            Ok(())
        }
    })
    .await
    .unwrap();
    let (stream, _) = raw_handshake(server.local_addr().unwrap()).await;
    drop(stream);
    match guard("recv after the peer vanished", rx.recv())
        .await
        .unwrap()
    {
        Err(Error::ConnectionClosed(c)) => {
            assert_eq!(c.code(), CloseCode::ABNORMAL, "{c}");
            assert_eq!(c.received, None);
        }
        other => panic!("{other:?}"),
    }
    guard("server close", server.close()).await;
}

// ----- 8. Backpressure on reading ------------------------------------------------------------

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_pauses_when_max_queue_messages_wait() {
    const LIMIT: usize = 64;
    let release = Arc::new(Notify::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = {
        let release = release.clone();
        Server::builder()
            .max_queue(4)
            .max_size(2 * MIB)
            .serve("127.0.0.1:0", move |ws| {
                let release = release.clone();
                let tx = tx.clone();
                async move {
                    release.notified().await;
                    let mut count = 0;
                    while let Some(msg) = ws.recv().await? {
                        if msg.as_text() == Some("done") {
                            break;
                        }
                        let data = msg.as_bytes();
                        assert_eq!(data.len(), MIB);
                        assert_eq!(number_of(data), count, "lost or duplicated message");
                        assert!(data[4..].iter().all(|&b| b == count as u8));
                        count += 1;
                    }
                    tx.send(count).unwrap();
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    let ws = ClientBuilder::default()
        .compression(false)
        .max_size(2 * MIB)
        .connect(&uri_of(&server))
        .await
        .unwrap();

    let mut sent = 0;
    let mut blocked = false;
    while sent < LIMIT {
        match timeout(Duration::from_millis(500), ws.send(numbered(sent, MIB))).await {
            Ok(r) => {
                r.unwrap();
                sent += 1;
            }
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(
        blocked,
        "{LIMIT} MiB sent to a handler that reads nothing: reading never paused"
    );
    assert!(
        sent >= 4,
        "blocked after {sent} sends, before max_queue filled"
    );

    // The handler starts reading: the send that was blocked (and cancelled, so it sent
    // nothing) goes through, and so do more.
    release.notify_one();
    for _ in 0..3 {
        guard("send after release", ws.send(numbered(sent, MIB)))
            .await
            .unwrap();
        sent += 1;
    }
    ws.send("done").await.unwrap();
    let count = guard("the handler's count", rx.recv()).await.unwrap();
    assert_eq!(count, sent);
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    guard("server close", server.close()).await;
}

// ----- 9. Backpressure on writing ------------------------------------------------------------

const WRITE_LIMIT: usize = 32 * 1024;
const CHUNK: usize = 64 * 1024;

/// What a server handler saw while sending 64 KiB messages to a client that reads nothing.
struct Stalled {
    /// Messages `send` accepted.
    sent: usize,
    /// Whether a `send` waited for 500 ms.
    blocked: bool,
    /// The largest `buffered_amount` seen after a `send`.
    max_buffered: usize,
    /// `buffered_amount` when a `send` waited.
    buffered_when_blocked: usize,
}

/// Starts a server (`write_limit` 32 KiB) whose handler sends 64 KiB messages until a `send`
/// waits 500 ms, to a raw client that does not read; returns what the handler saw.
async fn stall_server_writes() -> (Server, TcpStream, BytesMut, Stalled) {
    const LIMIT: usize = 1024; // 64 MiB: far more than loopback socket buffers hold
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = Server::builder()
        .write_limit(WRITE_LIMIT)
        .close_timeout(Duration::from_millis(200))
        .serve("127.0.0.1:0", move |ws| {
            let tx = tx.clone();
            async move {
                let mut stalled = Stalled {
                    sent: 0,
                    blocked: false,
                    max_buffered: 0,
                    buffered_when_blocked: 0,
                };
                while stalled.sent < LIMIT {
                    let msg = numbered(stalled.sent, CHUNK);
                    match timeout(Duration::from_millis(500), ws.send(msg)).await {
                        Ok(r) => {
                            r?;
                            stalled.sent += 1;
                            stalled.max_buffered = stalled.max_buffered.max(ws.buffered_amount());
                        }
                        Err(_) => {
                            stalled.blocked = true;
                            stalled.buffered_when_blocked = ws.buffered_amount();
                            break;
                        }
                    }
                }
                tx.send(stalled).unwrap();
                while ws.recv().await?.is_some() {}
                Ok(())
            }
        })
        .await
        .unwrap();
    // A client that does not read.
    let (stream, buf) = raw_handshake(server.local_addr().unwrap()).await;
    let stalled = guard("the server's report", rx.recv()).await.unwrap();
    (server, stream, buf, stalled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_while_write_limit_bytes_are_buffered() {
    let (server, mut stream, mut buf, stalled) = stall_server_writes().await;
    let sent = stalled.sent;
    assert!(
        stalled.blocked,
        "{sent} messages of 64 KiB sent to a client that reads nothing"
    );
    assert!(
        stalled.max_buffered <= WRITE_LIMIT + CHUNK + 14,
        "buffered_amount reached {}",
        stalled.max_buffered
    );

    // Everything that send accepted arrives, in order, and nothing else.
    for i in 0..sent {
        let frame = read_frame(&mut stream, &mut buf).await.expect("a message");
        assert_eq!(frame.opcode, OpCode::Binary);
        assert_eq!(frame.payload.len(), CHUNK);
        assert_eq!(number_of(&frame.payload), i);
    }
    let mut close = Vec::new();
    let payload = CloseFrame::new(CloseCode::NORMAL, "").to_payload();
    masked_into(OpCode::Close, &payload, &mut close);
    stream.write_all(&close).await.unwrap();
    let reply = read_close(&mut stream, &mut buf).await;
    assert_eq!(reply.code, CloseCode::NORMAL);
    guard("server close", server.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_does_not_wait_while_buffered_amount_is_under_write_limit() {
    let (server, stream, _buf, stalled) = stall_server_writes().await;
    assert!(stalled.blocked);
    // A send that waited must have had more than write_limit bytes in front of it.
    assert!(
        stalled.buffered_when_blocked > WRITE_LIMIT,
        "send waited 500 ms with only {} bytes buffered (write_limit {WRITE_LIMIT})",
        stalled.buffered_when_blocked
    );
    drop(stream);
    guard("server close", server.close()).await;
}

// ----- 10. Corked writes ---------------------------------------------------------------------

#[tokio::test]
async fn echoes_of_one_batch_leave_in_one_write() {
    const COUNT: usize = 20;
    let (server, _) = echo_server(Server::builder()).await;
    let (mut stream, mut buf) = raw_handshake(server.local_addr().unwrap()).await;
    let mut batch = Vec::new();
    for i in 0..COUNT {
        masked_into(OpCode::Text, format!("message {i}").as_bytes(), &mut batch);
    }
    stream.write_all(&batch).await.unwrap();

    let mut frames = Vec::new();
    let mut reads = 0;
    while frames.len() < COUNT {
        // Room for everything: read_buf reads at most the spare capacity.
        buf.reserve(64 * 1024);
        let n = guard("echoes", stream.read_buf(&mut buf)).await.unwrap();
        assert!(n > 0, "end of stream after {} echoes", frames.len());
        reads += 1;
        while let Some(frame) = Frame::decode(&mut buf, usize::MAX).unwrap() {
            frames.push(frame);
        }
    }
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(frame.opcode, OpCode::Text);
        assert_eq!(&frame.payload[..], format!("message {i}").as_bytes());
    }
    assert!(buf.is_empty());
    assert_eq!(
        reads, 1,
        "the {COUNT} echoes took {reads} reads: they were not written in one write"
    );
    drop(stream);
    guard("server close", server.close()).await;
}

// ----- 11. Cooperative scheduling ------------------------------------------------------------

/// What a client saw while a server handler sent `count` small messages in a tight loop, in
/// a current-thread runtime shared with a task that counts its turns.
struct TightLoop {
    /// Whether the client had its first message before the producer finished.
    first_before_finish: Option<bool>,
    /// The turns of the counting task when the producer started and finished.
    turns: (usize, usize),
}

async fn run_tight_loop(builder: sockeye::ServerBuilder, count: usize) -> TightLoop {
    let finished = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = {
        let finished = finished.clone();
        let counter = counter.clone();
        // Without compression: deflating 20,000 messages one by one is slow in debug builds.
        builder
            .compression(false)
            .serve("127.0.0.1:0", move |ws| {
                let finished = finished.clone();
                let counter = counter.clone();
                let tx = tx.clone();
                async move {
                    let before = counter.load(Ordering::SeqCst);
                    for i in 0..count {
                        ws.send(format!("{i}")).await?;
                    }
                    finished.store(true, Ordering::SeqCst);
                    tx.send((before, counter.load(Ordering::SeqCst))).unwrap();
                    Ok(())
                }
            })
            .await
            .unwrap()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = {
        let counter = counter.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };

    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    let mut first_before_finish = None;
    let mut received = 0;
    while let Some(msg) = guard("a message", ws.recv()).await.unwrap() {
        if first_before_finish.is_none() {
            first_before_finish = Some(!finished.load(Ordering::SeqCst));
        }
        assert_eq!(msg.as_text(), Some(received.to_string().as_str()));
        received += 1;
    }
    assert_eq!(received, count);
    let turns = rx.recv().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    spinner.await.unwrap();
    guard("server close", server.close()).await;
    TightLoop {
        first_before_finish,
        turns,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn tight_send_loop_does_not_starve_the_runtime() {
    let seen = run_tight_loop(Server::builder(), 20_000).await;
    assert_eq!(
        seen.first_before_finish,
        Some(true),
        "the client saw no message before the producer finished"
    );
    let (before, after) = seen.turns;
    assert!(
        after > before,
        "the counting task never ran while the producer sent"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn tight_send_loop_lets_its_own_connection_write() {
    // 20,000 small messages fit in a 1 MiB write_limit: send never waits for the driver, so
    // only cooperative scheduling can give it a turn.
    let seen = run_tight_loop(Server::builder().write_limit(MIB), 20_000).await;
    let (before, after) = seen.turns;
    assert!(after > before, "the counting task never ran");
    assert_eq!(
        seen.first_before_finish,
        Some(true),
        "nothing was written to the client until the producer finished"
    );
}

// ----- 12. Broadcast -------------------------------------------------------------------------

#[tokio::test]
async fn broadcast_reaches_open_connections_and_skips_closed_ones() {
    const CLIENTS: usize = 20;
    let registry: Arc<Mutex<Vec<Connection>>> = Arc::default();
    let (open_tx, mut open_rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let server = {
        let registry = registry.clone();
        sockeye::serve("127.0.0.1:0", move |ws| {
            let registry = registry.clone();
            let open_tx = open_tx.clone();
            let done_tx = done_tx.clone();
            async move {
                registry.lock().unwrap().push(ws.clone());
                open_tx.send(()).unwrap();
                while ws.recv().await?.is_some() {}
                done_tx.send(ws.id()).unwrap();
                Ok(())
            }
        })
        .await
        .unwrap()
    };
    let uri = uri_of(&server);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(sockeye::connect(&uri).await.unwrap());
        guard("registration", open_rx.recv()).await.unwrap();
    }

    // One client leaves; wait until the server side of it is closed.
    clients[0].close(CloseCode::NORMAL, "").await.unwrap();
    let gone = guard("handler end", done_rx.recv()).await.unwrap();

    let list = registry.lock().unwrap().clone();
    assert_eq!(list.len(), CLIENTS);
    let skipped = sockeye::broadcast(&list, "hi");
    let skipped: Vec<u64> = skipped.iter().map(Connection::id).collect();
    assert_eq!(skipped, vec![gone]);

    for ws in &clients[1..] {
        let msg = guard("broadcast", ws.recv()).await.unwrap();
        assert_eq!(msg, Some(Message::from("hi")));
    }
    for ws in &clients[1..] {
        ws.close(CloseCode::NORMAL, "").await.unwrap();
    }
    guard("server close", server.close()).await;
}

// ----- 13. Server shutdown -------------------------------------------------------------------

#[tokio::test]
async fn server_close_stops_accepting_and_closes_connections_with_1001() {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let server = sockeye::serve("127.0.0.1:0", move |ws| {
        let done_tx = done_tx.clone();
        async move {
            let result = echo(ws).await;
            done_tx.send(()).unwrap();
            result
        }
    })
    .await
    .unwrap();
    let uri = uri_of(&server);
    let mut clients = Vec::new();
    for i in 0..3 {
        let ws = sockeye::connect(&uri).await.unwrap();
        ws.send(i.to_string()).await.unwrap();
        assert_eq!(ws.recv().await.unwrap(), Some(Message::from(i.to_string())));
        clients.push(ws);
    }
    assert_eq!(server.connections().len(), 3);

    guard("Server::close", server.close()).await;

    // Every handler returned before close() did.
    for _ in 0..3 {
        done_rx.try_recv().expect("a handler still running");
    }
    assert!(server.connections().is_empty());
    for ws in &clients {
        assert_eq!(guard("client close", ws.recv()).await.unwrap(), None);
        assert_eq!(ws.close_code(), CloseCode::GOING_AWAY);
    }
    let refused = guard("connect after close", sockeye::connect(&uri)).await;
    assert!(refused.is_err(), "a closed server accepted a connection");
    guard("wait_closed", server.wait_closed()).await;
}

// ----- 14. Handshake hooks -------------------------------------------------------------------

#[tokio::test]
async fn process_request_and_process_response_hooks() {
    let server = Server::builder()
        .process_request(|req| match req.uri().path() {
            "/healthz" => Some(sockeye::respond(StatusCode::OK, "OK\n")),
            "/private" => {
                let authorised = req
                    .headers()
                    .get_all("cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.split(';').any(|c| c.trim() == "token=secret"));
                (!authorised).then(|| sockeye::respond(StatusCode::UNAUTHORIZED, "Who are you?\n"))
            }
            _ => None,
        })
        .process_response(|_req, resp| {
            resp.headers_mut()
                .insert("x-hooked", http::HeaderValue::from_static("yes"));
        })
        .serve("127.0.0.1:0", echo)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();

    // A plain HTTP health check.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let get = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(get.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    guard("health check", stream.read_to_end(&mut raw))
        .await
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, "OK\n");
    assert!(
        head.to_ascii_lowercase().contains("\r\nx-hooked: yes"),
        "{head}"
    );

    // A WebSocket client on that path sees the 200.
    match sockeye::connect(&format!("ws://{addr}/healthz")).await {
        Err(Error::Handshake(HandshakeError::UnexpectedStatus(resp))) => {
            assert_eq!(resp.status, StatusCode::OK);
            assert_eq!(&resp.body[..], b"OK\n");
        }
        other => panic!("{other:?}"),
    }

    // Authentication by cookie.
    match sockeye::connect(&format!("ws://{addr}/private")).await {
        Err(Error::Handshake(HandshakeError::UnexpectedStatus(resp))) => {
            assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
        }
        other => panic!("{other:?}"),
    }
    let ws = ClientBuilder::default()
        .header("cookie", "theme=dark; token=secret")
        .unwrap()
        .connect(&format!("ws://{addr}/private"))
        .await
        .unwrap();
    assert_eq!(ws.response().headers()["x-hooked"], "yes");
    ws.send("in").await.unwrap();
    assert_eq!(ws.recv().await.unwrap(), Some(Message::from("in")));
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    guard("server close", server.close()).await;
}

// ----- 15. Subprotocols ----------------------------------------------------------------------

#[tokio::test]
async fn subprotocol_is_negotiated_end_to_end() {
    let server = Server::builder()
        .subprotocols(["chat.v2", "chat.v1"])
        .serve("127.0.0.1:0", |ws| async move {
            // Answer a question rather than speak first: see
            // message_right_behind_the_101_response_is_delivered.
            assert_eq!(ws.recv().await?, Some(Message::from("which?")));
            let chosen = ws.subprotocol().unwrap_or("none").to_owned();
            ws.send(chosen).await?;
            while ws.recv().await?.is_some() {}
            Ok(())
        })
        .await
        .unwrap();
    let uri = uri_of(&server);
    let cases: [(&[&str], Option<&str>); 4] = [
        (&["chat.v1"], Some("chat.v1")),
        (&["chat.v1", "chat.v2"], Some("chat.v2")), // the server's preference wins
        (&["other", "chat.v1"], Some("chat.v1")),
        (&[], None),
    ];
    for (offered, expected) in cases {
        let ws = ClientBuilder::default()
            .subprotocols(offered.iter().copied())
            .connect(&uri)
            .await
            .unwrap();
        assert_eq!(ws.subprotocol(), expected, "offered {offered:?}");
        ws.send("which?").await.unwrap();
        let server_side = guard("server's choice", ws.recv()).await.unwrap();
        assert_eq!(
            server_side,
            Some(Message::from(expected.unwrap_or("none").to_owned())),
            "offered {offered:?}"
        );
        ws.close(CloseCode::NORMAL, "").await.unwrap();
    }
    guard("server close", server.close()).await;
}

// ----- Frames that arrive with the handshake ------------------------------------------------

#[tokio::test]
async fn message_right_behind_the_101_response_is_delivered() {
    // A raw server that sends its first message in the same write as the 101 response.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let raw_server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        while find(&buf, b"\r\n\r\n").is_none() {
            let n = stream.read_buf(&mut buf).await.unwrap();
            assert!(n > 0);
        }
        let head = String::from_utf8(buf).unwrap();
        let key = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            })
            .unwrap();
        let accept = sockeye::proto::handshake::accept_key(key.as_bytes());
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        Frame::new(OpCode::Text, &b"early"[..]).encode(&mut out, None);
        stream.write_all(&out).await.unwrap();
        stream // keep the connection open
    });
    let ws = sockeye::connect(&format!("ws://{addr}/")).await.unwrap();
    let _stream = raw_server.await.unwrap();
    let msg = timeout(Duration::from_secs(1), ws.recv()).await;
    assert!(
        matches!(&msg, Ok(Ok(Some(m))) if m.as_text() == Some("early")),
        "the message that came with the 101 response was not delivered: {msg:?}"
    );
}

#[tokio::test]
async fn message_pipelined_behind_the_request_is_delivered() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = sockeye::serve("127.0.0.1:0", move |ws| {
        let tx = tx.clone();
        async move {
            tx.send(ws.recv().await).unwrap();
            Ok(())
        }
    })
    .await
    .unwrap();
    let mut early = Vec::new();
    masked_into(OpCode::Text, b"early", &mut early);
    let (_stream, _buf) = raw_handshake_with(server.local_addr().unwrap(), &early).await;
    let msg = timeout(Duration::from_secs(1), rx.recv()).await;
    assert!(
        matches!(&msg, Ok(Some(Ok(Some(m)))) if m.as_text() == Some("early")),
        "the message sent right behind the request was not delivered: {msg:?}"
    );
}

// ----- 16. Large, fragmented and oversized messages ------------------------------------------

/// Echoes a 4 MiB message and fragmented messages through a server with `max_size` 8 MiB on
/// both ends. Compression runs deflate over megabytes, slow in debug builds: the guard is long
/// and the fragmented messages smaller with it.
async fn large_and_fragmented_echo(compression: bool) {
    let long = Duration::from_secs(30);
    let (server, uri) =
        echo_server(Server::builder().max_size(8 * MIB).compression(compression)).await;
    let ws = ClientBuilder::default()
        .max_size(8 * MIB)
        .compression(compression)
        .connect(&uri)
        .await
        .unwrap();
    let negotiated = ws
        .response()
        .headers()
        .contains_key("sec-websocket-extensions");
    assert_eq!(negotiated, compression);

    // Deflate in a debug build takes seconds over 4 MiB of noise: compressible data with it.
    let big = if compression {
        numbered_lines(4 * MIB)
    } else {
        letters(4 * MIB, 1)
    };
    ws.send(big.clone()).await.unwrap();
    let echo = timeout(long, ws.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(echo.kind(), MessageKind::Binary);
    assert!(echo.as_bytes() == &big[..], "4 MiB binary corrupted");

    if !compression {
        let big_text = String::from_utf8(letters(4 * MIB, 2)).unwrap();
        ws.send(big_text.clone()).await.unwrap();
        let echo = timeout(long, ws.recv()).await.unwrap().unwrap().unwrap();
        assert!(
            echo.as_text() == Some(big_text.as_str()),
            "4 MiB text corrupted"
        );
    }

    // Fragments of uneven sizes.
    let total = if compression { 256 * 1024 } else { 4 * MIB };
    let data = &big[..total];
    let chunks: Vec<&[u8]> = vec![
        &data[..1],
        &data[1..70_000],
        &data[70_000..70_000],
        &data[70_000..total / 2],
        &data[total / 2..],
    ];
    ws.send_fragmented(MessageKind::Binary, chunks)
        .await
        .unwrap();
    let echo = timeout(long, ws.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(echo.kind(), MessageKind::Binary);
    assert!(echo.as_bytes() == data, "fragmented binary corrupted");

    // Text in many fragments, each ending after a multi-byte character.
    let text = "héllo wörld ✓ ".repeat(500);
    let pieces: Vec<&str> = text.split_inclusive('✓').collect();
    assert!(pieces.len() > 100);
    ws.send_fragmented(MessageKind::Text, pieces).await.unwrap();
    let echo = timeout(long, ws.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(echo.as_text(), Some(text.as_str()));

    // No fragments: an empty message.
    ws.send_fragmented(MessageKind::Text, Vec::<&[u8]>::new())
        .await
        .unwrap();
    let echo = guard("empty fragmented echo", ws.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::from(""));

    ws.close(CloseCode::NORMAL, "").await.unwrap();
    guard("server close", server.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_fragmented_messages_echo_intact_with_compression() {
    large_and_fragmented_echo(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_fragmented_messages_echo_intact_without_compression() {
    large_and_fragmented_echo(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_max_size_closes_with_1009() {
    for compression in [true, false] {
        // Client to server: the server receives too much.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server = Server::builder()
            .max_size(MIB)
            .compression(compression)
            .serve("127.0.0.1:0", move |ws| {
                let tx = tx.clone();
                async move {
                    tx.send(ws.recv().await).unwrap();
                    Ok(())
                }
            })
            .await
            .unwrap();
        let ws = ClientBuilder::default()
            .compression(compression)
            .connect(&uri_of(&server))
            .await
            .unwrap();
        // Zeros: with compression the frame on the wire is tiny; the limit applies to the
        // inflated size.
        ws.send(vec![0u8; MIB + 1]).await.unwrap();
        match guard("server recv", rx.recv()).await.unwrap() {
            Err(Error::ConnectionClosed(c)) => assert_eq!(
                c.sent.as_ref().map(|f| f.code),
                Some(CloseCode::MESSAGE_TOO_BIG),
                "compression {compression}: {c}"
            ),
            other => panic!("compression {compression}: {other:?}"),
        }
        match guard("client recv", ws.recv()).await {
            Err(Error::ConnectionClosed(c)) => {
                assert_eq!(
                    c.code(),
                    CloseCode::MESSAGE_TOO_BIG,
                    "compression {compression}: {c}"
                )
            }
            other => panic!("compression {compression}: {other:?}"),
        }
        guard("server close", server.close()).await;

        // Server to client: the client receives too much.
        let (server, uri) =
            echo_server(Server::builder().max_size(4 * MIB).compression(compression)).await;
        let ws = ClientBuilder::default()
            .max_size(MIB)
            .compression(compression)
            .connect(&uri)
            .await
            .unwrap();
        ws.send(vec![0u8; MIB + 1]).await.unwrap();
        match guard("client recv", ws.recv()).await {
            Err(Error::ConnectionClosed(c)) => assert_eq!(
                c.sent.as_ref().map(|f| f.code),
                Some(CloseCode::MESSAGE_TOO_BIG),
                "compression {compression}: {c}"
            ),
            other => panic!("compression {compression}: {other:?}"),
        }
        guard("server close", server.close()).await;
    }
}

/// A server that fails a connection while the client is still sending a large frame must
/// not reset it: closing a socket with unread data sends a TCP reset, which makes the
/// client drop the close frame it has not read yet (1006 instead of 1009). The server
/// shuts down its writing side and discards what arrives until the client closes.
#[tokio::test]
async fn a_server_failing_mid_frame_lingers_so_the_client_gets_the_close_code() {
    for round in 0..5 {
        let server = Server::builder()
            .max_size(64 * 1024)
            .compression(false)
            .serve("127.0.0.1:0", |ws| async move {
                let _ = ws.recv().await;
                Ok(())
            })
            .await
            .unwrap();
        // The blocking client: like most clients (browsers, python-websockets), it gives up
        // on the connection when a write fails, without reading what is left.
        let uri = uri_of(&server);
        let client = tokio::task::spawn_blocking(move || {
            let ws = sockeye::sync::ClientBuilder::default()
                .compression(false)
                .connect(&uri)
                .unwrap();
            // 16 MiB: still being written when the server reads the header and fails.
            let _ = ws.send(vec![7u8; 16 * MIB]);
            ws.recv_timeout(Duration::from_secs(10))
        });
        match guard("client recv", client).await.unwrap() {
            Err(Error::ConnectionClosed(c)) => {
                assert_eq!(c.code(), CloseCode::MESSAGE_TOO_BIG, "round {round}: {c}")
            }
            other => panic!("round {round}: {other:?}"),
        }
        guard("server close", server.close()).await;
    }
}

/// Lingering is bounded by close_timeout: a peer that goes on sending and never closes its
/// side is cut off, after it was sent the close frame.
#[tokio::test]
async fn lingering_ends_after_close_timeout_when_the_peer_never_closes() {
    let server = Server::builder()
        .max_size(1024)
        .close_timeout(Duration::from_millis(300))
        .serve("127.0.0.1:0", |ws| async move {
            let _ = ws.recv().await;
            Ok(())
        })
        .await
        .unwrap();
    let (stream, mut buf) = raw_handshake(server.local_addr().unwrap()).await;
    let (mut reader, mut writer) = stream.into_split();
    // A frame header announcing 1 GiB, then bytes, forever (until the server is gone).
    let mut header = Vec::new();
    header.extend_from_slice(&[0x82, 0xff]);
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    writer.write_all(&header).await.unwrap();
    let sending = tokio::spawn(async move {
        let chunk = vec![0u8; 16 * 1024];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if writer.write_all(&chunk).await.is_err() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server still reads after 30 s");
    });
    // The close frame arrives (the server half-closed, it did not reset)...
    let mut got = None;
    while got.is_none() {
        let n = guard("close frame", reader.read_buf(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "end of stream before the close frame");
        if let Some(frame) = Frame::decode(&mut buf, usize::MAX).unwrap() {
            got = Some(frame);
        }
    }
    let frame = got.unwrap();
    assert_eq!(frame.opcode, OpCode::Close);
    assert_eq!(
        CloseFrame::parse(&frame.payload).unwrap().unwrap().code,
        CloseCode::MESSAGE_TOO_BIG
    );
    // ...then the end of stream, while the client goes on sending...
    assert_eq!(guard("FIN", reader.read_buf(&mut buf)).await.unwrap(), 0);
    // ...and after close_timeout the server closes the socket: writes fail.
    let cut_off = guard("cut off", sending).await.unwrap();
    assert!(cut_off >= Duration::from_millis(250), "{cut_off:?}");
    guard("server close", server.close()).await;
}

// ----- 17. Streaming: fragments in, fragments out ---------------------------------------------

/// A stream of fragments fed by the test through a channel.
fn fed_stream(
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) -> impl futures_util::Stream<Item = Vec<u8>> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Spawns `ws.send_fragmented_stream(kind, ...)` on a [`fed_stream`]: each `Vec` sent on the
/// returned channel is one fragment, and dropping the channel ends the message.
fn spawn_fed_sender(
    ws: &Connection,
    kind: MessageKind,
) -> (
    mpsc::UnboundedSender<Vec<u8>>,
    tokio::task::JoinHandle<sockeye::Result<()>>,
) {
    let (feed, rx) = mpsc::unbounded_channel();
    let ws = ws.clone();
    let sending =
        tokio::spawn(async move { ws.send_fragmented_stream(kind, fed_stream(rx)).await });
    (feed, sending)
}

/// A server whose handler takes each message with `recv_streaming` and reports every
/// fragment, then `None` at the end of each message.
async fn streaming_server() -> (
    Server,
    String,
    mpsc::UnboundedReceiver<Option<sockeye::Fragment>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = Server::builder()
        .serve("127.0.0.1:0", move |ws: Connection| {
            let tx = tx.clone();
            async move {
                loop {
                    let mut fragments = ws.recv_streaming()?;
                    let mut any = false;
                    while let Some(f) = fragments.next().await? {
                        any = true;
                        let _ = tx.send(Some(f));
                    }
                    if !any {
                        return Ok(());
                    }
                    let _ = tx.send(None);
                }
            }
        })
        .await
        .unwrap();
    let uri = uri_of(&server);
    (server, uri, rx)
}

#[tokio::test]
async fn recv_streaming_hands_out_fragments_as_they_arrive() {
    for compression in [false, true] {
        let (server, uri, mut got) = streaming_server().await;
        let ws = ClientBuilder::default()
            .compression(compression)
            .connect(&uri)
            .await
            .unwrap();
        let (feed, sender) = spawn_fed_sender(&ws, MessageKind::Text);
        // "κόσμε" cut inside its first character: fragments need not end on a boundary.
        let text = "aκόσμε";
        let bytes = text.as_bytes();
        feed.send(bytes[..2].to_vec()).unwrap();
        // The server has the first fragment while the message is still open.
        let first = guard("first fragment", got.recv()).await.unwrap().unwrap();
        assert!(first.first && !first.fin, "{first:?}");
        assert_eq!(first.kind, MessageKind::Text);
        assert_eq!(&first.data[..], &bytes[..2]);
        feed.send(bytes[2..].to_vec()).unwrap();
        let second = guard("second fragment", got.recv()).await.unwrap().unwrap();
        assert!(!second.first && !second.fin, "{second:?}");
        assert_eq!(&second.data[..], &bytes[2..]);
        drop(feed);
        let last = guard("last fragment", got.recv()).await.unwrap().unwrap();
        assert!(last.fin && last.data.is_empty(), "{last:?}");
        assert!(guard("end of message", got.recv()).await.unwrap().is_none());
        guard("sender", sender).await.unwrap().unwrap();

        // A whole message comes as one fragment.
        ws.send("whole").await.unwrap();
        let one = guard("whole message", got.recv()).await.unwrap().unwrap();
        assert!(one.first && one.fin && &one.data[..] == b"whole", "{one:?}");
        assert!(guard("end of message", got.recv()).await.unwrap().is_none());
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        guard("server close", server.close()).await;
    }
}

#[tokio::test]
async fn recv_streaming_and_recv_share_the_receiving_side() {
    let (feed_tx, feed_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let feed_rx = Arc::new(Mutex::new(Some(feed_rx)));
    // The server sends one fragmented message fed by the test, then "next".
    let server = Server::builder()
        .serve("127.0.0.1:0", move |ws: Connection| {
            let rx = feed_rx.lock().unwrap().take();
            async move {
                if let Some(rx) = rx {
                    ws.send_fragmented_stream(MessageKind::Binary, fed_stream(rx))
                        .await?;
                    ws.send("next").await?;
                    ws.send_fragmented(MessageKind::Binary, [&b"x"[..], b"y", b"z"])
                        .await?;
                    ws.send("last").await?;
                }
                ws.wait_closed().await;
                Ok(())
            }
        })
        .await
        .unwrap();
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    feed_tx.send(b"abc".to_vec()).unwrap();
    // A recv cancelled in the middle of the message keeps what it had received...
    let partial = timeout(Duration::from_millis(200), ws.recv()).await;
    assert!(partial.is_err(), "recv returned before the message ended");
    feed_tx.send(b"def".to_vec()).unwrap();
    // ...and recv_streaming hands it out first, as one fragment.
    let mut fragments = ws.recv_streaming().unwrap();
    assert!(matches!(ws.recv().await, Err(Error::ConcurrentRecv)));
    assert!(matches!(ws.recv_streaming(), Err(Error::ConcurrentRecv)));
    let mut data = Vec::new();
    let first = guard("first", fragments.next()).await.unwrap().unwrap();
    assert!(first.first && !first.fin);
    data.extend_from_slice(&first.data);
    while data.len() < 6 {
        let f = guard("more", fragments.next()).await.unwrap().unwrap();
        assert!(!f.first);
        data.extend_from_slice(&f.data);
    }
    assert_eq!(data, b"abcdef");
    drop(feed_tx);
    let last = guard("last", fragments.next()).await.unwrap().unwrap();
    assert!(last.fin);
    assert!(guard("end", fragments.next()).await.unwrap().is_none());
    drop(fragments);
    assert_eq!(ws.recv().await.unwrap(), Some(Message::from("next")));
    // Dropping Fragments in the middle of a message drops the rest of it.
    let mut fragments = ws.recv_streaming().unwrap();
    let x = guard("x", fragments.next()).await.unwrap().unwrap();
    assert_eq!(&x.data[..], b"x");
    drop(fragments);
    assert_eq!(
        guard("after the dropped rest", ws.recv()).await.unwrap(),
        Some(Message::from("last"))
    );
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    guard("server close", server.close()).await;
}

#[tokio::test]
async fn other_senders_wait_for_a_fragmented_message_but_pings_do_not() {
    let (server, uri) = echo_server(Server::builder()).await;
    let ws = sockeye::connect(&uri).await.unwrap();
    let (feed, fragmented) = spawn_fed_sender(&ws, MessageKind::Text);
    feed.send(b"part one, ".to_vec()).unwrap();
    // Wait until the first fragment is out (the pong proves the frames before it left).
    let pong = guard("ping while the message is open", ws.ping())
        .await
        .unwrap();
    guard("pong while the message is open", pong).await.unwrap();
    let whole = {
        let ws = ws.clone();
        tokio::spawn(async move { ws.send("sent meanwhile").await })
    };
    feed.send(b"part two".to_vec()).unwrap();
    drop(feed);
    guard("fragmented", fragmented).await.unwrap().unwrap();
    guard("whole", whole).await.unwrap().unwrap();
    // The echo server got the fragmented message whole, and the other one after it.
    assert_eq!(
        guard("echo 1", ws.recv()).await.unwrap(),
        Some(Message::from("part one, part two"))
    );
    assert_eq!(
        guard("echo 2", ws.recv()).await.unwrap(),
        Some(Message::from("sent meanwhile"))
    );
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    guard("server close", server.close()).await;
}

#[tokio::test]
async fn a_fragmented_send_cancelled_midway_fails_the_connection_with_1011() {
    let (server, uri) = echo_server(Server::builder()).await;
    let ws = sockeye::connect(&uri).await.unwrap();
    let (feed, fragmented) = spawn_fed_sender(&ws, MessageKind::Binary);
    feed.send(vec![1, 2, 3]).unwrap();
    let pong = guard("ping", ws.ping()).await.unwrap();
    guard("pong", pong).await.unwrap();
    fragmented.abort();
    let _ = fragmented.await;
    match guard("recv after the cancelled send", ws.recv()).await {
        Err(Error::ConnectionClosed(closed)) => {
            assert_eq!(
                closed.sent.as_ref().map(|f| f.code),
                Some(CloseCode::INTERNAL_ERROR),
                "{closed}"
            );
        }
        other => panic!("{other:?}"),
    }
    guard("server close", server.close()).await;
}

#[tokio::test]
async fn a_connection_closed_in_the_middle_of_a_streamed_message_is_an_error() {
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _ = addr_tx.send(listener.local_addr().unwrap());
    let addr = addr_rx.await.unwrap();
    // A raw server: a binary frame without FIN, then a close frame (allowed between
    // fragments), then nothing.
    let peer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        while find(&buf, b"\r\n\r\n").is_none() {
            stream.read_buf(&mut buf).await.unwrap();
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let key = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("sec-websocket-key: ")
                    .or(l.strip_prefix("Sec-WebSocket-Key: "))
            })
            .unwrap()
            .trim()
            .to_owned();
        let accept = sockeye::proto::handshake::accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        stream.write_all(response.as_bytes()).await.unwrap();
        stream
            .write_all(&[0x02, 0x03, b'a', b'b', b'c'])
            .await
            .unwrap();
        stream.write_all(&[0x88, 0x02, 0x03, 0xe8]).await.unwrap();
        // The client's masked close frame (8 bytes), then the server closes TCP first.
        let mut close = [0u8; 8];
        guard("client close frame", stream.read_exact(&mut close))
            .await
            .unwrap();
        assert_eq!(close[0], 0x88);
    });
    let ws = sockeye::connect(&format!("ws://{addr}/")).await.unwrap();
    let mut fragments = ws.recv_streaming().unwrap();
    let first = guard("first", fragments.next()).await.unwrap().unwrap();
    assert_eq!(&first.data[..], b"abc");
    match guard("after the close", fragments.next()).await {
        Err(Error::ConnectionClosed(closed)) => {
            assert_eq!(
                closed.received.as_ref().map(|f| f.code),
                Some(CloseCode::NORMAL)
            )
        }
        other => panic!("a message cut by the close must be an error: {other:?}"),
    }
    drop(fragments);
    guard("peer", peer).await.unwrap();
}

// ----- 18. Peers that stop reading -----------------------------------------------------------

/// What [`flood`] reports.
#[derive(Debug)]
enum Flood {
    /// A `send` has waited 100 ms for the write limit, and goes on waiting.
    Blocked,
    /// A send failed with this error (and the handler returned).
    Ended(Error),
    /// Every send went through: the peer was never slow, the test proved nothing.
    AllSent,
}

/// A handler that sends 64 KiB binary messages, 64 MiB at most (far more than loopback
/// socket buffers hold), until a `send` fails; for a peer that reads nothing, its sends soon
/// wait for the write limit. Reports the first send that waits, and how the sending ended.
async fn flood(ws: Connection, tx: mpsc::UnboundedSender<Flood>) -> Result<(), sockeye::BoxError> {
    const LIMIT: usize = 1024;
    let mut blocked = false;
    for i in 0..LIMIT {
        let send = ws.send(numbered(i, CHUNK));
        tokio::pin!(send);
        let result = match timeout(Duration::from_millis(100), &mut send).await {
            Ok(result) => result,
            Err(_) => {
                if !blocked {
                    blocked = true;
                    let _ = tx.send(Flood::Blocked);
                }
                // The same send, not a new one: it goes on waiting.
                send.await
            }
        };
        if let Err(e) = result {
            let _ = tx.send(Flood::Ended(e));
            return Ok(());
        }
    }
    let _ = tx.send(Flood::AllSent);
    Ok(())
}

/// Waits (bounded) until `server` has no connections.
async fn wait_for_no_connections(server: &Server) {
    guard("the connection leaves the server", async {
        while !server.connections().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

// Guards against the driver waiting for ever to write output the peer never reads: after
// the keepalive timeout the core wants the transport closed, but its 1011 close frame is
// queued behind the backlog and the core has no timer left. Before the fix (`Driver::
// flushing`, `Protocol::flush_timeout`) the driver stayed pending on the write, the
// handler's send waited for the write limit for ever, and the connection was never dropped.
// `close_timeout` is long on purpose: a timeout ended the connection, so the output is
// dropped at once, not after `close_timeout`.
#[tokio::test]
async fn a_peer_that_stops_reading_is_dropped_after_the_keepalive_timeout() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = Server::builder()
        .ping_interval(Some(Duration::from_millis(200)))
        .ping_timeout(Some(Duration::from_millis(300)))
        .close_timeout(Duration::from_secs(30))
        .serve("127.0.0.1:0", move |ws| flood(ws, tx.clone()))
        .await
        .unwrap();
    // Completes the handshake, then reads nothing.
    let (stream, _buf) = raw_handshake(server.local_addr().unwrap()).await;
    let start = Instant::now();
    // The keepalive ping (at 200 ms) waits behind the backlog; no pong comes, and 300 ms
    // later the connection fails with 1011 and must end at once.
    let mut blocked = false;
    let ended = loop {
        match guard("the connection ends (keepalive timeout)", rx.recv())
            .await
            .unwrap()
        {
            Flood::Blocked => blocked = true,
            Flood::Ended(e) => break e,
            Flood::AllSent => panic!("64 MiB sent to a peer that reads nothing"),
        }
    };
    let elapsed = start.elapsed();
    assert!(
        blocked,
        "no send waited for the write limit: the test proved nothing"
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
    wait_for_no_connections(&server).await;
    drop(stream);
    guard("server close", server.close()).await;
}

// Guards against `Server::close` never returning: it closes each connection with 1001 and
// waits for its task, but the close frame is queued behind output the peer never reads.
// Before the fix the close timeout fired in the core (which then wanted the transport
// closed, with no timer left), the driver stayed pending on the write, the handler stayed
// in its send, and close() waited for ever.
#[tokio::test]
async fn server_close_is_bounded_by_close_timeout_for_a_peer_that_does_not_read() {
    let close_timeout = Duration::from_millis(300);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = Server::builder()
        .ping_interval(None)
        .close_timeout(close_timeout)
        .serve("127.0.0.1:0", move |ws| flood(ws, tx.clone()))
        .await
        .unwrap();
    let (stream, _buf) = raw_handshake(server.local_addr().unwrap()).await;
    match guard("the handler's send waits", rx.recv()).await.unwrap() {
        Flood::Blocked => {}
        other => panic!("expected a send to wait for the write limit, got {other:?}"),
    }
    assert_eq!(server.connections().len(), 1);
    let start = Instant::now();
    guard("Server::close", server.close()).await;
    let elapsed = start.elapsed();
    // The close frame could not be delivered: close() waited for the close timeout, and no
    // more than that (plus scheduling).
    assert!(
        elapsed >= close_timeout - Duration::from_millis(20),
        "{elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "Server::close took {elapsed:?}"
    );
    // close() returned after the handler did.
    match rx.try_recv() {
        Ok(Flood::Ended(Error::ConnectionClosed(c))) => {
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
