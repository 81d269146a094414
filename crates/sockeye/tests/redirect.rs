//! Client redirects over real loopback sockets, both front ends (each scenario runs on the
//! tokio client and on the blocking one): the statuses followed, `Location` resolution,
//! credentials across origins, loops, limits, bad locations, `wss://` to `ws://`, the
//! open timeout over the whole chain, and reconnecting clients. Every wait is bounded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sockeye::proto::HandshakeError;
use sockeye::{Error, RedirectError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/clients.rs"]
mod clients;
#[cfg(feature = "tls")]
#[path = "support/pki.rs"]
mod pki;
use clients::{greeter, greeting, open, redirect, Answers, Settings, FRONTS, GUARD};

/// Answers: a 302 to the location `f` gives for a path, if any.
fn answers(f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Answers {
    Arc::new(move |pq| f(pq).map(|location| redirect(302, &location)))
}

fn base(server: &sockeye::Server) -> String {
    format!("ws://{}", server.local_addr().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_every_redirect_status_and_resolves_locations() {
    let (server, seen) = greeter(
        sockeye::Server::builder(),
        Arc::new(|pq: &str| {
            let (status, location) = match pq {
                "/a" => (302, "b?x=1"),          // relative path
                "/b?x=1" => (301, "/dir/c"),     // absolute path
                "/dir/c" => (303, "../d"),       // dot segments
                "/d" => (307, "?q=2"),           // query only
                "/d?q=2" => (308, "e#fragment"), // fragment dropped
                _ => return None,
            };
            Some(redirect(status, location))
        }),
    )
    .await;
    let start = base(&server);
    for front in FRONTS {
        seen.lock().unwrap().clear();
        let opened = open(front, &Settings::default(), &format!("{start}/a"))
            .await
            .unwrap();
        assert!(
            opened.greeting.starts_with("/e "),
            "{front:?}: {}",
            opened.greeting
        );
        // The connection's request is the last one sent.
        assert_eq!(opened.request.uri().to_string(), format!("{start}/e"));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            ["/a", "/b?x=1", "/dir/c", "/d", "/d?q=2", "/e"],
            "{front:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_stay_with_their_origin() {
    let (other, _) = greeter(sockeye::Server::builder(), answers(|_| None)).await;
    let elsewhere = format!("{}/landed", base(&other));
    let (server, _) = greeter(
        sockeye::Server::builder(),
        answers(move |pq| match pq {
            "/same" => Some("/same-landed".to_owned()),
            "/away" => Some(elsewhere.clone()),
            _ => None,
        }),
    )
    .await;
    let start = base(&server);
    let settings = Settings {
        headers: vec![
            ("authorization", "Bearer secret".to_owned()),
            ("cookie", "k=v".to_owned()),
            ("x-kept", "1".to_owned()),
        ],
        ..Settings::default()
    };
    let with_userinfo = start.replace("ws://", "ws://user:pass@");
    for front in FRONTS {
        let same = greeting(front, &settings, &format!("{start}/same")).await;
        assert_eq!(
            same, "/same-landed auth=Bearer secret cookie=k=v x-kept=1",
            "{front:?}"
        );
        let away = greeting(front, &settings, &format!("{start}/away")).await;
        assert_eq!(away, "/landed auth=- cookie=- x-kept=1", "{front:?}");
        // The URI's user:password: kept to the same origin, dropped elsewhere.
        let default = Settings::default();
        let same = greeting(front, &default, &format!("{with_userinfo}/same")).await;
        assert!(same.contains("auth=Basic dXNlcjpwYXNz"), "{}", same);
        let away = greeting(front, &default, &format!("{with_userinfo}/away")).await;
        assert!(away.contains("auth=-"), "{front:?}: {}", away);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_and_limits_are_clear_errors() {
    let (server, seen) = greeter(
        sockeye::Server::builder(),
        Arc::new(|pq: &str| {
            if pq == "/loop1" {
                return Some(redirect(302, "/loop2"));
            }
            if pq == "/loop2" {
                return Some(redirect(307, "/loop1"));
            }
            // /n/K -> /n/K+1, for ever.
            let k: usize = pq.strip_prefix("/n/")?.parse().ok()?;
            Some(redirect(302, &format!("/n/{}", k + 1)))
        }),
    )
    .await;
    let start = base(&server);
    for front in FRONTS {
        let e = open(front, &Settings::default(), &format!("{start}/loop1"))
            .await
            .unwrap_err();
        let want = format!("{start}/loop1");
        assert!(
            matches!(&e, Error::Redirect(RedirectError::Loop { uri }) if *uri == want),
            "{front:?}: {e}"
        );
        assert_eq!(
            e.to_string(),
            format!("redirect loop: {want} was visited already")
        );

        for (max, requests) in [(None, 11), (Some(2), 3)] {
            seen.lock().unwrap().clear();
            let settings = Settings {
                max_redirects: max,
                ..Settings::default()
            };
            let e = open(front, &settings, &format!("{start}/n/0"))
                .await
                .unwrap_err();
            let limit = max.unwrap_or(10);
            let next = format!("{start}/n/{}", limit + 1);
            assert!(
                matches!(&e, Error::Redirect(RedirectError::TooMany { max, uri }) if *max == limit && *uri == next),
                "{front:?}: {e}"
            );
            assert_eq!(seen.lock().unwrap().len(), requests, "{front:?} {max:?}");
        }

        // 0: not followed; the answer is the error, as without redirects.
        let settings = Settings {
            max_redirects: Some(0),
            ..Settings::default()
        };
        let e = open(front, &settings, &format!("{start}/n/0"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Handshake(HandshakeError::UnexpectedStatus(r)) if r.status == 302),
            "{front:?}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_locations_are_clear_errors() {
    let (server, _) = greeter(
        sockeye::Server::builder(),
        Arc::new(|pq: &str| match pq {
            "/none" => Some(sockeye::respond(sockeye::http::StatusCode::FOUND, "")),
            "/http" => Some(redirect(301, "http://127.0.0.1:1/")),
            "/https" => Some(redirect(301, "https://127.0.0.1:1/")),
            "/spaces" => Some(redirect(302, "ws://exa mple/")),
            _ => None,
        }),
    )
    .await;
    let start = base(&server);
    for front in FRONTS {
        let e = open(front, &Settings::default(), &format!("{start}/none"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Redirect(RedirectError::MissingLocation { status, .. }) if *status == 302),
            "{front:?}: {e}"
        );
        assert_eq!(
            e.to_string(),
            format!("{start}/none answered 302 Found without a Location header")
        );
        for (path, location) in [
            ("/http", "http://127.0.0.1:1/"),
            ("/https", "https://127.0.0.1:1/"),
            ("/spaces", "ws://exa mple/"),
        ] {
            let e = open(front, &Settings::default(), &format!("{start}{path}"))
                .await
                .unwrap_err();
            assert!(
                matches!(&e, Error::Redirect(RedirectError::InvalidLocation { location: l, .. }) if l == location),
                "{front:?} {path}: {e}"
            );
        }
    }
}

/// A raw redirector: each request is answered, after `delay`, with a 302 to the next path.
async fn slow_redirector(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("ws://{}/0", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                tokio::time::sleep(delay).await;
                let answer =
                    format!("HTTP/1.1 302 Found\r\nLocation: /{n}\r\nContent-Length: 0\r\n\r\n");
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    (uri, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_timeout_covers_the_whole_chain() {
    // Each hop takes 200 ms, well within a 1 s open_timeout on its own.
    let (uri, count) = slow_redirector(Duration::from_millis(200)).await;
    for front in FRONTS {
        count.store(0, Ordering::SeqCst);
        let settings = Settings {
            max_redirects: Some(1000),
            open_timeout: Duration::from_secs(1),
            ..Settings::default()
        };
        let started = Instant::now();
        let e = open(front, &settings, &uri).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(matches!(e, Error::OpenTimeout), "{front:?}: {e}");
        assert!(elapsed < Duration::from_secs(3), "{front:?}: {elapsed:?}");
        let hops = count.load(Ordering::SeqCst);
        assert!((3..=7).contains(&hops), "{front:?}: {hops} requests");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_clients_follow_redirects() {
    let (server, _) = greeter(
        sockeye::Server::builder(),
        answers(|pq| (pq == "/old").then(|| "/new".to_owned())),
    )
    .await;
    let uri = format!("{}/old", base(&server));
    let builder = sockeye::ClientBuilder::default().proxy(sockeye::Proxy::none());
    let mut connections = builder.reconnecting(&uri);
    let ws = tokio::time::timeout(GUARD, connections.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ws.request().uri().path(), "/new");
    let uri2 = uri.clone();
    let path = tokio::task::spawn_blocking(move || {
        let builder = sockeye::sync::ClientBuilder::default().proxy(sockeye::Proxy::none());
        let ws = builder.reconnecting(&uri2).next().unwrap().unwrap();
        ws.request().uri().path().to_owned()
    })
    .await
    .unwrap();
    assert_eq!(path, "/new");
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wss_goes_to_wss_never_to_ws() {
        let pki = pki::Pki::new();
        let pair = pki.server();
        let config = sockeye::tls::server_config_from_pem_files(&pair.cert, &pair.key).unwrap();
        let (plain, _) = greeter(sockeye::Server::builder(), answers(|_| None)).await;
        let to_plain = format!("{}/plain", base(&plain));
        let (secure, _) = greeter(
            sockeye::Server::builder().tls(config),
            answers(move |pq| match pq {
                "/down" => Some(to_plain.clone()),
                "/up" => Some("/landed".to_owned()),
                _ => None,
            }),
        )
        .await;
        let port = secure.local_addr().unwrap().port();
        let settings = Settings {
            ca: Some(pki.ca_der()),
            ..Settings::default()
        };
        for front in FRONTS {
            let e = open(front, &settings, &format!("wss://localhost:{port}/down"))
                .await
                .unwrap_err();
            assert!(
                matches!(&e, Error::Redirect(RedirectError::Insecure { to, .. }) if to.ends_with("/plain")),
                "{front:?}: {e}"
            );
            let opened = open(front, &settings, &format!("wss://localhost:{port}/up"))
                .await
                .unwrap();
            assert!(
                opened.greeting.starts_with("/landed"),
                "{}",
                opened.greeting
            );
        }
        // ws:// to wss:// is an upgrade: followed.
        let (upgrade, _) = greeter(
            sockeye::Server::builder(),
            answers(move |_| Some(format!("wss://localhost:{port}/up"))),
        )
        .await;
        for front in FRONTS {
            let opened = open(front, &settings, &format!("{}/", base(&upgrade)))
                .await
                .unwrap();
            assert!(opened.greeting.starts_with("/landed"), "{front:?}");
            assert_eq!(opened.request.uri().scheme_str(), Some("wss"));
        }
    }
}
