//! HTTP Basic auth and routing over real loopback sockets, both front ends: the same servers
//! (auth only, auth with a check function, a router, both) are built with the tokio and the
//! blocking server, and driven by the tokio client. Timeouts are failure guards only.

use std::future::Future;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::StatusCode;
use sockeye::proto::{HandshakeError, HttpResponse};
use sockeye::{auth, sync, ClientBuilder, Error, Router, Server, ServerConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Failure guard for anything that should happen promptly.
const GUARD: Duration = Duration::from_secs(10);

async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

// ----- The servers, in both front ends -------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum FrontEnd {
    Tokio,
    Sync,
}

const FRONT_ENDS: [FrontEnd; 2] = [FrontEnd::Tokio, FrontEnd::Sync];

/// What the servers' handlers answer: the route, the user and the parameters they see.
fn describe<'a>(
    route: &str,
    user: Option<&str>,
    params: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut out = format!("{route} user={}", user.unwrap_or("-"));
    for (name, value) in params {
        out.push_str(&format!(" {name}={value}"));
    }
    out
}

fn credentials() -> auth::BasicAuth {
    auth::basic("test realm", [("alice", "s3cret"), ("bob", "pass:word")])
}

/// Only users whose password is their name reversed.
fn check_function() -> auth::BasicAuth {
    auth::basic_with("reversed", |user, password| {
        !user.is_empty()
            && auth::constant_time_eq(
                password.as_bytes(),
                user.chars().rev().collect::<String>().as_bytes(),
            )
    })
}

/// A health check answered by `process_request`, which runs after basic auth.
fn healthz(request: &http::Request<()>) -> Option<http::Response<bytes::Bytes>> {
    (request.uri().path() == "/healthz").then(|| sockeye::respond(StatusCode::OK, "OK\n"))
}

#[derive(Clone, Copy, Debug)]
enum Setup {
    /// Basic auth with static credentials; one handler.
    Auth,
    /// Basic auth with a check function; one handler.
    AuthCheck,
    /// A router, no auth.
    Routes,
    /// Basic auth, a `process_request` hook and a router.
    AuthRoutes,
}

enum Running {
    Tokio(Server),
    Sync(sync::Server),
}

impl Running {
    async fn start(front: FrontEnd, setup: Setup) -> (Running, String) {
        let running = match front {
            FrontEnd::Tokio => Running::Tokio(start_tokio(setup).await),
            FrontEnd::Sync => Running::Sync(start_sync(setup)),
        };
        let addr = match &running {
            Running::Tokio(s) => s.local_addr(),
            Running::Sync(s) => s.local_addr(),
        };
        (running, addr.unwrap().to_string())
    }

    async fn stop(self) {
        match self {
            Running::Tokio(s) => guard("close", s.close()).await,
            Running::Sync(s) => {
                let stopping = tokio::task::spawn_blocking(move || s.shutdown());
                guard("shutdown", stopping).await.unwrap();
            }
        }
    }
}

async fn start_tokio(setup: Setup) -> Server {
    async fn greet(ws: ServerConnection) -> Result<(), sockeye::BoxError> {
        ws.send(describe("greet", ws.username(), ws.params()))
            .await?;
        Ok(())
    }
    fn router() -> Router {
        Router::new()
            .route("/", |ws: ServerConnection| async move {
                ws.send(describe("root", ws.username(), ws.params()))
                    .await?;
                Ok(())
            })
            .route("/rooms/{id}", |ws: ServerConnection| async move {
                let id = ws.param("id").ok_or("no id")?.to_owned();
                ws.send(describe(&format!("room[{id}]"), ws.username(), ws.params()))
                    .await?;
                Ok(())
            })
            .route(
                "/rooms/{id}/users/{user}",
                |ws: ServerConnection| async move {
                    ws.send(describe("member", ws.username(), ws.params()))
                        .await?;
                    Ok(())
                },
            )
            .route("/files/{*path}", |ws: ServerConnection| async move {
                ws.send(describe("file", ws.username(), ws.params()))
                    .await?;
                Ok(())
            })
    }
    let builder = Server::builder();
    let addr = "127.0.0.1:0";
    let started = match setup {
        Setup::Auth => builder.basic_auth(credentials()).serve(addr, greet).await,
        Setup::AuthCheck => {
            builder
                .basic_auth(check_function())
                .serve(addr, greet)
                .await
        }
        Setup::Routes => sockeye::route(addr, router()).await,
        Setup::AuthRoutes => {
            builder
                .basic_auth(credentials())
                .process_request(healthz)
                .route(addr, router())
                .await
        }
    };
    started.unwrap()
}

