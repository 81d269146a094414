//! The blocking client: `connect(uri)`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue};

use super::connection::Connection;
use super::server::read_until_event;
use super::stream::{Socket, Transport};
use crate::connection::Info;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::proto::handshake::Target;
use crate::proto::{CloseCode, Event, Protocol, Side};
use crate::proxy::{Dest, Tunnel};
use crate::reconnect::{Core, Outcome};
use crate::redirect::Chain;

/// Builds a blocking client with options other than the defaults: the same options, with the
/// same defaults, as [`crate::ClientBuilder`].
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    options: Options,
    headers: Vec<(HeaderName, HeaderValue)>,
    reconnect: crate::reconnect::Policy,
    dial: crate::client::Dial,
    #[cfg(feature = "tls")]
    tls: crate::tls::ClientTls,
}

crate::options::option_setters!(ClientBuilder);
crate::options::client_setters!(ClientBuilder);
#[cfg(feature = "tls")]
crate::options::tls_client_setters!(ClientBuilder);

impl ClientBuilder {
    /// Connects to a `ws://` or `wss://` URI and runs the opening handshake (through the
    /// [`proxy`](Self::proxy), if any, then TLS for `wss://`, following
    /// [redirects](Self::max_redirects)), blocking until the connection is open (at most
    /// `open_timeout` for all of it). Starts the connection's I/O thread.
    pub fn connect(self, uri: &str) -> Result<Connection> {
        let mut chain = Chain::new(uri, &self.headers, self.dial.max_redirects)?;
        let start = Instant::now();
        let deadline = self.options.config_open_timeout().map(|t| start + t);
        let config = std::sync::Arc::new(self.options.config.clone());
        let opened = loop {
            match self.attempt(&config, &chain, start, deadline) {
                Ok(opened) => break opened,
                Err(e) => chain.follow(e)?,
            }
        };
        self.start(opened, &chain.uri)
    }

    /// Connects to the Unix domain socket at `path` and runs the opening handshake for
    /// `uri`, as [`connect`](Self::connect) does over TCP: the blocking twin of
    /// [`crate::ClientBuilder::unix_connect`]. `uri` gives the request's `Host` and path
    /// (its port is not used); `wss://` runs TLS over the socket, verifying the URI's host.
    /// No proxy applies, and a redirect is not followed (it is the error). `open_timeout`
    /// bounds the handshakes; the `connect` itself returns at once on a Unix socket (`std`
    /// cannot time it), unless the server's backlog is full.
    #[cfg(unix)]
    pub fn unix_connect(self, path: impl AsRef<std::path::Path>, uri: &str) -> Result<Connection> {
        let (uri, target) = crate::client::target(uri)?;
        let start = Instant::now();
        let deadline = self.options.config_open_timeout().map(|t| start + t);
        let config = std::sync::Arc::new(self.options.config.clone());
        let socket = std::os::unix::net::UnixStream::connect(path)?;
        let stream = self.transport(Socket::Unix(socket), &target, deadline)?;
        let opened = handshake(stream, &config, &uri, &self.headers, start)?;
        self.start(opened, &uri)
    }

    /// The connection an opening handshake gave, its I/O thread started.
    fn start(&self, opened: Opened, uri: &http::Uri) -> Result<Connection> {
        let (stream, proto, request, response) = opened;
        let (local_addr, remote_addr) = stream.socket.addresses();
        let info = Info {
            id: 0,
            side: Side::Client,
            addresses: crate::addresses::Addresses::new(local_addr, remote_addr),
            subprotocol: proto.subprotocol().map(Box::from),
            request: request.into(),
            response: (*response).into(),
        };
        let conn = Connection::new(proto, stream, self.options.limits, info)?;
        let uri = crate::redirect::shown(uri);
        tracing::info!(target: "sockeye::client", id = conn.id(), "connection open to {uri}");
        Ok(conn)
    }

