//! Client proxies over real loopback sockets, both front ends (each scenario runs on the
//! tokio client and on the blocking one): HTTP `CONNECT` and SOCKS5 proxies written in
//! `support/proxies.rs`, which count their tunnels, so that each test proves the traffic
//! went through the proxy; credentials accepted and refused; `wss://` through the tunnel;
//! proxies that misbehave. The environment path is `proxy_env.rs`. Every wait is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sockeye::{Error, Proxy, ProxyError};

#[path = "support/clients.rs"]
mod clients;
use clients::{greeter, greeting, open, Settings, FRONTS, GUARD};
#[path = "support/proxies.rs"]
mod proxies;
use proxies::{http_proxy, scripted_proxy, socks5_proxy, Hosts, TestProxy};
#[cfg(feature = "tls")]
#[path = "support/pki.rs"]
mod pki;

/// A name only the test proxies know: reaching it proves the proxy was used.
const NAME: &str = "ws.sockeye.test";

/// A greeting server, and the proxies' host table that maps `NAME` to it.
async fn server() -> (sockeye::Server, Hosts) {
    let (server, _) = greeter(sockeye::Server::builder(), Arc::new(|_: &str| None)).await;
    let mut hosts = Hosts::default();
    hosts
        .0
        .insert(NAME.to_owned(), server.local_addr().unwrap());
    (server, hosts)
}

fn through(url: &str) -> Settings {
    Settings {
        proxy: Some(Proxy::url(url).unwrap()),
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_tunnels_to_names_and_addresses() {
    let (server, hosts) = server().await;
    let port = server.local_addr().unwrap().port();
    let proxy = http_proxy(None, hosts).await;
    let settings = through(&proxy.url("http://"));
    for front in FRONTS {
        let opened = greeting(front, &settings, &format!("ws://{NAME}:{port}/by-name")).await;
        assert!(opened.starts_with("/by-name "), "{front:?}");
        // An explicit proxy is used for loopback addresses too.
        let opened = greeting(front, &settings, &format!("ws://127.0.0.1:{port}/by-ip")).await;
        assert!(opened.starts_with("/by-ip "), "{front:?}");
    }
    let name = format!("{NAME}:{port}");
    let ip = format!("127.0.0.1:{port}");
    assert_eq!(proxy.tunnels(), [name.clone(), ip.clone(), name, ip]);
    // Without the proxy, the name does not resolve.
    let e = open(
        FRONTS[0],
        &Settings::default(),
        &format!("ws://{NAME}:{port}/"),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e}");
}

/// Credentials, on both front ends: `scheme` + `good@` opens a tunnel through `proxy`;
/// none is [`ProxyError::AuthRequired`]; `wrong@` is [`ProxyError::AuthFailed`], whose
/// message does not show the password.
async fn check_credentials(proxy: &TestProxy, scheme: &str, good: &str, wrong: &str, uri: &str) {
    for front in FRONTS {
        let ok = through(&proxy.url(&format!("{scheme}{good}@")));
        assert!(open(front, &ok, uri).await.is_ok(), "{front:?}");
        let e = open(front, &through(&proxy.url(scheme)), uri)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Proxy(ProxyError::AuthRequired { .. })),
            "{front:?}: {e}"
        );
        assert!(e.to_string().contains("requires authentication"), "{e}");
        let e = open(
            front,
            &through(&proxy.url(&format!("{scheme}{wrong}@"))),
            uri,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, Error::Proxy(ProxyError::AuthFailed { .. })),
            "{front:?}: {e}"
        );
        let password = wrong.split(':').nth(1).unwrap();
        assert!(!e.to_string().contains(password), "{e}");
    }
    assert_eq!(proxy.tunnels().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_credentials() {
    let (server, hosts) = server().await;
    let uri = format!("ws://{NAME}:{}/", server.local_addr().unwrap().port());
    // alice:p@ss:w, percent-encoded in the URL.
    let proxy = http_proxy(Some("Basic YWxpY2U6cEBzczp3"), hosts).await;
    check_credentials(&proxy, "http://", "alice:p%40ss%3Aw", "alice:wrong", &uri).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_resolves_remotely_with_socks5h_locally_with_socks5() {
    let (server, hosts) = server().await;
    let port = server.local_addr().unwrap().port();
    let proxy = socks5_proxy(None, hosts).await;
    for front in FRONTS {
        let remote = through(&proxy.url("socks5h://"));
        let opened = greeting(front, &remote, &format!("ws://{NAME}:{port}/h")).await;
        assert!(opened.starts_with("/h "), "{front:?}");
        // socks5://: the client resolves the name and sends an address.
        let local = through(&proxy.url("socks5://"));
        let opened = greeting(front, &local, &format!("ws://localhost:{port}/local")).await;
        assert!(opened.starts_with("/local "), "{front:?}");
        // A name the client cannot resolve fails before the proxy is asked.
        let e = open(front, &local, &format!("ws://{NAME}:{port}/"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Io(_)), "{front:?}: {e}");
    }
    let tunnels = proxy.tunnels();
    assert_eq!(tunnels.len(), 4, "{tunnels:?}");
    for pair in tunnels.chunks(2) {
        assert_eq!(pair[0], format!("{NAME}:{port}"));
        let local = pair[1].as_str();
        assert!(
            local == format!("127.0.0.1:{port}") || local == format!("[::1]:{port}"),
            "{local}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_username_password() {
    let (server, hosts) = server().await;
    let uri = format!("ws://{NAME}:{}/", server.local_addr().unwrap().port());
    let proxy = socks5_proxy(Some(("alice", "s3cret")), hosts).await;
    check_credentials(&proxy, "socks5h://", "alice:s3cret", "alice:nope", &uri).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_report_unreachable_servers() {
    let hosts = Hosts::default();
    let http = http_proxy(None, hosts.clone()).await;
    let socks = socks5_proxy(None, hosts).await;
    for front in FRONTS {
        let uri = "ws://nowhere.sockeye.test/";
        let e = open(front, &through(&http.url("http://")), uri)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Proxy(ProxyError::Status { status, .. }) if *status == 502),
            "{front:?}: {e}"
        );
        assert!(sockeye::is_retryable(&e));
        let e = open(front, &through(&socks.url("socks5h://")), uri)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Proxy(ProxyError::SocksReply { code: 4, .. })),
            "{front:?}: {e}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "SOCKS5 proxy {} failed to connect: host unreachable (reply 4)",
                socks.url("socks5h://")
            )
        );
    }
}

