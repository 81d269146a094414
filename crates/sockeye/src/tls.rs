//! TLS with rustls (feature `tls`, on by default): `wss://` clients and TLS servers, in both
//! front ends.
//!
//! - **Clients** connect with TLS when the URI is `wss://`. The server's certificate is
//!   verified against Mozilla's roots (`webpki-roots`, compiled in) plus any CA added with
//!   `add_root_certificate` / `ca_file`, and the operating system's store with
//!   `native_roots(true)` (feature `native-roots`). SNI and the name checked in the
//!   certificate come from the URI's host; an IP address is checked against the
//!   certificate's IP addresses (and sent without SNI, RFC 6066 §3). `client_auth` presents a
//!   client certificate; `tls_config` hands over a complete [`rustls::ClientConfig`] instead.
//!   `insecure(true)` skips verification, **for tests only**.
//! - **Servers** get a [`rustls::ServerConfig`] with `tls(config)`, or a certificate chain and
//!   key from PEM files with `tls_pem_files(cert, key)` (see [`server_config`]). The TLS
//!   handshake runs in the connection's own task (thread, for `sockeye::sync`), within
//!   `open_timeout` together with the WebSocket handshake; a failed one is logged at DEBUG
//!   and does not disturb the accept loop.
//!
//! The builder methods are on [`crate::ClientBuilder`], [`crate::ServerBuilder`] and their
//! blocking twins in [`crate::sync`]. Configurations made here use the `ring` provider,
//! TLS 1.2 and 1.3, and ALPN `http/1.1`.
//!
//! ```no_run
//! # async fn run() -> Result<(), sockeye::BoxError> {
//! let server = sockeye::Server::builder()
//!     .tls_pem_files("cert.pem", "key.pem")?
//!     .serve("127.0.0.1:8443", |ws: sockeye::ServerConnection| async move {
//!         while let Some(msg) = ws.recv().await? {
//!             ws.send(msg).await?;
//!         }
//!         Ok(())
//!     })
//!     .await?;
//! let ws = sockeye::ClientBuilder::default()
//!     .ca_file("ca.pem")?
//!     .connect("wss://localhost:8443/")
//!     .await?;
//! # Ok(()) }
//! ```

use crate::sync::stream::Socket;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::UnixTime;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::error::{Error, Result};

/// The `rustls` crate, re-exported: build configurations with the version sockeye uses.
pub use rustls;
pub use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The ALPN protocol of WebSocket over TLS (RFC 6455 upgrades an HTTP/1.1 request).
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The crypto provider of every configuration sockeye builds: `ring`.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// An I/O error that names the file it is about.
fn file_error(what: &str, path: &Path, e: impl fmt::Display) -> Error {
    let kind = io::ErrorKind::InvalidData;
    io::Error::new(kind, format!("{what} {}: {e}", path.display())).into()
}

/// Reads the certificates of a PEM file, in order (a chain: the leaf first). A file that
/// cannot be read, or holds no certificate, is an error naming the file.
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>> {
    let path = path.as_ref();
    let what = "TLS certificate file";
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no certificate found"));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file (PKCS#8, PKCS#1 or SEC1). A file that cannot be
/// read, or holds no key, is an error naming the file.
pub fn load_private_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>> {
    let path = path.as_ref();
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            file_error("TLS key file", path, "no private key found")
        }
        e => file_error("TLS key file", path, e),
    })
}

/// A server configuration for a certificate chain (leaf first) and its private key: the
/// `ring` provider, TLS 1.2 and 1.3, ALPN `http/1.1`, no client certificates. Start from
/// [`rustls::ServerConfig::builder_with_provider`] with [`provider`] for more control (client
/// certificates with `WebPkiClientVerifier`, several certificates by SNI, ...).
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] from PEM files: the certificate chain, and its private key.
pub fn server_config_from_pem_files(
    cert_path: impl AsRef<Path>,
    key_path: impl AsRef<Path>,
) -> Result<Arc<ServerConfig>> {
    let certs = load_certs(&cert_path)?;
    let key = load_private_key(&key_path)?;
    server_config(certs, key).map_err(|e| {
        let (cert, key) = (cert_path.as_ref().display(), key_path.as_ref().display());
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("TLS certificate {cert} and key {key}: {e}"),
        )
        .into()
    })
}