    /// One opening handshake, with the chain's URI and headers, until `deadline`.
    fn attempt(
        &self,
        config: &std::sync::Arc<crate::proto::Config>,
        chain: &Chain,
        start: Instant,
        deadline: Option<Instant>,
    ) -> Result<Opened> {
        let tcp = self.tcp(&chain.target, deadline)?;
        let _ = tcp.set_nodelay(true);
        let stream = self.transport(Socket::Tcp(tcp), &chain.target, deadline)?;
        handshake(stream, config, &chain.uri, &chain.headers, start)
    }

    /// A TCP connection to the server, within `deadline`: direct, or a tunnel through the
    /// proxy.
    fn tcp(&self, target: &Target, deadline: Option<Instant>) -> Result<TcpStream> {
        let Some(proxy) = self.dial.proxy.select(target)? else {
            return tcp_connect(&target.host, target.port, deadline);
        };
        let dest = match proxy.dest(&target.host) {
            Some(dest) => dest,
            None => {
                let mut addrs = (target.host.as_str(), target.port).to_socket_addrs()?;
                let addr = addrs
                    .next()
                    .ok_or_else(|| crate::client::no_address(&target.host))?;
                Dest::Ip(addr.ip())
            }
        };
        let mut tunnel = Tunnel::new(&proxy, &target.host, target.port, dest)?;
        let mut tcp = tcp_connect(&proxy.host, proxy.port, deadline)?;
        let mut buf = [0u8; 512];
        loop {
            let left = time_left(deadline)?;
            tcp.set_read_timeout(left)?;
            tcp.set_write_timeout(left)?;
            let out = tunnel.transmit();
            if !out.is_empty() {
                tcp.write_all(&out).map_err(timed_out)?;
            }
            let want = tunnel.wants().min(buf.len());
            if want == 0 {
                tcp.set_read_timeout(None)?;
                tcp.set_write_timeout(None)?;
                return Ok(tcp);
            }
            match tcp.read(&mut buf[..want]).map_err(timed_out)? {
                0 => return Err(tunnel.eof()),
                n => tunnel.receive(&buf[..n])?,
            }
        }
    }

    /// A client that reconnects: an iterator of connections to `uri` (see [`Reconnecting`]),
    /// with this builder's options, its [`backoff`](Self::backoff) and its
    /// [`retry_if`](Self::retry_if) hook. Nothing happens until the first `next`; an invalid
    /// URI is its error.
    pub fn reconnecting(self, uri: &str) -> Reconnecting {
        let core = Core::new(uri, self.reconnect.clone());
        Reconnecting {
            builder: self,
            core,
        }
    }

    /// TLS over `socket` for `wss://` (handshake until `deadline`), `socket` itself for
    /// `ws://`.
    fn transport(
        &self,
        tcp: Socket,
        target: &Target,
        deadline: Option<Instant>,
    ) -> Result<Transport> {
        #[cfg(feature = "tls")]
        if target.secure {
            let mut tcp = tcp;
            let session = crate::tls::connect_sync(&self.tls, &target.host, &mut tcp, deadline)?;
            return Ok(Transport::tls(session, tcp)?);
        }
        let _ = (target, deadline);
        Ok(Transport::plain(tcp)?)
    }
}

/// The WebSocket opening handshake for `uri` over an open transport. The core's open
/// timeout counts from `start`: proxy, connect, handshakes and redirects together.
fn handshake(
    mut stream: Transport,
    config: &std::sync::Arc<crate::proto::Config>,
    uri: &http::Uri,
    headers: &[(HeaderName, HeaderValue)],
    start: Instant,
) -> Result<Opened> {
    let (mut proto, request, out) = crate::client::start_handshake(config.clone(), uri, headers)?;
    proto.handle_timeout(start);
    stream.write_all(&out)?;
    let response = match read_until_event(&mut stream, &mut proto)? {
        Some(Event::Response(r)) => r,
        _ => return Err(Error::Misuse("handshake ended without a response")),
    };
    Ok((stream, proto, request, response))
}

