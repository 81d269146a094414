//! Publish/subscribe channels over WebSocket connections, in memory or shared through Redis.
//!
//! python-websockets leaves pub/sub to the application ("How do I create channels or
//! topics?" in its FAQ); sockeye ships it. A [`Hub`] maps topics to the connections
//! subscribed to them:
//!
//! ```no_run
//! # async fn run() -> Result<(), sockeye::BoxError> {
//! let hub = sockeye::Hub::new();
//! let server = sockeye::serve("127.0.0.1:8765", move |ws| {
//!     let hub = hub.clone();
//!     async move {
//!         let topic = ws.request().uri().path().to_owned();
//!         hub.subscribe(&ws, &topic);
//!         while let Some(message) = ws.recv().await? {
//!             hub.publish_except(&topic, message, &ws);
//!         }
//!         Ok(()) // closed connections leave their topics by themselves
//!     }
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! - A publish serialises the message once ([`PreparedMessage`]) and copies the frame into
//!   each subscriber's output buffer; it never waits.
//! - **Slow subscribers**: a subscriber with more than its `write_limit` bytes waiting to be
//!   written does not get the message (it is counted in [`Published::dropped`]) and stays
//!   subscribed. So a stalled subscriber never holds up the others, and the memory it can
//!   pin is bounded by `write_limit` plus one message. This is python-websockets'
//!   `broadcast()` policy; an application that prefers to disconnect such subscribers can
//!   close them when `dropped` reports them.
//! - A connection that closes leaves all its topics (the hub registers a close hook on it).
//! - Order: messages published by one task to one topic reach each subscriber in order.
//!
//! With the `redis` feature, `Hub::redis` makes a hub whose topics are shared by every
//! process connected to the same Redis: same type, same calls; its documentation says what
//! changes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::handle::Registration;
use crate::proto::{Message, PreparedMessage};
use crate::Connection;

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use self::redis::{RedisBuilder, RedisError};

/// Topics and their subscribers: see the [module documentation](self).
///
/// [`Hub::new`] keeps them in memory; `Hub::redis` (feature `redis`) shares them with other
/// processes through Redis. Cheap to clone: clones share the same topics.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    topics: Mutex<Topics>,
    /// The link to Redis, for a hub made by [`Hub::redis`].
    #[cfg(feature = "redis")]
    redis: Option<redis::Backend>,
}

#[derive(Default)]
struct Topics {
    /// topic -> subscribers by connection id.
    topics: HashMap<String, HashMap<u64, Connection>>,
    /// connection id -> its topics, to leave them all when it closes.
    subscriptions: HashMap<u64, HashSet<String>>,
}

/// What a publish did.
///
/// `delivered` and `dropped` count the subscribers of this process: a publish never waits,
/// so it cannot know what other processes did with a message it sent them through Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    /// Subscribers of this process the message was queued for.
    pub delivered: usize,
    /// Subscribers of this process skipped: over their write limit, or no longer open.
    pub dropped: usize,
    /// Whether the message was queued for Redis, to reach the other processes. Always
    /// `false` for an in-memory hub; `false` for a Redis hub while its connection to Redis is
    /// down or its publish queue is full (the other processes miss that message).
    pub relayed: bool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.lock();
        let mut d = f.debug_struct("Hub");
        d.field("topics", &t.topics.len())
            .field("connections", &t.subscriptions.len());
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.inner.redis {
            d.field("redis", redis);
        }
        d.finish()
    }
}

impl Hub {
    /// An empty hub, in memory: its topics are this process's only.
    pub fn new() -> Hub {
        Hub::default()
    }

