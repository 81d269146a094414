//! One loop's topics: which of its connections (by slot) are subscribed to what.
//!
//! Every loop keeps its own table and nobody else touches it: subscribing is a map insert
//! in the loop's thread, and a publish reaches the other loops as a command in their
//! mailboxes (each delivers to its own subscribers). A connection that subscribes to
//! nothing costs nothing here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Topics and their subscribers, for one loop.
#[derive(Default)]
pub(super) struct Topics {
    /// Topic -> the slots subscribed (ordered: deliveries go in slot order).
    members: HashMap<Arc<str>, BTreeSet<usize>>,
    /// Slot -> its topics, for the connections that have any (to leave them all at the end).
    of_slot: HashMap<usize, Vec<Arc<str>>>,
}

impl Topics {
    /// Subscribes `slot` to `topic`; `false` if it was already.
    pub(super) fn subscribe(&mut self, slot: usize, topic: &str) -> bool {
        let name = match self.members.get_key_value(topic) {
            Some((name, _)) => name.clone(),
            None => Arc::from(topic),
        };
        if !self.members.entry(name.clone()).or_default().insert(slot) {
            return false;
        }
        self.of_slot.entry(slot).or_default().push(name);
        true
    }

    /// Unsubscribes `slot` from `topic`; `false` if it was not subscribed.
    pub(super) fn unsubscribe(&mut self, slot: usize, topic: &str) -> bool {
        let Some(set) = self.members.get_mut(topic) else {
            return false;
        };
        if !set.remove(&slot) {
            return false;
        }
        if set.is_empty() {
            self.members.remove(topic);
        }
        if let Some(names) = self.of_slot.get_mut(&slot) {
            names.retain(|n| &**n != topic);
            if names.is_empty() {
                self.of_slot.remove(&slot);
            }
        }
        true
    }

    /// Whether `slot` is subscribed to `topic`.
    pub(super) fn is_subscribed(&self, slot: usize, topic: &str) -> bool {
        self.members.get(topic).is_some_and(|s| s.contains(&slot))
    }

    /// Takes `slot` out of every topic (its connection is over).
    pub(super) fn leave_all(&mut self, slot: usize) {
        let Some(names) = self.of_slot.remove(&slot) else {
            return;
        };
        for name in names {
            if let Some(set) = self.members.get_mut(&name) {
                set.remove(&slot);
                if set.is_empty() {
                    self.members.remove(&name);
                }
            }
        }
    }

    /// The slots subscribed to `topic`, in order.
    pub(super) fn members(&self, topic: &str) -> impl Iterator<Item = usize> + '_ {
        self.members.get(topic).into_iter().flatten().copied()
    }

    /// How many of this loop's connections are subscribed to `topic`.
    #[cfg(test)]
    fn count(&self, topic: &str) -> usize {
        self.members.get(topic).map_or(0, BTreeSet::len)
    }

    /// How many topics have subscribers in this loop.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Topics;

    #[test]
    fn subscribe_unsubscribe_and_leave_all_keep_both_maps_in_step() {
        let mut t = Topics::default();
        assert!(t.subscribe(3, "/a"));
        assert!(!t.subscribe(3, "/a"), "twice does nothing more");
        assert!(t.subscribe(1, "/a"));
        assert!(t.subscribe(3, "/b"));
        assert_eq!(t.members("/a").collect::<Vec<_>>(), [1, 3]);
        assert_eq!(t.count("/b"), 1);
        assert!(t.is_subscribed(3, "/b"));
        assert!(!t.is_subscribed(1, "/b"));

        assert!(t.unsubscribe(3, "/a"));
        assert!(!t.unsubscribe(3, "/a"));
        assert!(!t.unsubscribe(9, "/nothing"));
        assert_eq!(t.members("/a").collect::<Vec<_>>(), [1]);

        t.leave_all(3);
        assert_eq!(t.count("/b"), 0);
        assert_eq!(t.len(), 1, "an emptied topic is gone");
        t.leave_all(1);
        assert_eq!(t.len(), 0);
        assert!(t.of_slot.is_empty());
        assert_eq!(t.members("/a").count(), 0);
        // A slot used again starts with no topics.
        assert!(t.subscribe(3, "/a"));
        assert_eq!(t.members("/a").collect::<Vec<_>>(), [3]);
    }
}
