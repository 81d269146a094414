//! TLS (`wss://`) over real loopback sockets, both front ends, with certificates made here
//! by rcgen: a test CA, server and client certificates it signs, and a self-signed one.
//! Every wait is bounded (`GUARD`).
#![cfg(feature = "tls")]

use std::io::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;
use sockeye::tls::rustls::{self, CertificateError};
use sockeye::{sync, CloseCode, Error, Message};

const GUARD: Duration = Duration::from_secs(20);

// ----- certificates --------------------------------------------------------------------------

#[path = "support/pki.rs"]
mod pki;
use pki::{Pair, Pki};

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

/// Sends `msg` and checks that it comes back (tokio).
async fn echo_check(ws: &sockeye::Connection, msg: impl Into<Message>) {
    let msg = msg.into();
    ws.send(msg.clone()).await.unwrap();
    assert_eq!(bounded(ws.recv()).await.unwrap(), Some(msg));
}

/// Sends `msg` and checks that it comes back (blocking).
fn sync_echo_check(ws: &sync::Connection, msg: impl Into<Message>) {
    let msg = msg.into();
    ws.send(msg.clone()).unwrap();
    assert_eq!(ws.recv_timeout(GUARD).unwrap(), Some(msg));
}

/// A tokio client's whole life: connect, one echo, a clean close.
async fn tokio_session(builder: sockeye::ClientBuilder, uri: &str, msg: impl Into<Message>) {
    let ws = bounded(builder.connect(uri)).await.unwrap();
    echo_check(&ws, msg).await;
    bounded(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    assert!(ws.closed().unwrap().is_ok(), "{:?}", ws.closed());
}

/// A blocking client's whole life: connect, one echo, a clean close.
fn sync_session(builder: sync::ClientBuilder, uri: &str, msg: impl Into<Message>) {
    let ws = builder.connect(uri).unwrap();
    sync_echo_check(&ws, msg);
    ws.close(CloseCode::NORMAL, "").unwrap();
    assert!(ws.closed().unwrap().is_ok(), "{:?}", ws.closed());
}

/// A tokio client that trusts the test CA.
fn trusting(pki: &Pki) -> sockeye::ClientBuilder {
    sockeye::ClientBuilder::default()
        .ca_file(pki.ca_file())
        .unwrap()
}

/// A blocking client that trusts the CA of this file.
fn sync_trusting(ca: &Path) -> sync::ClientBuilder {
    sync::ClientBuilder::default().ca_file(ca).unwrap()
}

/// A tokio echo server over TLS with the certificate and key of `pair`.
async fn tokio_tls_echo(pair: &Pair) -> sockeye::Server {
    tokio_echo(
        sockeye::Server::builder()
            .tls_pem_files(&pair.cert, &pair.key)
            .unwrap(),
    )
    .await
}

fn wss(addr: Option<std::net::SocketAddr>, host: &str) -> String {
    format!("wss://{host}:{}/", addr.unwrap().port())
}

// ----- tests ---------------------------------------------------------------------------------

/// tokio server and client echo over wss:// with a custom CA, the name checked being a DNS
/// name (localhost); addresses and the request are there as over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_echo_over_wss_with_custom_ca() {
    let pki = Pki::new();
    let server = tokio_tls_echo(&pki.server()).await;
    assert!(server.is_tls());
    let uri = format!("{}chat", wss(server.local_addr(), "localhost"));
    let ws = bounded(trusting(&pki).connect(&uri)).await.unwrap();
    assert_eq!(ws.remote_addr(), server.local_addr());
    assert!(ws.local_addr().is_some());
    assert_eq!(ws.request().uri().path(), "/chat");
    echo_check(&ws, "Hello over TLS!").await;
    echo_check(&ws, vec![0u8, 1, 2, 255]).await;
    let conns = server.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].remote_addr(), ws.local_addr());
    assert_eq!(conns[0].request().uri().path(), "/chat");
    bounded(ws.close(CloseCode::NORMAL, "bye")).await.unwrap();
    assert!(ws.closed().unwrap().is_ok(), "{:?}", ws.closed());
    bounded(server.close()).await;
}