    fn lock(&self) -> MutexGuard<'_, Topics> {
        self.inner.lock()
    }

    /// Tells the Redis link that the set of topics with subscribers changed.
    fn topics_changed(&self) {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.inner.redis {
            redis.topics_changed();
        }
    }

    /// Subscribes `ws` to `topic`. Subscribing twice does nothing more.
    ///
    /// On a Redis hub, the first subscriber of a topic in this process makes the hub
    /// subscribe to the topic's Redis channel, in the background: [`Hub::synced`] waits
    /// for that.
    pub fn subscribe(&self, ws: &Connection, topic: &str) {
        let (new_topic, first) = {
            let mut t = self.lock();
            let new_topic = !t.topics.contains_key(topic);
            t.topics
                .entry(topic.to_owned())
                .or_default()
                .insert(ws.id(), ws.clone());
            let subs = t.subscriptions.entry(ws.id()).or_default();
            let first = subs.is_empty();
            subs.insert(topic.to_owned());
            (new_topic, first)
        };
        if new_topic {
            self.topics_changed();
        }
        if first {
            // Leave every topic when the connection closes. A weak reference: the
            // connection does not keep the hub alive.
            let hub: Weak<Inner> = Arc::downgrade(&self.inner);
            let id = ws.id();
            ws.on_close(move || {
                if let Some(inner) = hub.upgrade() {
                    Hub { inner }.remove_connection(id);
                }
            });
        }
    }

    /// Unsubscribes `ws` from `topic`; returns whether it was subscribed.
    ///
    /// On a Redis hub, the last subscriber of a topic in this process leaving makes the hub
    /// unsubscribe from the topic's Redis channel, in the background.
    pub fn unsubscribe(&self, ws: &Connection, topic: &str) -> bool {
        let (removed, emptied) = {
            let mut t = self.lock();
            let (removed, emptied) = match t.topics.get_mut(topic) {
                Some(subs) => {
                    let removed = subs.remove(&ws.id()).is_some();
                    let emptied = subs.is_empty();
                    if emptied {
                        t.topics.remove(topic);
                    }
                    (removed, emptied)
                }
                None => (false, false),
            };
            if let Some(subs) = t.subscriptions.get_mut(&ws.id()) {
                subs.remove(topic);
                if subs.is_empty() {
                    t.subscriptions.remove(&ws.id());
                }
            }
            (removed, emptied)
        };
        if emptied {
            self.topics_changed();
        }
        removed
    }

    /// Unsubscribes `ws` from every topic.
    pub fn unsubscribe_all(&self, ws: &Connection) {
        self.remove_connection(ws.id());
    }

    fn remove_connection(&self, id: u64) {
        let mut emptied = false;
        {
            let mut t = self.lock();
            let Some(topics) = t.subscriptions.remove(&id) else {
                return;
            };
            for topic in topics {
                if let Some(subs) = t.topics.get_mut(&topic) {
                    subs.remove(&id);
                    if subs.is_empty() {
                        t.topics.remove(&topic);
                        emptied = true;
                    }
                }
            }
        }
        if emptied {
            self.topics_changed();
        }
    }

    /// Sends `message` to every subscriber of `topic`, without waiting.
    ///
    /// On a Redis hub, the subscribers of this process get the message at once and it is
    /// queued for Redis, which passes it to the other processes (see [`Published`]).
    pub fn publish(&self, topic: &str, message: impl Into<Message>) -> Published {
        self.publish_inner(topic, message.into(), None)
    }

    /// Like [`Hub::publish`], skipping `sender` (a relay does not echo to the author).
    pub fn publish_except(
        &self,
        topic: &str,
        message: impl Into<Message>,
        sender: &Connection,
    ) -> Published {
        self.publish_inner(topic, message.into(), Some(sender.id()))
    }

    fn publish_inner(&self, topic: &str, message: Message, except: Option<u64>) -> Published {
        let prepared = Arc::new(PreparedMessage::new(message));
        let result = self.inner.deliver(topic, &prepared, except);
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.inner.redis {
            return Published {
                relayed: redis.publish(topic, prepared.message()),
                ..result
            };
        }
        result
    }

    /// How many connections of this process are subscribed to `topic`.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.lock().topics.get(topic).map_or(0, HashMap::len)
    }

    /// The topics that have subscribers in this process.
    pub fn topics(&self) -> Vec<String> {
        self.lock().topics.keys().cloned().collect()
    }

    /// Whether this hub shares its topics through Redis (`Hub::redis`, feature `redis`).
    pub fn is_redis(&self) -> bool {
        #[cfg(feature = "redis")]
        {
            self.inner.redis.is_some()
        }
        #[cfg(not(feature = "redis"))]
        {
            false
        }
    }

    /// Waits until Redis has every subscription this process needs as of this call: once it
    /// returns, messages that other processes publish to the topics subscribed to here reach
    /// this process. Returns at once for an in-memory hub.
    ///
    /// While Redis is unreachable this waits for the reconnection: bound it with a timeout.
    pub async fn synced(&self) {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.inner.redis {
            redis.synced().await;
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Topics> {
        // Every section leaves the maps consistent; a panic elsewhere does not poison them.
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `prepared` for this process's subscribers of `topic`, except `except`.
    ///
    /// The subscribers are listed under the lock and served after it is released: a
    /// delivery may write to the subscriber's socket (when its output is idle), and a
    /// publish to thousands must not keep other threads from subscribing meanwhile.
    fn deliver(
        &self,
        topic: &str,
        prepared: &Arc<PreparedMessage>,
        except: Option<u64>,
    ) -> Published {
        let subs: Vec<Registration> = match self.lock().topics.get(topic) {
            Some(subs) => subs
                .iter()
                .filter(|(id, _)| Some(**id) != except)
                .map(|(_, ws)| ws.registration())
                .collect(),
            None => return Published::default(),
        };
        let mut result = Published::default();
        for ws in &subs {
            if ws.try_send_prepared(prepared) {
                result.delivered += 1;
            } else {
                result.dropped += 1;
            }
        }
        result
    }
}
