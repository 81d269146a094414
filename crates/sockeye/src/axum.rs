//! [`WebSocketUpgrade`]: an axum 0.8 extractor that turns a request into a sockeye
//! [`Connection`] (feature `axum`), so that one router serves an HTTP API and WebSockets on
//! one port.
//!
//! Shaped like axum's own `WebSocketUpgrade`, on sockeye's connection and options: a handler
//! takes the extractor, sets options, and returns what
//! [`on_upgrade`](WebSocketUpgrade::on_upgrade) returns.
//!
//! ```no_run
//! use axum::routing::get;
//! use axum::response::Response;
//! use sockeye::axum::WebSocketUpgrade;
//!
//! async fn echo(ws: WebSocketUpgrade) -> Response {
//!     ws.max_size(64 * 1024).on_upgrade(|ws: sockeye::Connection| async move {
//!         while let Some(msg) = ws.recv().await? {
//!             ws.send(msg).await?;
//!         }
//!         Ok(())
//!     })
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = axum::Router::new()
//!     .route("/", get(|| async { "Hello, HTTP!\n" }))
//!     .route("/ws", get(echo));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! The semantics are those of [`crate::hyper`]: the handler runs beside the connection's
//! driver as under [`serve`](crate::serve) (returning closes with 1000, an error closes with
//! 1011 and is logged), every option and hook of the server builder applies, HTTP/1.1 only.
//! The peer's address is known when the app is served with
//! `into_make_service_with_connect_info::<SocketAddr>()` (axum's `ConnectInfo`).
//!
//! Extraction checks what needs no options (method, headers, key, version) and rejects a
//! request that cannot be a handshake with its 4xx, as a [`WebSocketUpgradeRejection`];
//! what depends on the options (origins, subprotocols, auth hooks) is checked by
//! `on_upgrade`, whose response then refuses the request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;

use ::axum::body::Body;
use ::axum::extract::{ConnectInfo, FromRequestParts};
use ::axum::response::{IntoResponse, Response};
use ::hyper::upgrade::OnUpgrade;
use bytes::Bytes;
use http::request::Parts;
use http::Request;

use crate::hyper::{head_of, Upgrader, Upgrading};
use crate::options::Options;
use crate::proto::{handshake, Config};
use crate::server::{BoxError, Hooks};
use crate::Connection;

/// The extractor of a WebSocket handshake request, for axum 0.8 handlers: set options with
/// the server builder's setters, then [`on_upgrade`](Self::on_upgrade).
///
/// See the [module documentation](self) for an example.
pub struct WebSocketUpgrade {
    options: Options,
    hooks: Hooks,
    head: Request<()>,
    on_upgrade: Option<OnUpgrade>,
    remote_addr: Option<SocketAddr>,
}

crate::options::option_setters!(WebSocketUpgrade);
crate::options::server_setters!(WebSocketUpgrade);

impl std::fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("path", &self.head.uri().path())
            .field("remote_addr", &self.remote_addr)
            .finish_non_exhaustive()
    }
}

impl WebSocketUpgrade {
    /// Takes every option and hook of `upgrader`, replacing those set so far: configure an
    /// [`Upgrader`] once (in the router's state, say) and use it in every handler.
    pub fn with(mut self, upgrader: &Upgrader) -> Self {
        let (options, hooks) = upgrader.parts();
        self.options = options.clone();
        self.hooks = hooks.clone();
        self
    }

    /// Answers the handshake and, if it is accepted, runs `handler` on the connection once
    /// axum's server hands it over, in a task of its own (see [`Upgrading::on_upgrade`]):
    /// returning closes with 1000, an error closes with 1011 and is logged at ERROR.
    ///
    /// Returns the response for axum to send: 101, or the refusal (403 for an origin not in
    /// `origins`, 400 for no subprotocol in common, 401 from `basic_auth`, what
    /// `process_request` answered...).
    pub fn on_upgrade<H, Fut>(self, handler: H) -> Response
    where
        H: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<(), BoxError>> + Send + 'static,
    {
        let (response, upgrading) = self.upgrade();
        if let Some(upgrading) = upgrading {
            upgrading.on_upgrade(handler);
        }
        response
    }

    /// Answers the handshake: the response for axum to send, and with a 101 the
    /// [`Upgrading`] to await for the [`Connection`] itself (see [`crate::hyper`]).
    pub fn upgrade(self) -> (Response, Option<Upgrading>) {
        let (response, upgrading) = crate::hyper::answer(
            &self.options,
            &self.hooks,
            self.head,
            self.on_upgrade,
            self.remote_addr,
        );
        (response.map(Body::from), upgrading)
    }
}

/// The options every extraction checks with: what a handshake must be whatever the
/// application's options (their own checks come in `on_upgrade`). Without compression, the
/// extensions offered are not read here (an application without compression never reads
/// them). No `Server` header on the refusals: an axum app does not advertise sockeye.
fn structural() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut config = Config::new();
        config.server_header(None).compression(None);
        config
    })
}

impl<S> FromRequestParts<S> for WebSocketUpgrade
where
    S: Send + Sync,
{
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Self, WebSocketUpgradeRejection> {
        let head = head_of(&parts.method, &parts.uri, parts.version, &parts.headers);
        let (response, checked) = handshake::answer(&head, structural(), None);
        if checked.is_err() {
            crate::server::log_http_answer(head.uri().path(), response.status());
            return Err(WebSocketUpgradeRejection { response });
        }
        Ok(WebSocketUpgrade {
            options: Options::default(),
            hooks: Hooks::default(),
            head,
            on_upgrade: parts.extensions.remove::<OnUpgrade>(),
            remote_addr: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0),
        })
    }
}

/// Why [`WebSocketUpgrade`] refused a request: the HTTP response that says so (405, 400 or
/// 426, with a plain-text body naming the problem), which axum sends.
#[derive(Debug)]
pub struct WebSocketUpgradeRejection {
    response: http::Response<Bytes>,
}

impl WebSocketUpgradeRejection {
    /// The status of the refusal.
    pub fn status(&self) -> http::StatusCode {
        self.response.status()
    }
}

impl std::fmt::Display for WebSocketUpgradeRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(self.response.body());
        write!(f, "{}: {}", self.response.status(), body.trim_end())
    }
}

impl std::error::Error for WebSocketUpgradeRejection {}

impl IntoResponse for WebSocketUpgradeRejection {
    fn into_response(self) -> Response {
        self.response.map(Body::from)
    }
}
