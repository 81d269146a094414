//! Messages and fragments as the application sees them.

use std::fmt;

use bytes::Bytes;

/// The payload of a text message: bytes that are valid UTF-8.
///
/// A view of the receive buffer, like [`Bytes`]: cloning is cheap and nothing is copied. The
/// invariant is checked when the value is made; [`Utf8Bytes::as_str`] checks it again with
/// SIMD (`simdutf8`, many GB/s) because turning bytes into `&str` without a check takes
/// `unsafe`, which this crate forbids.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Wraps `bytes` if they are valid UTF-8.
    pub fn try_from_bytes(bytes: Bytes) -> Result<Self, crate::utf8::Utf8Error> {
        crate::utf8::validate(&bytes)?;
        Ok(Utf8Bytes(bytes))
    }

    /// Wraps bytes already validated by the caller inside this crate.
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Utf8Bytes(bytes)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        simdutf8::basic::from_utf8(&self.0).expect("Utf8Bytes holds valid UTF-8 by construction")
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Gives back the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Utf8Bytes(Bytes::from(s))
    }
}

impl From<&str> for Utf8Bytes {
    /// Copies the text.
    fn from(s: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// Text or binary: the two kinds of data message (RFC 6455 §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// UTF-8 text (opcode 0x1).
    Text,
    /// Arbitrary bytes (opcode 0x2).
    Binary,
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// Text or binary.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Text(_) => MessageKind::Text,
            Message::Binary(_) => MessageKind::Binary,
        }
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t.as_str()),
            Message::Binary(_) => None,
        }
    }

    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives back the payload bytes.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Message::Text(t) => t.into_bytes(),
            Message::Binary(b) => b,
        }
    }
}

impl From<&str> for Message {
    /// A text message; copies the text.
    fn from(s: &str) -> Self {
        Message::Text(s.into())
    }
}

impl From<&String> for Message {
    /// A text message; copies the text.
    fn from(s: &String) -> Self {
        Message::Text(s.as_str().into())
    }
}

impl From<Utf8Bytes> for Message {
    fn from(t: Utf8Bytes) -> Self {
        Message::Text(t)
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s.into())
    }
}

impl From<Vec<u8>> for Message {
    fn from(v: Vec<u8>) -> Self {
        Message::Binary(v.into())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

impl From<&[u8]> for Message {
    /// A binary message; copies the bytes.
    fn from(b: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(b))
    }
}

/// A piece of a message, delivered as it arrives when
/// [`Config::stream_fragments`](crate::Config::stream_fragments) is on.
///
/// `data` of a text fragment may end in the middle of a character: UTF-8 is checked across
/// fragments, and the message as a whole is valid once `fin` is seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Text or binary (the kind of the whole message).
    pub kind: MessageKind,
    /// This piece, decompressed.
    pub data: Bytes,
    /// Whether this is the first piece of the message.
    pub first: bool,
    /// Whether this is the last piece of the message.
    pub fin: bool,
}

/// Joins fragments back into whole messages.
///
/// A front end that runs its [`Protocol`](crate::Protocol) in stream mode (so that its
/// application may take any message fragment by fragment) uses it when the application asks
/// for a whole message instead. A message of one fragment is passed through without a copy.
///
/// Fragments must come in order, as the core delivers them. A fragment that continues a
/// message whose start this assembler did not see (the application streamed the start, then
/// asked for whole messages) is discarded, with the rest of that message.
#[derive(Debug, Default)]
pub struct Assembler {
    /// The kind of the message in progress, if any.
    kind: Option<MessageKind>,
    /// Its fragments so far.
    buf: Vec<u8>,
    /// Discarding the rest of a message whose start was not seen.
    discarding: bool,
}

impl Assembler {
    /// An assembler with no message in progress.
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// Adds a fragment; returns the message once its last fragment (`fin`) is in.
    ///
    /// Text is checked again as a whole (`simdutf8`, many GB/s): the core has checked it,
    /// but a `Fragment` can be made by anyone.
    pub fn push(&mut self, fragment: Fragment) -> Result<Option<Message>, crate::utf8::Utf8Error> {
        let Fragment {
            kind,
            data,
            first,
            fin,
        } = fragment;
        if first {
            // A new message; a message in progress that never ended is dropped.
            self.discarding = false;
            self.buf.clear();
            if fin {
                self.kind = None;
                return message_of(kind, data).map(Some);
            }
            self.kind = Some(kind);
            self.buf.reserve(data.len() * 2);
            self.buf.extend_from_slice(&data);
            return Ok(None);
        }
        let Some(kind) = self.kind else {
            // The start went elsewhere: drop this message up to its end.
            self.discarding = !fin;
            return Ok(None);
        };
        self.buf.extend_from_slice(&data);
        if !fin {
            return Ok(None);
        }
        self.kind = None;
        let bytes = Bytes::from(std::mem::take(&mut self.buf));
        message_of(kind, bytes).map(Some)
    }

