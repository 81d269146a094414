//! TLS (`wss://`) over real loopback sockets, both front ends, with certificates made here
//! by rcgen: a test CA, server and client certificates it signs, and a self-signed one.
//! Every wait is bounded (`GUARD`).
#![cfg(feature = "tls")]

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use sockeye::tls::rustls::{self, CertificateError, RootCertStore};
use sockeye::tls::CertificateDer;
use sockeye::{sync, CloseCode, Error, Message};

const GUARD: Duration = Duration::from_secs(20);

// ----- certificates --------------------------------------------------------------------------

/// PEM files in a directory of their own, removed at the end of the test.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A certificate file and its key file.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sockeye-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sockeye test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A certificate for `names` (DNS names or IP addresses), signed by the CA, or
    /// self-signed.
    fn leaf(
        &self,
        file: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        by_ca: bool,
    ) -> Pair {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = if by_ca {
            params.signed_by(&key, &self.ca).unwrap()
        } else {
            params.self_signed(&key).unwrap()
        };
        let pair = Pair {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }

    /// The server certificate: localhost and 127.0.0.1, signed by the CA.
    fn server(&self) -> Pair {
        self.leaf(
            "server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            true,
        )
    }

    fn client(&self) -> Pair {
        self.leaf(
            "client",
            &["client.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
            true,
        )
    }

    /// A server configuration that requires a client certificate signed by the CA.
    fn server_config_with_client_auth(&self, pair: &Pair) -> Arc<rustls::ServerConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            sockeye::tls::provider(),
        )
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(sockeye::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                sockeye::tls::load_certs(&pair.cert).unwrap(),
                sockeye::tls::load_private_key(&pair.key).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

// ----- servers -------------------------------------------------------------------------------

async fn tokio_echo(builder: sockeye::ServerBuilder) -> sockeye::Server {
    builder
        .serve("127.0.0.1:0", |ws: sockeye::ServerConnection| async move {
            while let Some(msg) = ws.recv().await? {
                ws.send(msg).await?;
            }
            Ok(())
        })
        .await
        .unwrap()
}

fn sync_echo(builder: sync::ServerBuilder) -> sync::Server {
    builder
        .serve("127.0.0.1:0", |ws: sync::Connection| {
            while let Some(msg) = ws.recv_timeout(GUARD)? {
                ws.send(msg)?;
            }
            Ok(())
        })
        .unwrap()
}

fn port_of(addr: Option<std::net::SocketAddr>) -> u16 {
    addr.unwrap().port()
}

/// Runs a tokio test body within `GUARD`.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(GUARD, f)
        .await
        .expect("test took too long")
}

/// Runs blocking code from a tokio test, within `GUARD`.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    bounded(tokio::task::spawn_blocking(f)).await.unwrap()
}

fn assert_unknown_issuer(e: &Error) {
    assert!(
        matches!(
            e,
            Error::Tls(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("TLS") && text.contains("certificate"),
        "{text}"
    );
}

fn assert_wrong_name(e: &Error) {
    assert!(
        matches!(
            e,
            Error::Tls(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{e:?}"
    );
}

fn assert_certificate_required(e: &Error) {
    assert!(
        matches!(
            e,
            Error::Tls(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired
            ))
        ),
        "{e:?}"
    );
}

// ----- tests ---------------------------------------------------------------------------------

/// tokio server and client echo over wss:// with a custom CA, the name checked being a DNS
/// name (localhost); addresses and the request are there as over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_echo_over_wss_with_custom_ca() {
    let pki = Pki::new();
    let pair = pki.server();
    bounded(async {
        let server = tokio_echo(
            sockeye::Server::builder()
                .tls_pem_files(&pair.cert, &pair.key)
                .unwrap(),
        )
        .await;
        assert!(server.is_tls());
        let uri = format!("wss://localhost:{}/chat", port_of(server.local_addr()));
        let ws = sockeye::ClientBuilder::default()
            .ca_file(pki.ca_file())
            .unwrap()
            .connect(&uri)
            .await
            .unwrap();
        assert_eq!(ws.remote_addr(), server.local_addr());
        assert!(ws.local_addr().is_some());
        assert_eq!(ws.request().uri().path(), "/chat");
        ws.send("Hello over TLS!").await.unwrap();
        assert_eq!(
            ws.recv().await.unwrap(),
            Some(Message::from("Hello over TLS!"))
        );
        ws.send(vec![0u8, 1, 2, 255]).await.unwrap();
        assert_eq!(
            ws.recv().await.unwrap(),
            Some(Message::from(vec![0u8, 1, 2, 255]))
        );
        let conns = server.connections();
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0].remote_addr(), ws.local_addr());
        assert_eq!(conns[0].request().uri().path(), "/chat");
        ws.close(CloseCode::NORMAL, "bye").await.unwrap();
        assert!(ws.closed().unwrap().is_ok(), "{:?}", ws.closed());
        server.close().await;
    })
    .await;
}

