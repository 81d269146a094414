//! The one error type of the core, and the one mapping from errors to close codes.

use std::fmt;

use http::StatusCode;

use crate::close::CloseCode;

/// Everything that can go wrong in the protocol core.
///
/// Errors fall in four families, which decide who is to blame and what goes on the wire:
/// the peer broke the protocol ([`Error::Protocol`], [`Error::InvalidUtf8`]), a limit was hit
/// ([`Error::LimitExceeded`]), the opening handshake failed ([`Error::Handshake`]), a timer ran
/// out ([`Error::Timeout`]), or the caller misused the API ([`Error::Misuse`], never caused by
/// peer data). [`Error::close_code`] is the single place that maps them to close codes.
///
/// Once a connection has failed, every later call that processes input returns the same error.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The peer broke RFC 6455 or RFC 7692. Closes with 1002.
    Protocol(ProtocolError),
    /// A text message or a close reason was not valid UTF-8. Closes with 1007.
    InvalidUtf8,
    /// A configured limit was exceeded. Closes with 1009 (or answers 431 in the handshake).
    LimitExceeded(LimitExceeded),
    /// The opening handshake failed.
    Handshake(HandshakeError),
    /// A deadline passed.
    Timeout(Timeout),
    /// The connection is closed; nothing more can be sent.
    ConnectionClosed,
    /// The caller used the API in a way it does not allow. A bug in the caller, never caused by
    /// the peer.
    Misuse(&'static str),
}

impl Error {
    /// The close code this error closes the connection with, if it leads to a close frame.
    ///
    /// RFC 6455 §7.4.1: 1002 for protocol errors, 1007 for invalid UTF-8, 1009 for messages too
    /// big, 1011 for keepalive timeouts (the peer stopped answering pings).
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::Protocol(_) => Some(CloseCode::PROTOCOL_ERROR),
            Error::InvalidUtf8 => Some(CloseCode::INVALID_PAYLOAD),
            Error::LimitExceeded(_) => Some(CloseCode::MESSAGE_TOO_BIG),
            Error::Timeout(Timeout::KeepalivePing) => Some(CloseCode::INTERNAL_ERROR),
            Error::Timeout(_)
            | Error::Handshake(_)
            | Error::ConnectionClosed
            | Error::Misuse(_) => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::InvalidUtf8 => f.write_str("invalid UTF-8 in a text message or close reason"),
            Error::LimitExceeded(e) => write!(f, "limit exceeded: {e}"),
            Error::Handshake(e) => write!(f, "opening handshake failed: {e}"),
            Error::Timeout(t) => write!(f, "timed out: {t}"),
            Error::ConnectionClosed => f.write_str("the connection is closed"),
            Error::Misuse(m) => write!(f, "API misuse: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Protocol(e) => Some(e),
            Error::LimitExceeded(e) => Some(e),
            Error::Handshake(e) => Some(e),
            _ => None,
        }
    }
}

/// How the peer broke RFC 6455 or RFC 7692.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// RSV2 or RSV3 set, or RSV1 set without a negotiated extension that defines it (§5.2).
    ReservedBits,
    /// RSV1 set on a control frame or a continuation frame (RFC 7692 §6.1).
    CompressedControlOrContinuation,
    /// An opcode that RFC 6455 reserves (§5.2).
    UnknownOpcode(u8),
    /// A control frame without FIN (§5.5: "Control frames MUST NOT be fragmented").
    FragmentedControlFrame,
    /// A control frame with a payload over 125 bytes (§5.5).
    ControlFrameTooLong,
    /// A server received an unmasked frame (§5.1).
    UnmaskedFrame,
    /// A client received a masked frame (§5.1).
    MaskedFrame,
    /// The most significant bit of a 64-bit payload length was set (§5.2).
    InvalidLength,
    /// A continuation frame without a message in progress (§5.4).
    UnexpectedContinuation,
    /// A new data frame while a fragmented message was in progress (§5.4).
    ExpectedContinuation,
    /// A close frame payload of one byte (§5.5.1).
    CloseFrameTooShort,
    /// A close code that may not appear on the wire (§7.4).
    InvalidCloseCode(u16),
    /// A compressed message that does not inflate (RFC 7692 §7.2.2).
    Inflate(String),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedBits => f.write_str("reserved bits must be 0"),
            ProtocolError::CompressedControlOrContinuation => {
                f.write_str("RSV1 set on a control or continuation frame")
            }
            ProtocolError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            ProtocolError::FragmentedControlFrame => f.write_str("fragmented control frame"),
            ProtocolError::ControlFrameTooLong => {
                f.write_str("control frame longer than 125 bytes")
            }
            ProtocolError::UnmaskedFrame => f.write_str("incorrect masking: frame not masked"),
            ProtocolError::MaskedFrame => f.write_str("incorrect masking: frame masked"),
            ProtocolError::InvalidLength => f.write_str("payload length has its high bit set"),
            ProtocolError::UnexpectedContinuation => {
                f.write_str("continuation frame without a message in progress")
            }
            ProtocolError::ExpectedContinuation => {
                f.write_str("new data frame while a fragmented message is in progress")
            }
            ProtocolError::CloseFrameTooShort => f.write_str("close frame payload of 1 byte"),
            ProtocolError::InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
            ProtocolError::Inflate(e) => write!(f, "decompression failed: {e}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Which limit was exceeded, and its configured value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    /// The limit.
    pub limit: Limit,
    /// Its configured maximum.
    pub max: usize,
}

