//! What both front ends keep between the core and the application: the received items, and
//! whose turn it is to send. No protocol rules here (the core checked everything); only the
//! bookkeeping that `recv`, `recv_streaming` and fragmented sends share.

use std::collections::VecDeque;

use crate::proto::{self, Assembler, Fragment, Message};

/// What the core handed over: front ends run the core in stream mode (so that any message may
/// be taken fragment by fragment), but messages that arrived with the handshake are whole.
pub(crate) enum Item {
    Message(Message),
    Fragment(Fragment),
}

/// Received items, and the message `recv` is joining.
#[derive(Default)]
pub(crate) struct Inbox {
    items: VecDeque<Item>,
    /// Holds a message in progress across cancelled (tokio) or timed-out (sync) `recv`s;
    /// boxed while there is one (most messages come whole, in one frame).
    assembler: Option<Box<Assembler>>,
}

/// Where a [`Fragments`](crate::Fragments) reader is in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FragmentsState {
    /// No fragment handed out yet.
    Start,
    /// Inside the message.
    Within,
    /// The last fragment was handed out.
    Done,
}

impl Inbox {
    /// Items waiting (messages and fragments): what `max_queue` bounds.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Frees the queue's memory if nothing waits (an idle connection keeps none).
    pub(crate) fn release_if_empty(&mut self) {
        if self.items.is_empty() {
            self.items = VecDeque::new();
        }
    }

    /// Adds a message or fragment from the core.
    pub(crate) fn push(&mut self, item: Item) {
        self.items.push_back(item);
    }

    /// The next message if it came whole (no message being joined, a whole one first).
    #[inline]
    pub(crate) fn take_whole(&mut self) -> Option<Message> {
        if self.assembler.is_some() || !matches!(self.items.front(), Some(Item::Message(_))) {
            return None;
        }
        match self.items.pop_front() {
            Some(Item::Message(m)) => Some(m),
            _ => None,
        }
    }

    /// The next whole message, joining fragments; `None` when it is not all here yet.
    pub(crate) fn take_message(&mut self) -> Option<Result<Message, proto::Error>> {
        while let Some(item) = self.items.pop_front() {
            match item {
                Item::Message(m) => return Some(Ok(m)),
                Item::Fragment(f) => {
                    let pushed = self.assembler.get_or_insert_default().push(f);
                    if !matches!(pushed, Ok(None)) {
                        // No message in progress any more.
                        self.assembler = None;
                    }
                    match pushed {
                        Ok(Some(m)) => return Some(Ok(m)),
                        Ok(None) => {}
                        Err(_) => return Some(Err(proto::Error::InvalidUtf8)),
                    }
                }
            }
        }
        None
    }

    /// The next fragment for a `Fragments` reader in `state`, which it advances. A message
    /// `recv` had begun to join comes first, as one fragment; the rest of a message whose
    /// start went to a dropped reader is skipped.
    pub(crate) fn take_fragment(&mut self, state: &mut FragmentsState) -> Option<Fragment> {
        if *state == FragmentsState::Start {
            if let Some(partial) = self.assembler.as_mut().and_then(|a| a.take_partial()) {
                self.assembler = None;
                *state = FragmentsState::Within;
                return Some(partial);
            }
        }
        while let Some(item) = self.items.pop_front() {
            let fragment = match item {
                Item::Message(m) => Fragment {
                    kind: m.kind(),
                    data: m.into_bytes(),
                    first: true,
                    fin: true,
                },
                Item::Fragment(f) if !f.first && *state == FragmentsState::Start => continue,
                Item::Fragment(f) => f,
            };
            *state = if fragment.fin {
                FragmentsState::Done
            } else {
                FragmentsState::Within
            };
            return Some(fragment);
        }
        None
    }
}

/// Who is sending: a whole message waits while another sender's fragmented message is open;
/// the fragments of that message and control frames do not.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sender {
    /// A whole message.
    Message,
    /// A fragment of the message with this id.
    Fragment(u64),
    /// A ping.
    Control,
}

impl Sender {
    /// Whether this sender may go while `open` (the fragmented message being sent, if any).
    pub(crate) fn may_send(self, open: Option<u64>) -> bool {
        match (self, open) {
            (_, None) | (Sender::Control, _) => true,
            (Sender::Fragment(me), Some(owner)) => me == owner,
            (Sender::Message, Some(_)) => false,
        }
    }
}