/// What an opening handshake that succeeded leaves: the transport, the core, the request
/// sent and the response.
type Opened = (
    Transport,
    Protocol,
    http::Request<()>,
    Box<http::Response<()>>,
);

/// The time left until `deadline` (`None`: no deadline), or [`Error::OpenTimeout`] once it
/// has passed: the socket timeouts of a blocking opening handshake.
pub(crate) fn time_left(deadline: Option<Instant>) -> Result<Option<Duration>> {
    match deadline {
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(Some(left)),
            _ => Err(Error::OpenTimeout),
        },
        None => Ok(None),
    }
}

/// A socket timeout is the open timeout running out.
fn timed_out(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::OpenTimeout,
        _ => e.into(),
    }
}

/// Opens the TCP connection, trying each address in turn, within `deadline`.
fn tcp_connect(host: &str, port: u16, deadline: Option<Instant>) -> Result<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        let result = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::OpenTimeout);
                }
                TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1)))
            }
            None => TcpStream::connect(addr),
        };
        match result {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => last = Some(Error::OpenTimeout),
            Err(e) => last = Some(e.into()),
        }
    }
    Err(last.unwrap_or_else(|| crate::client::no_address(host)))
}

/// A blocking client that reconnects: an iterator of connections to one URI, from
/// [`ClientBuilder::reconnecting`] or [`reconnecting`]; the blocking twin of
/// [`crate::Reconnecting`], with the same policy.
///
/// The first item is the first connection that opens; asking for the next item closes the
/// previous connection (1000, if still open; waiting at most `close_timeout`) and connects
/// again. Failed attempts are retried, sleeping [`crate::Backoff`]'s delays in between, while
/// [`crate::is_retryable`] (or the builder's `retry_if` hook) says so, each logged at INFO
/// (target `sockeye::client`); a fatal error is the last item.
///
/// ```no_run
/// # fn run() -> Result<(), sockeye::BoxError> {
/// for ws in sockeye::sync::reconnecting("ws://127.0.0.1:8765") {
///     let ws = ws?;
///     // Until the connection ends, normally or not: then reconnect.
///     while let Ok(Some(msg)) = ws.recv() {
///         println!("{msg:?}");
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Reconnecting {
    builder: ClientBuilder,
    core: Core<Connection>,
}

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.fmt(f)
    }
}

impl Iterator for Reconnecting {
    type Item = Result<Connection>;

    /// Closes the previous connection, then connects until a connection opens (retrying
    /// transient errors, sleeping in between) or an error is fatal; `None` after that error.
    fn next(&mut self) -> Option<Result<Connection>> {
        if let Some(previous) = self.core.start()? {
            let _ = previous.close(CloseCode::NORMAL, "");
        }
        loop {
            let result = self.builder.clone().connect(&self.core.uri);
            match self.core.attempted(result) {
                Outcome::Yield(item) => return Some(item),
                Outcome::Retry(delay) => std::thread::sleep(delay),
            }
        }
    }
}

/// A blocking reconnecting client with the default options. See
/// [`ClientBuilder::reconnecting`].
pub fn reconnecting(uri: &str) -> Reconnecting {
    ClientBuilder::default().reconnecting(uri)
}

/// Connects to a server on the Unix domain socket at `path`, with the default options; `uri`
/// gives the handshake's `Host` and path. See [`ClientBuilder::unix_connect`].
#[cfg(unix)]
pub fn unix_connect(path: impl AsRef<std::path::Path>, uri: &str) -> Result<Connection> {
    ClientBuilder::default().unix_connect(path, uri)
}

/// Connects to a `ws://` or `wss://` URI with the default options. See [`ClientBuilder::connect`].
pub fn connect(uri: &str) -> Result<Connection> {
    ClientBuilder::default().connect(uri)
}
