//! sockeye-proto: the sans-I/O WebSocket protocol core of sockeye.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod close;
pub mod config;
pub mod error;
pub mod extensions;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use config::Config;
pub use error::{
    Error, HandshakeError, HttpResponse, Limit, LimitExceeded, ProtocolError, Timeout,
};
pub use frame::{Frame, OpCode};

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The end that accepted the TCP connection; receives masked frames.
    Server,
    /// The end that opened it; masks every frame it sends.
    Client,
}
