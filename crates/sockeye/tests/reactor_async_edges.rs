//! Edge cases of async handlers on the event loops (`reactor::ServerBuilder::serve_async`)
//! over loopback, each a bug a review found in the first version (all failed then): a
//! handler in `wait_closed` must not be polled in a loop; a close (the handler's, or its
//! end) completes while reading is held by a full inbox; a close code that may not be sent
//! is an error, not a hang; a panicking waker does not kill the loop; a send from a
//! thread-local destructor is neither lost nor wedges the connection; a handler that never
//! returns does not hold a shutdown for ever; sends fail once the closing handshake has
//! started; a pong that answers none of our pings resolves none of them; a waiting
//! `Stream` is not forgotten when a `recv` starts; a publish after the close reaches the topic;
//! a subscribe from another thread comes before the next publish; the sink's flush does
//! not wait for the peer. Each test is bounded by timeouts and stops by itself.

use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use sockeye::proto::frame::OpCode;
use sockeye::reactor::{Server, ServerBuilder};
use sockeye::{CloseCode, Message};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

#[path = "support/raw_peer.rs"]
mod raw_peer;
use raw_peer::{masked, raw_handshake, read_frame};

const GUARD: Duration = Duration::from_secs(10);

fn uri_of(server: &Server) -> String {
    format!("ws://{}/", server.local_addr())
}

async fn shutdown(server: Server) {
    let _ = timeout(
        GUARD,
        tokio::task::spawn_blocking(move || server.shutdown()),
    )
    .await;
}

/// Where a server's handlers keep their connection (the first one), for the test to reach.
type Kept = Arc<Mutex<Option<sockeye::Connection>>>;

/// Serves on one loop with `builder`'s options; each handler keeps its connection in the
/// returned slot (the first one only), then runs `then`.
fn keeping<F, Fut>(builder: ServerBuilder, then: F) -> (Server, Kept)
where
    F: Fn(sockeye::Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), sockeye::BoxError>> + 'static,
{
    let kept = Kept::default();
    let keep = kept.clone();
    let server = builder
        .threads(1)
        .serve_async("127.0.0.1:0", move |ws: sockeye::Connection| {
            keep.lock().unwrap().get_or_insert_with(|| ws.clone());
            then(ws)
        })
        .unwrap();
    (server, kept)
}

/// Serves on one loop; each handler runs `then` with its connection, and what `then`
/// returns reaches the test through the returned receiver.
fn reporting<F, Fut>(then: F) -> (Server, UnboundedReceiver<String>)
where
    F: Fn(sockeye::Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let then = Arc::new(then);
    let server = Server::builder()
        .threads(1)
        .serve_async("127.0.0.1:0", move |ws: sockeye::Connection| {
            let (tx, then) = (tx.clone(), then.clone());
            async move {
                let _ = tx.send(then(ws).await);
                Ok(())
            }
        })
        .unwrap();
    (server, rx)
}

/// The connection a handler kept, once it has.
async fn kept_connection(kept: &Kept) -> sockeye::Connection {
    timeout(GUARD, async {
        loop {
            if let Some(conn) = kept.lock().unwrap().clone() {
                return conn;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a handler kept its connection")
}

/// A handler parked in `wait_closed()` is polled about once, not in a loop (the first
/// version woke every waiter after every write, the handler's own `wait_closed` included,
/// and the loop spun at 100 % CPU).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_in_wait_closed_is_not_polled_in_a_loop() {
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = polls.clone();
    let server = Server::builder()
        .threads(1)
        .serve_async("127.0.0.1:0", move |ws: sockeye::Connection| {
            let counter = counter.clone();
            async move {
                let waiting = ws.wait_closed();
                tokio::pin!(waiting);
                poll_fn(|cx| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    waiting.as_mut().poll(cx)
                })
                .await;
                Ok(())
            }
        })
        .unwrap();
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = polls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = polls.load(Ordering::SeqCst) - before;
    let _ = timeout(GUARD, ws.close(CloseCode::NORMAL, "")).await;
    shutdown(server).await;
    assert!(
        during < 10,
        "an idle handler in wait_closed() was polled {during} times in 500 ms (busy loop)"
    );
}

/// `close()` while `max_queue` messages wait (reading held): reading resumes, so the
/// peer's close frame is read and the closing handshake ends at once, not by
/// `close_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_completes_promptly_while_the_inbox_is_full() {
    close_while_messages_wait(2).await;
}

/// Control for the test above: the same with room in the inbox passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_close_completes_promptly_with_room_in_the_inbox() {
    close_while_messages_wait(64).await;
}

