//! The tokio client: `connect(uri)`.

use http::header::{HeaderName, HeaderValue};
use http::Uri;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::connection::{Connection, Info};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::proto::{Event, Protocol, Side};
use crate::server::read_until_event;

/// Builds a client with options other than the defaults.
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    options: Options,
    headers: Vec<(HeaderName, HeaderValue)>,
}

crate::options::option_setters!(ClientBuilder);
crate::options::client_setters!(ClientBuilder);

impl ClientBuilder {
    /// Connects to a `ws://` URI and runs the opening handshake.
    pub async fn connect(self, uri: &str) -> Result<Connection> {
        let (uri, host, port) = plain_target(uri)?;
        let config = std::sync::Arc::new(self.options.config.clone());
        let open = async {
            let mut stream = TcpStream::connect((host.as_str(), port)).await?;
            let _ = stream.set_nodelay(true);
            let mut proto = Protocol::client(config);
            // Stream mode from the start, so that messages pipelined with the handshake are
            // fragments too (see Connection::new).
            proto.set_stream_fragments(true);
            let mut request = proto.connect_request(&uri)?;
            for (name, value) in &self.headers {
                request.headers_mut().append(name.clone(), value.clone());
            }
            proto.send_request(&request)?;
            let mut out = Vec::new();
            proto.poll_transmit(&mut out);
            stream.write_all(&out).await?;
            let response = match read_until_event(&mut stream, &mut proto).await? {
                Some(Event::Response(r)) => r,
                _ => return Err(Error::Misuse("handshake ended without a response")),
            };
            Ok::<_, Error>((stream, proto, request, response))
        };
        // TCP connect and handshake together within open_timeout; the core also times the
        // handshake itself.
        let (stream, proto, request, response) = match self.options.config_open_timeout() {
            Some(t) => tokio::time::timeout(t, open)
                .await
                .map_err(|_| Error::OpenTimeout)??,
            None => open.await?,
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
        let (conn, driver) = Connection::new(proto, stream, Vec::new(), self.options.limits, info);
        let span = tracing::info_span!(target: "sockeye::client", "conn", id = conn.id());
        tracing::info!(target: "sockeye::client", id = conn.id(), "connection open to {uri}");
        tokio::spawn(driver.instrument(span));
        Ok(conn)
    }
}

/// Parses a `ws://` URI into what both front ends connect to; `wss://` is refused until TLS
/// lands (the core's [`Target`](crate::proto::handshake::Target) knows its default port).
pub(crate) fn plain_target(uri: &str) -> Result<(Uri, String, u16)> {
    let uri: Uri = uri.parse().map_err(|_| Error::InvalidUri(uri.to_owned()))?;
    let target = crate::proto::handshake::Target::from_uri(&uri)
        .map_err(|e| Error::InvalidUri(e.to_string()))?;
    if target.secure {
        return Err(Error::InvalidUri(format!(
            "{uri}: wss:// (TLS) is not supported by this version"
        )));
    }
    Ok((uri, target.host, target.port))
}

/// Connects to a `ws://` URI with the default options. See [`ClientBuilder::connect`].
pub async fn connect(uri: &str) -> Result<Connection> {
    ClientBuilder::default().connect(uri).await
}