/// Blocking server and client echo over wss:// with a custom CA (given as DER), the name
/// checked being an IP address.
#[test]
fn sync_echo_over_wss_with_custom_ca() {
    let pki = Pki::new();
    let pair = pki.server();
    let server = sync_echo(
        sync::Server::builder()
            .tls_pem_files(&pair.cert, &pair.key)
            .unwrap(),
    );
    assert!(server.is_tls());
    let uri = format!("wss://127.0.0.1:{}/", port_of(server.local_addr()));
    let ws = sync::ClientBuilder::default()
        .add_root_certificate(pki.ca_der())
        .open_timeout(Some(GUARD))
        .connect(&uri)
        .unwrap();
    assert_eq!(ws.remote_addr(), server.local_addr());
    for i in 0..20 {
        ws.send(format!("message {i}")).unwrap();
    }
    for i in 0..20 {
        assert_eq!(
            ws.recv_timeout(GUARD).unwrap(),
            Some(Message::from(format!("message {i}")))
        );
    }
    ws.close(CloseCode::NORMAL, "").unwrap();
    assert!(ws.closed().unwrap().is_ok(), "{:?}", ws.closed());
    server.shutdown();
}

/// A tokio client talks to a blocking server, and a blocking client to a tokio server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_and_sync_interoperate_over_wss() {
    let pki = Pki::new();
    let pair = pki.server();
    let config = sockeye::tls::server_config_from_pem_files(&pair.cert, &pair.key).unwrap();

    // tokio client -> blocking server
    let sync_server = sync_echo(sync::Server::builder().tls(config.clone()));
    let uri = format!("wss://localhost:{}/", port_of(sync_server.local_addr()));
    let ws = bounded(
        sockeye::ClientBuilder::default()
            .ca_file(pki.ca_file())
            .unwrap()
            .connect(&uri),
    )
    .await
    .unwrap();
    ws.send("tokio to sync").await.unwrap();
    assert_eq!(
        bounded(ws.recv()).await.unwrap(),
        Some(Message::from("tokio to sync"))
    );
    bounded(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    assert!(ws.closed().unwrap().is_ok());
    blocking(move || sync_server.shutdown()).await;

    // blocking client -> tokio server
    let server = tokio_echo(sockeye::Server::builder().tls(config)).await;
    let uri = format!("wss://localhost:{}/", port_of(server.local_addr()));
    let ca = pki.ca_file();
    blocking(move || {
        let ws = sync::ClientBuilder::default()
            .ca_file(ca)
            .unwrap()
            .connect(&uri)
            .unwrap();
        ws.send("sync to tokio").unwrap();
        assert_eq!(
            ws.recv_timeout(GUARD).unwrap(),
            Some(Message::from("sync to tokio"))
        );
        ws.close(CloseCode::NORMAL, "").unwrap();
        assert!(ws.closed().unwrap().is_ok());
    })
    .await;
    bounded(server.close()).await;
}

/// Without the test CA, the server's certificate is refused: a clear TLS error, in both
/// front ends; the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ca_is_rejected() {
    let pki = Pki::new();
    let pair = pki.server();
    let server = tokio_echo(
        sockeye::Server::builder()
            .tls_pem_files(&pair.cert, &pair.key)
            .unwrap(),
    )
    .await;
    let uri = format!("wss://localhost:{}/", port_of(server.local_addr()));
    let e = bounded(sockeye::connect(&uri)).await.unwrap_err();
    assert_unknown_issuer(&e);
    let sync_uri = uri.clone();
    let e = blocking(move || sync::connect(&sync_uri).unwrap_err()).await;
    assert_unknown_issuer(&e);
    // The server is not disturbed.
    let ws = bounded(
        sockeye::ClientBuilder::default()
            .ca_file(pki.ca_file())
            .unwrap()
            .connect(&uri),
    )
    .await
    .unwrap();
    ws.send("still there").await.unwrap();
    assert_eq!(
        bounded(ws.recv()).await.unwrap(),
        Some(Message::from("still there"))
    );
    bounded(server.close()).await;
}

