//! Configuration of a connection: limits, timeouts, negotiation preferences.

use std::time::Duration;

use crate::extensions::deflate::DeflateConfig;

/// The settings of a connection. Cheap to share: front ends keep one in an `Arc` for all the
/// connections of a server or client.
///
/// Defaults follow python-websockets. Every limit is finite by default; each setter's doc says
/// what the limit guards against.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) max_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) max_fragments: usize,
    pub(crate) max_line_length: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_handshake_size: usize,
    pub(crate) compression: Option<DeflateConfig>,
    pub(crate) fallback_offers: Vec<DeflateConfig>,
    pub(crate) subprotocols: Vec<String>,
    pub(crate) origins: Option<Vec<Option<String>>>,
    pub(crate) user_agent: Option<String>,
    pub(crate) server_header: Option<String>,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) ping_timeout: Option<Duration>,
    pub(crate) open_timeout: Option<Duration>,
    pub(crate) close_timeout: Duration,
    pub(crate) stream_fragments: bool,
    pub(crate) seed: Option<u64>,
}

/// The `User-Agent` and `Server` value sent by default.
pub const DEFAULT_AGENT: &str = concat!("sockeye/", env!("CARGO_PKG_VERSION"));

impl Default for Config {
    fn default() -> Self {
        Config {
            max_size: 1 << 20,
            max_frame_size: 1 << 20,
            max_fragments: 1 << 16,
            max_line_length: 8192,
            max_headers: 128,
            max_handshake_size: 64 * 1024,
            compression: Some(DeflateConfig::default()),
            fallback_offers: Vec::new(),
            subprotocols: Vec::new(),
            origins: None,
            user_agent: Some(DEFAULT_AGENT.to_owned()),
            server_header: Some(DEFAULT_AGENT.to_owned()),
            ping_interval: Some(Duration::from_secs(20)),
            ping_timeout: Some(Duration::from_secs(20)),
            open_timeout: Some(Duration::from_secs(10)),
            close_timeout: Duration::from_secs(10),
            stream_fragments: false,
            seed: None,
        }
    }
}

impl Config {
    /// The default configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Largest message accepted, in bytes, after decompression. Default 1 MiB.
    ///
    /// Guards memory: a message is buffered whole before it is delivered, and a compressed
    /// message is inflated no further than this (a "zip bomb" allocates at most `max_size`).
    /// Exceeding it fails the connection with 1009.
    pub fn max_size(&mut self, bytes: usize) -> &mut Self {
        self.max_size = bytes;
        self
    }

    /// Largest frame payload accepted, in bytes, as declared in its header. Default 1 MiB.
    ///
    /// Checked on the header, before any of the payload is buffered. Exceeding it fails the
    /// connection with 1009.
    pub fn max_frame_size(&mut self, bytes: usize) -> &mut Self {
        self.max_frame_size = bytes;
        self
    }

    /// Largest number of frames in one message. Default 65,536.
    ///
    /// Guards CPU: without it a peer could send empty continuation frames forever without ever
    /// reaching `max_size`. Exceeding it fails the connection with 1009.
    pub fn max_fragments(&mut self, count: usize) -> &mut Self {
        self.max_fragments = count;
        self
    }

    /// Longest line in the HTTP head of the opening handshake. Default 8192 bytes.
    ///
    /// Exceeding it rejects the handshake with 431.
    pub fn max_line_length(&mut self, bytes: usize) -> &mut Self {
        self.max_line_length = bytes;
        self
    }

    /// Largest number of HTTP headers in the opening handshake. Default 128.
    ///
    /// Exceeding it rejects the handshake with 431.
    pub fn max_headers(&mut self, count: usize) -> &mut Self {
        self.max_headers = count;
        self
    }

    /// Largest HTTP head (and, for rejections, body) in the opening handshake. Default 64 KiB.
    ///
    /// Guards memory while the handshake is buffered. Exceeding it rejects the handshake with
    /// 431.
    pub fn max_handshake_size(&mut self, bytes: usize) -> &mut Self {
        self.max_handshake_size = bytes;
        self
    }