async fn close_while_messages_wait(max_queue: usize) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::builder()
        .threads(1)
        .max_queue(max_queue)
        .close_timeout(Duration::from_secs(30))
        .serve_async("127.0.0.1:0", move |ws: sockeye::Connection| {
            let tx = tx.clone();
            async move {
                // Let the client's messages fill the inbox.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let started = Instant::now();
                let done = timeout(Duration::from_secs(5), ws.close(CloseCode::NORMAL, "")).await;
                let _ = tx.send((done.is_ok(), started.elapsed()));
                Ok(())
            }
        })
        .unwrap();
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    for i in 0..20 {
        ws.send(format!("message {i}")).await.unwrap();
    }
    let (done, took) = timeout(GUARD, rx.recv()).await.unwrap().unwrap();
    drop(ws);
    shutdown(server).await;
    assert!(
        done,
        "close() did not complete within 5 s (took {took:?}): reading stays held"
    );
}

/// The handler returns while the peer is still sending: the inbox fills (nobody will ever
/// `recv` again), yet reading goes on and the peer's answer to the 1000 is read at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handlers_end_closes_promptly_while_the_peer_is_sending() {
    end_while_the_peer_sends(2).await;
}

/// Control for the test above: the same with room in the inbox passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_the_handlers_end_closes_promptly_with_room_in_the_inbox() {
    end_while_the_peer_sends(64).await;
}

async fn end_while_the_peer_sends(max_queue: usize) {
    let builder = Server::builder()
        .max_queue(max_queue)
        .close_timeout(Duration::from_secs(30));
    let (server, kept) = keeping(builder, |ws| async move {
        ws.recv().await?;
        // Let the rest arrive, then return (close 1000).
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    });
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    for i in 0..20 {
        ws.send(format!("message {i}")).await.unwrap();
    }
    let conn = kept_connection(&kept).await;
    let ended = timeout(Duration::from_secs(5), conn.wait_closed()).await;
    drop(ws);
    shutdown(server).await;
    assert!(
        ended.is_ok(),
        "the server side was not closed 5 s after the handler returned"
    );
    assert_eq!(conn.close_code(), CloseCode::NORMAL);
}

/// A close code that may not be sent (1006) is an error at once, as with the tokio
/// server, instead of a close that never happens (and sends that fail on an open
/// connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_a_code_that_may_not_be_sent_does_not_hang() {
    let (server, mut rx) = reporting(|ws| async move {
        let done = timeout(Duration::from_secs(3), ws.close(CloseCode::ABNORMAL, "")).await;
        format!("{done:?}")
    });
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    let got = timeout(GUARD, rx.recv()).await.unwrap().unwrap();
    drop(ws);
    shutdown(server).await;
    assert!(!got.starts_with("Err(Elapsed"), "close(1006) hung: {got}");
}

struct Panicky;

impl Wake for Panicky {
    fn wake(self: Arc<Self>) {
        panic!("a waker that panics");
    }
}

/// A foreign waker that panics when the loop wakes it (after a flush) does not take the
/// loop thread down with every connection it owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_waker_does_not_kill_the_loop() {
    let (server, kept) = keeping(Server::builder(), |ws| async move {
        while let Some(m) = ws.recv().await? {
            ws.send(m).await?;
        }
        Ok(())
    });
    let first = sockeye::connect(&uri_of(&server)).await.unwrap();
    let other = sockeye::connect(&uri_of(&server)).await.unwrap();
    other.send("before").await.unwrap();
    assert_eq!(
        timeout(GUARD, other.recv()).await.unwrap().unwrap(),
        Some(Message::from("before"))
    );
    let conn = kept_connection(&kept).await;
    // Park a wait_closed with the panicking waker, then make the loop flush.
    let waker = Waker::from(Arc::new(Panicky));
    let mut cx = Context::from_waker(&waker);
    let mut waiting = Box::pin(conn.wait_closed());
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    conn.send("flush").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The other connection is on the same loop: it should still be served.
    let _ = other.send("after").await;
    let got = timeout(Duration::from_secs(3), other.recv()).await;
    drop((first, waiting));
    shutdown(server).await;
    assert!(
        matches!(got, Ok(Ok(Some(ref m))) if *m == Message::from("after")),
        "the loop stopped serving after a waker panicked: {got:?}"
    );
}

