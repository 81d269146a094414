//! Options shared by the server and client builders.

use crate::connection::Limits;
use crate::proto::Config;

/// The core's configuration plus the front end's own limits.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) config: Config,
    pub(crate) limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: Config::new(),
            limits: Limits {
                max_queue: 16,
                write_limit: 32 * 1024,
            },
        }
    }
}

/// The setters every builder has, by value so that they chain: [`limit_setters`] and
/// `max_queue` (the front ends where received messages wait for `recv`).
macro_rules! option_setters {
    ($builder:ty) => {
        crate::options::limit_setters!($builder);

        impl $builder {
            /// How many received messages may wait for `recv` before reading pauses
            /// (default 16). Bounds memory when the application is slower than the peer.
            pub fn max_queue(mut self, messages: usize) -> Self {
                self.options.limits.max_queue = messages.max(1);
                self
            }
        }
    };
}

pub(crate) use option_setters;

/// The limits, timeouts and compression setters of every builder.
macro_rules! limit_setters {
    ($builder:ty) => {
        impl $builder {
            /// Largest message accepted, in bytes, after decompression (default 1 MiB); a
            /// larger one fails the connection with 1009. Also bounds single frames.
            pub fn max_size(mut self, bytes: usize) -> Self {
                self.options.config.max_size(bytes).max_frame_size(bytes);
                self
            }

            /// Largest number of frames in one message (default 65,536); more fail the
            /// connection with 1009.
            pub fn max_fragments(mut self, count: usize) -> Self {
                self.options.config.max_fragments(count);
                self
            }

            /// How many bytes may wait to be written before `send` waits (default 32 KiB).
            pub fn write_limit(mut self, bytes: usize) -> Self {
                self.options.limits.write_limit = bytes;
                self
            }

            /// Interval between keepalive pings, `None` for none (default 20 s).
            pub fn ping_interval(mut self, interval: Option<std::time::Duration>) -> Self {
                self.options.config.ping_interval(interval);
                self
            }

            /// How long to wait for a keepalive pong before closing with 1011, `None` for
            /// ever (default 20 s).
            pub fn ping_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
                self.options.config.ping_timeout(timeout);
                self
            }

            /// How long the opening handshake may take, `None` for no limit (default 10 s).
            pub fn open_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
                self.options.config.open_timeout(timeout);
                self
            }

            /// How long the closing handshake may take (default 10 s).
            pub fn close_timeout(mut self, timeout: std::time::Duration) -> Self {
                self.options.config.close_timeout(timeout);
                self
            }

            /// permessage-deflate on (default) or off.
            pub fn compression(mut self, on: bool) -> Self {
                self.options
                    .config
                    .compression(on.then(crate::proto::DeflateConfig::default));
                self
            }

            /// permessage-deflate with these parameters, or `None` for off.
            pub fn deflate(mut self, deflate: Option<crate::proto::DeflateConfig>) -> Self {
                self.options.config.compression(deflate);
                self
            }

            /// Several permessage-deflate offers, in order of preference (a client may
            /// offer more than one set of parameters, RFC 7692 §5; a server uses the first).
            pub fn deflate_offers(mut self, offers: Vec<crate::proto::DeflateConfig>) -> Self {
                self.options.config.deflate_offers(offers);
                self
            }

            /// Largest HTTP head in the opening handshake (default 64 KiB); over it, 431.
            pub fn max_handshake_size(mut self, bytes: usize) -> Self {
                self.options.config.max_handshake_size(bytes);
                self
            }
        }
    };
}

pub(crate) use limit_setters;