/// A certificate for another name is refused, though its CA is trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_mismatch_is_rejected() {
    let pki = Pki::new();
    let pair = pki.leaf(
        "other",
        &["other.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
        true,
    );
    let server = tokio_echo(
        sockeye::Server::builder()
            .tls_pem_files(&pair.cert, &pair.key)
            .unwrap(),
    )
    .await;
    let port = port_of(server.local_addr());
    for uri in [
        format!("wss://localhost:{port}/"),
        format!("wss://127.0.0.1:{port}/"),
    ] {
        let e = bounded(
            sockeye::ClientBuilder::default()
                .ca_file(pki.ca_file())
                .unwrap()
                .connect(&uri),
        )
        .await
        .unwrap_err();
        assert_wrong_name(&e);
        let ca = pki.ca_file();
        let e = blocking(move || {
            sync::ClientBuilder::default()
                .ca_file(ca)
                .unwrap()
                .connect(&uri)
                .unwrap_err()
        })
        .await;
        assert_wrong_name(&e);
    }
    bounded(server.close()).await;
}

/// `insecure(true)` accepts a self-signed certificate (that verification refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_accepts_self_signed() {
    let pki = Pki::new();
    let pair = pki.leaf(
        "self-signed",
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
        false,
    );
    let server = sync_echo(
        sync::Server::builder()
            .tls_pem_files(&pair.cert, &pair.key)
            .unwrap(),
    );
    let uri = format!("wss://127.0.0.1:{}/", port_of(server.local_addr()));
    let e = bounded(sockeye::connect(&uri)).await.unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e:?}");

    let ws = bounded(
        sockeye::ClientBuilder::default()
            .insecure(true)
            .connect(&uri),
    )
    .await
    .unwrap();
    ws.send("insecure").await.unwrap();
    assert_eq!(
        bounded(ws.recv()).await.unwrap(),
        Some(Message::from("insecure"))
    );
    bounded(ws.close(CloseCode::NORMAL, "")).await.unwrap();

    let sync_uri = uri.clone();
    blocking(move || {
        let ws = sync::ClientBuilder::default()
            .insecure(true)
            .connect(&sync_uri)
            .unwrap();
        ws.send("insecure").unwrap();
        assert_eq!(
            ws.recv_timeout(GUARD).unwrap(),
            Some(Message::from("insecure"))
        );
        ws.close(CloseCode::NORMAL, "").unwrap();
        server.shutdown();
    })
    .await;
}

/// A server that requires a client certificate (rustls' `WebPkiClientVerifier`) lets in a
/// client that presents one signed by its CA, and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_required() {
    let pki = Pki::new();
    let pair = pki.server();
    let client = pki.client();
    let config = pki.server_config_with_client_auth(&pair);
    let server = tokio_echo(sockeye::Server::builder().tls(config.clone())).await;
    let uri = format!("wss://localhost:{}/", port_of(server.local_addr()));

    let ws = bounded(
        sockeye::ClientBuilder::default()
            .ca_file(pki.ca_file())
            .unwrap()
            .client_auth_pem_files(&client.cert, &client.key)
            .unwrap()
            .connect(&uri),
    )
    .await
    .unwrap();
    ws.send("with a certificate").await.unwrap();
    assert_eq!(
        bounded(ws.recv()).await.unwrap(),
        Some(Message::from("with a certificate"))
    );
    bounded(ws.close(CloseCode::NORMAL, "")).await.unwrap();

    let e = bounded(
        sockeye::ClientBuilder::default()
            .ca_file(pki.ca_file())
            .unwrap()
            .open_timeout(Some(Duration::from_secs(5)))
            .connect(&uri),
    )
    .await
    .unwrap_err();
    assert_certificate_required(&e);

    // The blocking front end, against a blocking server.
    let sync_server = sync_echo(sync::Server::builder().tls(config));
    let uri = format!("wss://localhost:{}/", port_of(sync_server.local_addr()));
    let ca = pki.ca_file();
    blocking(move || {
        let ws = sync::ClientBuilder::default()
            .ca_file(&ca)
            .unwrap()
            .client_auth(
                sockeye::tls::load_certs(&client.cert).unwrap(),
                sockeye::tls::load_private_key(&client.key).unwrap(),
            )
            .connect(&uri)
            .unwrap();
        ws.send("with a certificate").unwrap();
        assert_eq!(
            ws.recv_timeout(GUARD).unwrap(),
            Some(Message::from("with a certificate"))
        );
        ws.close(CloseCode::NORMAL, "").unwrap();
        let e = sync::ClientBuilder::default()
            .ca_file(&ca)
            .unwrap()
            .open_timeout(Some(Duration::from_secs(5)))
            .connect(&uri)
            .unwrap_err();
        assert_certificate_required(&e);
        sync_server.shutdown();
    })
    .await;
    bounded(server.close()).await;
}

