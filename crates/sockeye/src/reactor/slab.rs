//! The connections of one loop: a vector of slots reused through a free list, each with a
//! generation so that a timer or an event left over from a connection that ended does not
//! reach the next one in the same slot.

/// Slots of `T`, addressed by index.
pub(super) struct Slab<T> {
    slots: Vec<Slot<T>>,
    /// First free slot, `usize::MAX` for none.
    free: usize,
    len: usize,
}

enum Slot<T> {
    Used(T),
    /// Free; the next free slot (`usize::MAX` for none).
    Free(usize),
}

impl<T> Slab<T> {
    pub(super) fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: usize::MAX,
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The index the next `insert` will use.
    pub(super) fn next_key(&self) -> usize {
        if self.free != usize::MAX {
            self.free
        } else {
            self.slots.len()
        }
    }

    /// Stores `value`; returns its index.
    pub(super) fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        if self.free != usize::MAX {
            let at = self.free;
            match std::mem::replace(&mut self.slots[at], Slot::Used(value)) {
                Slot::Free(next) => self.free = next,
                Slot::Used(_) => unreachable!("the free list points at a used slot"),
            }
            at
        } else {
            self.slots.push(Slot::Used(value));
            self.slots.len() - 1
        }
    }

    pub(super) fn get_mut(&mut self, at: usize) -> Option<&mut T> {
        match self.slots.get_mut(at) {
            Some(Slot::Used(v)) => Some(v),
            _ => None,
        }
    }

    /// Takes the value out of slot `at`, if used.
    pub(super) fn remove(&mut self, at: usize) -> Option<T> {
        match self.slots.get_mut(at) {
            Some(slot @ Slot::Used(_)) => {
                let Slot::Used(v) = std::mem::replace(slot, Slot::Free(self.free)) else {
                    unreachable!()
                };
                self.free = at;
                self.len -= 1;
                Some(v)
            }
            _ => None,
        }
    }

    /// Indexes of the used slots.
    pub(super) fn keys(&self) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| matches!(s, Slot::Used(_)).then_some(i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn slots_are_reused_and_removed_values_are_gone() {
        let mut s = Slab::new();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.len(), 2);
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get_mut(a), None);
        let c = s.insert("c");
        assert_eq!(c, a, "a freed slot is reused");
        assert_eq!(s.get_mut(b), Some(&mut "b"));
        assert_eq!(s.keys(), vec![a, b]);
        s.remove(b);
        s.remove(c);
        assert!(s.is_empty());
        assert_eq!(s.insert("d"), c, "last freed, first reused");
    }
}
