//! Async handlers on the event loops (`sockeye::reactor::ServerBuilder::serve_async`) over
//! real loopback sockets, with sockeye's tokio client as the peer: echo (text, binary,
//! large, pipelined, compressed or not), the handler's end (1000 when it returns, 1011 when
//! it fails or panics, and the loop goes on), tokio inside handlers (timers, `select!`,
//! channels), sends from other tasks and threads, the request and remote address, `recv`
//! after the peer's close (`Ok(None)`, then the same) and after an abnormal end (the
//! error), a second concurrent `recv`, `max_queue` (reading stops while the inbox is full,
//! and nothing is lost), `write_limit` (a producer waits for a peer that does not read, and
//! nothing is lost), the handler's own close, and graceful shutdown (1001).
//!
//! Timeouts are failure guards only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sockeye::reactor::{Server, ServerBuilder};
use sockeye::{ClientBuilder, CloseCode, Error, Message};
use tokio::time::timeout;

/// Failure guard for anything that should happen promptly.
#[path = "support/raw_peer.rs"]
mod raw_peer;
use raw_peer::raw_handshake;

const GUARD: Duration = Duration::from_secs(10);
const KIB: usize = 1024;

fn uri_of(server: &Server) -> String {
    format!("ws://{}/", server.local_addr())
}

/// Shuts the server down from a blocking thread (it waits for the loops).
async fn shutdown(server: Server) {
    timeout(
        GUARD,
        tokio::task::spawn_blocking(move || server.shutdown()),
    )
    .await
    .expect("shutdown in time")
    .unwrap();
}

async fn recv(ws: &sockeye::Connection) -> sockeye::Result<Option<Message>> {
    timeout(GUARD, ws.recv()).await.expect("recv in time")
}

/// Closes the client's connection normally, then shuts the server down.
async fn finish(ws: &sockeye::Connection, server: Server) {
    timeout(GUARD, ws.close(CloseCode::NORMAL, ""))
        .await
        .expect("close in time")
        .unwrap();
    shutdown(server).await;
}

/// Waits until `count` stops moving (for 200 ms); returns where it stopped.
async fn until_stalled(count: &AtomicUsize) -> usize {
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = count.load(Ordering::SeqCst);
        if now == last {
            return now;
        }
        last = now;
    }
}