/// The server-only setters, shared by the tokio and blocking server builders (fields
/// `options`, `hooks`).
macro_rules! server_setters {
    ($builder:ty) => {
        impl $builder {
            /// Subprotocols the server supports, in order of preference.
            pub fn subprotocols<I, S>(mut self, protocols: I) -> Self
            where
                I: IntoIterator<Item = S>,
                S: Into<String>,
            {
                self.options.config.subprotocols(protocols);
                self
            }

            /// `Origin` values accepted (`None` in the list accepts requests without one);
            /// others get 403. Default: any.
            pub fn origins(mut self, origins: Option<Vec<Option<String>>>) -> Self {
                self.options.config.origins(origins);
                self
            }

            /// The `Server` header, or `None` for none. Default `sockeye/VERSION`.
            pub fn server_header(mut self, value: Option<String>) -> Self {
                self.options.config.server_header(value);
                self
            }

            /// Requires HTTP Basic authentication (see [`crate::auth`]): requests without
            /// valid credentials get `401 Unauthorized`; the handler finds the user in
            /// `Connection::username`. Runs before the `process_request` hook and routing.
            pub fn basic_auth(mut self, auth: crate::auth::BasicAuth) -> Self {
                self.hooks.basic_auth = Some(std::sync::Arc::new(auth));
                self
            }

            /// Installs a `process_request` hook (see [`crate::ProcessRequest`]). It runs
            /// after basic auth, if any, and before routing, if any: it may answer paths
            /// that are not routes (a health check).
            pub fn process_request<F>(mut self, hook: F) -> Self
            where
                F: Fn(&http::Request<()>) -> Option<http::Response<bytes::Bytes>>
                    + Send
                    + Sync
                    + 'static,
            {
                self.hooks.process_request = Some(std::sync::Arc::new(hook));
                self
            }

            /// Installs a `process_response` hook (see [`crate::ProcessResponse`]).
            pub fn process_response<F>(mut self, hook: F) -> Self
            where
                F: Fn(&http::Request<()>, &mut http::Response<bytes::Bytes>)
                    + Send
                    + Sync
                    + 'static,
            {
                self.hooks.process_response = Some(std::sync::Arc::new(hook));
                self
            }
        }
    };
}

pub(crate) use server_setters;

/// The client-only setters, shared by the tokio and blocking client builders (fields
/// `options`, `headers`, `reconnect`, `dial`).
macro_rules! client_setters {
    ($builder:ty) => {
        impl $builder {
            /// How to reach servers: [`Proxy::from_env`](crate::Proxy::from_env) (the
            /// default: `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`),
            /// [`Proxy::none`](crate::Proxy::none), or
            /// [`Proxy::url`](crate::Proxy::url) (HTTP `CONNECT` or SOCKS5). Redirects
            /// choose again for their URI.
            pub fn proxy(mut self, proxy: crate::Proxy) -> Self {
                self.dial.proxy = proxy;
                self
            }

            /// How many redirects (301, 302, 303, 307, 308) to follow, 0 for none: the
            /// answer is then the connection's error (default 10). `Location` is resolved
            /// against the URI that answered and must be `ws://` or `wss://`; `wss://` never
            /// goes to `ws://`; a URI visited twice is an error; the `Authorization` and
            /// `Cookie` headers given to the builder, and the URI's `user:password@`, are
            /// not sent to another origin (scheme, host, port). The chain fits in one
            /// `open_timeout`; the connection's `request()` is the last request sent.
            pub fn max_redirects(mut self, redirects: usize) -> Self {
                self.dial.max_redirects = redirects;
                self
            }

            /// A header to add to the handshake request.
            pub fn header(mut self, name: &str, value: &str) -> crate::Result<Self> {
                let name = http::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| crate::Error::Misuse("invalid header name"))?;
                let value = http::header::HeaderValue::from_str(value)
                    .map_err(|_| crate::Error::Misuse("invalid header value"))?;
                self.headers.push((name, value));
                Ok(self)
            }

            /// The `Origin` header to send.
            pub fn origin(self, origin: &str) -> crate::Result<Self> {
                self.header("origin", origin)
            }

            /// The `User-Agent` header, or `None` for none. Default `sockeye/VERSION`.
            pub fn user_agent(mut self, agent: Option<String>) -> Self {
                self.options.config.user_agent(agent);
                self
            }

            /// Subprotocols to offer, in order of preference.
            pub fn subprotocols<I, S>(mut self, protocols: I) -> Self
            where
                I: IntoIterator<Item = S>,
                S: Into<String>,
            {
                self.options.config.subprotocols(protocols);
                self
            }

            /// The delays between the attempts of a reconnecting client (default:
            /// python-websockets' backoff, see [`crate::Backoff`]).
            pub fn backoff(mut self, backoff: crate::Backoff) -> Self {
                self.reconnect.backoff = backoff;
                self
            }

            /// Decides, for a reconnecting client, whether a failed attempt is retried
            /// (`true`) or ends the connections with its error (`false`); default
            /// [`crate::is_retryable`] (python-websockets' `process_exception`).
            pub fn retry_if<F>(mut self, hook: F) -> Self
            where
                F: Fn(&crate::Error) -> bool + Send + Sync + 'static,
            {
                self.reconnect.retry_if = Some(std::sync::Arc::new(hook));
                self
            }
        }
    };
}