/// Runs `front` against a scripted proxy and returns the error.
async fn scripted_error(proxy: &TestProxy, scheme: &str, timeout: Duration) -> Vec<Error> {
    let settings = Settings {
        open_timeout: timeout,
        ..through(&proxy.url(scheme))
    };
    let mut errors = Vec::new();
    for front in FRONTS {
        let e = open(front, &settings, "ws://ws.sockeye.test/")
            .await
            .unwrap_err();
        errors.push(e);
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_proxies_give_clear_errors() {
    let second = Duration::from_secs(5);
    // Not HTTP.
    let proxy = scripted_proxy(1, b"SSH-2.0-OpenSSH_9.6\r\n", 0, b"", false).await;
    for e in scripted_error(&proxy, "http://", second).await {
        assert!(
            matches!(e, Error::Proxy(ProxyError::Protocol { .. })),
            "{e}"
        );
        assert!(
            e.to_string().contains("not an HTTP answer to CONNECT"),
            "{e}"
        );
    }
    // Closed before the end of the head.
    let proxy = scripted_proxy(1, b"HTTP/1.1 200 OK\r\n", 0, b"", false).await;
    for e in scripted_error(&proxy, "http://", second).await {
        assert!(matches!(e, Error::Proxy(ProxyError::Closed { .. })), "{e}");
    }
    // A head without end.
    static ENDLESS: [u8; 10_000] = [b'x'; 10_000];
    let proxy = scripted_proxy(1, b"HTTP/1.1 200 OK\r\n", 0, &ENDLESS, true).await;
    for e in scripted_error(&proxy, "http://", second).await {
        assert!(e.to_string().contains("longer than 8192 bytes"), "{e}");
    }
    // SOCKS5: an HTTP proxy answering.
    let proxy = scripted_proxy(3, b"HTTP/1.1 400 Bad Request\r\n\r\n", 0, b"", false).await;
    for e in scripted_error(&proxy, "socks5h://", second).await {
        assert!(e.to_string().contains("not a SOCKS5 proxy"), "{e}");
    }
    // SOCKS5: not allowed by ruleset (fatal for a reconnecting client).
    let proxy = scripted_proxy(3, &[5, 0], 1, &[5, 2, 0, 1, 0, 0, 0, 0, 0, 0], false).await;
    for e in scripted_error(&proxy, "socks5h://", second).await {
        assert!(
            matches!(e, Error::Proxy(ProxyError::SocksReply { code: 2, .. })),
            "{e}"
        );
        assert!(!sockeye::is_retryable(&e));
    }
    // SOCKS5: an unknown address type in the reply.
    let proxy = scripted_proxy(3, &[5, 0], 1, &[5, 0, 0, 7, 0, 0], false).await;
    for e in scripted_error(&proxy, "socks5h://", second).await {
        assert!(e.to_string().contains("unknown address type 7"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_proxy_runs_into_open_timeout() {
    for (scheme, read) in [("http://", 1), ("socks5h://", 3)] {
        let proxy = scripted_proxy(read, b"", 0, b"", true).await;
        let started = Instant::now();
        for e in scripted_error(&proxy, scheme, Duration::from_millis(300)).await {
            assert!(matches!(e, Error::OpenTimeout), "{scheme}: {e}");
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{scheme}");
        assert_eq!(proxy.tunnels().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_clients_use_the_proxy() {
    let (server, hosts) = server().await;
    let uri = format!("ws://{NAME}:{}/", server.local_addr().unwrap().port());
    let proxy = socks5_proxy(None, hosts).await;
    let url = proxy.url("socks5h://");
    let builder = sockeye::ClientBuilder::default().proxy(Proxy::url(&url).unwrap());
    let mut connections = builder.reconnecting(&uri);
    let first = tokio::time::timeout(GUARD, connections.next())
        .await
        .unwrap();
    assert!(first.unwrap().is_ok());
    tokio::task::spawn_blocking(move || {
        let builder = sockeye::sync::ClientBuilder::default().proxy(Proxy::url(&url).unwrap());
        assert!(builder.reconnecting(&uri).next().unwrap().is_ok());
    })
    .await
    .unwrap();
    assert_eq!(proxy.tunnels().len(), 2);
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_both_kinds_of_proxy() {
    // The certificate names the server only: TLS runs end to end, SNI and verification
    // for the server's name, whatever the proxy's.
    let pki = pki::Pki::new();
    let pair = pki.leaf(
        "named",
        &[NAME],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        true,
    );
    let config = sockeye::tls::server_config_from_pem_files(&pair.cert, &pair.key).unwrap();
    let (server, _) = greeter(
        sockeye::Server::builder().tls(config),
        Arc::new(|_: &str| None),
    )
    .await;
    let mut hosts = Hosts::default();
    hosts
        .0
        .insert(NAME.to_owned(), server.local_addr().unwrap());
    let uri = format!(
        "wss://{NAME}:{}/secure",
        server.local_addr().unwrap().port()
    );
    let http = http_proxy(None, hosts.clone()).await;
    let socks = socks5_proxy(None, hosts).await;
    for proxy in [http.url("http://"), socks.url("socks5h://")] {
        for front in FRONTS {
            let settings = Settings {
                ca: Some(pki.ca_der()),
                ..through(&proxy)
            };
            let opened = open(front, &settings, &uri).await.unwrap();
            assert!(opened.greeting.starts_with("/secure "), "{proxy} {front:?}");
            // Without the CA, the server's certificate is refused through the tunnel too.
            let e = open(front, &through(&proxy), &uri).await.unwrap_err();
            assert!(matches!(e, Error::Tls(_)), "{proxy} {front:?}: {e}");
        }
    }
    assert_eq!(http.tunnels().len(), 4);
    assert_eq!(socks.tunnels().len(), 4);
}
