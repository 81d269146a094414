//! sockeye-proto: the sans-I/O WebSocket protocol core of sockeye.
//!
//! This crate implements RFC 6455 (The WebSocket Protocol) and RFC 7692 (permessage-deflate)
//! as a deterministic state machine, [`Protocol`]. It performs no I/O: it knows nothing of
//! sockets, threads, async runtimes or clocks. A *front end* (sockeye's tokio driver, its
//! blocking driver, or yours) moves bytes between the network and the core:
//!
//! ```text
//!            bytes read                        events
//! socket ───────────────▶ receive_data() ───▶ poll_event(): Request, Response, Message,
//!        ◀─────────────── pending_output()     Fragment, Ping, Pong, Close
//!            bytes to write
//!                         handle_timeout(now) ◀── clock;  poll_timeout() ──▶ next wake-up
//!  commands: accept / send_response, connect_request / send_request,
//!            send_text, send_binary, send_fragment, send_ping, send_pong, close, fail
//! ```
//!
//! What the core does: frame parsing and serialisation, masking, UTF-8 validation (fail-fast,
//! across fragments), message assembly, control frames, the opening handshake on both sides
//! (with HTTP limits and the right status for each rejection), extension and subprotocol
//! negotiation, permessage-deflate with every parameter, the closing handshake, keepalive
//! pings and their timeout, the open and close timeouts, and every limit.
//!
//! What it does not do: read or write sockets, TLS, DNS, proxies, redirects (it reports the
//! 3xx response; following it is the front end's job), spawn anything.
//!
//! # A minimal driver
//!
//! A server connection, driven by hand over in-memory "sockets". A real front end does the
//! same with reads and writes, and sleeps until [`Protocol::poll_timeout`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use sockeye_proto::{Config, Event, Message, Protocol};
//!
//! let config = Arc::new(Config::new());
//! let mut server = Protocol::server(config.clone());
//! let mut client = Protocol::client(config);
//! let now = Instant::now();
//! server.handle_timeout(now);
//! client.handle_timeout(now);
//!
//! // Client: build and send the handshake request.
//! let request = client.connect_request(&"ws://example.com/chat".parse().unwrap()).unwrap();
//! client.send_request(&request).unwrap();
//!
//! // Move bytes client -> server, and let the server answer.
//! let mut wire = Vec::new();
//! client.poll_transmit(&mut wire);
//! server.receive_data(&wire).unwrap();
//! while let Some(event) = server.poll_event() {
//!     if let Event::Request(request) = event {
//!         let response = server.accept(&request);
//!         server.send_response(&response).unwrap();
//!     }
//! }
//!
//! // Server -> client: the 101 response opens the client.
//! wire.clear();
//! server.poll_transmit(&mut wire);
//! client.receive_data(&wire).unwrap();
//! assert!(matches!(client.poll_event(), Some(Event::Response(_))));
//!
//! // An echo round trip.
//! client.send_text("Hello!").unwrap();
//! wire.clear();
//! client.poll_transmit(&mut wire);
//! server.receive_data(&wire).unwrap();
//! while let Some(event) = server.poll_event() {
//!     if let Event::Message(message) = event {
//!         server.send(&message).unwrap();
//!     }
//! }
//! wire.clear();
//! server.poll_transmit(&mut wire);
//! client.receive_data(&wire).unwrap();
//! match client.poll_event() {
//!     Some(Event::Message(m)) => assert_eq!(m, Message::from("Hello!")),
//!     other => panic!("expected the echo, got {other:?}"),
//! }
//! ```
//!
//! # Design notes
//!
//! - Zero copy: payloads of uncompressed single-frame messages are [`bytes::Bytes`] views of
//!   the receive buffer, unmasked in place. Everything to send is serialised into one output
//!   buffer, so a front end writes all the frames produced by one batch of input in one
//!   system call ("corking").
//! - Limits are checked before allocating: the declared frame length against
//!   `max_frame_size` and `max_size`, inflated bytes against `max_size` while inflating, HTTP
//!   lines, header count and handshake size while parsing.
//! - A fatal error queues the close frame (or HTTP error) and is returned again by every later
//!   input call. [`Error::close_code`] is the one mapping from errors to close codes.
//! - No `unsafe`: masking is a word-wise XOR that the compiler vectorises, UTF-8 is
//!   checked by `simdutf8`.
//!
//! There are no feature flags.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod close;
pub mod config;
pub mod error;
pub mod extensions;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod protocol;
mod rng;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use config::Config;
pub use error::{
    Error, HandshakeError, HttpResponse, Limit, LimitExceeded, ProtocolError, Timeout,
};
pub use extensions::deflate::{DeflateConfig, DeflateParams};
pub use frame::{Frame, OpCode};
pub use message::{Assembler, Fragment, Message, MessageKind, PreparedMessage, Utf8Bytes};
pub use protocol::{Event, PingId, Protocol, State};

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The end that accepted the TCP connection; receives masked frames.
    Server,
    /// The end that opened it; masks every frame it sends.
    Client,
}