pub(crate) use client_setters;

/// The TLS setters of the client builders, tokio and blocking (field `tls`, a
/// `crate::tls::ClientTls`). They matter for `wss://` URIs only.
#[cfg(feature = "tls")]
macro_rules! tls_client_setters {
    ($builder:ty) => {
        impl $builder {
            /// Connects with this rustls configuration: the other TLS options are ignored.
            /// Set its `alpn_protocols` to `http/1.1` (or leave them empty).
            pub fn tls_config(
                mut self,
                config: std::sync::Arc<crate::tls::rustls::ClientConfig>,
            ) -> Self {
                self.tls.config = Some(config);
                self
            }

            /// Trusts this CA certificate (DER) too, besides Mozilla's roots.
            pub fn add_root_certificate(
                mut self,
                cert: crate::tls::CertificateDer<'static>,
            ) -> Self {
                self.tls.roots.push(cert);
                self
            }

            /// Trusts the CA certificates of this PEM file too, besides Mozilla's roots. The
            /// file is read now: an error names it.
            pub fn ca_file(mut self, path: impl AsRef<std::path::Path>) -> crate::Result<Self> {
                self.tls.roots.extend(crate::tls::load_certs(path)?);
                Ok(self)
            }

            /// Presents this client certificate chain (leaf first), with its private key, to
            /// servers that ask for one.
            pub fn client_auth(
                mut self,
                certs: Vec<crate::tls::CertificateDer<'static>>,
                key: crate::tls::PrivateKeyDer<'static>,
            ) -> Self {
                self.tls.client_auth = Some(std::sync::Arc::new((certs, key)));
                self
            }

            /// [`client_auth`](Self::client_auth) from PEM files, read now: an error names
            /// the file.
            pub fn client_auth_pem_files(
                self,
                cert_path: impl AsRef<std::path::Path>,
                key_path: impl AsRef<std::path::Path>,
            ) -> crate::Result<Self> {
                let certs = crate::tls::load_certs(cert_path)?;
                let key = crate::tls::load_private_key(key_path)?;
                Ok(self.client_auth(certs, key))
            }

            /// Trusts the operating system's root certificates too (feature `native-roots`),
            /// loaded at each connection.
            #[cfg(feature = "native-roots")]
            pub fn native_roots(mut self, on: bool) -> Self {
                self.tls.native_roots = on;
                self
            }

            /// **Skips the verification of the server's certificate: for tests only.**
            ///
            /// With `insecure(true)` any certificate, self-signed, expired or for another
            /// name, is accepted, so anyone on the path can impersonate the server and read
            /// the traffic. Handshake signatures are still checked. Prefer
            /// [`ca_file`](Self::ca_file) with the test CA.
            pub fn insecure(mut self, on: bool) -> Self {
                self.tls.insecure = on;
                self
            }
        }
    };
}

#[cfg(feature = "tls")]
pub(crate) use tls_client_setters;

/// The TLS setters of the server builders, tokio and blocking (field `tls`, an
/// `Option<Arc<rustls::ServerConfig>>`).
#[cfg(feature = "tls")]
macro_rules! tls_server_setters {
    ($builder:ty) => {
        impl $builder {
            /// Serves over TLS with this rustls configuration (`wss://`). Build it with
            /// [`crate::tls::server_config`], or from
            /// `rustls::ServerConfig::builder_with_provider(sockeye::tls::provider())` for
            /// client certificates and more.
            pub fn tls(mut self, config: std::sync::Arc<crate::tls::rustls::ServerConfig>) -> Self {
                self.tls = Some(config);
                self
            }

            /// Serves over TLS with the certificate chain and private key of these PEM files,
            /// read now: an error names the file that cannot be read or parsed (see
            /// [`crate::tls::server_config_from_pem_files`]).
            pub fn tls_pem_files(
                self,
                cert_path: impl AsRef<std::path::Path>,
                key_path: impl AsRef<std::path::Path>,
            ) -> crate::Result<Self> {
                let config = crate::tls::server_config_from_pem_files(cert_path, key_path)?;
                Ok(self.tls(config))
            }
        }
    };
}

#[cfg(feature = "tls")]
pub(crate) use tls_server_setters;

impl Options {
    pub(crate) fn config_open_timeout(&self) -> Option<std::time::Duration> {
        self.config.open_timeout_value()
    }
}