fn echo_server(builder: ServerBuilder) -> Server {
    builder
        .serve_async("127.0.0.1:0", |ws: sockeye::Connection| async move {
            while let Some(message) = ws.recv().await? {
                ws.send(message).await?;
            }
            Ok(())
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_text_binary_large_and_pipelined_messages_with_and_without_compression() {
    for compression in [true, false] {
        let server = echo_server(Server::builder().threads(2).max_size(4 << 20));
        let ws = ClientBuilder::default()
            .compression(compression)
            .max_size(4 << 20)
            .connect(&uri_of(&server))
            .await
            .unwrap();
        ws.send("hello").await.unwrap();
        assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("hello")));
        ws.send(vec![0u8, 1, 2, 255]).await.unwrap();
        assert_eq!(
            recv(&ws).await.unwrap(),
            Some(Message::from(vec![0u8, 1, 2, 255]))
        );
        ws.send("").await.unwrap();
        assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("")));
        // Large: more than write_limit (32 KiB) and the loop's read buffer.
        let large: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        ws.send(large.clone()).await.unwrap();
        assert_eq!(recv(&ws).await.unwrap(), Some(Message::from(large)));
        // Pipelined: many in flight, answered in order.
        let sender = ws.clone();
        let sending = tokio::spawn(async move {
            for i in 0..2000 {
                sender.send(format!("message {i}")).await.unwrap();
            }
        });
        for i in 0..2000 {
            let got = recv(&ws).await.unwrap().unwrap();
            assert_eq!(got.as_text(), Some(format!("message {i}").as_str()));
        }
        sending.await.unwrap();
        timeout(GUARD, ws.close(CloseCode::NORMAL, "bye"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ws.close_code(), CloseCode::NORMAL);
        shutdown(server).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handlers_end_closes_with_1000_and_its_failure_or_panic_with_1011() {
    let server = Server::builder()
        .threads(1)
        .serve_async("127.0.0.1:0", |ws: sockeye::Connection| async move {
            let path = ws.request().uri().path().to_owned();
            match path.as_str() {
                "/return" => Ok(()),
                "/fail" => Err("the handler gave up".into()),
                "/panic" => panic!("the handler panicked"),
                _ => {
                    ws.send(format!("served {path}")).await?;
                    ws.wait_closed().await;
                    Ok(())
                }
            }
        })
        .unwrap();
    let base = format!("ws://{}", server.local_addr());
    for (path, code) in [
        ("/return", CloseCode::NORMAL),
        ("/fail", CloseCode::INTERNAL_ERROR),
        ("/panic", CloseCode::INTERNAL_ERROR),
    ] {
        let ws = sockeye::connect(&format!("{base}{path}")).await.unwrap();
        let end = recv(&ws).await;
        match code {
            CloseCode::NORMAL => assert!(matches!(end, Ok(None)), "{path}: {end:?}"),
            _ => match end {
                Err(Error::ConnectionClosed(closed)) => {
                    assert_eq!(closed.code(), code, "{path}")
                }
                other => panic!("{path}: {other:?}"),
            },
        }
    }
    // The loop (one thread) goes on after a panic.
    let ws = sockeye::connect(&format!("{base}/still")).await.unwrap();
    assert_eq!(
        recv(&ws).await.unwrap(),
        Some(Message::from("served /still"))
    );
    finish(&ws, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_use_tokio_timers_select_and_channels_inside_the_loop() {
    // A producer that never calls recv (the seeds' clock), and a consumer racing recv
    // against a tokio timer with select!.
    let server = Server::builder()
        .threads(1)
        .serve_async("127.0.0.1:0", |ws: sockeye::Connection| async move {
            if ws.request().uri().path() == "/clock" {
                for tick in 0..3 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ws.send(format!("tick {tick}")).await?;
                }
                return Ok(());
            }
            let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
            tokio::spawn(async move {
                let _ = tx.send("from a spawned task".to_owned()).await;
            });
            let spawned = rx.recv().await.unwrap_or_default();
            ws.send(spawned).await?;
            loop {
                tokio::select! {
                    message = ws.recv() => match message? {
                        Some(m) => ws.send(m).await?,
                        None => return Ok(()),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        ws.send("idle").await?;
                    }
                }
            }
        })
        .unwrap();
    let base = format!("ws://{}", server.local_addr());
    let clock = sockeye::connect(&format!("{base}/clock")).await.unwrap();
    for tick in 0..3 {
        assert_eq!(
            recv(&clock).await.unwrap(),
            Some(Message::from(format!("tick {tick}")))
        );
    }
    assert!(matches!(recv(&clock).await, Ok(None)));

    let ws = sockeye::connect(&format!("{base}/select")).await.unwrap();
    assert_eq!(
        recv(&ws).await.unwrap(),
        Some(Message::from("from a spawned task"))
    );
    // Nothing sent: the timer branch answers.
    assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("idle")));
    ws.send("ping me back").await.unwrap();
    let mut got = recv(&ws).await.unwrap().unwrap();
    while got == Message::from("idle") {
        got = recv(&ws).await.unwrap().unwrap();
    }
    assert_eq!(got, Message::from("ping me back"));
    finish(&ws, server).await;
}

#[tokio::test]
async fn addresses_over_ipv6() {
    // IPv6 addresses are kept out of line (IPv4 pairs inline): both come back whole.
    let server = Server::builder()
        .serve_async("[::1]:0", |ws: sockeye::Connection| async move {
            let addresses = format!("{:?} {:?}", ws.local_addr(), ws.remote_addr());
            ws.send(addresses).await?;
            Ok(())
        })
        .expect("an IPv6 loopback");
    let ws = sockeye::connect(&format!("ws://{}/", server.local_addr()))
        .await
        .unwrap();
    assert_eq!(ws.remote_addr(), Some(server.local_addr()));
    let expected = format!("{:?} {:?}", Some(server.local_addr()), ws.local_addr());
    assert_eq!(recv(&ws).await.unwrap(), Some(Message::from(expected)));
    finish(&ws, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reached_from_other_tasks_and_threads_in_order() {
    // Registration and broadcast (the seeds' pattern): handlers register their connection,
    // a tokio task and a plain thread send to all of them.
    let registry: Arc<Mutex<Vec<sockeye::Connection>>> = Arc::default();
    let joined = registry.clone();
    let server = Server::builder()
        .threads(2)
        .serve_async("127.0.0.1:0", move |ws: sockeye::Connection| {
            let joined = joined.clone();
            async move {
                joined.lock().unwrap().push(ws.clone());
                ws.send(format!("welcome {}", ws.id())).await?;
                while ws.recv().await?.is_some() {}
                Ok(())
            }
        })
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
        let welcome = recv(&ws).await.unwrap().unwrap();
        assert!(welcome.as_text().unwrap().starts_with("welcome "));
        clients.push(ws);
    }
    let all = registry.lock().unwrap().clone();
    assert_eq!(all.len(), 4);
    let mut remotes: Vec<_> = all.iter().map(|c| c.remote_addr().unwrap()).collect();
    let mut locals: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    remotes.sort();
    locals.sort();
    assert_eq!(
        remotes, locals,
        "each connection's remote address is its client's"
    );
    for conn in &all {
        assert_eq!(conn.local_addr(), Some(server.local_addr()));
        assert_eq!(conn.state(), sockeye::State::Open);
    }
    let from_task = all.clone();
    tokio::spawn(async move {
        for i in 0..100 {
            for conn in &from_task {
                conn.send(format!("task {i}")).await.unwrap();
            }
        }
    })
    .await
    .unwrap();
    let from_thread = all.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for conn in &from_thread {
                conn.send("thread").await.unwrap();
            }
        });
    })
    .join()
    .unwrap();
    for ws in &clients {
        for i in 0..100 {
            assert_eq!(
                recv(ws).await.unwrap(),
                Some(Message::from(format!("task {i}")))
            );
        }
        assert_eq!(recv(ws).await.unwrap(), Some(Message::from("thread")));
    }
    for ws in &clients {
        ws.close(CloseCode::NORMAL, "").await.unwrap();
    }
    for conn in &all {
        timeout(GUARD, conn.wait_closed()).await.unwrap();
        assert!(conn.closed().unwrap().is_ok());
        assert!(matches!(
            conn.send("late").await,
            Err(Error::ConnectionClosed(_))
        ));
    }
    shutdown(server).await;
}