    /// permessage-deflate settings, or `None` to neither offer nor accept compression.
    /// Default: on, with [`DeflateConfig::default`].
    pub fn compression(&mut self, deflate: Option<DeflateConfig>) -> &mut Self {
        self.compression = deflate;
        self.fallback_offers.clear();
        self
    }

    /// Client: several permessage-deflate offers, in order of preference (RFC 7692 §5 lets a
    /// client offer more than one set of parameters; the server accepts at most one). The
    /// first is also what [`Config::compression`] sets; an empty list turns compression off.
    /// A server only uses the first.
    pub fn deflate_offers(&mut self, offers: Vec<DeflateConfig>) -> &mut Self {
        let mut offers = offers.into_iter();
        self.compression = offers.next();
        self.fallback_offers = offers.collect();
        self
    }

    /// The permessage-deflate offers a client makes, in order.
    pub fn deflate_offer_list(&self) -> impl Iterator<Item = &DeflateConfig> {
        self.compression.iter().chain(self.fallback_offers.iter())
    }

    /// Subprotocols supported, in order of preference. Default: none.
    ///
    /// A client offers them in `Sec-WebSocket-Protocol`; a server picks the first of its own
    /// list that the client offered.
    pub fn subprotocols<I, S>(&mut self, protocols: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// Server: the `Origin` values accepted; `None` in the list accepts a request without one.
    /// Default: any origin. A refused origin is answered with 403.
    pub fn origins(&mut self, origins: Option<Vec<Option<String>>>) -> &mut Self {
        self.origins = origins;
        self
    }

    /// Client: the `User-Agent` header, or `None` to send none. Default `sockeye/VERSION`.
    pub fn user_agent(&mut self, agent: Option<String>) -> &mut Self {
        self.user_agent = agent;
        self
    }

    /// Server: the `Server` header, or `None` to send none. Default `sockeye/VERSION`.
    pub fn server_header(&mut self, server: Option<String>) -> &mut Self {
        self.server_header = server;
        self
    }

    /// Interval between keepalive pings, or `None` to send none. Default 20 s.
    pub fn ping_interval(&mut self, interval: Option<Duration>) -> &mut Self {
        self.ping_interval = interval;
        self
    }

    /// How long to wait for the pong to a keepalive ping before failing the connection with
    /// 1011, or `None` to wait forever. Default 20 s.
    pub fn ping_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.ping_timeout = timeout;
        self
    }

    /// The configured open timeout.
    pub fn open_timeout_value(&self) -> Option<Duration> {
        self.open_timeout
    }

    /// The configured close timeout.
    pub fn close_timeout_value(&self) -> Duration {
        self.close_timeout
    }

    /// How long the opening handshake may take, or `None` for no limit. Default 10 s.
    pub fn open_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.open_timeout = timeout;
        self
    }

    /// How long to wait for the closing handshake (the peer's close frame, then the end of
    /// the TCP connection) before giving up on it. Default 10 s.
    pub fn close_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.close_timeout = timeout;
        self
    }

    /// Deliver messages as [`crate::Event::Fragment`]s as their frames arrive, instead of
    /// whole [`crate::Event::Message`]s. Default off. UTF-8 and `max_size` are checked all
    /// the same. A message that arrives whole, in one uncompressed frame, still comes as one
    /// [`crate::Event::Message`] (it is its own only fragment: `first` and `fin`), which
    /// spares it the joining.
    pub fn stream_fragments(&mut self, on: bool) -> &mut Self {
        self.stream_fragments = on;
        self
    }

    /// Seeds the random source of mask and handshake keys, for deterministic tests.
    /// Default: the operating system's entropy. Never seed a production client: RFC 6455
    /// §5.3 wants masking keys that the application cannot predict.
    pub fn seed(&mut self, seed: Option<u64>) -> &mut Self {
        self.seed = seed;
        self
    }
}