/// The configurable limits (see [`crate::Config`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A message, after decompression (`max_size`).
    MessageSize,
    /// A single frame's payload (`max_frame_size`).
    FrameSize,
    /// The number of frames of one message (`max_fragments`).
    Fragments,
    /// One line of the HTTP head (`max_line_length`).
    HttpLine,
    /// The number of HTTP headers (`max_headers`).
    Headers,
    /// The whole HTTP head or body of the opening handshake (`max_handshake_size`).
    HandshakeSize,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.limit {
            Limit::MessageSize => "message larger than",
            Limit::FrameSize => "frame larger than",
            Limit::Fragments => "message in more fragments than",
            Limit::HttpLine => "HTTP line longer than",
            Limit::Headers => "more HTTP headers than",
            Limit::HandshakeSize => "HTTP handshake larger than",
        };
        let unit = match self.limit {
            Limit::Fragments => "",
            Limit::Headers => "",
            _ => " bytes",
        };
        write!(f, "{what} {}{unit}", self.max)
    }
}

impl std::error::Error for LimitExceeded {}

/// Which deadline passed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// The opening handshake did not complete within `open_timeout`.
    Open,
    /// The closing handshake did not complete within `close_timeout`.
    Close,
    /// No pong answered a keepalive ping within `ping_timeout`.
    KeepalivePing,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Timeout::Open => "opening handshake",
            Timeout::Close => "closing handshake",
            Timeout::KeepalivePing => "keepalive ping",
        })
    }
}

/// Why the opening handshake failed.
///
/// On the server side, [`HandshakeError::status`] is the HTTP status the rejection is answered
/// with.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The HTTP head could not be parsed.
    InvalidHttp(String),
    /// The request method is not GET (RFC 6455 §4.2.1 item 1). Answered with 405.
    InvalidMethod,
    /// A header the handshake requires is missing or wrong. Answered with 400, or 426 for a
    /// missing `Upgrade: websocket`.
    InvalidHeader {
        /// The header's name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `Sec-WebSocket-Version` is not 13 (RFC 6455 §4.4). Answered with 426 and
    /// `Sec-WebSocket-Version: 13`.
    UnsupportedVersion,
    /// The server refused the `Origin` (RFC 6455 §4.2.2 item 4). Answered with 403.
    ForbiddenOrigin,
    /// An extension or subprotocol could not be negotiated.
    Negotiation(String),
    /// A limit of the HTTP parser was exceeded. Answered with 431.
    LimitExceeded(LimitExceeded),
    /// The server answered with a status other than 101; the response is kept, with its body,
    /// so that a client can follow redirects or show the error.
    UnexpectedStatus(Box<HttpResponse>),
    /// The server's `Sec-WebSocket-Accept` does not match the key sent (RFC 6455 §4.1).
    InvalidAccept,
    /// The connection ended before the handshake completed.
    UnexpectedEof,
    /// The server application rejected the handshake with this status.
    Rejected(StatusCode),
}

impl HandshakeError {
    /// The HTTP status a server answers this error with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::InvalidMethod => StatusCode::METHOD_NOT_ALLOWED,
            HandshakeError::InvalidHeader { name, .. } if name.eq_ignore_ascii_case("upgrade") => {
                StatusCode::UPGRADE_REQUIRED
            }
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::ForbiddenOrigin => StatusCode::FORBIDDEN,
            // The head is what a server buffers: a line, the header count or the whole head
            // over its limit are all "header fields too large" (RFC 6585 §5).
            HandshakeError::LimitExceeded(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HandshakeError::UnexpectedStatus(r) => r.status,
            HandshakeError::Rejected(s) => *s,
            HandshakeError::InvalidHttp(_)
            | HandshakeError::InvalidHeader { .. }
            | HandshakeError::Negotiation(_)
            | HandshakeError::InvalidAccept
            | HandshakeError::UnexpectedEof => StatusCode::BAD_REQUEST,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::InvalidHttp(e) => write!(f, "invalid HTTP: {e}"),
            HandshakeError::InvalidMethod => f.write_str("method must be GET"),
            HandshakeError::InvalidHeader { name, reason } => {
                write!(f, "invalid {name} header: {reason}")
            }
            HandshakeError::UnsupportedVersion => f.write_str("unsupported WebSocket version"),
            HandshakeError::ForbiddenOrigin => f.write_str("origin not allowed"),
            HandshakeError::Negotiation(e) => write!(f, "negotiation failed: {e}"),
            HandshakeError::LimitExceeded(e) => write!(f, "{e}"),
            HandshakeError::UnexpectedStatus(r) => {
                write!(f, "server rejected WebSocket connection: HTTP {}", r.status)
            }
            HandshakeError::InvalidAccept => f.write_str("Sec-WebSocket-Accept does not match"),
            HandshakeError::UnexpectedEof => {
                f.write_str("connection closed during the opening handshake")
            }
            HandshakeError::Rejected(s) => write!(f, "rejected with HTTP {s}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A non-101 answer to a client's handshake request, kept whole for redirects and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body (as far as `Content-Length` said, within `max_handshake_size`).
    pub body: bytes::Bytes,
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        Error::Handshake(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl From<LimitExceeded> for Error {
    fn from(e: LimitExceeded) -> Self {
        Error::LimitExceeded(e)
    }
}
