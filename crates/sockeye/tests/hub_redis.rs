//! The Redis hub against a real `redis-server`, with real sockeye servers and clients over
//! loopback. Each hub stands for a process: it has its own sockeye server.
//!
//! Each test starts its own `redis-server` on a free port (killed by PID when the test ends,
//! however it ends). Without `redis-server` on PATH the tests fail when `CI` is set and are
//! skipped, with a notice, otherwise.
#![cfg(feature = "redis")]

use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sockeye::hub::RedisBuilder;
use sockeye::{ClientConnection, CloseCode, Connection, Hub, Message, Server};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

/// Bound on any single wait; tests fail rather than hang.
const STEP: Duration = Duration::from_secs(20);

// ----- redis-server ------------------------------------------------------------------------

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::Redis;

/// A new `redis-server` on a free port, or `None` (test skipped) when it is missing outside CI.
async fn start_redis() -> Option<Redis> {
    tokio::task::spawn_blocking(Redis::start).await.unwrap()
}

/// A `redis-server` on `port` (again).
async fn restart_redis(port: u16) -> Redis {
    tokio::task::spawn_blocking(move || Redis::start_on(port))
        .await
        .unwrap()
        .expect("start redis-server")
}

// ----- sockeye side ------------------------------------------------------------------------

#[path = "support/relay.rs"]
mod relay;
use relay::relay;

/// One "process": a Redis hub and a sockeye server whose handler subscribes each connection
/// to its path and publishes what it sends to the others (`publish_except`).
struct Node {
    hub: Hub,
    server: Server,
    base: String,
    opened: mpsc::UnboundedReceiver<Connection>,
}

impl Node {
    async fn start(redis: &Redis) -> Node {
        let hub = timeout(STEP, Hub::redis(&redis.url()))
            .await
            .unwrap()
            .unwrap();
        let (server, base, opened) = relay(hub.clone()).await;
        Node {
            hub,
            server,
            base,
            opened,
        }
    }

    /// A client subscribed to `topic` on this node, and its server-side connection.
    async fn connect(&mut self, topic: &str) -> (ClientConnection, Connection) {
        let ws = sockeye::connect(&format!("{}{topic}", self.base))
            .await
            .unwrap();
        let on_server = timeout(STEP, self.opened.recv()).await.unwrap().unwrap();
        (ws, on_server)
    }

    /// Like `connect`, once the hub's Redis subscription for the topic is in place.
    async fn join(&mut self, topic: &str) -> (ClientConnection, Connection) {
        let joined = self.connect(topic).await;
        timeout(STEP, self.hub.synced()).await.unwrap();
        joined
    }
}

/// A Redis server and two nodes on it, or `None` when the test is skipped.
async fn two_nodes() -> Option<(Redis, Node, Node)> {
    let redis = start_redis().await?;
    let a = Node::start(&redis).await;
    let b = Node::start(&redis).await;
    Some((redis, a, b))
}

async fn next(ws: &ClientConnection) -> Message {
    timeout(STEP, ws.recv())
        .await
        .expect("no message in time")
        .unwrap()
        .expect("connection closed")
}

/// Receives until `expected` comes, skipping other messages; fails after `STEP`.
async fn skip_until(ws: &ClientConnection, expected: &str) {
    timeout(STEP, async {
        while next(ws).await != Message::from(expected) {}
    })
    .await
    .unwrap_or_else(|_| panic!("{expected:?} never came"));
}

/// Waits until `$check` (which may `.await`) holds, polling; fails after `STEP`.
macro_rules! eventually {
    ($what:literal, $check:expr) => {{
        let deadline = Instant::now() + STEP;
        while !$check {
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {}",
                $what
            );
            sleep(Duration::from_millis(20)).await;
        }
    }};
}

/// Log lines of `sockeye::hub`, captured once for the whole test binary.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