/// How a `recv` ended, for a test to compare.
fn describe(got: &sockeye::Result<Option<Message>>) -> String {
    match got {
        Ok(Some(m)) => format!("message {}", m.as_text().unwrap_or("(binary)")),
        Ok(None) => "end".to_owned(),
        Err(Error::ConnectionClosed(closed)) => format!("closed {}", u16::from(closed.code())),
        Err(e) => format!("error {e}"),
    }
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    timeout(GUARD, rx.recv()).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_reports_the_end_and_a_second_recv_at_once_is_an_error() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::builder()
        .threads(1)
        .serve_async("127.0.0.1:0", move |ws: sockeye::Connection| {
            let tx = tx.clone();
            async move {
                let first = {
                    let waiting = ws.recv();
                    tokio::pin!(waiting);
                    // Starts the first recv, then tries a second one meanwhile.
                    assert!(futures_util::FutureExt::now_or_never(waiting.as_mut()).is_none());
                    let second = ws.recv().await;
                    let _ = tx.send(format!("second: {}", describe(&second)));
                    waiting.await
                };
                let _ = tx.send(format!("first: {}", describe(&first)));
                let after = ws.recv().await;
                let _ = tx.send(format!("then: {}", describe(&after)));
                let again = ws.recv().await;
                let _ = tx.send(format!("again: {}", describe(&again)));
                Ok(())
            }
        })
        .unwrap();
    let concurrent = format!("second: error {}", Error::ConcurrentRecv);

    // A normal close (1001 from the client): Ok(None), and the same again.
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    assert_eq!(next(&mut rx).await, concurrent);
    ws.send("one").await.unwrap();
    assert_eq!(next(&mut rx).await, "first: message one");
    ws.close(CloseCode::GOING_AWAY, "").await.unwrap();
    assert_eq!(next(&mut rx).await, "then: end");
    assert_eq!(next(&mut rx).await, "again: end");

    // A peer that vanishes without a close frame: the error, with 1006, every time.
    let (raw, _) = raw_handshake(server.local_addr());
    assert_eq!(next(&mut rx).await, concurrent);
    raw.shutdown(std::net::Shutdown::Both).unwrap();
    drop(raw);
    assert_eq!(next(&mut rx).await, "first: closed 1006");
    assert_eq!(next(&mut rx).await, "then: closed 1006");
    assert_eq!(next(&mut rx).await, "again: closed 1006");
    shutdown(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_stops_while_max_queue_messages_wait_and_nothing_is_lost() {
    // The handler does not recv until told; the client sends far more than socket buffers
    // hold. With reading stopped, the client's sends back up; then every message arrives,
    // in order.
    const COUNT: usize = 256;
    const SIZE: usize = 64 * KIB;
    let gate = Arc::new(tokio::sync::Notify::new());
    let release = gate.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::builder()
        .threads(1)
        .max_queue(4)
        .serve_async("127.0.0.1:0", move |ws: sockeye::Connection| {
            let (gate, tx) = (gate.clone(), tx.clone());
            async move {
                gate.notified().await;
                let mut seen = 0;
                while let Some(message) = ws.recv().await? {
                    assert_eq!(message.as_bytes()[0], (seen % 256) as u8);
                    assert_eq!(message.len(), SIZE);
                    seen += 1;
                    if seen == COUNT {
                        break;
                    }
                }
                let _ = tx.send(seen);
                Ok(())
            }
        })
        .unwrap();
    let ws = ClientBuilder::default()
        .compression(false)
        .connect(&uri_of(&server))
        .await
        .unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = ws.clone();
    let counter = sent.clone();
    let sending = tokio::spawn(async move {
        for i in 0..COUNT {
            sender.send(vec![(i % 256) as u8; SIZE]).await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let last = until_stalled(&sent).await;
    assert!(
        last < COUNT,
        "all {COUNT} sends of {SIZE} bytes went through while the server read nothing"
    );
    release.notify_one();
    assert_eq!(timeout(GUARD, rx.recv()).await.unwrap(), Some(COUNT));
    timeout(GUARD, sending).await.unwrap().unwrap();
    assert!(matches!(recv(&ws).await, Ok(None)));
    shutdown(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_waits_over_write_limit_for_a_peer_that_does_not_read() {
    const COUNT: usize = 512;
    const SIZE: usize = 64 * KIB;
    let sent = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (counter, buffered) = (sent.clone(), most.clone());
    let server = Server::builder()
        .threads(1)
        .write_limit(64 * KIB)
        .compression(false)
        .serve_async("127.0.0.1:0", move |ws: sockeye::Connection| {
            let (counter, buffered) = (counter.clone(), buffered.clone());
            async move {
                for i in 0..COUNT {
                    ws.send(vec![(i % 256) as u8; SIZE]).await?;
                    counter.fetch_add(1, Ordering::SeqCst);
                    buffered.fetch_max(ws.buffered_amount(), Ordering::SeqCst);
                }
                ws.wait_closed().await;
                Ok(())
            }
        })
        .unwrap();
    let ws = ClientBuilder::default()
        .max_queue(1)
        .connect(&uri_of(&server))
        .await
        .unwrap();
    let last = until_stalled(&sent).await;
    assert!(
        last < COUNT,
        "the producer ran {COUNT} sends ahead of a peer that does not read"
    );
    // Never more than the limit and one message waiting in the server.
    assert!(most.load(Ordering::SeqCst) <= 64 * KIB + SIZE);
    for i in 0..COUNT {
        let got = recv(&ws).await.unwrap().unwrap();
        assert_eq!(got.len(), SIZE);
        assert_eq!(got.as_bytes()[0], (i % 256) as u8, "message {i}");
    }
    finish(&ws, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handlers_close_and_shutdown_reach_the_client() {
    let server = Server::builder()
        .threads(1)
        .serve_async("127.0.0.1:0", |ws: sockeye::Connection| async move {
            match ws.request().uri().path() {
                "/close" => {
                    ws.close(CloseCode::POLICY_VIOLATION, "not today").await?;
                    assert!(ws.closed().is_some());
                    Ok(())
                }
                _ => {
                    while let Some(m) = ws.recv().await? {
                        ws.send(m).await?;
                    }
                    Ok(())
                }
            }
        })
        .unwrap();
    let base = format!("ws://{}", server.local_addr());
    let ws = sockeye::connect(&format!("{base}/close")).await.unwrap();
    match recv(&ws).await {
        Err(Error::ConnectionClosed(closed)) => {
            assert_eq!(closed.code(), CloseCode::POLICY_VIOLATION);
            assert_eq!(closed.reason(), "not today");
        }
        other => panic!("{other:?}"),
    }
    let ws = sockeye::connect(&format!("{base}/stay")).await.unwrap();
    ws.send("before").await.unwrap();
    assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("before")));
    let stopping = tokio::spawn(shutdown(server));
    // 1001 both ways is a normal close.
    assert!(matches!(recv(&ws).await, Ok(None)));
    assert_eq!(ws.close_code(), CloseCode::GOING_AWAY);
    timeout(GUARD, stopping).await.unwrap().unwrap();
}

#[test]
fn a_connection_is_send_sync_and_cheap_to_clone() {
    fn send_sync<T: Send + Sync + Clone>() {}
    send_sync::<sockeye::Connection>();
    // Two pointers: the tokio handle's `Arc` and its `Stream`/`Sink` box (whose niche
    // tells the event loop's handle apart).
    assert_eq!(std::mem::size_of::<sockeye::Connection>(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_latency_subprotocol_username_and_the_request_are_the_connections() {
    let server = Server::builder()
        .threads(1)
        .subprotocols(["chat.v2", "chat.v1"])
        .basic_auth(sockeye::auth::basic("test", [("ada", "secret")]))
        .serve_async("127.0.0.1:0", |ws: sockeye::Connection| async move {
            assert_eq!(ws.latency(), None);
            let rtt = ws.ping().await?.await?;
            // Two in flight at once: both answered.
            let (a, b) = (ws.ping().await?, ws.ping_with(b"mine").await?);
            let (a, b) = tokio::join!(a, b);
            let (a, b) = (a?, b?);
            let request = ws.request();
            let report = format!(
                "path {} cookie {} user {} subprotocol {} latency {} pings {}",
                request.uri().path(),
                request.headers()["cookie"].to_str().unwrap_or("?"),
                ws.username().unwrap_or("-"),
                ws.subprotocol().unwrap_or("-"),
                ws.latency().is_some(),
                rtt < GUARD && a < GUARD && b < GUARD,
            );
            ws.send(report).await?;
            ws.wait_closed().await;
            // Once closed, a ping fails at once.
            match ws.ping().await {
                Err(Error::ConnectionClosed(_)) => Ok(()),
                other => Err(format!("ping after the close: {other:?}").into()),
            }
        })
        .unwrap();
    let ws = ClientBuilder::default()
        .subprotocols(["chat.v1"])
        .header("cookie", "theme=dark")
        .unwrap()
        .header("authorization", "Basic YWRhOnNlY3JldA==")
        .unwrap()
        .connect(&format!("ws://{}/room/7", server.local_addr()))
        .await
        .unwrap();
    assert_eq!(ws.subprotocol(), Some("chat.v1"));
    assert_eq!(
        recv(&ws).await.unwrap().unwrap().as_text(),
        Some("path /room/7 cookie theme=dark user ada subprotocol chat.v1 latency true pings true")
    );
    finish(&ws, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_a_stream_of_messages_and_a_sink() {
    use futures_util::{SinkExt, StreamExt};
    // python-websockets' `async for message in websocket`, and a sink fed by a stream.
    let server = Server::builder()
        .threads(1)
        .serve_async("127.0.0.1:0", |ws: sockeye::Connection| async move {
            let mut sink = ws.clone();
            let mut messages = ws.clone();
            let mut count = 0;
            while let Some(message) = messages.next().await {
                let text = message?.as_text().unwrap_or("?").to_uppercase();
                count += 1;
                SinkExt::send(&mut sink, Message::from(text)).await?;
            }
            // The stream ended with the client's normal close; it stays ended.
            assert!(messages.next().await.is_none());
            assert_eq!(count, 3);
            Ok(())
        })
        .unwrap();
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    for word in ["one", "two", "three"] {
        ws.send(word).await.unwrap();
        assert_eq!(
            recv(&ws).await.unwrap(),
            Some(Message::from(word.to_uppercase()))
        );
    }
    finish(&ws, server).await;

    // The sink's close closes with 1000 and waits for the end.
    let server = Server::builder()
        .threads(1)
        .serve_async("127.0.0.1:0", |ws: sockeye::Connection| async move {
            let mut sink = ws.clone();
            let mut words = futures_util::stream::iter(["a", "b"].map(|w| Ok(Message::from(w))));
            sink.send_all(&mut words).await?;
            SinkExt::close(&mut sink).await?;
            assert!(ws.closed().is_some_and(|c| c.is_ok()));
            // Closed: the sink refuses more.
            assert!(SinkExt::send(&mut sink, Message::from("late"))
                .await
                .is_err());
            Ok(())
        })
        .unwrap();
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("a")));
    assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("b")));
    assert!(matches!(recv(&ws).await, Ok(None)));
    assert_eq!(ws.close_code(), CloseCode::NORMAL);
    shutdown(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_skips_slow_and_closed_connections_and_never_waits() {
    const SIZE: usize = 128 * KIB;
    let registry: Arc<Mutex<Vec<sockeye::Connection>>> = Arc::default();
    let joined = registry.clone();
    let server = Server::builder()
        .threads(2)
        .write_limit(16 * KIB)
        .compression(false)
        .serve_async("127.0.0.1:0", move |ws: sockeye::Connection| {
            let joined = joined.clone();
            async move {
                joined.lock().unwrap().push(ws.clone());
                ws.wait_closed().await;
                Ok(())
            }
        })
        .unwrap();
    // Two readers, one client that never reads, one that leaves.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(sockeye::connect(&uri_of(&server)).await.unwrap());
        let count = clients.len();
        timeout(GUARD, async {
            while registry.lock().unwrap().len() < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    }
    let all = registry.lock().unwrap().clone();
    let (fast, slow, gone) = (&clients[..2], &clients[2], &clients[3]);
    gone.close(CloseCode::NORMAL, "").await.unwrap();
    timeout(GUARD, all[3].wait_closed()).await.unwrap();
    let mut slow_skipped_at = None;
    for round in 0..100usize {
        let skipped = sockeye::broadcast(&all, vec![(round % 256) as u8; SIZE]);
        let ids: Vec<u64> = skipped.iter().map(|c| c.id()).collect();
        assert!(ids.contains(&all[3].id()), "round {round}: the closed one");
        assert!(!ids.contains(&all[0].id()) && !ids.contains(&all[1].id()));
        if ids.contains(&all[2].id()) {
            slow_skipped_at.get_or_insert(round);
        }
        for ws in fast {
            let got = recv(ws).await.unwrap().unwrap();
            assert_eq!((got.len(), got.as_bytes()[0]), (SIZE, (round % 256) as u8));
        }
        // The readers' links learn that their backlog is written when their loop handles
        // the socket's next writable event, which may come after the client has read it.
        timeout(GUARD, async {
            while all[..2].iter().any(|c| c.buffered_amount() > 16 * KIB) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
    }
    // 12.8 MB for a client that reads nothing: more than the socket buffers hold.
    let at = slow_skipped_at.expect("the client that does not read was never skipped");
    assert!(at > 0, "skipped before anything backed up");
    for ws in fast {
        ws.close(CloseCode::NORMAL, "").await.unwrap();
    }
    // What the slow client was sent arrives, in order: every round before it fell behind,
    // then the rounds it had room for again; then the shutdown's 1001.
    let stopping = tokio::spawn(shutdown(server));
    let mut rounds = Vec::new();
    while let Some(got) = recv(slow).await.unwrap() {
        rounds.push(usize::from(got.as_bytes()[0]));
    }
    assert_eq!(rounds[..at], (0..at).collect::<Vec<_>>());
    assert!(rounds.windows(2).all(|w| w[0] < w[1]), "{rounds:?}");
    assert!(rounds.len() < 100, "nothing was skipped: {rounds:?}");
    timeout(GUARD, stopping).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handlers_use_the_servers_topics() {
    // The chat relay, python-websockets' way: a client at /<room> gets what the others of
    // <room> send, on two loops, and what the server publishes from outside.
    let server = Server::builder()
        .threads(2)
        .serve_async("127.0.0.1:0", |ws: sockeye::Connection| async move {
            let room = ws.request().uri().path().to_owned();
            ws.subscribe(&room)?;
            ws.send("joined").await?;
            while let Some(message) = ws.recv().await? {
                if message.as_text() == Some("leave") {
                    ws.unsubscribe(&room)?;
                    ws.send("left").await?;
                    continue;
                }
                ws.publish(&room, message)?;
            }
            Ok(())
        })
        .unwrap();
    let base = format!("ws://{}", server.local_addr());
    let mut red = Vec::new();
    for _ in 0..3 {
        let ws = sockeye::connect(&format!("{base}/red")).await.unwrap();
        assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("joined")));
        red.push(ws);
    }
    let blue = sockeye::connect(&format!("{base}/blue")).await.unwrap();
    assert_eq!(recv(&blue).await.unwrap(), Some(Message::from("joined")));

    red[0].send("hello red").await.unwrap();
    for ws in &red[1..] {
        assert_eq!(recv(ws).await.unwrap(), Some(Message::from("hello red")));
    }
    server.publish("/blue", "from the server");
    assert_eq!(
        recv(&blue).await.unwrap(),
        Some(Message::from("from the server"))
    );
    // One leaves the room: it no longer gets the room's messages; the others do.
    red[2].send("leave").await.unwrap();
    assert_eq!(recv(&red[2]).await.unwrap(), Some(Message::from("left")));
    red[1].send("second").await.unwrap();
    assert_eq!(recv(&red[0]).await.unwrap(), Some(Message::from("second")));
    // Nothing reached the author, the one who left, or the other room: a marker sent
    // to each now is what each receives next.
    server.publish("/red", "marker");
    server.publish("/blue", "marker");
    assert_eq!(recv(&red[0]).await.unwrap(), Some(Message::from("marker")));
    assert_eq!(recv(&red[1]).await.unwrap(), Some(Message::from("marker")));
    assert_eq!(recv(&blue).await.unwrap(), Some(Message::from("marker")));
    red[2].send("still here").await.unwrap(); // published to /red, which it left
    assert_eq!(
        recv(&red[0]).await.unwrap(),
        Some(Message::from("still here"))
    );
    // The one who left got none of it: its next message is the answer to this.
    red[2].send("leave").await.unwrap();
    assert_eq!(recv(&red[2]).await.unwrap(), Some(Message::from("left")));
    for ws in red.iter().chain([&blue]) {
        ws.close(CloseCode::NORMAL, "").await.unwrap();
    }
    shutdown(server).await;
}