struct SendOnDrop(std::cell::RefCell<Option<sockeye::Connection>>);

impl Drop for SendOnDrop {
    fn drop(&mut self) {
        if let Some(conn) = self.0.borrow_mut().take() {
            let sent = futures_util::FutureExt::now_or_never(conn.send("from a tls destructor"));
            assert!(matches!(sent, Some(Ok(()))));
        }
    }
}

thread_local! {
    static SENDER: SendOnDrop = const { SendOnDrop(std::cell::RefCell::new(None)) };
}

/// A send from a thread-local destructor (the thread's locals, sockeye's queue among them,
/// being torn down) goes through the loop's mailbox: it arrives, and later sends too (the
/// first version lost it and left the connection's flush flag set for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_from_a_thread_local_destructor_is_not_lost_and_does_not_wedge_the_connection() {
    let (server, kept) = keeping(Server::builder(), |ws| async move {
        while ws.recv().await?.is_some() {}
        Ok(())
    });
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    let conn = kept_connection(&kept).await;
    let in_thread = conn.clone();
    std::thread::spawn(move || {
        // Registration order of the TLS destructors: SENDER, then (through a send)
        // sockeye's CURRENT; they run in reverse.
        SENDER.with(|h| *h.0.borrow_mut() = Some(in_thread.clone()));
        let sent = futures_util::FutureExt::now_or_never(in_thread.send("from the thread"));
        assert!(matches!(sent, Some(Ok(()))));
        std::thread::sleep(Duration::from_millis(200)); // that flush is done
    })
    .join()
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        match timeout(Duration::from_secs(3), ws.recv()).await {
            Ok(Ok(Some(m))) => got.push(m.as_text().unwrap_or("?").to_owned()),
            other => got.push(format!("{other:?}")),
        }
    }
    // A later send from a tokio task: wedged too if the flush flag is stuck.
    conn.send("later").await.unwrap();
    let later = timeout(Duration::from_secs(3), ws.recv()).await;
    drop(ws);
    shutdown(server).await;
    let later_ok = matches!(later, Ok(Ok(Some(ref m))) if *m == Message::from("later"));
    assert!(
        got[0] == "from the thread" && got[1] == "from a tls destructor" && later_ok,
        "got {got:?}, then {later:?}"
    );
}