/// Blocking server and client echo over wss:// with a custom CA (given as DER), the name
/// checked being an IP address; many messages in flight.
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
    let ws = sync::ClientBuilder::default()
        .add_root_certificate(pki.ca_der())
        .open_timeout(Some(GUARD))
        .connect(&wss(server.local_addr(), "127.0.0.1"))
        .unwrap();
    assert_eq!(ws.remote_addr(), server.local_addr());
    for i in 0..20 {
        ws.send(format!("message {i}")).unwrap();
    }
    for i in 0..20 {
        let expected = Message::from(format!("message {i}"));
        assert_eq!(ws.recv_timeout(GUARD).unwrap(), Some(expected));
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

    let sync_server = sync_echo(sync::Server::builder().tls(config.clone()));
    let uri = wss(sync_server.local_addr(), "localhost");
    tokio_session(trusting(&pki), &uri, "tokio to sync").await;
    blocking(move || sync_server.shutdown()).await;

    let server = tokio_echo(sockeye::Server::builder().tls(config)).await;
    let uri = wss(server.local_addr(), "localhost");
    let ca = pki.ca_file();
    blocking(move || sync_session(sync_trusting(&ca), &uri, "sync to tokio")).await;
    bounded(server.close()).await;
}

/// Without the test CA, the server's certificate is refused: a clear TLS error, in both
/// front ends; the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ca_is_rejected() {
    let pki = Pki::new();
    let server = tokio_tls_echo(&pki.server()).await;
    let uri = wss(server.local_addr(), "localhost");
    let e = bounded(sockeye::connect(&uri)).await.unwrap_err();
    assert_unknown_issuer(&e);
    let sync_uri = uri.clone();
    let e = blocking(move || sync::connect(&sync_uri).unwrap_err()).await;
    assert_unknown_issuer(&e);
    // The server is not disturbed.
    tokio_session(trusting(&pki), &uri, "still there").await;
    bounded(server.close()).await;
}

/// A certificate for another name is refused, though its CA is trusted, whether the URI
/// names a host or an IP address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_mismatch_is_rejected() {
    let pki = Pki::new();
    let usage = ExtendedKeyUsagePurpose::ServerAuth;
    let server = tokio_tls_echo(&pki.leaf("other", &["other.test"], usage, true)).await;
    for host in ["localhost", "127.0.0.1"] {
        let uri = wss(server.local_addr(), host);
        let e = bounded(trusting(&pki).connect(&uri)).await.unwrap_err();
        assert_wrong_name(&e);
        let ca = pki.ca_file();
        let e = blocking(move || sync_trusting(&ca).connect(&uri).unwrap_err()).await;
        assert_wrong_name(&e);
    }
    bounded(server.close()).await;
}

/// `insecure(true)` accepts a self-signed certificate (that verification refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_accepts_self_signed() {
    let pki = Pki::new();
    let usage = ExtendedKeyUsagePurpose::ServerAuth;
    let pair = pki.leaf("self-signed", &["localhost"], usage, false);
    let server = sync_echo(
        sync::Server::builder()
            .tls_pem_files(&pair.cert, &pair.key)
            .unwrap(),
    );
    let uri = wss(server.local_addr(), "127.0.0.1");
    let e = bounded(sockeye::connect(&uri)).await.unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    let insecure = sockeye::ClientBuilder::default().insecure(true);
    tokio_session(insecure, &uri, "insecure").await;
    blocking(move || {
        sync_session(
            sync::ClientBuilder::default().insecure(true),
            &uri,
            "insecure",
        );
        server.shutdown();
    })
    .await;
}

