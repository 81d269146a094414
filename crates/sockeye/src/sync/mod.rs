//! The blocking front end: the same API as the tokio one, for code without async.
//!
//! Plain `std::net` sockets and threads, no hidden runtime. Names, options, defaults and
//! errors are those of the tokio front end; every protocol rule (keepalive, the open and
//! close timeouts, ping/pong matching, limits) comes from the same core,
//! [`sockeye_proto::Protocol`], driven through its timers and events.
//!
//! # Server
//!
//! ```no_run
//! # fn run() -> Result<(), sockeye::BoxError> {
//! // An echo server: the handler runs once per connection, in its own thread; returning
//! // closes the connection (1000), an error fails it (1011).
//! let server = sockeye::sync::serve("127.0.0.1:8765", |ws: sockeye::sync::Connection| {
//!     while let Some(msg) = ws.recv()? {
//!         ws.send(msg)?;
//!     }
//!     Ok(())
//! })?;
//! server.serve_forever()?;
//! # Ok(()) }
//! ```
//!
//! # Client
//!
//! ```no_run
//! # fn run() -> Result<(), sockeye::BoxError> {
//! let ws = sockeye::sync::connect("ws://127.0.0.1:8765")?;
//! ws.send("Hello!")?;
//! let reply = ws.recv_timeout(std::time::Duration::from_secs(5))?;
//! ws.close(sockeye::CloseCode::NORMAL, "")?;
//! # Ok(()) }
//! ```
//!
//! # Threads and memory
//!
//! Each connection has a background **I/O thread** that owns reading: it sleeps in a
//! blocking `read` whose timeout is the core's next deadline, feeds the core, fires its
//! timers and moves messages to the receive queue. So pings are answered, keepalive pings
//! sent and the closing handshake run while the application never calls `recv`, and one
//! thread may send while another is blocked in `recv`. Writes happen in the thread that
//! produced the output (a `send` writes its own frame), or in the I/O thread for pongs and
//! close frames; a mutex keeps frames whole and in order.
//!
//! Cost per connection: a server connection has two threads (the handler's, which also did
//! the handshake, and the I/O thread), a client connection one (its I/O thread, beside the
//! caller's). Each thread reserves the platform's default stack (2 MiB of address space on
//! Linux, of which only the pages touched become resident, a few KiB); the I/O thread holds a
//! 16 KiB read buffer. That is more than the tokio front end (no thread per connection, no
//! read buffer while idle): use the tokio front end for many thousands of connections.
//!
//! Blocking calls: `recv` blocks until a message arrives or the connection ends (use
//! [`Connection::recv_timeout`] for a limit: [`Error::RecvTimeout`](crate::Error::RecvTimeout));
//! `send` blocks while more than `write_limit` bytes wait and while its frame is written;
//! `close` blocks until the closing handshake is over (at most `close_timeout`).
//!
//! [`Server::shutdown`] wakes the accept loop, which `std` cannot interrupt, by connecting to
//! the server's own address (or socket path). It may be called from any thread: a thread
//! that waits for SIGTERM calls it while the main thread sits in
//! [`Server::serve_forever`] (example `graceful_shutdown_sync`).
//!
//! Unix domain sockets: `unix_serve(path, handler)` and `unix_connect(path, uri)`, with the
//! same rules as the tokio front end's.
//!
//! TLS (`wss://`, feature `tls`): the same builder options as the tokio front end. The TLS
//! handshake runs in the connection's thread; a TLS connection's I/O thread holds a 16 KiB
//! ciphertext buffer besides its read buffer, and the session (see `sockeye::tls`).
//!
//! Logs go through `tracing`, targets `sockeye::server` and `sockeye::client`.

pub(crate) mod client;
mod connection;
pub(crate) mod server;
pub(crate) mod stream;

pub use client::{connect, reconnecting, ClientBuilder, Reconnecting};
pub use connection::{broadcast, Connection, Fragments, PongWaiter};
pub use server::{serve, Server, ServerBuilder};
#[cfg(unix)]
pub use {client::unix_connect, server::unix_serve};
// Routing (issue 6).
pub use server::{route, Router};
