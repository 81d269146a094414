//! The tokio client: `connect(uri)`, `ws://` and `wss://`.

use http::header::{HeaderName, HeaderValue};
use http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::connection::{Info, Stream, TaskConn};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::proto::handshake::Target;
use crate::proto::{Event, Protocol, Side};
use crate::proxy::{Dest, Tunnel};
use crate::redirect::Chain;
use crate::server::{read_until_event, within};
use crate::Connection;

/// How the client builders reach servers, both front ends: the proxy and the redirects.
#[derive(Debug, Clone)]
pub(crate) struct Dial {
    pub(crate) proxy: crate::Proxy,
    pub(crate) max_redirects: usize,
}

impl Default for Dial {
    fn default() -> Self {
        Dial {
            proxy: crate::Proxy::from_env(),
            max_redirects: crate::redirect::DEFAULT_MAX_REDIRECTS,
        }
    }
}

/// What an opening handshake that succeeded leaves: the transport, the core, the request
/// sent and the response.
type Opened<S> = (S, Protocol, http::Request<()>, Box<http::Response<()>>);

/// Builds a client with options other than the defaults.
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    options: Options,
    headers: Vec<(HeaderName, HeaderValue)>,
    reconnect: crate::reconnect::Policy,
    dial: Dial,
    #[cfg(feature = "tls")]
    tls: crate::tls::ClientTls,
}

crate::options::option_setters!(ClientBuilder);
crate::options::client_setters!(ClientBuilder);
#[cfg(feature = "tls")]
crate::options::tls_client_setters!(ClientBuilder);

impl ClientBuilder {
    /// Connects to a `ws://` or `wss://` URI and runs the opening handshake: through the
    /// [`proxy`](Self::proxy), if any, then TLS for `wss://`, following
    /// [redirects](Self::max_redirects).
    pub async fn connect(self, uri: &str) -> Result<Connection> {
        let mut chain = Chain::new(uri, &self.headers, self.dial.max_redirects)?;
        let config = std::sync::Arc::new(self.options.config.clone());
        let open = async {
            loop {
                match self.attempt(&config, &chain).await {
                    Ok(opened) => return Ok::<_, Error>(opened),
                    Err(e) => chain.follow(e)?,
                }
            }
        };
        // Proxy, TCP connect, TLS and WebSocket handshakes, and every redirect, together
        // within open_timeout; the core also times each WebSocket handshake itself.
        let opened = within(self.options.config_open_timeout(), open).await?;
        Ok(self.start(opened, &chain.uri))
    }

    /// Connects to the Unix domain socket at `path` and runs the opening handshake for `uri`,
    /// as [`connect`](Self::connect) does over TCP (python-websockets' `unix_connect`). `uri`
    /// gives the request's `Host` and path, and its port is not used: `ws://localhost/` will
    /// do for a server that does not look at them. `wss://` runs TLS over the socket and
    /// verifies the server's certificate for the URI's host. No proxy applies, and a
    /// redirect is not followed (it is the error). The connection has no
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
        let config = std::sync::Arc::new(self.options.config.clone());
        let open = async {
            let socket = tokio::net::UnixStream::connect(path).await?;
            let stream = self
                .transport(Stream::Unix(Box::new(socket)), &target)
                .await?;
            handshake(stream, &config, &uri, &self.headers).await
        };
        let opened = within(self.options.config_open_timeout(), open).await?;
        Ok(self.start(opened, &uri))
    }

    /// The connection an opening handshake gave: its handle, its driver spawned.
    fn start(&self, opened: Opened<Stream>, uri: &Uri) -> Connection {
        let (stream, proto, request, response) = opened;
        let (local_addr, remote_addr) = stream.addresses();
        let info = Info {
            id: 0,
            side: Side::Client,
            addresses: crate::addresses::Addresses::new(local_addr, remote_addr),
            subprotocol: proto.subprotocol().map(Box::from),
            request: request.into(),
            response: (*response).into(),
        };
        let (conn, driver) = TaskConn::new(proto, stream, Vec::new(), self.options.limits, info);
        let span = tracing::info_span!(target: "sockeye::client", "conn", id = conn.id());
        let uri = crate::redirect::shown(uri);
        tracing::info!(target: "sockeye::client", id = conn.id(), "connection open to {uri}");
        tokio::spawn(driver.instrument(span));
        conn.into()
    }

    /// One opening handshake, with the chain's URI and headers.
    async fn attempt(
        &self,
        config: &std::sync::Arc<crate::proto::Config>,
        chain: &Chain,
    ) -> Result<Opened<Stream>> {
        let tcp = self.tcp(&chain.target).await?;
        let _ = tcp.set_nodelay(true);
        let stream = self
            .transport(Stream::Plain(Box::new(tcp)), &chain.target)
            .await?;
        handshake(stream, config, &chain.uri, &chain.headers).await
    }

    /// A TCP connection to the server: direct, or a tunnel through the proxy.
    async fn tcp(&self, target: &Target) -> Result<TcpStream> {
        let Some(proxy) = self.dial.proxy.select(target)? else {
            return Ok(TcpStream::connect((target.host.as_str(), target.port)).await?);
        };
        let dest = match proxy.dest(&target.host) {
            Some(dest) => dest,
            None => {
                let mut addrs =
                    tokio::net::lookup_host((target.host.as_str(), target.port)).await?;
                let addr = addrs.next().ok_or_else(|| no_address(&target.host))?;
                Dest::Ip(addr.ip())
            }
        };
        let mut tunnel = Tunnel::new(&proxy, &target.host, target.port, dest)?;
        let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port)).await?;
        let mut buf = [0u8; 512];
        loop {
            let out = tunnel.transmit();
            if !out.is_empty() {
                tcp.write_all(&out).await?;
            }
            let want = tunnel.wants().min(buf.len());
            if want == 0 {
                return Ok(tcp);
            }
            match tcp.read(&mut buf[..want]).await? {
                0 => return Err(tunnel.eof()),
                n => tunnel.receive(&buf[..n])?,
            }
        }
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
                    let tls = Box::pin(crate::tls::connect_tokio(tls, host, *tcp)).await?;
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

/// The WebSocket opening handshake for `uri` over an open transport.
async fn handshake(
    mut stream: Stream,
    config: &std::sync::Arc<crate::proto::Config>,
    uri: &Uri,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<Opened<Stream>> {
    let (mut proto, request, out) = start_handshake(config.clone(), uri, headers)?;
    stream.write_all(&out).await?;
    let response = match read_until_event(&mut stream, &mut proto).await? {
        Some(Event::Response(r)) => r,
        _ => return Err(Error::Misuse("handshake ended without a response")),
    };
    Ok((stream, proto, request, response))
}

/// The error for a host name that resolves to no address.
pub(crate) fn no_address(host: &str) -> Error {
    Error::InvalidUri(format!("{host}: no address"))
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