/// permessage-deflate is negotiated over TLS as over TCP, both front ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_negotiated_over_tls() {
    let pki = Pki::new();
    let pair = pki.server();
    let server = tokio_echo(
        sockeye::Server::builder()
            .tls_pem_files(&pair.cert, &pair.key)
            .unwrap(),
    )
    .await;
    let uri = format!("wss://localhost:{}/", port_of(server.local_addr()));
    let ws = bounded(
        sockeye::ClientBuilder::default()
            .ca_file(pki.ca_file())
            .unwrap()
            .connect(&uri),
    )
    .await
    .unwrap();
    let extensions = |r: &sockeye::http::Response<()>| {
        r.headers()
            .get("sec-websocket-extensions")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert!(
        extensions(ws.response()).contains("permessage-deflate"),
        "{:?}",
        ws.response()
    );
    let text = "compressible ".repeat(10_000);
    ws.send(text.as_str()).await.unwrap();
    assert_eq!(
        bounded(ws.recv()).await.unwrap(),
        Some(Message::from(text.as_str()))
    );
    bounded(ws.close(CloseCode::NORMAL, "")).await.unwrap();

    let ca = pki.ca_file();
    blocking(move || {
        let ws = sync::ClientBuilder::default()
            .ca_file(ca)
            .unwrap()
            .connect(&uri)
            .unwrap();
        assert!(extensions(ws.response()).contains("permessage-deflate"));
        ws.send(text.as_str()).unwrap();
        assert_eq!(
            ws.recv_timeout(GUARD).unwrap(),
            Some(Message::from(text.as_str()))
        );
        ws.close(CloseCode::NORMAL, "").unwrap();
    })
    .await;
    bounded(server.close()).await;
}

/// A 1 MiB message (the default max_size) goes both ways over TLS, uncompressed so that the
/// whole MiB is encrypted, in both front ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_round_trip() {
    let pki = Pki::new();
    let pair = pki.server();
    let payload: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let config = sockeye::tls::server_config_from_pem_files(&pair.cert, &pair.key).unwrap();
    let server = tokio_echo(sockeye::Server::builder().tls(config.clone())).await;
    let uri = format!("wss://localhost:{}/", port_of(server.local_addr()));
    let ws = bounded(
        sockeye::ClientBuilder::default()
            .ca_file(pki.ca_file())
            .unwrap()
            .compression(false)
            .connect(&uri),
    )
    .await
    .unwrap();
    for _ in 0..2 {
        ws.send(payload.clone()).await.unwrap();
        assert_eq!(
            bounded(ws.recv()).await.unwrap(),
            Some(Message::from(payload.clone()))
        );
    }
    bounded(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    bounded(server.close()).await;

    let sync_server = sync_echo(sync::Server::builder().tls(config));
    let uri = format!("wss://localhost:{}/", port_of(sync_server.local_addr()));
    let ca = pki.ca_file();
    blocking(move || {
        let ws = sync::ClientBuilder::default()
            .ca_file(ca)
            .unwrap()
            .compression(false)
            .connect(&uri)
            .unwrap();
        for _ in 0..2 {
            ws.send(payload.clone()).unwrap();
            assert_eq!(
                ws.recv_timeout(GUARD).unwrap(),
                Some(Message::from(payload.clone()))
            );
        }
        ws.close(CloseCode::NORMAL, "").unwrap();
        sync_server.shutdown();
    })
    .await;
}