/// A server that requires a client certificate (rustls' `WebPkiClientVerifier`) lets in a
/// client that presents one signed by its CA, and no other; both front ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_required() {
    let pki = Pki::new();
    let client = pki.client();
    let config = pki.server_config_with_client_auth(&pki.server());
    let server = tokio_echo(sockeye::Server::builder().tls(config.clone())).await;
    let uri = wss(server.local_addr(), "localhost");
    let with_cert = trusting(&pki)
        .client_auth_pem_files(&client.cert, &client.key)
        .unwrap();
    tokio_session(with_cert, &uri, "with a certificate").await;
    let without = trusting(&pki).open_timeout(Some(Duration::from_secs(5)));
    let e = bounded(without.connect(&uri)).await.unwrap_err();
    assert_certificate_required(&e);

    let sync_server = sync_echo(sync::Server::builder().tls(config));
    let uri = wss(sync_server.local_addr(), "localhost");
    let ca = pki.ca_file();
    blocking(move || {
        let certs = sockeye::tls::load_certs(&client.cert).unwrap();
        let key = sockeye::tls::load_private_key(&client.key).unwrap();
        let with_cert = sync_trusting(&ca).client_auth(certs, key);
        sync_session(with_cert, &uri, "with a certificate");
        let without = sync_trusting(&ca).open_timeout(Some(Duration::from_secs(5)));
        assert_certificate_required(&without.connect(&uri).unwrap_err());
        sync_server.shutdown();
    })
    .await;
    bounded(server.close()).await;
}

/// permessage-deflate is negotiated over TLS as over TCP, both front ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_negotiated_over_tls() {
    let pki = Pki::new();
    let server = tokio_tls_echo(&pki.server()).await;
    let uri = wss(server.local_addr(), "localhost");
    let deflate = |r: &sockeye::http::Response<()>| {
        r.headers()
            .get("sec-websocket-extensions")
            .is_some_and(|v| v.to_str().unwrap().contains("permessage-deflate"))
    };
    let text = "compressible ".repeat(10_000);
    let ws = bounded(trusting(&pki).connect(&uri)).await.unwrap();
    assert!(deflate(ws.response()), "{:?}", ws.response());
    echo_check(&ws, text.as_str()).await;
    bounded(ws.close(CloseCode::NORMAL, "")).await.unwrap();

    let ca = pki.ca_file();
    blocking(move || {
        let ws = sync_trusting(&ca).connect(&uri).unwrap();
        assert!(deflate(ws.response()), "{:?}", ws.response());
        sync_echo_check(&ws, text.as_str());
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
    let uri = wss(server.local_addr(), "localhost");
    let ws = bounded(trusting(&pki).compression(false).connect(&uri))
        .await
        .unwrap();
    echo_check(&ws, payload.clone()).await;
    echo_check(&ws, payload.clone()).await;
    bounded(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    bounded(server.close()).await;

    let sync_server = sync_echo(sync::Server::builder().tls(config));
    let uri = wss(sync_server.local_addr(), "localhost");
    let ca = pki.ca_file();
    blocking(move || {
        let ws = sync_trusting(&ca).compression(false).connect(&uri).unwrap();
        sync_echo_check(&ws, payload.clone());
        sync_echo_check(&ws, payload);
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
    let open_timeout = Some(Duration::from_secs(2));
    let tokio_server = tokio_echo(
        sockeye::Server::builder()
            .tls(config.clone())
            .open_timeout(open_timeout),
    )
    .await;
    let sync_server = sync_echo(
        sync::Server::builder()
            .tls(config)
            .open_timeout(open_timeout),
    );
    for addr in [tokio_server.local_addr(), sync_server.local_addr()] {
        let ca = pki.ca_file();
        blocking(move || {
            // Says nothing, and stays connected during the rest.
            let silent = TcpStream::connect(addr.unwrap()).unwrap();
            for garbage in [
                &b"\x16\x03\x01\x00\x05hello, not a ClientHello"[..],
                b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n",
                &[0xffu8; 4096][..],
            ] {
                let mut s = TcpStream::connect(addr.unwrap()).unwrap();
                let _ = s.write_all(garbage);
                s.set_read_timeout(Some(GUARD)).unwrap();
                // The server answers with an alert or closes; either way, it ends.
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut s, &mut sink);
            }
            let uri = wss(addr, "localhost");
            sync_session(sync_trusting(&ca), &uri, "after the garbage");
            drop(silent);
        })
        .await;
    }
    blocking(move || sync_server.shutdown()).await;
    bounded(tokio_server.close()).await;
}

/// `ws://` stays plain on a TLS-capable build, and a TLS client against a plain server fails
/// with a TLS error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_stays_plain_and_wss_to_plain_server_fails() {
    let server = tokio_echo(sockeye::Server::builder()).await;
    assert!(!server.is_tls());
    let port = port_of(server.local_addr());
    let plain = sockeye::ClientBuilder::default();
    tokio_session(plain, &format!("ws://127.0.0.1:{port}/"), "plain").await;
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
    let key_path = pair.key.to_string_lossy();
    assert!(e.to_string().contains(&*key_path), "{e}");
    // A certificate file given as the key: no key in it.
    let e = sockeye::ClientBuilder::default()
        .client_auth_pem_files(&pair.cert, &pair.cert)
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&*pair.cert.to_string_lossy()) && text.contains("key"),
        "{text}"
    );
    let e = sync::ClientBuilder::default()
        .ca_file(Path::new("/nonexistent/ca.pem"))
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
}

