//! The Redis link of a [`Hub`] (feature `redis`): topics shared among processes through
//! Redis PUBLISH/SUBSCRIBE. The choices are documented on [`Hub::redis`].

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::fmt;
use std::future::poll_fn;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep, timeout, MissedTickBehavior};

use super::{Hub, Inner};
use crate::proto::{Message, PreparedMessage, Utf8Bytes};

/// Log target of the hub.
const TARGET: &str = "sockeye::hub";
/// First wait before reconnecting; it doubles at each failed attempt...
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// ...up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bound on opening a connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a Redis reply; a connection that does not answer in time is treated as lost.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A PING on the subscription connection this often finds a silently dead connection.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Messages sent to Redis in one pipeline, at most.
const BATCH: usize = 256;
/// Default bound of the queue of messages waiting to be sent to Redis...
const DEFAULT_QUEUE: usize = 4096;
/// ...and of the bytes they hold.
const DEFAULT_QUEUE_BYTES: usize = 16 << 20;
/// Default prefix of the Redis channel names.
const DEFAULT_PREFIX: &str = "sockeye:";
/// Payload header: the WebSocket opcode (1 text, 2 binary), then the id of the publishing
/// hub (8 bytes, big-endian).
const HEADER: usize = 9;
const TEXT: u8 = 1;
const BINARY: u8 = 2;

impl Hub {
    /// A hub whose topics are shared by every process connected to the Redis at `url`
    /// (`redis://[[user]:password@]host[:port][/db]`), with the channel prefix `sockeye:`.
    /// [`RedisBuilder`] sets the prefix and the size of the publish queue.
    ///
    /// Fails, with an error naming the URL, when the URL is invalid or Redis cannot be
    /// reached within 2 s. Must be awaited in a tokio runtime: the hub's link to Redis runs
    /// in a task of it, which ends when the last clone of the hub is dropped.
    ///
    /// # How it works
    ///
    /// - **Channels**: topic `T` is the Redis channel `sockeye:T`. The payload is one byte
    ///   for the kind (the WebSocket opcode: 1 text, 2 binary), the 8-byte id of the
    ///   publishing hub (random, one per `Hub::redis`), then the message. Payloads without
    ///   that header, or text that is not UTF-8, are ignored (logged at DEBUG).
    /// - **One subscription per topic per hub**: the hub holds one subscription connection
    ///   and one publishing connection. The first subscriber of a topic in this process makes
    ///   it SUBSCRIBE to the topic's channel; the last one leaving (unsubscribe or close)
    ///   makes it UNSUBSCRIBE. This runs in the background; [`Hub::synced`] waits for it.
    /// - **Local delivery**: [`Hub::publish`] delivers to this process's subscribers at
    ///   once, as an in-memory hub does, and queues the message for Redis. Messages coming
    ///   back from Redis with this hub's own id are skipped. So a message reaches each
    ///   connection once, [`Hub::publish_except`] skips its sender with no id on the wire,
    ///   and local delivery does not depend on Redis.
    /// - **Order**: one task sends the queue to Redis in order, on one connection, and
    ///   Redis passes one connection's messages to subscribers in order: messages published
    ///   through one hub to one topic reach every subscriber, local or remote, in order.
    /// - **What `publish` returns**: [`Published`](super::Published) counts this process's
    ///   subscribers; its `relayed` says whether the message was queued for Redis. A publish
    ///   never waits for Redis, so other processes' subscribers are not counted.
    /// - **Redis down**: the link logs a WARN (target `sockeye::hub`) and reconnects with
    ///   exponential backoff, 100 ms doubling to 5 s, logging each attempt; once back it
    ///   SUBSCRIBEs again to every topic that has subscribers here. Meanwhile publishes still
    ///   reach this process's subscribers but are not relayed (`relayed: false`), and the
    ///   messages queued when the connection broke are lost: Redis pub/sub delivers at most
    ///   once. A full publish queue (4096 messages or 16 MiB by default) also gives `relayed: false`.
    ///   Nothing blocks or panics.
    pub async fn redis(url: &str) -> Result<Hub, RedisError> {
        RedisBuilder::new(url).connect().await
    }
}

