//! One `sockeye::Connection` over both back ends: each behaviour here runs with the same
//! handler on tokio tasks (`ServerBuilder::tasks(true)`) and on the event loops
//! (`sockeye::serve`'s default), over real loopback sockets.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use sockeye::{BoxError, CloseCode, Connection, Error, Message, MessageKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(10);
const BACK_ENDS: [Back; 2] = [Back::Task, Back::Loop];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Back {
    /// `ServerBuilder::tasks(true)`: a tokio task per connection.
    Task,
    /// `sockeye::serve`'s default: the event loops poll the handlers.
    Loop,
}

struct Running(sockeye::Server);

impl Running {
    fn addr(&self) -> std::net::SocketAddr {
        self.0.local_addr().unwrap()
    }

    fn uri(&self) -> String {
        format!("ws://{}/", self.addr())
    }

    async fn stop(self) {
        timeout(GUARD, self.0.close()).await.expect("close in time");
    }
}

/// How a test's server is set up.
#[derive(Clone, Copy)]
struct Setup {
    /// A `process_response` hook that adds `x-hook`.
    hook: bool,
    ping_interval: Option<Duration>,
    close_timeout: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            hook: false,
            ping_interval: Some(Duration::from_secs(20)),
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `handler` on `back`, with the `process_response` hook if `hook`.
async fn serve<H, Fut>(back: Back, hook: bool, handler: H) -> Running
where
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    serve_with(
        back,
        Setup {
            hook,
            ..Setup::default()
        },
        handler,
    )
    .await
}

/// Serves `handler` on `back` with `ping_interval` and a short close timeout (for raw peers
/// that never close).
async fn serve_quiet<H, Fut>(back: Back, ping_interval: Option<Duration>, handler: H) -> Running
where
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let setup = Setup {
        ping_interval,
        close_timeout: Duration::from_secs(1),
        ..Setup::default()
    };
    serve_with(back, setup, handler).await
}

async fn serve_with<H, Fut>(back: Back, setup: Setup, handler: H) -> Running
where
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let add_header = |_: &http::Request<()>, response: &mut http::Response<bytes::Bytes>| {
        response
            .headers_mut()
            .insert("x-hook", http::HeaderValue::from_static("was here"));
    };
    let mut builder = sockeye::Server::builder()
        .tasks(back == Back::Task)
        .threads(2)
        .ping_interval(setup.ping_interval)
        .close_timeout(setup.close_timeout);
    if setup.hook {
        builder = builder.process_response(add_header);
    }
    let server = builder.serve("127.0.0.1:0", handler).await.unwrap();
    assert_eq!(server.on_event_loops(), back == Back::Loop);
    Running(server)
}

async fn recv(ws: &Connection) -> sockeye::Result<Option<Message>> {
    timeout(GUARD, ws.recv()).await.expect("recv in time")
}

/// What a handler reports, for the test to check.
fn reports() -> (
    mpsc::UnboundedSender<String>,
    mpsc::UnboundedReceiver<String>,
) {
    mpsc::unbounded_channel()
}

