//! The error type of the front ends.

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::proto::{CloseCode, CloseFrame};

/// What can go wrong on a connection or while opening one.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Error {
    /// The connection is closed. `recv()` returns `Ok(None)` instead when it closed normally
    /// (1000 or 1001 both ways); this error carries the details of any other end.
    ConnectionClosed(Closed),
    /// The opening handshake failed or timed out, or the URI was invalid.
    Handshake(sockeye_proto::HandshakeError),
    /// A protocol error of the peer (the connection was failed with the close code it maps to).
    Protocol(sockeye_proto::Error),
    /// An I/O error on the transport.
    Io(Arc<io::Error>),
    /// The opening handshake did not complete within `open_timeout`.
    OpenTimeout,
    /// The URI is not a valid `ws://` or `wss://` URI.
    InvalidUri(String),
    /// Another task is already waiting in `recv()` on this connection.
    ConcurrentRecv,
    /// The caller used the API in a way it does not allow.
    Misuse(&'static str),
    /// A blocking wait with a time limit ran out: `sockeye::sync`'s `recv_timeout` got no
    /// message, or `PongWaiter::wait` no pong, in time. The connection is still usable.
    RecvTimeout,
    /// A redirect of the opening handshake could not be followed: too many, a loop, `wss://`
    /// to `ws://`, a missing or invalid `Location` (see `ClientBuilder::max_redirects`).
    Redirect(crate::redirect::RedirectError),
    /// The connection through a proxy failed: the proxy refused, wanted credentials, or did
    /// not speak its protocol; or the proxy URL is invalid (see [`crate::Proxy`]).
    Proxy(crate::proxy::ProxyError),
    /// TLS failed: the server's certificate was not trusted (unknown CA, wrong name,
    /// expired), the peer refused ours, or the TLS handshake or a record was bad.
    #[cfg(feature = "tls")]
    Tls(rustls::Error),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close frame received, if any (code 1005 when it was empty).
    pub received: Option<CloseFrame>,
    /// The close frame sent, if any.
    pub sent: Option<CloseFrame>,
}

impl Closed {
    /// The code to report: the peer's, or 1006 when no close frame arrived.
    pub fn code(&self) -> CloseCode {
        self.received
            .as_ref()
            .map_or(CloseCode::ABNORMAL, |c| c.code)
    }

    /// The peer's reason, or empty.
    pub fn reason(&self) -> &str {
        self.received.as_ref().map_or("", |c| c.reason.as_str())
    }

    /// Whether the close was normal: close frames exchanged both ways with 1000, 1001 or no
    /// code (python-websockets' `ConnectionClosedOK`).
    pub fn is_ok(&self) -> bool {
        let ok = |c: &Option<CloseFrame>| {
            c.as_ref()
                .is_some_and(|c| c.code.is_ok() || c.code == CloseCode::NO_STATUS)
        };
        ok(&self.received) && ok(&self.sent)
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.received, &self.sent) {
            (Some(r), Some(s)) if r == s => write!(f, "received and sent close frame {r}"),
            (Some(r), Some(s)) => write!(f, "received close frame {r}; sent close frame {s}"),
            (Some(r), None) => write!(f, "received close frame {r}; no close frame sent"),
            (None, Some(s)) => write!(f, "sent close frame {s}; no close frame received"),
            (None, None) => f.write_str("no close frame received or sent"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ConnectionClosed(c) => write!(f, "connection closed: {c}"),
            Error::Handshake(e) => write!(f, "{e}"),
            Error::Protocol(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::OpenTimeout => f.write_str("timed out during the opening handshake"),
            Error::InvalidUri(u) => write!(f, "invalid WebSocket URI: {u}"),
            Error::ConcurrentRecv => f.write_str(
                "cannot call recv while another task is already waiting for the next message",
            ),
            Error::Misuse(m) => write!(f, "API misuse: {m}"),
            Error::RecvTimeout => f.write_str("timed out waiting"),
            Error::Redirect(e) => write!(f, "{e}"),
            Error::Proxy(e) => write!(f, "{e}"),
            #[cfg(feature = "tls")]
            Error::Tls(e) => write!(f, "TLS error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Handshake(e) => Some(e),
            Error::Protocol(e) => Some(e),
            Error::Io(e) => Some(&**e),
            Error::Redirect(e) => Some(e),
            Error::Proxy(e) => Some(e),
            #[cfg(feature = "tls")]
            Error::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    /// An I/O error, or [`Error::Tls`] when it carries a rustls error (TLS streams report
    /// their failures as I/O errors).
    fn from(e: io::Error) -> Self {
        #[cfg(feature = "tls")]
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Error::Tls(tls.clone());
        }
        Error::Io(Arc::new(e))
    }
}

impl From<sockeye_proto::Error> for Error {
    fn from(e: sockeye_proto::Error) -> Self {
        match e {
            sockeye_proto::Error::Handshake(h) => Error::Handshake(h),
            sockeye_proto::Error::Timeout(sockeye_proto::Timeout::Open) => Error::OpenTimeout,
            sockeye_proto::Error::Misuse(m) => Error::Misuse(m),
            other => Error::Protocol(other),
        }
    }
}

#[cfg(feature = "tls")]
impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Self {
        Error::Tls(e)
    }
}

/// The result type of sockeye.
pub type Result<T, E = Error> = std::result::Result<T, E>;