/// wss:// over a Unix domain socket, both front ends and across them: TLS runs over the
/// socket, the certificate is verified for the URI's host, and a wrong host is refused.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_over_unix_sockets() {
    let pki = Pki::new();
    let pair = pki.server();
    let tokio_path = pki.dir.join("tokio.sock");
    let server = bounded(
        sockeye::Server::builder()
            .tls_pem_files(&pair.cert, &pair.key)
            .unwrap()
            .unix_serve(&tokio_path, |ws: sockeye::ServerConnection| async move {
                while let Some(msg) = ws.recv().await? {
                    ws.send(msg).await?;
                }
                Ok(())
            }),
    )
    .await
    .unwrap();
    assert!(server.is_tls());
    let ws = bounded(trusting(&pki).unix_connect(&tokio_path, "wss://localhost/chat"))
        .await
        .unwrap();
    assert_eq!(ws.request().uri().path(), "/chat");
    echo_check(&ws, "Hello over TLS over a Unix socket!").await;
    // The certificate is for localhost, not for this host.
    let e = bounded(trusting(&pki).unix_connect(&tokio_path, "wss://elsewhere.test/"))
        .await
        .unwrap_err();
    assert_wrong_name(&e);
    // A plain client to a TLS server: the server refuses what is not a ClientHello.
    let plain = sockeye::ClientBuilder::default().open_timeout(Some(Duration::from_secs(5)));
    assert!(bounded(plain.unix_connect(&tokio_path, "ws://localhost/"))
        .await
        .is_err());

    let sync_path = pki.dir.join("sync.sock");
    let sync_server = sync::Server::builder()
        .tls_pem_files(&pair.cert, &pair.key)
        .unwrap()
        .unix_serve(&sync_path, |ws: sync::Connection| {
            while let Some(msg) = ws.recv_timeout(GUARD)? {
                ws.send(msg)?;
            }
            Ok(())
        })
        .unwrap();
    let ca = pki.ca_file();
    let (tp, sp) = (tokio_path.clone(), sync_path.clone());
    blocking(move || {
        for path in [&tp, &sp] {
            let ws = sync_trusting(&ca)
                .unix_connect(path, "wss://localhost/")
                .unwrap();
            sync_echo_check(&ws, "blocking client");
            ws.close(CloseCode::NORMAL, "").unwrap();
            assert!(ws.closed().unwrap().is_ok(), "{:?}", ws.closed());
        }
    })
    .await;
    let ws = bounded(trusting(&pki).unix_connect(&sync_path, "wss://localhost/"))
        .await
        .unwrap();
    echo_check(&ws, "tokio client, blocking server").await;
    // Graceful close over TLS: 1001 reaches the client, the socket files go.
    blocking(move || sync_server.shutdown()).await;
    assert_eq!(bounded(ws.recv()).await.unwrap(), None);
    assert_eq!(ws.close_code(), CloseCode::GOING_AWAY);
    bounded(server.close()).await;
    assert!(!tokio_path.exists() && !sync_path.exists());
}
