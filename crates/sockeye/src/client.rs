//! The tokio client: `connect(uri)`, `ws://` and `wss://`.

use http::header::{HeaderName, HeaderValue};
use http::Uri;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::connection::{Connection, Info, Stream};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::proto::handshake::Target;
use crate::proto::{Event, Protocol, Side};
use crate::server::{read_until_event, within};

/// Builds a client with options other than the defaults.
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    options: Options,
    headers: Vec<(HeaderName, HeaderValue)>,
    reconnect: crate::reconnect::Policy,
    #[cfg(feature = "tls")]
    tls: crate::tls::ClientTls,
}

crate::options::option_setters!(ClientBuilder);
crate::options::client_setters!(ClientBuilder);
#[cfg(feature = "tls")]
crate::options::tls_client_setters!(ClientBuilder);

impl ClientBuilder {
    /// Connects to a `ws://` or `wss://` URI and runs the opening handshake (TLS first for
    /// `wss://`).
    pub async fn connect(self, uri: &str) -> Result<Connection> {
        let (uri, target) = target(uri)?;
        let dial = async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
            let _ = tcp.set_nodelay(true);
            self.transport(Stream::Plain(tcp), &target).await
        };
        self.open(&uri, dial).await
    }

    /// Connects to the Unix domain socket at `path` and runs the opening handshake for `uri`,
    /// as [`connect`](Self::connect) does over TCP (python-websockets' `unix_connect`). `uri`
    /// gives the request's `Host` and path, and its port is not used: `ws://localhost/` will
    /// do for a server that does not look at them. `wss://` runs TLS over the socket and
    /// verifies the server's certificate for the URI's host. The connection has no
    /// [`local_addr`](Connection::local_addr) nor [`remote_addr`](Connection::remote_addr).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sockeye::BoxError> {
    /// let ws = sockeye::ClientBuilder::default()
    ///     .max_size(64 * 1024)
    ///     .unix_connect("/run/app/ws.sock", "ws://localhost/chat")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(unix)]
    pub async fn unix_connect(
        self,
        path: impl AsRef<std::path::Path>,
        uri: &str,
    ) -> Result<Connection> {
        let (uri, target) = target(uri)?;
        let dial = async {
            let socket = tokio::net::UnixStream::connect(path).await?;
            self.transport(Stream::Unix(Box::new(socket)), &target)
                .await
        };
        self.open(&uri, dial).await
    }

    /// The opening: `dial` (connect, TLS) then the WebSocket handshake, all within
    /// `open_timeout`; spawns the connection's driver.
    async fn open(
        &self,
        uri: &Uri,
        dial: impl std::future::Future<Output = Result<Stream>>,
    ) -> Result<Connection> {
        let config = std::sync::Arc::new(self.options.config.clone());
        let open = async {
            let mut stream = dial.await?;
            let (mut proto, request, out) = start_handshake(config, uri, &self.headers)?;
            stream.write_all(&out).await?;
            let response = match read_until_event(&mut stream, &mut proto).await? {
                Some(Event::Response(r)) => r,
                _ => return Err(Error::Misuse("handshake ended without a response")),
            };
            Ok::<_, Error>((stream, proto, request, response))
        };
        // Connect, TLS and WebSocket handshakes together within open_timeout; the core also
        // times the WebSocket handshake itself.
        let (stream, proto, request, response) =
            within(self.options.config_open_timeout(), open).await?;
        let (local_addr, remote_addr) = stream.addresses();
        let info = Info {
            id: 0,
            side: Side::Client,
            local_addr,
            remote_addr,
            subprotocol: proto.subprotocol().map(str::to_owned),
            request: request.into(),
            response: (*response).into(),
        };
        let limits = self.options.limits;
        let (conn, driver) = Connection::new(proto, stream, Vec::new(), limits, info);
        let span = tracing::info_span!(target: "sockeye::client", "conn", id = conn.id());
        tracing::info!(target: "sockeye::client", id = conn.id(), "connection open to {uri}");
        tokio::spawn(driver.instrument(span));
        Ok(conn)
    }

    /// A client that reconnects: a stream of connections to `uri` (see
    /// [`Reconnecting`](crate::Reconnecting)), with this builder's options, its
    /// [`backoff`](Self::backoff) and its [`retry_if`](Self::retry_if) hook. Nothing happens
    /// until the first `next`; an invalid URI is its error.
    pub fn reconnecting(self, uri: &str) -> crate::Reconnecting {
        let policy = self.reconnect.clone();
        crate::Reconnecting::new(self, uri, policy)
    }

    /// TLS over `socket` (a bare TCP or Unix socket) for `wss://`, `socket` itself for
    /// `ws://`.
    async fn transport(&self, socket: Stream, target: &Target) -> Result<Stream> {
        if !target.secure {
            return Ok(socket);
        }
        #[cfg(feature = "tls")]
        {
            let (tls, host) = (&self.tls, &target.host);
            match socket {
                Stream::Plain(tcp) => {
                    let tls = Box::pin(crate::tls::connect_tokio(tls, host, tcp)).await?;
                    Ok(Stream::Tls(Box::new(tls)))
                }
                #[cfg(unix)]
                Stream::Unix(unix) => {
                    let tls = Box::pin(crate::tls::connect_tokio(tls, host, *unix)).await?;
                    Ok(Stream::UnixTls(Box::new(tls)))
                }
                // Dialled sockets are bare.
                other => Ok(other),
            }
        }
        #[cfg(not(feature = "tls"))]
        {
            drop(socket);
            Err(no_tls())
        }
    }
}

/// The error for `wss://` in a build without the `tls` feature.
#[cfg(not(feature = "tls"))]
fn no_tls() -> Error {
    Error::InvalidUri("wss:// needs the `tls` feature of sockeye".to_owned())
}

/// Parses a `ws://` or `wss://` URI into what both front ends connect to (the core's
/// [`Target`]: host, port, TLS or not).
pub(crate) fn target(uri: &str) -> Result<(Uri, Target)> {
    let uri: Uri = uri.parse().map_err(|_| Error::InvalidUri(uri.to_owned()))?;
    let target = Target::from_uri(&uri).map_err(|e| Error::InvalidUri(e.to_string()))?;
    #[cfg(not(feature = "tls"))]
    if target.secure {
        return Err(no_tls());
    }
    Ok((uri, target))
}

/// The client's side of the opening handshake up to the request (both front ends): the
/// core, the request sent (with the builder's extra headers), and its bytes to write.
pub(crate) fn start_handshake(
    config: std::sync::Arc<crate::proto::Config>,
    uri: &Uri,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<(Protocol, http::Request<()>, Vec<u8>)> {
    let mut proto = Protocol::client(config);
    // Stream mode from the start, as the connections built on it run (see `queue.rs`).
    proto.set_stream_fragments(true);
    let mut request = proto.connect_request(uri)?;
    for (name, value) in headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    proto.send_request(&request)?;
    let mut out = Vec::new();
    proto.poll_transmit(&mut out);
    Ok((proto, request, out))
}

/// Connects to a `ws://` or `wss://` URI with the default options. See
/// [`ClientBuilder::connect`].
pub async fn connect(uri: &str) -> Result<Connection> {
    ClientBuilder::default().connect(uri).await
}

/// Connects to a server on the Unix domain socket at `path`, with the default options; `uri`
/// gives the handshake's `Host` and path (`ws://localhost/`). See
/// [`ClientBuilder::unix_connect`].
#[cfg(unix)]
pub async fn unix_connect(path: impl AsRef<std::path::Path>, uri: &str) -> Result<Connection> {
    ClientBuilder::default().unix_connect(path, uri).await
}