fn start_sync(setup: Setup) -> sync::Server {
    fn greet(ws: sync::Connection) -> Result<(), sockeye::BoxError> {
        ws.send(describe("greet", ws.username(), ws.params()))?;
        Ok(())
    }
    fn router() -> sync::Router {
        sync::Router::new()
            .route("/", |ws: sync::Connection| {
                Ok(ws.send(describe("root", ws.username(), ws.params()))?)
            })
            .route("/rooms/{id}", |ws: sync::Connection| {
                let id = ws.param("id").ok_or("no id")?;
                let room = format!("room[{id}]");
                Ok(ws.send(describe(&room, ws.username(), ws.params()))?)
            })
            .route("/rooms/{id}/users/{user}", |ws: sync::Connection| {
                Ok(ws.send(describe("member", ws.username(), ws.params()))?)
            })
            .route("/files/{*path}", |ws: sync::Connection| {
                Ok(ws.send(describe("file", ws.username(), ws.params()))?)
            })
    }
    let builder = sync::Server::builder();
    let addr = "127.0.0.1:0";
    let started = match setup {
        Setup::Auth => builder.basic_auth(credentials()).serve(addr, greet),
        Setup::AuthCheck => builder.basic_auth(check_function()).serve(addr, greet),
        Setup::Routes => sync::route(addr, router()),
        Setup::AuthRoutes => builder
            .basic_auth(credentials())
            .process_request(healthz)
            .route(addr, router()),
    };
    started.unwrap()
}

// ----- Clients -------------------------------------------------------------------------------

fn basic(user_password: &str) -> String {
    format!("Basic {}", BASE64.encode(user_password))
}

/// Connects with this `Authorization` header (or none) and returns the one message the
/// handler sends.
async fn greeting(uri: &str, authorization: Option<&str>) -> String {
    let mut builder = ClientBuilder::default();
    if let Some(value) = authorization {
        builder = builder.header("authorization", value).unwrap();
    }
    let ws = guard("connect", builder.connect(uri))
        .await
        .unwrap_or_else(|e| panic!("{uri} {authorization:?}: {e}"));
    let message = guard("recv", ws.recv()).await.unwrap().expect("a message");
    let text = message.as_text().expect("text").to_owned();
    // The handler returned: a normal close.
    assert!(matches!(guard("close", ws.recv()).await, Ok(None)));
    text
}

/// Connects and expects the handshake to be refused; returns the response.
async fn refusal(uri: &str, authorization: Option<&str>) -> HttpResponse {
    let mut builder = ClientBuilder::default();
    if let Some(value) = authorization {
        builder = builder.header("authorization", value).unwrap();
    }
    match guard("connect", builder.connect(uri)).await {
        Err(Error::Handshake(HandshakeError::UnexpectedStatus(response))) => *response,
        other => panic!("{uri} {authorization:?}: expected a refusal, got {other:?}"),
    }
}

/// Expects a 401 with the realm's challenge and this body.
async fn expect_401(uri: &str, authorization: Option<&str>, realm: &str, body: &str) {
    let response = refusal(uri, authorization).await;
    assert_eq!(
        response.status,
        StatusCode::UNAUTHORIZED,
        "{authorization:?}"
    );
    assert_eq!(
        response.headers["www-authenticate"],
        format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
        "{authorization:?}"
    );
    assert_eq!(&response.body[..], body.as_bytes(), "{authorization:?}");
}

async fn expect_404(uri: &str, authorization: Option<&str>) {
    let response = refusal(uri, authorization).await;
    assert_eq!(response.status, StatusCode::NOT_FOUND, "{uri}");
    assert_eq!(&response.body[..], b"Not Found\n");
}

/// Sends a raw request head and returns the status line of the answer.
async fn raw_status(addr: &str, head: &str) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(head.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = guard("raw request", exchange).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    response.lines().next().unwrap_or_default().to_owned()
}