/// Options of a Redis hub (see [`Hub::redis`]).
#[derive(Debug, Clone)]
pub struct RedisBuilder {
    url: String,
    prefix: String,
    queue: usize,
    queue_bytes: usize,
}

impl RedisBuilder {
    /// Options for the Redis at `url`, with the defaults of [`Hub::redis`].
    pub fn new(url: &str) -> RedisBuilder {
        RedisBuilder {
            url: url.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            queue: DEFAULT_QUEUE,
            queue_bytes: DEFAULT_QUEUE_BYTES,
        }
    }

    /// The prefix of the Redis channel names (default `sockeye:`): topic `T` is channel
    /// `prefix + T`. Hubs share topics only with hubs that use the same prefix.
    pub fn prefix(mut self, prefix: &str) -> RedisBuilder {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// How many messages (default 4096, at least 1) and how many bytes of payload (default
    /// 16 MiB) may wait to be sent to Redis; a publish that finds the queue full is not
    /// relayed. This bounds the memory a slow or stalled Redis can pin.
    pub fn publish_queue(mut self, messages: usize, bytes: usize) -> RedisBuilder {
        self.queue = messages.max(1);
        self.queue_bytes = bytes;
        self
    }

    /// Connects to Redis and starts the hub's link: see [`Hub::redis`].
    pub async fn connect(self) -> Result<Hub, RedisError> {
        let url = redact(&self.url);
        let error = |kind, source| RedisError {
            url: url.clone(),
            kind,
            source,
        };
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| error(ErrorKind::InvalidUrl, Some(e)))?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| error(ErrorKind::NoRuntime, None))?;
        let conns = open(&client)
            .await
            .map_err(|e| error(ErrorKind::Unreachable, Some(e)))?;
        let (queue, queue_rx) = mpsc::channel(self.queue);
        let shared = Arc::new(Shared {
            node: random_id(),
            prefix: self.prefix,
            url,
            up: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            queue_bytes: self.queue_bytes,
            requested: AtomicU64::new(0),
            applied: watch::Sender::new(Some(0)),
            wake: Notify::new(),
        });
        let inner = Arc::new(Inner {
            topics: Mutex::default(),
            redis: Some(Backend {
                shared: shared.clone(),
                queue,
            }),
        });
        tracing::debug!(target: TARGET, "connected to Redis at {}", shared.url);
        let link = Link {
            shared,
            hub: Arc::downgrade(&inner),
            client,
            queue: queue_rx,
        };
        runtime.spawn(link.run(conns));
        Ok(Hub { inner })
    }
}

/// [`Hub::redis`] could not start.
#[derive(Debug, Clone)]
pub struct RedisError {
    url: String,
    kind: ErrorKind,
    source: Option<redis::RedisError>,
}

#[derive(Debug, Clone, Copy)]
enum ErrorKind {
    InvalidUrl,
    NoRuntime,
    Unreachable,
}