async fn report(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    timeout(GUARD, rx.recv())
        .await
        .expect("a report in time")
        .expect("a report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_received_fragment_by_fragment() {
    for back in BACK_ENDS {
        let server = serve(back, false, |ws| async move {
            let mut fragments = ws.recv_streaming()?;
            // The receiving side is held while the fragments are read.
            let concurrent = matches!(ws.recv().await, Err(Error::ConcurrentRecv));
            let (mut count, mut data, mut last) = (0, Vec::new(), false);
            while let Some(f) = fragments.next().await? {
                assert_eq!(f.kind, MessageKind::Text);
                assert_eq!(f.first, count == 0);
                count += 1;
                data.extend_from_slice(&f.data);
                last = f.fin;
            }
            drop(fragments);
            let text = String::from_utf8(data)?;
            ws.send(format!("{count} {last} {concurrent} {text}"))
                .await?;
            // And whole messages again afterwards.
            let next = ws.recv().await?.expect("a message");
            ws.send(next).await?;
            Ok(())
        })
        .await;
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        ws.send_fragmented(MessageKind::Text, ["frag", "men", "ted é"])
            .await
            .unwrap();
        let got = recv(&ws).await.unwrap().unwrap();
        // Both hand out the frames as they come.
        assert_eq!(got, Message::from("3 true true fragmented é"), "{back:?}");
        ws.send("whole").await.unwrap();
        assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("whole")));
        assert_eq!(recv(&ws).await.unwrap(), None, "{back:?}: closed with 1000");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_send_keeps_other_messages_out_until_it_ends() {
    for back in BACK_ENDS {
        let server = serve(back, false, |ws| async move {
            let (tx, rx) = mpsc::unbounded_channel::<&'static str>();
            let fragments = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|piece| (piece, rx))
            });
            tx.send("first half, ")?;
            let sending = ws.send_fragmented_stream(MessageKind::Text, fragments);
            let meanwhile = async {
                // Polled after `sending`, which queued the first fragment at once.
                let other = {
                    let ws = ws.clone();
                    tokio::spawn(async move { ws.send("the other message").await })
                };
                // The other sender has had time to try: it must wait for the end.
                tokio::time::sleep(Duration::from_millis(100)).await;
                tx.send("second half")?;
                drop(tx);
                Ok::<_, BoxError>(other)
            };
            let (sent, other) = tokio::join!(sending, meanwhile);
            sent?;
            other?.await??;
            ws.wait_closed().await;
            Ok(())
        })
        .await;
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        assert_eq!(
            recv(&ws).await.unwrap(),
            Some(Message::from("first half, second half")),
            "{back:?}"
        );
        assert_eq!(
            recv(&ws).await.unwrap(),
            Some(Message::from("the other message"))
        );
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_send_dropped_halfway_fails_the_connection_with_1011() {
    for back in BACK_ENDS {
        let server = serve(back, false, |ws| async move {
            let never_ends =
                futures_util::stream::iter(["only a start"]).chain(futures_util::stream::pending());
            let sending = ws.send_fragmented_stream(MessageKind::Binary, never_ends);
            assert!(timeout(Duration::from_millis(100), sending).await.is_err());
            ws.wait_closed().await;
            Ok(())
        })
        .await;
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        match recv(&ws).await {
            Err(Error::ConnectionClosed(closed)) => {
                assert_eq!(closed.code(), CloseCode::INTERNAL_ERROR, "{back:?}")
            }
            other => panic!("{back:?}: {other:?}"),
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_resolve_with_their_pongs() {
    for back in BACK_ENDS {
        let (tx, mut rx) = reports();
        let server = serve(back, false, move |ws| {
            let tx = tx.clone();
            async move {
                let mut first = ws.ping_with(b"mine").await?;
                // A second ping with the same payload while the first waits: refused.
                let again = ws.ping_with(b"mine").await;
                let mut other = ws.ping().await?;
                let (a, b) = tokio::join!(&mut first, &mut other);
                // Answered (its `Pong` still held): the payload may be used again.
                let reused = ws.ping_with(b"mine").await?.await;
                let report = format!(
                    "refused {} rtts {} {} reused {} latency {} long {}",
                    matches!(again, Err(Error::Misuse(_)) | Err(Error::Protocol(_))),
                    a? < GUARD,
                    b? < GUARD,
                    reused.is_ok(),
                    ws.latency().is_some(),
                    ws.ping_with(&[0; 126]).await.is_err(),
                );
                drop((first, other));
                tx.send(report)?;
                ws.wait_closed().await;
                // Once closed, a ping fails at once.
                tx.send(format!("after {}", ws.ping().await.is_err()))?;
                Ok(())
            }
        })
        .await;
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        // The client answers pings while it waits in recv.
        let reading = {
            let ws = ws.clone();
            tokio::spawn(async move { while let Ok(Some(_)) = ws.recv().await {} })
        };
        assert_eq!(
            report(&mut rx).await,
            "refused true rtts true true reused true latency true long true",
            "{back:?}"
        );
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        assert_eq!(report(&mut rx).await, "after true", "{back:?}");
        reading.await.unwrap();
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_hooks_run_once_the_connection_is_over_and_the_peers_close_is_known() {
    for back in BACK_ENDS {
        let (tx, mut rx) = reports();
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        let server = serve(back, false, move |ws| {
            let (tx, counted) = (tx.clone(), counted.clone());
            async move {
                let (hook_tx, hook_count) = (tx.clone(), counted.clone());
                ws.on_close(move || {
                    hook_count.fetch_add(1, Ordering::SeqCst);
                    let _ = hook_tx.send("hook".to_owned());
                });
                let end = ws.recv().await;
                ws.wait_closed().await;
                // A hook added once it is over runs at once.
                let late = counted.clone();
                ws.on_close(move || {
                    late.fetch_add(10, Ordering::SeqCst);
                });
                tx.send(format!(
                    "{} {} {:?} {}",
                    matches!(end, Err(Error::ConnectionClosed(_))),
                    ws.close_code(),
                    ws.close_reason(),
                    ws.state() == sockeye::State::Closed,
                ))?;
                Ok(())
            }
        })
        .await;
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        ws.close(CloseCode::from(4001), "bye now").await.unwrap();
        let mut got = vec![report(&mut rx).await, report(&mut rx).await];
        got.sort();
        assert_eq!(
            got,
            ["hook", "true 4001 (private use) \"bye now\" true"],
            "{back:?}"
        );
        assert_eq!(ran.load(Ordering::SeqCst), 11, "{back:?}");
        server.stop().await;
    }
}

/// A response's status and headers, sorted, on one line.
fn described(response: &http::Response<()>) -> String {
    let mut lines: Vec<String> = response
        .headers()
        .iter()
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
        .collect();
    lines.sort();
    format!("{} {}", response.status().as_u16(), lines.join("; "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_is_the_101_the_client_got() {
    for back in BACK_ENDS {
        for hook in [false, true] {
            let (tx, mut rx) = reports();
            let server = serve(back, hook, move |ws| {
                let tx = tx.clone();
                async move {
                    tx.send(described(ws.response()))?;
                    Ok(())
                }
            })
            .await;
            let ws = sockeye::connect(&server.uri()).await.unwrap();
            let got = ws.response();
            let expected = described(got);
            assert_eq!(report(&mut rx).await, expected, "{back:?}, hook {hook}");
            assert_eq!(got.headers().contains_key("x-hook"), hook);
            assert!(expected.contains("sec-websocket-accept"), "{expected}");
            drop(ws);
            server.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_and_broadcast_reach_connections_of_both_back_ends() {
    let hub = sockeye::Hub::new();
    let kept: Arc<Mutex<Vec<Connection>>> = Arc::default();
    let mut servers = Vec::new();
    for back in BACK_ENDS {
        let (hub, kept) = (hub.clone(), kept.clone());
        servers.push(
            serve(back, false, move |ws| {
                let (hub, kept) = (hub.clone(), kept.clone());
                async move {
                    hub.subscribe(&ws, "room");
                    kept.lock().unwrap().push(ws.clone());
                    ws.send("joined").await?;
                    while ws.recv().await?.is_some() {}
                    Ok(())
                }
            })
            .await,
        );
    }
    let mut clients = Vec::new();
    for server in &servers {
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("joined")));
        clients.push(ws);
    }
    assert_eq!(hub.subscribers("room"), 2);
    let published = hub.publish("room", "to the room");
    assert_eq!((published.delivered, published.dropped), (2, 0));
    let all = kept.lock().unwrap().clone();
    assert!(sockeye::broadcast(&all, "to all").is_empty());
    for ws in &clients {
        assert_eq!(recv(ws).await.unwrap(), Some(Message::from("to the room")));
        assert_eq!(recv(ws).await.unwrap(), Some(Message::from("to all")));
    }
    // The topics of the event loops are only for their own connections.
    let on_task = all.iter().find(|c| c.subscribe("x").is_err());
    let on_loop = all.iter().find(|c| c.subscribe("x").is_ok());
    assert!(on_task.is_some() && on_loop.is_some());
    // Leaving: the event loop's connection leaves the hub when it closes (its close hook).
    let loop_client = clients.pop().unwrap();
    loop_client.close(CloseCode::NORMAL, "").await.unwrap();
    for _ in 0..100 {
        if hub.subscribers("room") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.subscribers("room"), 1);
    // A closed connection is skipped and returned by broadcast.
    let skipped = sockeye::broadcast(&all, "again");
    assert_eq!(skipped.len(), 1);
    assert_eq!(
        recv(&clients[0]).await.unwrap(),
        Some(Message::from("again"))
    );
    clients[0].close(CloseCode::NORMAL, "").await.unwrap();
    drop(all);
    kept.lock().unwrap().clear();
    for server in servers {
        server.stop().await;
    }
}

// ----- Edges found in review: each failed on the event loops before its fix -------------

/// Invalid UTF-8 in a text fragment: an error from `send_fragmented`, and the connection
/// goes on (the loop first accepted it, then failed the connection with 1011).
async fn invalid_text_fragment(back: Back) -> String {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let server = serve_quiet(back, None, move |ws| {
        let tx = tx.clone();
        async move {
            let r = ws.send_fragmented(MessageKind::Text, [&b"\xff"[..]]).await;
            tx.send(format!("fragmented ok={}", r.is_ok()))?;
            let r = ws.send("after").await;
            tx.send(format!("send ok={}", r.is_ok()))?;
            ws.wait_closed().await;
            Ok(())
        }
    })
    .await;
    let ws = sockeye::connect(&server.uri()).await.unwrap();
    let got = timeout(GUARD, ws.recv()).await.unwrap();
    let a = rx.recv().await.unwrap();
    let b = rx.recv().await.unwrap();
    let client = match got {
        Ok(m) => format!("{m:?}"),
        Err(sockeye::Error::ConnectionClosed(c)) => format!("closed {}", c.code()),
        Err(e) => format!("{e}"),
    };
    let _ = ws.close(CloseCode::NORMAL, "").await;
    server.stop().await;
    format!("{a}; {b}; client got {client}")
}

/// A peer that answers only the latest ping (RFC 6455 §5.5.3 allows it): the user's ping
/// is acknowledged by the pong to the keepalive ping that followed it.
async fn coalesced_pong(back: Back) -> String {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let server = serve_quiet(back, Some(Duration::from_millis(300)), move |ws| {
        let tx = tx.clone();
        async move {
            let pong = ws.ping_with(b"user-ping").await?;
            let r = timeout(Duration::from_secs(2), pong).await;
            tx.send(match r {
                Ok(Ok(_)) => "pong resolved".to_owned(),
                Ok(Err(e)) => format!("pong error {e}"),
                Err(_) => "pong never resolved".to_owned(),
            })?;
            Ok(())
        }
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        buf.push(byte[0]);
    }
    let reader = async {
        let mut pings = Vec::new();
        loop {
            let mut h = [0u8; 2];
            s.read_exact(&mut h).await.unwrap();
            let len = (h[1] & 0x7f) as usize;
            assert!(len < 126);
            let mut p = vec![0u8; len];
            s.read_exact(&mut p).await.unwrap();
            if h[0] & 0x0f == 0x9 {
                pings.push(p.clone());
                if pings.len() == 2 {
                    assert_eq!(pings[0], b"user-ping");
                    // Answer only the latest (the keepalive's).
                    let mask = [1u8, 2, 3, 4];
                    let mut frame = vec![0x8a, 0x80 | len as u8];
                    frame.extend_from_slice(&mask);
                    frame.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
                    s.write_all(&frame).await.unwrap();
                }
            }
        }
    };
    let result = tokio::select! {
        r = rx.recv() => r.unwrap(),
        _ = reader => unreachable!(),
    };
    server.stop().await;
    result
}

/// `on_close` hooks run before the connection reports itself closed.
async fn hooks_before_closed(back: Back) -> String {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Connection, Arc<AtomicBool>)>();
    let server = serve_quiet(back, None, move |ws| {
        let tx = tx.clone();
        async move {
            let done = Arc::new(AtomicBool::new(false));
            let flag = done.clone();
            ws.on_close(move || {
                std::thread::sleep(Duration::from_millis(300));
                flag.store(true, Ordering::SeqCst);
            });
            tx.send((ws.clone(), done))?;
            while ws.recv().await?.is_some() {}
            Ok(())
        }
    })
    .await;
    let client = sockeye::connect(&server.uri()).await.unwrap();
    let (conn, done) = rx.recv().await.unwrap();
    let closing = {
        let client = client.clone();
        tokio::spawn(async move { client.close(CloseCode::NORMAL, "").await })
    };
    let seen = loop {
        if conn.closed().is_some() {
            break done.load(Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = closing.await;
    drop(conn);
    server.stop().await;
    format!("hook had run when closed() was Some: {seen}")
}

/// A `Sink`: `poll_ready`, then a fragmented message starts, then `start_send` and flush:
/// the sink's message goes after the fragmented one (the loop first dropped it).
async fn sink_during_fragmented(back: Back) -> String {
    let server = serve_quiet(back, None, move |ws| async move {
        let mut sink = ws.clone();
        std::future::poll_fn(|cx| futures_sink::Sink::poll_ready(Pin::new(&mut sink), cx)).await?;
        let (ftx, frx) = mpsc::unbounded_channel::<&'static str>();
        ftx.send("frag-1 ")?;
        let fragments =
            futures_util::stream::unfold(
                frx,
                |mut rx| async move { rx.recv().await.map(|p| (p, rx)) },
            );
        let sending = ws.send_fragmented_stream(MessageKind::Text, fragments);
        tokio::pin!(sending);
        // One poll: the first fragment is queued, the stream then waits.
        let _ = std::future::poll_fn(|cx| std::task::Poll::Ready(sending.as_mut().poll(cx))).await;
        futures_sink::Sink::start_send(Pin::new(&mut sink), Message::from("via sink"))?;
        let flush =
            std::future::poll_fn(|cx| futures_sink::Sink::poll_flush(Pin::new(&mut sink), cx));
        let finish = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ftx.send("frag-2").unwrap();
            drop(ftx);
        };
        let (sent, flushed, ()) = tokio::join!(sending, flush, finish);
        sent?;
        flushed?;
        ws.send("last").await?;
        while ws.recv().await?.is_some() {}
        Ok(())
    })
    .await;
    let ws = sockeye::connect(&server.uri()).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        match timeout(Duration::from_secs(3), ws.recv()).await {
            Ok(Ok(Some(m))) => {
                let t = format!("{m:?}");
                let last = t.contains("last");
                got.push(t);
                if last {
                    break;
                }
            }
            other => {
                got.push(format!("{other:?}"));
                break;
            }
        }
    }
    let _ = ws.close(CloseCode::NORMAL, "").await;
    server.stop().await;
    got.join(" | ")
}

macro_rules! both {
    ($name:ident, $f:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let task = $f(Back::Task).await;
            let lp = $f(Back::Loop).await;
            println!("task: {task}\nloop: {lp}");
            assert_eq!(task, lp);
        }
    };
}

both!(
    invalid_text_fragments_fail_the_send_not_the_connection,
    invalid_text_fragment
);
both!(
    a_pong_to_a_later_ping_answers_the_earlier_ones,
    coalesced_pong
);
both!(
    close_hooks_have_run_when_the_connection_says_closed,
    hooks_before_closed
);
both!(
    a_sink_message_during_a_fragmented_one_waits_for_it,
    sink_during_fragmented
);

/// `recv` cancelled by short timeouts, alternating between two tasks: every message
/// arrives and the end is seen.
async fn stress_recv(back: Back) -> String {
    const N: usize = 20_000;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let server = serve_quiet(back, None, move |ws| {
        let tx = tx.clone();
        async move {
            let mut got = 0usize;
            let mut i = 0u64;
            let end = loop {
                i += 1;
                let wait = Duration::from_micros(50 + (i * 7919 % 300));
                let r = if i % 2 == 0 {
                    let ws2 = ws.clone();
                    tokio::spawn(async move { timeout(wait, ws2.recv()).await })
                        .await
                        .unwrap()
                } else {
                    timeout(wait, ws.recv()).await
                };
                match r {
                    Err(_) => continue,
                    Ok(Ok(Some(_))) => got += 1,
                    Ok(Ok(None)) => break "end ok".to_owned(),
                    Ok(Err(e)) => break format!("end {e}"),
                }
            };
            tx.send(format!("{got} {end}"))?;
            Ok(())
        }
    })
    .await;
    let ws = sockeye::connect(&server.uri()).await.unwrap();
    for k in 0..N {
        ws.send(format!("m{k}")).await.unwrap();
        if k % 1000 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    let r = timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("handler finished")
        .unwrap();
    server.stop().await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recv_cancelled_and_moved_between_tasks_loses_nothing() {
    for _ in 0..2 {
        let task = stress_recv(Back::Task).await;
        let lp = stress_recv(Back::Loop).await;
        println!("task: {task}\nloop: {lp}");
        assert_eq!(task, "20000 end ok");
        assert_eq!(lp, "20000 end ok");
    }
}

/// Once `close` has been called, the connection says it is closing, on both back ends (the
/// loop first said `Open` until its next flush).
async fn state_once_close_is_called(back: Back) -> String {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let server = serve_quiet(back, None, move |ws| {
        let tx = tx.clone();
        async move {
            let before = ws.state();
            let closing = ws.close(CloseCode::NORMAL, "");
            tokio::pin!(closing);
            let _ =
                std::future::poll_fn(|cx| std::task::Poll::Ready(closing.as_mut().poll(cx))).await;
            let during = ws.state();
            closing.await?;
            tx.send(format!("{before:?} {during:?} {:?}", ws.state()))?;
            Ok(())
        }
    })
    .await;
    let ws = sockeye::connect(&server.uri()).await.unwrap();
    assert_eq!(recv(&ws).await.unwrap(), None);
    let got = report(&mut rx).await;
    server.stop().await;
    got
}

both!(close_called_means_closing, state_once_close_is_called);

/// A `Stream` polled while a `recv` waits on another handle gets `ConcurrentRecv`, and goes
/// on afterwards (tokio's first ended for good).
async fn stream_after_a_concurrent_recv(back: Back) -> String {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let server = serve_quiet(back, None, move |ws| {
        let tx = tx.clone();
        async move {
            let mut stream = ws.clone();
            let waiting = {
                let ws = ws.clone();
                tokio::spawn(async move { ws.recv().await })
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            ws.send("go").await?;
            let mut seen = Vec::new();
            // The spawned recv waits: the stream is refused until it has its message.
            match timeout(GUARD, stream.next()).await? {
                Some(Err(Error::ConcurrentRecv)) => seen.push("concurrent".to_owned()),
                other => seen.push(format!("{other:?}")),
            }
            let first = waiting.await??;
            seen.push(format!("{first:?}"));
            let next = timeout(GUARD, stream.next()).await?;
            seen.push(format!("{next:?}"));
            tx.send(seen.join(" "))?;
            Ok(())
        }
    })
    .await;
    let ws = sockeye::connect(&server.uri()).await.unwrap();
    assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("go")));
    ws.send("one").await.unwrap();
    ws.send("two").await.unwrap();
    let got = report(&mut rx).await;
    let _ = ws.close(CloseCode::NORMAL, "").await;
    server.stop().await;
    got
}

both!(
    a_stream_goes_on_after_a_concurrent_recv,
    stream_after_a_concurrent_recv
);

/// Waits until `server` lists `n` connections, and gives them.
async fn listed(server: &Running, n: usize) -> Vec<Connection> {
    timeout(GUARD, async {
        loop {
            let conns = server.0.connections();
            if conns.len() == n {
                return conns;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server never listed {n} connections"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_lists_its_open_connections() {
    for back in BACK_ENDS {
        let server = serve(back, false, |ws| async move {
            while let Some(m) = ws.recv().await? {
                ws.send(m).await?;
            }
            Ok(())
        })
        .await;
        assert!(server.0.connections().is_empty(), "{back:?}");
        let a = sockeye::connect(&server.uri()).await.unwrap();
        let b = sockeye::connect(&server.uri()).await.unwrap();
        // Each listed connection is a live handle: what it sends reaches its client.
        let conns = listed(&server, 2).await;
        assert_ne!(conns[0].id(), conns[1].id(), "{back:?}");
        for c in &conns {
            assert_eq!(c.state(), sockeye::State::Open, "{back:?}");
            c.send(format!("you are {}", c.id())).await.unwrap();
        }
        let to_a = recv(&a).await.unwrap().unwrap();
        let to_b = recv(&b).await.unwrap().unwrap();
        assert_ne!(to_a, to_b, "{back:?}");
        let ids: Vec<String> = conns
            .iter()
            .map(|c| format!("you are {}", c.id()))
            .collect();
        assert!(
            ids.contains(&to_a.as_text().unwrap().to_owned()),
            "{back:?}: {to_a:?}"
        );
        assert!(
            ids.contains(&to_b.as_text().unwrap().to_owned()),
            "{back:?}: {to_b:?}"
        );
        // A connection that closed leaves the list.
        a.close(CloseCode::NORMAL, "").await.unwrap();
        let left = listed(&server, 1).await;
        assert_eq!(
            Message::from(format!("you are {}", left[0].id())),
            to_b,
            "{back:?}: the one left is b's"
        );
        drop((conns, left));
        b.close(CloseCode::NORMAL, "").await.unwrap();
        listed(&server, 0).await;
        server.stop().await;
    }
}

/// A `recv` in another task (not the handler's own future) gets a message of more fragments
/// than `max_queue` (16): reading, held at 16 waiting, resumes once they are taken (on the
/// loop it waited for a flush that nothing asked for).
async fn many_fragments_to_another_task(back: Back) -> String {
    let server = serve(back, false, |ws| async move {
        let elsewhere = ws.clone();
        let got = tokio::spawn(async move { elsewhere.recv().await }).await??;
        let len = got.map_or(0, |m| m.len());
        ws.send(format!("got {len} bytes")).await?;
        Ok(())
    })
    .await;
    let ws = sockeye::connect(&server.uri()).await.unwrap();
    let fragments = futures_util::stream::iter(0..40).then(|i| async move {
        if i == 20 {
            // The first 20 are in (and reading held at 16) before the rest comes.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        [b'x'; 10]
    });
    ws.send_fragmented_stream(MessageKind::Binary, fragments)
        .await
        .unwrap();
    let answer = timeout(GUARD, ws.recv()).await;
    server.stop().await;
    format!("{answer:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_more_fragments_than_max_queue_reaches_a_recv_in_another_task() {
    for back in BACK_ENDS {
        let got = many_fragments_to_another_task(back).await;
        assert!(got.contains("got 400 bytes"), "{back:?}: {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_every_handler_to_return() {
    for back in BACK_ENDS {
        let cleaned = Arc::new(AtomicBool::new(false));
        let flag = cleaned.clone();
        // close_timeout 1 s: the handler's cleanup outlasts it.
        let server = serve_quiet(back, None, move |ws| {
            let flag = flag.clone();
            async move {
                while ws.recv().await.is_ok_and(|m| m.is_some()) {}
                tokio::time::sleep(Duration::from_millis(1500)).await;
                flag.store(true, Ordering::SeqCst);
                Ok(())
            }
        })
        .await;
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        listed(&server, 1).await;
        server.stop().await;
        assert!(
            cleaned.load(Ordering::SeqCst),
            "{back:?}: close returned before the handler"
        );
        drop(ws);
    }
}

/// A server whose runtime is dropped stops serving (the loops' threads would otherwise
/// accept and upgrade connections whose handlers can no longer run).
#[test]
fn a_server_ends_with_the_runtime_that_started_it() {
    for back in BACK_ENDS {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr = rt.block_on(async {
            let server = serve(back, false, |ws| async move {
                while let Some(m) = ws.recv().await? {
                    ws.send(m).await?;
                }
                Ok(())
            })
            .await;
            server.addr()
        });
        drop(rt);
        let started = std::time::Instant::now();
        loop {
            if std::net::TcpStream::connect(addr).is_err() {
                break;
            }
            assert!(
                started.elapsed() < GUARD,
                "{back:?}: still accepting after its runtime was dropped"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