/// Garbage instead of a ClientHello, a plain-HTTP request and a client that says nothing
/// fail their own connections only: the server keeps accepting, both front ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_survives_garbage_instead_of_client_hello() {
    let pki = Pki::new();
    let pair = pki.server();
    let config = sockeye::tls::server_config_from_pem_files(&pair.cert, &pair.key).unwrap();
    let tokio_server = tokio_echo(
        sockeye::Server::builder()
            .tls(config.clone())
            .open_timeout(Some(Duration::from_secs(2))),
    )
    .await;
    let sync_server = sync_echo(
        sync::Server::builder()
            .tls(config)
            .open_timeout(Some(Duration::from_secs(2))),
    );
    for addr in [
        tokio_server.local_addr().unwrap(),
        sync_server.local_addr().unwrap(),
    ] {
        let ca = pki.ca_file();
        blocking(move || {
            // Says nothing, and stays connected during the rest.
            let silent = TcpStream::connect(addr).unwrap();
            for garbage in [
                &b"\x16\x03\x01\x00\x05hello, not a ClientHello"[..],
                b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n",
                &[0xffu8; 4096][..],
            ] {
                let mut s = TcpStream::connect(addr).unwrap();
                let _ = s.write_all(garbage);
                s.set_read_timeout(Some(GUARD)).unwrap();
                // The server answers with an alert or closes; either way, it ends.
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut s, &mut sink);
            }
            let ws = sync::ClientBuilder::default()
                .ca_file(ca)
                .unwrap()
                .connect(&format!("wss://localhost:{}/", addr.port()))
                .unwrap();
            ws.send("after the garbage").unwrap();
            assert_eq!(
                ws.recv_timeout(GUARD).unwrap(),
                Some(Message::from("after the garbage"))
            );
            ws.close(CloseCode::NORMAL, "").unwrap();
            drop(silent);
        })
        .await;
    }
    blocking(move || sync_server.shutdown()).await;
    bounded(tokio_server.close()).await;
}

/// `ws://` stays plain on a TLS-capable build, and a TLS client against a plain server fails
/// with an error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_stays_plain_and_wss_to_plain_server_fails() {
    let server = tokio_echo(sockeye::Server::builder()).await;
    assert!(!server.is_tls());
    let port = port_of(server.local_addr());
    let ws = bounded(sockeye::connect(&format!("ws://127.0.0.1:{port}/")))
        .await
        .unwrap();
    ws.send("plain").await.unwrap();
    assert_eq!(
        bounded(ws.recv()).await.unwrap(),
        Some(Message::from("plain"))
    );
    bounded(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    let e = bounded(
        sockeye::ClientBuilder::default()
            .open_timeout(Some(Duration::from_secs(5)))
            .connect(&format!("wss://127.0.0.1:{port}/")),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("TLS"), "{e}");
    bounded(server.close()).await;
}

/// Unreadable or empty PEM files give errors that name the file.
#[test]
fn pem_file_errors_name_the_file() {
    let pki = Pki::new();
    let pair = pki.server();
    let missing = pki.dir.join("missing.pem");
    let Err(e) = sync::Server::builder().tls_pem_files(&missing, &pair.key) else {
        panic!("a missing certificate file was accepted");
    };
    assert!(e.to_string().contains("missing.pem"), "{e}");
    // A key file given as the certificate: no certificate in it.
    let Err(e) = sockeye::Server::builder().tls_pem_files(&pair.key, &pair.key) else {
        panic!("a key file was accepted as a certificate file");
    };
    assert!(e.to_string().contains(&*pair.key.to_string_lossy()), "{e}");
    let e = sockeye::ClientBuilder::default()
        .client_auth_pem_files(&pair.cert, &pair.cert)
        .unwrap_err();
    assert!(
        e.to_string().contains(&*pair.cert.to_string_lossy()) && e.to_string().contains("key"),
        "{e}"
    );
    let e = sync::ClientBuilder::default()
        .ca_file(Path::new("/nonexistent/ca.pem"))
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
}