impl RedisError {
    /// The Redis URL, its password masked.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::InvalidUrl => write!(f, "invalid Redis URL {}", self.url)?,
            ErrorKind::NoRuntime => write!(
                f,
                "cannot start a hub on Redis at {}: no tokio runtime",
                self.url
            )?,
            ErrorKind::Unreachable => write!(f, "cannot connect to Redis at {}", self.url)?,
        }
        match &self.source {
            Some(e) => write!(f, ": {e}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for RedisError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// The hub's end of the link: what `publish`, `subscribe` and `synced` use.
pub(super) struct Backend {
    shared: Arc<Shared>,
    /// To the link task; dropping it (with the hub) stops the task.
    queue: mpsc::Sender<Outgoing>,
}

/// State shared by the hub and its link task.
struct Shared {
    /// This hub's id in the payloads it publishes.
    node: u64,
    prefix: String,
    /// The Redis URL, its password masked, for logs.
    url: String,
    /// Whether the link is connected: publishes are queued only then.
    up: AtomicBool,
    /// Bytes of payload in the queue, and their bound.
    queued: AtomicUsize,
    queue_bytes: usize,
    /// Bumped at each change of the set of topics that have subscribers.
    requested: AtomicU64,
    /// The `requested` value whose topics Redis has subscribed; `None` while disconnected.
    applied: watch::Sender<Option<u64>>,
    /// Wakes the link task to bring its subscriptions up to date.
    wake: Notify,
}

/// A message for Redis.
struct Outgoing {
    channel: String,
    payload: Bytes,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.shared.url)
            .field("prefix", &self.shared.prefix)
            .field("connected", &self.shared.up.load(Ordering::Relaxed))
            .finish()
    }
}

impl Backend {
    pub(super) fn topics_changed(&self) {
        self.shared.requested.fetch_add(1, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// Queues `message` for Redis; returns whether it was queued.
    pub(super) fn publish(&self, topic: &str, message: &Message) -> bool {
        if !self.shared.up.load(Ordering::Acquire) {
            return false;
        }
        let size = HEADER + message.len();
        let queued = self.shared.queued.fetch_add(size, Ordering::AcqRel);
        if queued.saturating_add(size) <= self.shared.queue_bytes {
            let outgoing = Outgoing {
                channel: format!("{}{topic}", self.shared.prefix),
                payload: encode(self.shared.node, message),
            };
            if self.queue.try_send(outgoing).is_ok() {
                return true;
            }
        }
        self.shared.queued.fetch_sub(size, Ordering::AcqRel);
        tracing::debug!(target: TARGET, "publish queue for Redis full: message not relayed");
        false
    }

    pub(super) async fn synced(&self) {
        let wanted = self.shared.requested.load(Ordering::SeqCst);
        let mut applied = self.shared.applied.subscribe();
        // The sender lives in `self.shared`: this cannot fail while `self` exists.
        let _ = applied.wait_for(|a| a.is_some_and(|a| a >= wanted)).await;
    }
}

/// The two connections of a link: subscriptions (split into commands and messages) and
/// publishing.
struct Conns {
    sink: PubSubSink,
    stream: PubSubStream,
    publisher: MultiplexedConnection,
}

async fn open(client: &redis::Client) -> redis::RedisResult<Conns> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let publisher = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let pubsub = bounded(CONNECT_TIMEOUT, client.get_async_pubsub()).await?;
    let (sink, stream) = pubsub.split();
    Ok(Conns {
        sink,
        stream,
        publisher,
    })
}

/// `future`, failing with a timeout error after `limit`.
async fn bounded<T>(
    limit: Duration,
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "Redis did not answer in time").into())
        }
    }
}

/// Why a session on one pair of connections ended.
enum End {
    /// The hub is gone.
    Stop,
    /// The connection to Redis broke.
    Lost(redis::RedisError),
}

impl From<redis::RedisError> for End {
    fn from(e: redis::RedisError) -> End {
        End::Lost(e)
    }
}

/// The link task: moves messages between the hub and Redis, and reconnects.
struct Link {
    shared: Arc<Shared>,
    hub: Weak<Inner>,
    client: redis::Client,
    queue: mpsc::Receiver<Outgoing>,
}

impl Link {
    async fn run(mut self, first: Conns) {
        let mut conns = Some(first);
        loop {
            let c = match conns.take() {
                Some(c) => c,
                None => match self.reconnect().await {
                    Some(c) => c,
                    None => break,
                },
            };
            self.shared.up.store(true, Ordering::Release);
            let end = self.session(c).await;
            self.shared.up.store(false, Ordering::Release);
            self.shared.applied.send_replace(None);
            match end {
                End::Stop => break,
                End::Lost(e) => tracing::warn!(
                    target: TARGET,
                    "lost the connection to Redis at {}: {e}; reconnecting",
                    self.shared.url
                ),
            }
        }
        tracing::debug!(target: TARGET, "hub on Redis at {} stopped", self.shared.url);
    }

