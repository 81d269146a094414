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