    /// Whether a message is in progress (some of its fragments are in, not its last).
    pub fn in_progress(&self) -> bool {
        self.kind.is_some()
    }

    /// Whether the rest of a message whose start was not seen is being dropped.
    pub fn discarding(&self) -> bool {
        self.discarding
    }

    /// Takes the fragments of the message in progress, joined, as its first fragment, so
    /// that an application switching to fragments mid-message loses nothing.
    pub fn take_partial(&mut self) -> Option<Fragment> {
        let kind = self.kind.take()?;
        Some(Fragment {
            kind,
            data: Bytes::from(std::mem::take(&mut self.buf)),
            first: true,
            fin: false,
        })
    }
}

fn message_of(kind: MessageKind, bytes: Bytes) -> Result<Message, crate::utf8::Utf8Error> {
    Ok(match kind {
        MessageKind::Text => Message::Text(Utf8Bytes::try_from_bytes(bytes)?),
        MessageKind::Binary => Message::Binary(bytes),
    })
}

/// A message serialised once, to be sent to many connections (broadcast, pub/sub).
///
/// Server connections without compression copy the ready frame into their output buffer; a
/// connection that must mask (client) or compress the message encodes it itself, from the
/// same payload.
#[derive(Debug, Clone)]
pub struct PreparedMessage {
    message: Message,
    frame: Bytes,
}

impl PreparedMessage {
    /// Serialises `message` as one unmasked, uncompressed frame.
    pub fn new(message: impl Into<Message>) -> PreparedMessage {
        let message = message.into();
        let opcode = match message.kind() {
            MessageKind::Text => crate::frame::OpCode::Text,
            MessageKind::Binary => crate::frame::OpCode::Binary,
        };
        let payload = message.as_bytes();
        let mut frame = Vec::with_capacity(payload.len() + crate::frame::MAX_HEADER_LEN);
        crate::frame::FrameHeader::encode(&mut frame, true, false, opcode, None, payload.len());
        frame.extend_from_slice(payload);
        PreparedMessage {
            message,
            frame: Bytes::from(frame),
        }
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The serialised frame (unmasked, uncompressed).
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

#[cfg(test)]
mod assembler_tests {
    use super::*;

    fn frag(kind: MessageKind, data: &[u8], first: bool, fin: bool) -> Fragment {
        Fragment {
            kind,
            data: Bytes::copy_from_slice(data),
            first,
            fin,
        }
    }

    #[test]
    fn one_fragment_passes_through_without_a_copy() {
        let data = Bytes::from_static(b"whole");
        let mut a = Assembler::new();
        let m = a
            .push(Fragment {
                kind: MessageKind::Binary,
                data: data.clone(),
                first: true,
                fin: true,
            })
            .unwrap()
            .unwrap();
        assert_eq!(m.as_bytes().as_ptr(), data.as_ptr());
        assert!(!a.in_progress());
    }

    #[test]
    fn joins_text_cut_inside_a_character() {
        let text = "κόσμε".as_bytes();
        let mut a = Assembler::new();
        assert_eq!(
            a.push(frag(MessageKind::Text, &text[..1], true, false)),
            Ok(None)
        );
        assert!(a.in_progress());
        assert_eq!(
            a.push(frag(MessageKind::Text, &text[1..5], false, false)),
            Ok(None)
        );
        let m = a
            .push(frag(MessageKind::Text, &text[5..], false, true))
            .unwrap();
        assert_eq!(m, Some(Message::from("κόσμε")));
        assert!(!a.in_progress());
    }

    #[test]
    fn invalid_text_is_refused() {
        let mut a = Assembler::new();
        assert_eq!(
            a.push(frag(MessageKind::Text, &[0xce], true, false)),
            Ok(None)
        );
        assert!(a.push(frag(MessageKind::Text, b"a", false, true)).is_err());
    }

    #[test]
    fn partial_message_can_be_taken_out() {
        let mut a = Assembler::new();
        a.push(frag(MessageKind::Binary, b"ab", true, false))
            .unwrap();
        a.push(frag(MessageKind::Binary, b"cd", false, false))
            .unwrap();
        let p = a.take_partial().unwrap();
        assert_eq!(p, frag(MessageKind::Binary, b"abcd", true, false));
        assert!(!a.in_progress());
        assert!(a.take_partial().is_none());
    }

    #[test]
    fn rest_of_a_message_started_elsewhere_is_discarded() {
        let mut a = Assembler::new();
        assert_eq!(
            a.push(frag(MessageKind::Binary, b"x", false, false)),
            Ok(None)
        );
        assert!(a.discarding());
        assert_eq!(
            a.push(frag(MessageKind::Binary, b"y", false, true)),
            Ok(None)
        );
        assert!(!a.discarding());
        let m = a
            .push(frag(MessageKind::Binary, b"next", true, true))
            .unwrap();
        assert_eq!(m, Some(Message::Binary(Bytes::from_static(b"next"))));
    }
}
