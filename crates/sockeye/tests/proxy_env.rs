//! The default proxy, from the real environment, both front ends.
//!
//! Environment variables are process-global, so this binary holds one test, which sets them
//! only while no other thread of its own runs (a current-thread runtime, between
//! `block_on` calls): nothing can race it, under `cargo test` (one test in the binary) or
//! nextest (a process per test). The rules themselves are unit-tested in `src/proxy.rs`
//! through a lookup closure.

use std::sync::Arc;

use sockeye::{Error, Proxy};

#[path = "support/clients.rs"]
mod clients;
use clients::{greeter, greeting, open, Settings, FRONTS};
#[path = "support/proxies.rs"]
mod proxies;
use proxies::{http_proxy, socks5_proxy, Hosts};

const VARS: [&str; 13] = [
    "ws_proxy",
    "WS_PROXY",
    "wss_proxy",
    "WSS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "REQUEST_METHOD",
];

#[test]
fn the_default_proxy_comes_from_the_environment() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (server, http, socks) = rt.block_on(async {
        let (server, _) = greeter(sockeye::Server::builder(), Arc::new(|_: &str| None)).await;
        let mut hosts = Hosts::default();
        for name in ["ws.sockeye.test", "direct.sockeye.test"] {
            hosts
                .0
                .insert(name.to_owned(), server.local_addr().unwrap());
        }
        let http = http_proxy(None, hosts.clone()).await;
        let socks = socks5_proxy(None, hosts).await;
        (server, http, socks)
    });
    let port = server.local_addr().unwrap().port();
    for var in VARS {
        std::env::remove_var(var);
    }
    std::env::set_var("HTTP_PROXY", http.url("http://"));
    std::env::set_var("ALL_PROXY", socks.url("socks5h://"));
    std::env::set_var(
        "NO_PROXY",
        "example.org, .sockeye.invalid,direct.sockeye.test",
    );

    // Which proxy each URI gets.
    let from_env = Proxy::from_env();
    let http_url = format!("http://{}", http.addr);
    let socks_url = format!("socks5h://{}", socks.addr);
    assert_eq!(
        from_env.for_uri("ws://ws.sockeye.test/").unwrap(),
        Some(http_url)
    );
    #[cfg(feature = "tls")]
    assert_eq!(
        from_env.for_uri("wss://ws.sockeye.test/").unwrap(),
        Some(socks_url.clone())
    );
    for direct in [
        "ws://direct.sockeye.test/",
        "ws://a.sockeye.invalid/",
        "ws://localhost:9/",
        "ws://127.0.0.1/",
    ] {
        assert_eq!(from_env.for_uri(direct).unwrap(), None, "{direct}");
    }

    rt.block_on(async {
        for front in FRONTS {
            // The builders' default is the environment's proxy.
            let settings = Settings {
                proxy: None,
                ..Settings::default()
            };
            let opened = greeting(
                front,
                &settings,
                &format!("ws://ws.sockeye.test:{port}/env"),
            )
            .await;
            assert!(opened.starts_with("/env "), "{front:?}");
            // NO_PROXY: connected directly, where the name does not resolve.
            let e = open(
                front,
                &settings,
                &format!("ws://direct.sockeye.test:{port}/"),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(e, Error::Io(_) | Error::OpenTimeout),
                "{front:?}: {e}"
            );
            // Proxy::none() ignores the environment.
            let e = open(
                front,
                &Settings::default(),
                &format!("ws://ws.sockeye.test:{port}/"),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(e, Error::Io(_) | Error::OpenTimeout),
                "{front:?}: {e}"
            );
        }
    });
    assert_eq!(http.tunnels().len(), 2);
    assert!(socks.tunnels().is_empty());

    // The lowercase name wins; an invalid value is an error that names its variable.
    std::env::set_var("http_proxy", socks.url("socks5h://"));
    assert_eq!(
        from_env.for_uri("ws://ws.sockeye.test/").unwrap(),
        Some(socks_url)
    );
    rt.block_on(async {
        for front in FRONTS {
            let settings = Settings {
                proxy: None,
                ..Settings::default()
            };
            let uri = format!("ws://ws.sockeye.test:{port}/lower");
            assert!(open(front, &settings, &uri).await.is_ok(), "{front:?}");
        }
    });
    assert_eq!(socks.tunnels().len(), 2);
    std::env::set_var("http_proxy", "gopher://x");
    let e = from_env.for_uri("ws://ws.sockeye.test/").unwrap_err();
    assert!(e.to_string().contains("(from http_proxy)"), "{e}");
    for var in VARS {
        std::env::remove_var(var);
    }
}
