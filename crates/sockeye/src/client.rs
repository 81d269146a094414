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
use crate::server::read_until_event;

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
        let config = std::sync::Arc::new(self.options.config.clone());
        let open = async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
            let _ = tcp.set_nodelay(true);
            let mut stream = self.transport(tcp, &target).await?;
            let (mut proto, request, out) = start_handshake(config, &uri, &self.headers)?;
            stream.write_all(&out).await?;
            let response = match read_until_event(&mut stream, &mut proto).await? {
                Some(Event::Response(r)) => r,
                _ => return Err(Error::Misuse("handshake ended without a response")),
            };
            Ok::<_, Error>((stream, proto, request, response))
        };
        // TCP connect, TLS and WebSocket handshakes together within open_timeout; the core
        // also times the WebSocket handshake itself.
        let (stream, proto, request, response) = match self.options.config_open_timeout() {
            Some(t) => tokio::time::timeout(t, open)
                .await
                .map_err(|_| Error::OpenTimeout)??,
            None => open.await?,
        };
        let info = Info {
            id: 0,
            side: Side::Client,
            local_addr: stream.tcp().and_then(|t| t.local_addr().ok()),
            remote_addr: stream.tcp().and_then(|t| t.peer_addr().ok()),
            subprotocol: proto.subprotocol().map(str::to_owned),
            request: request.into(),
            response: (*response).into(),
        };
        let (conn, driver) = Connection::new(proto, stream, Vec::new(), self.options.limits, info);
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

    /// TLS over `tcp` for `wss://`, `tcp` itself for `ws://`.
    async fn transport(&self, tcp: TcpStream, target: &Target) -> Result<Stream> {
        if !target.secure {
            return Ok(Stream::Plain(tcp));
        }
        #[cfg(feature = "tls")]
        {
            let tls = Box::pin(crate::tls::connect_tokio(&self.tls, &target.host, tcp)).await?;
            Ok(Stream::Tls(Box::new(tls)))
        }
        #[cfg(not(feature = "tls"))]
        {
            drop(tcp);
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