    /// Connects again, with exponential backoff; `None` once the hub is gone.
    async fn reconnect(&mut self) -> Option<Conns> {
        let mut delay = MIN_BACKOFF;
        for attempt in 1u32.. {
            if !self.pause(delay).await {
                return None;
            }
            tracing::debug!(
                target: TARGET,
                "reconnecting to Redis at {} (attempt {attempt})",
                self.shared.url
            );
            match open(&self.client).await {
                Ok(c) => {
                    tracing::info!(
                        target: TARGET,
                        "reconnected to Redis at {} (attempt {attempt})",
                        self.shared.url
                    );
                    return Some(c);
                }
                Err(e) => {
                    delay = (delay * 2).min(MAX_BACKOFF);
                    tracing::warn!(
                        target: TARGET,
                        "cannot reconnect to Redis at {} (attempt {attempt}): {e}; next attempt in {delay:?}",
                        self.shared.url
                    );
                }
            }
        }
        None
    }

    /// Waits `delay`, discarding the messages queued before the connection broke; returns
    /// `false` if the hub is gone.
    async fn pause(&mut self, delay: Duration) -> bool {
        let wait = sleep(delay);
        tokio::pin!(wait);
        let mut lost = 0usize;
        let mut batch = Vec::new();
        let alive = loop {
            tokio::select! {
                () = &mut wait => break true,
                n = self.queue.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break false;
                    }
                    lost += n;
                    self.release(&mut batch);
                }
            }
        };
        if lost > 0 {
            tracing::warn!(
                target: TARGET,
                "{lost} message(s) not relayed: no connection to Redis at {}",
                self.shared.url
            );
        }
        alive
    }

    /// Empties `batch`, taking its bytes off the queue's count.
    fn release(&self, batch: &mut Vec<Outgoing>) {
        let bytes: usize = batch.drain(..).map(|o| o.payload.len()).sum();
        self.shared.queued.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Serves one pair of connections until one breaks or the hub is gone.
    async fn session(&mut self, c: Conns) -> End {
        let Conns {
            mut sink,
            mut stream,
            mut publisher,
        } = c;
        let mut subscribed = HashSet::new();
        if let Err(end) = self.subscriptions(&mut sink, &mut subscribed).await {
            return end;
        }
        let mut batch = Vec::with_capacity(BATCH);
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.reset();
        loop {
            tokio::select! {
                biased;
                () = self.shared.wake.notified() => {
                    if let Err(end) = self.subscriptions(&mut sink, &mut subscribed).await {
                        return end;
                    }
                }
                message = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)) => match message {
                    Some(message) => {
                        if !self.receive(&message) {
                            return End::Stop;
                        }
                    }
                    None => {
                        return End::Lost(
                            io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "subscription connection closed",
                            )
                            .into(),
                        )
                    }
                },
                n = self.queue.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return End::Stop;
                    }
                    let mut pipe = redis::pipe();
                    for o in &batch {
                        pipe.cmd("PUBLISH").arg(&o.channel).arg(o.payload.as_ref()).ignore();
                    }
                    let sent = bounded(RESPONSE_TIMEOUT, pipe.query_async::<()>(&mut publisher)).await;
                    self.release(&mut batch);
                    if let Err(e) = sent {
                        return End::Lost(e);
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = bounded(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await {
                        return End::Lost(e);
                    }
                }
            }
        }
    }

    /// Brings the Redis subscriptions in line with the topics that have subscribers: one
    /// SUBSCRIBE or UNSUBSCRIBE per channel (a multi-channel command gets several replies,
    /// which the sink would match to later commands).
    async fn subscriptions(
        &self,
        sink: &mut PubSubSink,
        subscribed: &mut HashSet<String>,
    ) -> Result<(), End> {
        let generation = self.shared.requested.load(Ordering::SeqCst);
        let wanted: HashSet<String> = match self.hub.upgrade() {
            Some(hub) => hub.lock().topics.keys().cloned().collect(),
            None => return Err(End::Stop),
        };
        let prefix = &self.shared.prefix;
        let add: Vec<String> = wanted.difference(subscribed).cloned().collect();
        for topic in add {
            bounded(RESPONSE_TIMEOUT, sink.subscribe(format!("{prefix}{topic}"))).await?;
            tracing::debug!(target: TARGET, "subscribed to Redis channel {prefix}{topic}");
            subscribed.insert(topic);
        }
        let remove: Vec<String> = subscribed.difference(&wanted).cloned().collect();
        for topic in remove {
            bounded(
                RESPONSE_TIMEOUT,
                sink.unsubscribe(format!("{prefix}{topic}")),
            )
            .await?;
            tracing::debug!(target: TARGET, "unsubscribed from Redis channel {prefix}{topic}");
            subscribed.remove(&topic);
        }
        self.shared.applied.send_replace(Some(generation));
        Ok(())
    }

    /// Delivers a message from Redis to this process's subscribers; `false` once the hub is
    /// gone.
    fn receive(&self, message: &redis::Msg) -> bool {
        let Some(hub) = self.hub.upgrade() else {
            return false;
        };
        let channel = message.get_channel_name();
        let Some(topic) = channel.strip_prefix(self.shared.prefix.as_str()) else {
            return true;
        };
        match decode(message.get_payload_bytes()) {
            // Published here: delivered to this process's subscribers already.
            Some((node, _)) if node == self.shared.node => {}
            Some((_, m)) => {
                hub.deliver(topic, &Arc::new(PreparedMessage::new(m)), None);
            }
            None => tracing::debug!(
                target: TARGET,
                "ignored a message on Redis channel {channel}: not from a sockeye hub"
            ),
        }
        true
    }
}