/// The TLS options of a client builder (both front ends).
#[derive(Clone, Default)]
pub(crate) struct ClientTls {
    /// A complete configuration: the other options are ignored.
    pub(crate) config: Option<Arc<ClientConfig>>,
    /// Trust anchors added to the defaults.
    pub(crate) roots: Vec<CertificateDer<'static>>,
    /// A client certificate chain and its key.
    pub(crate) client_auth: Option<Arc<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>>,
    #[cfg(feature = "native-roots")]
    pub(crate) native_roots: bool,
    pub(crate) insecure: bool,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("ClientTls")
            .field("config", &self.config.is_some())
            .field("roots", &self.roots.len())
            .field("client_auth", &self.client_auth.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl ClientTls {
    fn is_default(&self) -> bool {
        #[cfg(feature = "native-roots")]
        if self.native_roots {
            return false;
        }
        self.config.is_none()
            && self.roots.is_empty()
            && self.client_auth.is_none()
            && !self.insecure
    }

    /// The configuration to connect with. The default one (Mozilla's roots, no client
    /// certificate) is built once per process.
    pub(crate) fn config(&self) -> Result<Arc<ClientConfig>> {
        if let Some(config) = &self.config {
            return Ok(config.clone());
        }
        if self.is_default() {
            static DEFAULT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
            if let Some(c) = DEFAULT.get() {
                return Ok(c.clone());
            }
            let config = self.build()?;
            return Ok(DEFAULT.get_or_init(|| config).clone());
        }
        self.build()
    }

    fn build(&self) -> Result<Arc<ClientConfig>> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
        } else {
            let mut roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            for cert in &self.roots {
                roots.add(cert.clone())?;
            }
            #[cfg(feature = "native-roots")]
            if self.native_roots {
                let native = rustls_native_certs::load_native_certs();
                for e in &native.errors {
                    tracing::warn!(target: "sockeye::client", "native root certificates: {e}");
                }
                roots.add_parsable_certificates(native.certs);
            }
            builder.with_root_certificates(roots)
        };
        let mut config = match &self.client_auth {
            Some(auth) => builder.with_client_auth_cert(auth.0.clone(), auth.1.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Ok(Arc::new(config))
    }

    /// The name to send (SNI) and to verify: the URI's host, a DNS name or an IP address.
    fn server_name(host: &str) -> Result<ServerName<'static>> {
        ServerName::try_from(host.to_owned())
            .map_err(|e| Error::InvalidUri(format!("{host}: not a valid TLS server name ({e})")))
    }
}

/// The verifier of `insecure(true)`: any certificate, for any name, is accepted; the
/// handshake signatures are still checked (so the peer holds the key of the certificate it
/// sent, whatever that certificate is).
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ----- tokio ---------------------------------------------------------------------------------

/// Runs the client side of the TLS handshake over `tcp` (tokio; TCP or a Unix socket).
pub(crate) async fn connect_tokio<S>(
    tls: &ClientTls,
    host: &str,
    tcp: S,
) -> Result<tokio_rustls::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = ClientTls::server_name(host)?;
    let connector = tokio_rustls::TlsConnector::from(tls.config()?);
    let stream = connector.connect(name, tcp).await?;
    Ok(tokio_rustls::TlsStream::Client(stream))
}

/// Runs the server side of the TLS handshake over `tcp` (tokio; TCP or a Unix socket).
pub(crate) async fn accept_tokio<S>(
    config: &Arc<ServerConfig>,
    tcp: S,
) -> Result<tokio_rustls::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
    let stream = acceptor.accept(tcp).await?;
    Ok(tokio_rustls::TlsStream::Server(stream))
}

// ----- blocking ------------------------------------------------------------------------------

/// Runs the client side of the TLS handshake over `tcp` (blocking), until `deadline`.
pub(crate) fn connect_sync(
    tls: &ClientTls,
    host: &str,
    tcp: &mut Socket,
    deadline: Option<Instant>,
) -> Result<rustls::Connection> {
    let name = ClientTls::server_name(host)?;
    let session = rustls::ClientConnection::new(tls.config()?, name)?;
    handshake_sync(session.into(), tcp, deadline)
}

/// Runs the server side of the TLS handshake over `tcp` (blocking), until `deadline`.
pub(crate) fn accept_sync(
    config: &Arc<ServerConfig>,
    tcp: &mut Socket,
    deadline: Option<Instant>,
) -> Result<rustls::Connection> {
    let session = rustls::ServerConnection::new(config.clone())?;
    handshake_sync(session.into(), tcp, deadline)
}

fn handshake_sync(
    mut session: rustls::Connection,
    tcp: &mut Socket,
    deadline: Option<Instant>,
) -> Result<rustls::Connection> {
    while session.is_handshaking() || session.wants_write() {
        let left = crate::sync::client::time_left(deadline)?;
        tcp.set_read_timeout(left)?;
        tcp.set_write_timeout(left)?;
        match session.complete_io(tcp) {
            Ok((0, 0)) if session.is_handshaking() => {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(None)?;
    // Writes are not limited by rustls: `write_limit` bounds what waits, before encryption.
    session.set_buffer_limit(None);
    Ok(session)
}
