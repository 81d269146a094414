//! Publish/subscribe channels over WebSocket connections, in memory.
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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::connection::Connection;
use crate::proto::{Message, PreparedMessage};

/// In-memory topics: see the [module documentation](self).
///
/// Cheap to clone: clones share the same topics.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Mutex<Topics>>,
}

#[derive(Default)]
struct Topics {
    /// topic -> subscribers by connection id.
    topics: HashMap<String, HashMap<u64, Connection>>,
    /// connection id -> its topics, to leave them all when it closes.
    subscriptions: HashMap<u64, HashSet<String>>,
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    /// Subscribers the message was queued for.
    pub delivered: usize,
    /// Subscribers skipped: over their write limit, or no longer open.
    pub dropped: usize,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.lock();
        f.debug_struct("Hub")
            .field("topics", &t.topics.len())
            .field("connections", &t.subscriptions.len())
            .finish()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Hub {
        Hub::default()
    }

    fn lock(&self) -> MutexGuard<'_, Topics> {
        // Every section leaves the maps consistent; a panic elsewhere does not poison them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes `ws` to `topic`. Subscribing twice does nothing more.
    pub fn subscribe(&self, ws: &Connection, topic: &str) {
        let first = {
            let mut t = self.lock();
            t.topics
                .entry(topic.to_owned())
                .or_default()
                .insert(ws.id(), ws.clone());
            let subs = t.subscriptions.entry(ws.id()).or_default();
            let first = subs.is_empty();
            subs.insert(topic.to_owned());
            first
        };
        if first {
            // Leave every topic when the connection closes. A weak reference: the
            // connection does not keep the hub alive.
            let hub: Weak<Mutex<Topics>> = Arc::downgrade(&self.inner);
            let id = ws.id();
            ws.on_close(move || {
                if let Some(inner) = hub.upgrade() {
                    Hub { inner }.remove_connection(id);
                }
            });
        }
    }

    /// Unsubscribes `ws` from `topic`; returns whether it was subscribed.
    pub fn unsubscribe(&self, ws: &Connection, topic: &str) -> bool {
        let mut t = self.lock();
        let removed = match t.topics.get_mut(topic) {
            Some(subs) => {
                let removed = subs.remove(&ws.id()).is_some();
                if subs.is_empty() {
                    t.topics.remove(topic);
                }
                removed
            }
            None => false,
        };
        if let Some(subs) = t.subscriptions.get_mut(&ws.id()) {
            subs.remove(topic);
            if subs.is_empty() {
                t.subscriptions.remove(&ws.id());
            }
        }
        removed
    }

    /// Unsubscribes `ws` from every topic.
    pub fn unsubscribe_all(&self, ws: &Connection) {
        self.remove_connection(ws.id());
    }

    fn remove_connection(&self, id: u64) {
        let mut t = self.lock();
        let Some(topics) = t.subscriptions.remove(&id) else {
            return;
        };
        for topic in topics {
            if let Some(subs) = t.topics.get_mut(&topic) {
                subs.remove(&id);
                if subs.is_empty() {
                    t.topics.remove(&topic);
                }
            }
        }
    }

    /// Sends `message` to every subscriber of `topic`, without waiting.
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
        let prepared = PreparedMessage::new(message);
        let t = self.lock();
        let mut result = Published::default();
        if let Some(subs) = t.topics.get(topic) {
            for (id, ws) in subs {
                if Some(*id) == except {
                    continue;
                }
                if ws.try_send_prepared(&prepared) {
                    result.delivered += 1;
                } else {
                    result.dropped += 1;
                }
            }
        }
        result
    }

    /// How many connections are subscribed to `topic`.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.lock().topics.get(topic).map_or(0, HashMap::len)
    }

    /// The topics that have subscribers.
    pub fn topics(&self) -> Vec<String> {
        self.lock().topics.keys().cloned().collect()
    }
}