// ----- tests -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_relay_text_and_binary_both_ways_without_echo() {
    let Some((redis, mut a, mut b)) = two_nodes().await else {
        return;
    };
    let (a1, _) = a.join("/room").await;
    let (a2, _) = a.join("/room").await;
    let (b1, _) = b.join("/room").await;

    // Text from a1: its neighbour on the same hub and the remote subscriber get it once.
    a1.send("héllo from a").await.unwrap();
    assert_eq!(next(&a2).await, Message::from("héllo from a"));
    assert_eq!(next(&b1).await, Message::from("héllo from a"));

    // Binary from b1 (0xff is not UTF-8: it must stay binary).
    let bytes = vec![0u8, 1, 0xff, 0xfe];
    b1.send(bytes.clone()).await.unwrap();
    assert_eq!(next(&a1).await, Message::from(bytes.clone()));
    assert_eq!(next(&a2).await, Message::from(bytes));

    // A payload not from a sockeye hub is ignored, and what follows still arrives.
    let reply = redis
        .command(&[b"PUBLISH", b"sockeye:/room", b"\xffjunk"])
        .unwrap();
    assert_eq!(reply, ":2", "both hubs subscribe to the channel");
    let published = b.hub.publish("/room", "marker");
    assert!(published.relayed);
    assert_eq!(published.delivered, 1, "b1, the only local subscriber");

    // Nothing else reached anyone in between: a1 got no echo of its own message, b1 none of
    // its binary one, nobody the junk, nobody a second copy.
    for ws in [&a1, &a2, &b1] {
        assert_eq!(next(ws).await, Message::from("marker"));
    }

    // Topics are separate.
    let (a3, _) = a.join("/other").await;
    b.hub.publish("/other", vec![9u8]);
    assert_eq!(next(&a3).await, Message::from(vec![9u8]));
    b.hub.publish("/room", "last");
    for ws in [&a1, &a2, &b1] {
        assert_eq!(next(ws).await, Message::from("last"));
    }

    a.server.close().await;
    b.server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_publisher_order_is_kept_with_no_duplicates() {
    const N: u32 = 1000;
    let Some((_redis, mut a, mut b)) = two_nodes().await else {
        return;
    };
    let (sub_a, _) = a.join("/seq").await;
    let (sub_b, _) = b.join("/seq").await;
    let (author, _) = a.join("/seq").await;

    // Two publishers at once: a client of hub a (text, through the relay) and hub b itself
    // (binary).
    let writer = tokio::spawn(async move {
        for i in 0..N {
            author.send(format!("a{i}")).await.unwrap();
        }
        author
    });
    for i in 0..N {
        let published = b.hub.publish("/seq", i.to_be_bytes().to_vec());
        assert!(published.relayed, "message {i} not relayed");
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let author = timeout(STEP, writer).await.unwrap().unwrap();

    for (name, ws) in [("a", &sub_a), ("b", &sub_b)] {
        let (mut next_text, mut next_binary) = (0u32, 0u32);
        while next_text < N || next_binary < N {
            match next(ws).await {
                Message::Text(t) => {
                    assert_eq!(t.as_str(), format!("a{next_text}"), "text on {name}");
                    next_text += 1;
                }
                Message::Binary(b) => {
                    assert_eq!(&b[..], next_binary.to_be_bytes(), "binary on {name}");
                    next_binary += 1;
                }
            }
        }
    }
    // After exactly N + N, the end markers come with nothing in between: no duplicates.
    a.hub.publish("/seq", "end a");
    b.hub.publish("/seq", "end b");
    for ws in [&sub_a, &sub_b] {
        let mut ends = [next(ws).await, next(ws).await];
        ends.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
        assert_eq!(ends, [Message::from("end a"), Message::from("end b")]);
    }
    drop(author);
    a.server.close().await;
    b.server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_subscription_per_topic_per_hub_reference_counted() {
    let Some((redis, mut a, mut b)) = two_nodes().await else {
        return;
    };
    let mut a_clients = Vec::new();
    for _ in 0..3 {
        a_clients.push(a.join("/t").await);
    }
    let (b1, b1_server) = b.join("/t").await;
    let (_b2, b2_server) = b.join("/t").await;
    assert_eq!(redis.numsub("sockeye:/t"), 2, "one per hub");

    // A second topic, subscribed to directly on the hub.
    b.hub.subscribe(&b1_server, "/u");
    b.hub.subscribe(&b2_server, "/u");
    timeout(STEP, b.hub.synced()).await.unwrap();
    assert_eq!(redis.numsub("sockeye:/u"), 1);
    assert!(b.hub.unsubscribe(&b1_server, "/u"));
    timeout(STEP, b.hub.synced()).await.unwrap();
    assert_eq!(redis.numsub("sockeye:/u"), 1, "b2 still there");
    assert!(b.hub.unsubscribe(&b2_server, "/u"));
    timeout(STEP, b.hub.synced()).await.unwrap();
    assert_eq!(redis.numsub("sockeye:/u"), 0, "last one left");

    // Closing connections: the hub unsubscribes when the last local one is gone.
    let (last, last_server) = a_clients.pop().unwrap();
    for (ws, on_server) in a_clients.drain(..) {
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        timeout(STEP, on_server.wait_closed()).await.unwrap();
    }
    assert_eq!(a.hub.subscribers("/t"), 1);
    timeout(STEP, a.hub.synced()).await.unwrap();
    assert_eq!(redis.numsub("sockeye:/t"), 2);
    last.close(CloseCode::NORMAL, "").await.unwrap();
    timeout(STEP, last_server.wait_closed()).await.unwrap();
    assert_eq!(a.hub.subscribers("/t"), 0);
    timeout(STEP, a.hub.synced()).await.unwrap();
    assert_eq!(redis.numsub("sockeye:/t"), 1, "only hub b now");

    // Still delivered to b after a's churn; then dropping hub b ends its Redis link.
    a.hub.publish("/t", "still here");
    assert_eq!(next(&b1).await, Message::from("still here"));
    b.server.close().await;
    drop(b);
    eventually!(
        "the dropped hub left Redis",
        redis.numsub("sockeye:/t") == 0
    );
    a.server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_test_delivery_resumes() {
    capture_logs();
    let Some((mut redis, mut a, mut b)) = two_nodes().await else {
        return;
    };
    let url = redis.url();
    let (on_a, _) = a.join("/r").await;
    let (on_b, _) = b.join("/r").await;
    on_b.send("before").await.unwrap();
    assert_eq!(next(&on_a).await, Message::from("before"));

    // Redis goes away: publishes stop being relayed but local subscribers still get them.
    redis.kill();
    eventually!(
        "hub b noticed Redis is gone",
        !b.hub.publish("/r", "lost").relayed
    );
    let (local, _) = b.connect("/r").await;
    b.hub.publish("/r", "local only");
    assert_eq!(next(&local).await, Message::from("local only"));

    // Redis comes back on the same port: both hubs resubscribe and delivery resumes.
    let redis = restart_redis(redis.port).await;
    timeout(STEP, a.hub.synced())
        .await
        .expect("hub a resubscribed");
    timeout(STEP, b.hub.synced())
        .await
        .expect("hub b resubscribed");
    assert_eq!(redis.numsub("sockeye:/r"), 2);
    on_b.send("after").await.unwrap();
    skip_until(&on_a, "after").await;
    // (on_b got the "lost" messages, published on its hub while Redis was down.)
    on_a.send("and back").await.unwrap();
    skip_until(&on_b, "and back").await;

    // The outage and the reconnection were logged.
    let logs = logs();
    let lost = format!("lost the connection to Redis at {url}");
    let back = format!("reconnected to Redis at {url}");
    assert!(logs.contains(&lost), "no {lost:?} in logs:\n{logs}");
    assert!(logs.contains(&back), "no {back:?} in logs:\n{logs}");
    a.server.close().await;
    b.server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_publish_queue_is_not_relayed_but_delivered_locally() {
    let Some(redis) = start_redis().await else {
        return;
    };
    let hub = RedisBuilder::new(&redis.url())
        .prefix("other:")
        .publish_queue(16, 100)
        .connect()
        .await
        .unwrap();
    let published = hub.publish("/q", vec![0u8; 200]);
    assert!(!published.relayed, "200 bytes fit a 100-byte queue?");
    assert!(hub.publish("/q", "small").relayed);
    // The prefix is the one set: a hub with the default prefix does not see it.
    let mut a = Node::start(&redis).await;
    let (ws, on_server) = a.join("/q").await;
    hub.subscribe(&on_server, "/q");
    timeout(STEP, hub.synced()).await.unwrap();
    assert_eq!(redis.numsub("other:/q"), 1);
    assert_eq!(redis.numsub("sockeye:/q"), 1);
    let published = hub.publish("/q", vec![1u8; 200]);
    assert_eq!((published.delivered, published.relayed), (1, false));
    assert_eq!(next(&ws).await, Message::from(vec![1u8; 200]));
    a.hub.publish("/q", "via the default prefix");
    assert_eq!(next(&ws).await, Message::from("via the default prefix"));
    a.server.close().await;
}

#[tokio::test]
async fn unreachable_redis_at_start_is_a_clear_error() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let error = timeout(STEP, Hub::redis(&url))
        .await
        .expect("Hub::redis did not give up in time")
        .expect_err("connected to nothing?");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot connect to Redis at {url}: ")),
        "{message}"
    );
    assert_eq!(error.url(), url);

    let error = Hub::redis("http://127.0.0.1/").await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("invalid Redis URL http://127.0.0.1/"),
        "{error}"
    );
    let error = Hub::redis("redis://:secret@127.0.0.1:1/")
        .await
        .unwrap_err();
    assert!(!error.to_string().contains("secret"), "{error}");
}