/// Flags its drop (the handler's future dropped).
struct DropFlag(Arc<AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A handler that waits for something that never comes after its connection closed: the
/// shutdown drops it `close_timeout` after the last connection closed, instead of waiting
/// for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_never_returns_does_not_hold_the_shutdown() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let flag = dropped.clone();
    let server = Server::builder()
        .threads(1)
        .close_timeout(Duration::from_millis(300))
        .serve_async("127.0.0.1:0", move |ws: sockeye::Connection| {
            let flag = DropFlag(flag.clone());
            async move {
                let _flag = flag;
                while ws.recv().await?.is_some() {}
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .unwrap();
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    let stopping = tokio::task::spawn_blocking(move || server.shutdown());
    assert!(matches!(timeout(GUARD, ws.recv()).await.unwrap(), Ok(None)));
    timeout(GUARD, stopping)
        .await
        .expect("the shutdown waited for a handler that never returns")
        .unwrap();
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

/// Once the closing handshake has started (here: a shutdown, with a peer that never
/// answers its close frame), the connection says so and sends fail, instead of being
/// accepted and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_fail_once_the_closing_handshake_has_started() {
    let builder = Server::builder().close_timeout(Duration::from_secs(2));
    let (server, kept) = keeping(builder, |ws| async move {
        ws.wait_closed().await;
        Ok(())
    });
    let raw = raw_handshake(server.local_addr());
    let conn = kept_connection(&kept).await;
    assert_eq!(conn.state(), sockeye::State::Open);
    conn.send("while open").await.unwrap();
    let stopping = tokio::task::spawn_blocking(move || server.shutdown());
    timeout(GUARD, async {
        while conn.state() == sockeye::State::Open {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(conn.state(), sockeye::State::Closing);
    assert!(matches!(
        conn.send("too late").await,
        Err(sockeye::Error::ConnectionClosed(_))
    ));
    // The peer never answers: the close ends by close_timeout, and so does the shutdown.
    timeout(GUARD, stopping).await.unwrap().unwrap();
    assert_eq!(conn.state(), sockeye::State::Closed);
    drop(raw);
}

/// A pong whose payload is none of this connection's pings (here, a large 8-byte value, as
/// the pings' own payloads are) resolves no `ping()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pong_that_answers_none_of_our_pings_resolves_none() {
    use std::io::Write;
    let (server, mut rx) = reporting(|ws| async move {
        let pong = match ws.ping().await {
            Ok(pong) => pong,
            Err(e) => return format!("ping failed: {e}"),
        };
        match timeout(Duration::from_millis(500), pong).await {
            Err(_) => "still waiting after 500 ms".to_owned(),
            Ok(pinged) => format!("{pinged:?}"),
        }
    });
    let (mut raw, mut buf) = raw_handshake(server.local_addr());
    let ping = read_frame(&mut raw, &mut buf).expect("the server's ping");
    assert_eq!((ping.opcode, ping.payload.len()), (OpCode::Ping, 8));
    // An unsolicited pong with a payload above every token.
    raw.write_all(&masked(OpCode::Pong, &u64::MAX.to_be_bytes()))
        .unwrap();
    let got = timeout(GUARD, rx.recv()).await.unwrap().unwrap();
    assert_eq!(
        got, "still waiting after 500 ms",
        "a foreign pong answered the ping"
    );
    drop(raw);
    shutdown(server).await;
}

/// A `Stream` waiting while a `recv` starts on another handle is woken by what comes
/// next, and then gets either the next message or `ConcurrentRecv` (if the `recv` still
/// waits when it looks), never nothing: the `recv` took its place in the first version,
/// and the stream was never woken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_stream_is_not_forgotten_when_a_recv_starts() {
    use futures_util::StreamExt;
    let (server, mut rx) = reporting(|ws| async move {
        let mut stream = ws.clone();
        let streamed = tokio::spawn(async move { stream.next().await });
        tokio::time::sleep(Duration::from_millis(100)).await; // the stream waits first
                                                              // Then a recv waits too, and only then is the client told to send.
        let announce = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ws.send("ready").await
        };
        let (received, announced) = tokio::join!(ws.recv(), announce);
        if announced.is_err() {
            return "could not announce".to_owned();
        }
        let received = match received {
            Ok(Some(m)) => m.as_text().unwrap_or("?").to_owned(),
            other => format!("{other:?}"),
        };
        let streamed = match timeout(Duration::from_secs(3), streamed).await {
            Ok(Ok(Some(Ok(m)))) => m.as_text().unwrap_or("?").to_owned(),
            Ok(Ok(Some(Err(sockeye::Error::ConcurrentRecv)))) => "concurrent".to_owned(),
            other => format!("{other:?}"),
        };
        format!("{received} {streamed}")
    });
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    let ready = timeout(GUARD, ws.recv()).await.unwrap().unwrap();
    assert_eq!(ready, Some(Message::from("ready")));
    ws.send("a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = ws.send("b").await; // the handler may be gone already
    let got = timeout(GUARD, rx.recv()).await.unwrap().unwrap();
    assert!(got == "a b" || got == "a concurrent", "{got}");
    drop(ws);
    shutdown(server).await;
}

/// A publish after the connection has closed ("Bob left") reaches the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_after_the_close_reaches_the_topic() {
    let server = Server::builder()
        .threads(2)
        .serve_async("127.0.0.1:0", |ws: sockeye::Connection| async move {
            ws.subscribe("room")?;
            ws.send("joined").await?;
            while ws.recv().await?.is_some() {}
            ws.publish("room", format!("{} left", ws.id()))?;
            Ok(())
        })
        .unwrap();
    let stays = sockeye::connect(&uri_of(&server)).await.unwrap();
    let leaves = sockeye::connect(&uri_of(&server)).await.unwrap();
    for ws in [&stays, &leaves] {
        let joined = timeout(GUARD, ws.recv()).await.unwrap().unwrap();
        assert_eq!(joined, Some(Message::from("joined")));
    }
    leaves.close(CloseCode::NORMAL, "").await.unwrap();
    let got = timeout(GUARD, stays.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(got.as_text().unwrap().ends_with(" left"), "{got:?}");
    stays.close(CloseCode::NORMAL, "").await.unwrap();
    shutdown(server).await;
}

/// What another thread queues on a connection keeps its order with what it then publishes
/// or broadcasts through the same loop: a subscribe, then a publish to that topic, reaches
/// the connection (the first version ran the mailbox's publishes before its flushes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_from_another_thread_comes_before_the_next_publish() {
    let (server, kept) = keeping(Server::builder(), |ws| async move {
        ws.wait_closed().await;
        Ok(())
    });
    let ws = sockeye::connect(&uri_of(&server)).await.unwrap();
    let conn = kept_connection(&kept).await;
    for round in 0..20 {
        let topic = format!("topic {round}");
        conn.subscribe(&topic).unwrap();
        server.publish(&topic, topic.as_str());
        let got = timeout(GUARD, ws.recv()).await.unwrap().unwrap();
        assert_eq!(got, Some(Message::from(topic.as_str())));
    }
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    shutdown(server).await;
}

/// The sink's flush does not wait for the peer to read: a message larger than
/// `write_limit` (and than the sockets' buffers) sent through `SinkExt::send` to a peer that
/// reads nothing completes at once (as with the tokio `Connection`'s sink); the next one
/// waits for room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sinks_flush_does_not_wait_for_the_peer() {
    use futures_util::SinkExt;
    let builder = Server::builder()
        .write_limit(16 * 1024)
        .close_timeout(Duration::from_millis(300))
        .compression(false);
    let (server, kept) = keeping(builder, |ws| async move {
        ws.wait_closed().await;
        Ok(())
    });
    let (raw, _) = raw_handshake(server.local_addr()); // never reads
    let mut sink = kept_connection(&kept).await;
    let big = Message::from(vec![7u8; 24 << 20]);
    timeout(Duration::from_secs(3), SinkExt::send(&mut sink, big))
        .await
        .expect("the sink's flush waited for the peer to read")
        .unwrap();
    let next = timeout(
        Duration::from_millis(300),
        SinkExt::send(&mut sink, Message::from("next")),
    )
    .await;
    assert!(next.is_err(), "the next send did not wait for room");
    drop(raw);
    shutdown(server).await;
}

/// A handler that wakes itself at once, for ever (a busy `yield` loop), does not hold up
/// the other connections of its loop: the loop polls woken handlers a bounded number of
/// rounds per turn (`WORK_ROUNDS`), then serves the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_always_wakes_itself_does_not_starve_its_loop() {
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = polls.clone();
    let server = Server::builder()
        .threads(1)
        .close_timeout(Duration::from_millis(300))
        .serve_async("127.0.0.1:0", move |ws: sockeye::Connection| {
            let counter = counter.clone();
            async move {
                if ws.request().uri().path() == "/spin" {
                    poll_fn(|cx| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        cx.waker().wake_by_ref();
                        std::task::Poll::<()>::Pending
                    })
                    .await;
                }
                while let Some(m) = ws.recv().await? {
                    ws.send(m).await?;
                }
                Ok(())
            }
        })
        .unwrap();
    let base = format!("ws://{}", server.local_addr());
    let spinner = sockeye::connect(&format!("{base}/spin")).await.unwrap();
    let ws = sockeye::connect(&format!("{base}/echo")).await.unwrap();
    for i in 0..20 {
        ws.send(format!("echo {i}")).await.unwrap();
        let got = timeout(GUARD, ws.recv()).await.expect("starved").unwrap();
        assert_eq!(got, Some(Message::from(format!("echo {i}"))));
    }
    assert!(
        polls.load(Ordering::Relaxed) > 100,
        "the spinner was not polled"
    );
    drop((spinner, ws));
    // The spinner's handler never returns: the shutdown drops it after close_timeout.
    shutdown(server).await;
}
