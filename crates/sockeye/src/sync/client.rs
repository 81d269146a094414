//! The blocking client: `connect(uri)`.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue};

use super::connection::Connection;
use super::server::read_until_event;
use crate::connection::Info;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::proto::{Event, Protocol, Side};

/// Builds a blocking client with options other than the defaults: the same options, with the
/// same defaults, as [`crate::ClientBuilder`].
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    options: Options,
    headers: Vec<(HeaderName, HeaderValue)>,
}

crate::options::option_setters!(ClientBuilder);
crate::options::client_setters!(ClientBuilder);

impl ClientBuilder {
    /// Connects to a `ws://` URI and runs the opening handshake, blocking until the
    /// connection is open (at most `open_timeout` for TCP connect and handshake together).
    /// Starts the connection's I/O thread.
    pub fn connect(self, uri: &str) -> Result<Connection> {
        let (uri, host, port) = crate::client::plain_target(uri)?;
        let start = Instant::now();
        let deadline = self.options.config_open_timeout().map(|t| start + t);
        let mut stream = tcp_connect(&host, port, deadline)?;
        let _ = stream.set_nodelay(true);
        let config = std::sync::Arc::new(self.options.config.clone());
        let mut proto = Protocol::client(config);
        // The core's open timeout counts from here: TCP connect and handshake together.
        proto.handle_timeout(start);
        let mut request = proto.connect_request(&uri)?;
        for (name, value) in &self.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        proto.send_request(&request)?;
        let mut out = Vec::new();
        proto.poll_transmit(&mut out);
        stream.write_all(&out)?;
        let response = match read_until_event(&mut stream, &mut proto)? {
            Some(Event::Response(r)) => r,
            _ => return Err(Error::Misuse("handshake ended without a response")),
        };
        let info = Info {
            id: 0,
            side: Side::Client,
            local_addr: stream.local_addr().ok(),
            remote_addr: stream.peer_addr().ok(),
            subprotocol: proto.subprotocol().map(str::to_owned),
            request,
            response: *response,
        };
        let conn = Connection::new(proto, stream, self.options.limits, info)?;
        tracing::info!(target: "sockeye::client", id = conn.id(), "connection open to {uri}");
        Ok(conn)
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
    Err(last.unwrap_or_else(|| Error::InvalidUri(format!("{host}: no address"))))
}

/// Connects to a `ws://` URI with the default options. See [`ClientBuilder::connect`].
pub fn connect(uri: &str) -> Result<Connection> {
    ClientBuilder::default().connect(uri)
}