fn encode(node: u64, message: &Message) -> Bytes {
    let (kind, body) = match message {
        Message::Text(t) => (TEXT, t.as_bytes()),
        Message::Binary(b) => (BINARY, &b[..]),
    };
    let mut out = BytesMut::with_capacity(HEADER + body.len());
    out.put_u8(kind);
    out.put_u64(node);
    out.put_slice(body);
    out.freeze()
}

/// The publishing hub's id and the message, or `None` for a payload not in our format.
fn decode(payload: &[u8]) -> Option<(u64, Message)> {
    let (&kind, rest) = payload.split_first()?;
    let (node, body) = rest.split_first_chunk::<8>()?;
    let body = Bytes::copy_from_slice(body);
    let message = match kind {
        TEXT => Message::Text(Utf8Bytes::try_from_bytes(body).ok()?),
        BINARY => Message::Binary(body),
        _ => return None,
    };
    Some((u64::from_be_bytes(*node), message))
}

/// A random id for a hub: distinct for the hubs of one process and across processes.
fn random_id() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// `url` with the password masked, for errors and logs.
fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[start..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    match authority[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..start], &rest[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_bad_ones_are_refused() {
        for m in [
            Message::from("héllo"),
            Message::from(vec![0u8, 255, 1]),
            Message::from(""),
            Message::from(Vec::<u8>::new()),
        ] {
            assert_eq!(decode(&encode(42, &m)), Some((42, m)));
        }
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"\x01short"), None);
        assert_eq!(decode(b"\x09\0\0\0\0\0\0\0\0x"), None);
        assert_eq!(decode(b"\x01\0\0\0\0\0\0\0\0\xff"), None);
        assert_ne!(random_id(), random_id());
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://:pw@h:1/2"), "redis://:***@h:1/2");
        assert_eq!(redact("redis://u:p@ss@h"), "redis://u:***@h");
        assert_eq!(redact("redis://u@h"), "redis://u@h");
        assert_eq!(redact("not a url"), "not a url");
    }
}