// ----- Basic auth ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_accepts_good_credentials_with_the_username() {
    for front in FRONT_ENDS {
        let (server, addr) = Running::start(front, Setup::Auth).await;
        let uri = format!("ws://{addr}/");
        // Credentials in the URI, sent by the client as a Basic header.
        let greeting_uri = format!("ws://alice:s3cret@{addr}/");
        assert_eq!(
            greeting(&greeting_uri, None).await,
            "greet user=alice",
            "{front:?}"
        );
        // In a header; the password may contain colons.
        let bob = basic("bob:pass:word");
        assert_eq!(
            greeting(&uri, Some(&bob)).await,
            "greet user=bob",
            "{front:?}"
        );
        // The scheme is case-insensitive.
        let lax = bob.replacen("Basic", "bASIC", 1);
        assert_eq!(
            greeting(&uri, Some(&lax)).await,
            "greet user=bob",
            "{front:?}"
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_refuses_with_401_and_a_challenge() {
    for front in FRONT_ENDS {
        let (server, addr) = Running::start(front, Setup::Auth).await;
        let uri = format!("ws://{addr}/");
        let realm = "test realm";
        let invalid = "Invalid credentials\n";
        // Missing header.
        expect_401(&uri, None, realm, "Missing credentials\n").await;
        // Bad password, unknown user, a user's password for another user, empty password.
        for bad in [
            "alice:wrong",
            "eve:s3cret",
            "bob:s3cret",
            "alice:",
            ":s3cret",
        ] {
            expect_401(&uri, Some(&basic(bad)), realm, invalid).await;
        }
        // Malformed headers: 401 too, never 400 nor a dropped connection.
        expect_401(&uri, Some("Bearer abc"), realm, "Unsupported credentials\n").await;
        for malformed in [
            "Basic",
            "Basic !!!",
            "Basic YWxpY2U=", // "alice", no colon
            "Basic //79",     // not UTF-8
            "Basic YWxpY2U6czNjcmV0===",
        ] {
            expect_401(&uri, Some(malformed), realm, invalid).await;
        }
        // A header value that is not UTF-8, sent by hand.
        let head = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Basic \u{e9}\r\n\r\n"
        );
        let status = raw_status(&addr, &head).await;
        assert!(status.starts_with("HTTP/1.1 401"), "{front:?}: {status}");
        // The server still works.
        assert_eq!(
            greeting(&uri, Some(&basic("alice:s3cret"))).await,
            "greet user=alice"
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_a_check_function() {
    for front in FRONT_ENDS {
        let (server, addr) = Running::start(front, Setup::AuthCheck).await;
        let uri = format!("ws://{addr}/");
        assert_eq!(
            greeting(&uri, Some(&basic("ann:nna"))).await,
            "greet user=ann"
        );
        assert_eq!(
            greeting(&uri, Some(&basic("zoë:ëoz"))).await,
            "greet user=zoë",
            "{front:?}"
        );
        expect_401(
            &uri,
            Some(&basic("ann:ann")),
            "reversed",
            "Invalid credentials\n",
        )
        .await;
        expect_401(&uri, None, "reversed", "Missing credentials\n").await;
        server.stop().await;
    }
}

// ----- Routing -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_dispatches_by_path_with_decoded_params() {
    for front in FRONT_ENDS {
        let (server, addr) = Running::start(front, Setup::Routes).await;
        let at = |path: &str| format!("ws://{addr}{path}");
        assert_eq!(greeting(&at("/"), None).await, "root user=-", "{front:?}");
        assert_eq!(
            greeting(&at("/rooms/42"), None).await,
            "room[42] user=- id=42"
        );
        // Percent-encoded parameters are decoded; the query is ignored.
        assert_eq!(
            greeting(&at("/rooms/caf%C3%A9%20au%20lait?x=1"), None).await,
            "room[café au lait] user=- id=café au lait",
            "{front:?}"
        );
        assert_eq!(
            greeting(&at("/rooms/a%2Fb/users/ann"), None).await,
            "member user=- id=a/b user=ann"
        );
        assert_eq!(
            greeting(&at("/files/docs/read%20me.txt"), None).await,
            "file user=- path=docs/read me.txt"
        );
        // No route: 404 during the handshake.
        for path in [
            "/nope",
            "/rooms",
            "/rooms/",
            "/rooms/1/users",
            "/files/",
            "/rooms/%FF",
        ] {
            expect_404(&at(path), None).await;
        }
        server.stop().await;
    }
}

// ----- Both ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_routing_together() {
    for front in FRONT_ENDS {
        let (server, addr) = Running::start(front, Setup::AuthRoutes).await;
        let at = |path: &str| format!("ws://{addr}{path}");
        let alice = basic("alice:s3cret");
        // Authenticated and routed: the handler sees both.
        assert_eq!(
            greeting(&at("/rooms/7"), Some(&alice)).await,
            "room[7] user=alice id=7",
            "{front:?}"
        );
        assert_eq!(
            greeting(&at("/"), Some(&basic("bob:pass:word"))).await,
            "root user=bob"
        );
        // Auth comes first: no credentials is 401 whether the path exists or not.
        expect_401(&at("/rooms/7"), None, "test realm", "Missing credentials\n").await;
        expect_401(&at("/nope"), None, "test realm", "Missing credentials\n").await;
        expect_401(&at("/healthz"), None, "test realm", "Missing credentials\n").await;
        // Authenticated: unknown paths are 404; `process_request` answers before routing.
        expect_404(&at("/nope"), Some(&alice)).await;
        let health = refusal(&at("/healthz"), Some(&alice)).await;
        assert_eq!(health.status, StatusCode::OK);
        assert_eq!(&health.body[..], b"OK\n");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_there_is_no_username() {
    // An `Authorization` header alone does not make a user: only the server's check does.
    for front in FRONT_ENDS {
        let (server, addr) = Running::start(front, Setup::Routes).await;
        let uri = format!("ws://alice:s3cret@{addr}/rooms/1");
        assert_eq!(
            greeting(&uri, None).await,
            "room[1] user=- id=1",
            "{front:?}"
        );
        server.stop().await;
    }
}
