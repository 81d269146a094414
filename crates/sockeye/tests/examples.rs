//! Runs the example programs of `examples/` and drives them with the sockeye client, so that
//! the examples keep working as the library changes.
//!
//! Each server example is started on `127.0.0.1:0`; the test reads the `listening on
//! ws://ADDR/` line it prints to find its port. Child processes are killed when their handle
//! is dropped, so a failing test leaves none behind.
//!
//! `cargo test` builds the examples, but `cargo test --test examples` does not: the first
//! test to run builds them (`cargo build --example ...`, a no-op when they are up to date)
//! so that the binaries run are never stale.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use sockeye::proto::HandshakeError;
use sockeye::{ClientConnection, CloseCode, Error, Message};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

/// Bound on any single step (start, receive, read a line); tests fail rather than hang.
const STEP: Duration = Duration::from_secs(15);
/// Bound on building the examples.
const BUILD: Duration = Duration::from_secs(600);

const EXAMPLES: &[&str] = &[
    "hello_server",
    "hello_client",
    "hello_server_sync",
    "hello_client_sync",
    "hello_server_reactor",
    "hello_server_reactor_async",
    "clock_server",
    "clock_reactor",
    "consumer",
    "producer",
    "consumer_producer",
    "registration_broadcast",
    "health_check",
    "headers_cookies",
    "remote_address",
    "recv_timeout",
    "keepalive",
    "chat",
    "chat_reactor",
    "reconnecting_client",
    "basic_auth",
    "router",
    "graceful_shutdown",
    "graceful_shutdown_sync",
];

// ----- Locating and building the examples ---------------------------------------------------

/// `<target>/<profile>`, from this test's path `<target>/<profile>/deps/examples-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary not in <target>/<profile>/deps")
        .to_owned()
}

fn example_path(name: &str) -> PathBuf {
    profile_dir()
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Builds the examples once per test process; every test waits for it.
fn ensure_built() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        // Tests run inside a runtime: build from a thread with its own.
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(build_examples())
        })
        .join()
        .unwrap_or_else(|_| Err("the build thread panicked".to_owned()))
    });
    if let Err(e) = built {
        panic!("cannot build the examples: {e}");
    }
}

async fn build_examples() -> Result<(), String> {
    let profile = profile_dir();
    let target_dir = profile.parent().ok_or("no target directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    // The features of this test build, so that the library is not built a second time.
    let features: Vec<&str> = [
        ("tls", cfg!(feature = "tls")),
        ("native-roots", cfg!(feature = "native-roots")),
        ("redis", cfg!(feature = "redis")),
        ("hyper", cfg!(feature = "hyper")),
        ("axum", cfg!(feature = "axum")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    cmd.arg("--no-default-features");
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    for name in EXAMPLES {
        cmd.args(["--example", name]);
    }
    if cfg!(feature = "axum") {
        cmd.args(["--example", "axum_app"]);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = timeout(BUILD, cmd.output())
        .await
        .map_err(|_| "cargo build timed out".to_owned())?
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

// ----- Running a server example --------------------------------------------------------------

/// A running server example. Dropping it kills the process (`kill_on_drop`).
struct Server {
    _child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
}

impl Server {
    /// Starts example `name` on `127.0.0.1:0` with `args` after the address, and waits for
    /// its `listening on ws://ADDR/` line.
    async fn start(name: &str, args: &[&str]) -> Server {
        ensure_built();
        let mut child = Command::new(example_path(name))
            .arg("127.0.0.1:0")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut server = Server {
            _child: child,
            stdout: BufReader::new(stdout).lines(),
            addr: ([0, 0, 0, 0], 0).into(),
        };
        let line = server.line().await;
        server.addr = line
            .strip_prefix("listening on ws://")
            .and_then(|rest| rest.strip_suffix('/'))
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"));
        assert_ne!(server.addr.port(), 0, "{name} printed port 0");
        server
    }

    fn uri(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The next line the server prints.
    async fn line(&mut self) -> String {
        timeout(STEP, self.stdout.next_line())
            .await
            .expect("timed out waiting for the server's output")
            .expect("cannot read the server's output")
            .expect("the server exited")
    }

    async fn connect(&self) -> ClientConnection {
        let ws = timeout(STEP, sockeye::connect(&self.uri()))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        ws
    }
}

// ----- Helpers -------------------------------------------------------------------------------

/// The next message, which must be text.
async fn recv_text(ws: &ClientConnection) -> String {
    let message = timeout(STEP, ws.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("recv failed")
        .expect("the connection closed instead of sending a message");
    message.as_text().expect("a text message").to_owned()
}

/// Waits for the server to close the connection normally.
async fn expect_closed(ws: &ClientConnection) {
    let next = timeout(STEP, ws.recv())
        .await
        .expect("timed out waiting for the close");
    assert!(
        matches!(next, Ok(None)),
        "expected a normal close: {next:?}"
    );
}

async fn close(ws: &ClientConnection) {
    timeout(STEP, ws.close(CloseCode::NORMAL, ""))
        .await
        .expect("close timed out")
        .expect("close failed");
}

/// A plain HTTP GET; returns the head and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = timeout(STEP, exchange)
        .await
        .expect("HTTP request timed out")
        .expect("HTTP request failed");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    (head.to_owned(), body.to_owned())
}

/// Whether `s` looks like `2024-05-01T12:34:56.789Z`.
fn is_utc_timestamp(s: &str) -> bool {
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    s.len() == shape.len()
        && s.chars().zip(shape.chars()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            p => c == p,
        })
}

// ----- The tests -----------------------------------------------------------------------------

#[tokio::test]
async fn hello_server_greets_and_closes() {
    // The tokio, the blocking and the event-loop versions behave the same.
    for example in [
        "hello_server",
        "hello_server_sync",
        "hello_server_reactor",
        "hello_server_reactor_async",
    ] {
        let mut server = Server::start(example, &[]).await;
        let ws = server.connect().await;
        ws.send("Alice").await.unwrap();
        assert_eq!(recv_text(&ws).await, "Hello Alice!", "{example}");
        // The handler returned: the server closes the connection normally.
        expect_closed(&ws).await;
        assert_eq!(ws.close_code(), CloseCode::NORMAL, "{example}");
        assert_eq!(server.line().await, "<<< Alice", "{example}");
        assert_eq!(server.line().await, ">>> Hello Alice!", "{example}");
    }
}

#[tokio::test]
async fn hello_client_talks_to_hello_server() {
    // Every pairing of the tokio and blocking clients and servers.
    for (server_example, client_example) in [
        ("hello_server", "hello_client"),
        ("hello_server", "hello_client_sync"),
        ("hello_server_sync", "hello_client"),
        ("hello_server_sync", "hello_client_sync"),
        ("hello_server_reactor", "hello_client"),
        ("hello_server_reactor", "hello_client_sync"),
        ("hello_server_reactor_async", "hello_client"),
        ("hello_server_reactor_async", "hello_client_sync"),
    ] {
        hello_pair(server_example, client_example).await;
    }
}

/// Runs client example `name` with `args` to its end (within [`STEP`]); its stdout, once
/// it has exited successfully.
async fn run_client(name: &str, args: &[String]) -> String {
    let run = Command::new(example_path(name))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = timeout(STEP, run)
        .await
        .unwrap_or_else(|_| panic!("{name} timed out"))
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn hello_pair(server_example: &str, client_example: &str) {
    let server = Server::start(server_example, &[]).await;
    for (args, expected) in [
        (
            vec![server.uri(), "Bob".to_owned()],
            ">>> Bob\n<<< Hello Bob!\n",
        ),
        (vec![server.uri()], ">>> World\n<<< Hello World!\n"),
    ] {
        let stdout = run_client(client_example, &args).await;
        assert_eq!(
            stdout, expected,
            "{client_example} {args:?} against {server_example}"
        );
    }
}

#[tokio::test]
async fn reconnecting_client_connects_again_after_each_close() {
    ensure_built();
    // Each connection gets one message, then a normal close: the client connects again.
    let server = sockeye::serve("127.0.0.1:0", |ws| async move {
        ws.send("hello").await?;
        Ok(())
    })
    .await
    .unwrap();
    let uri = format!("ws://{}/", server.local_addr().unwrap());
    assert_eq!(
        run_client("reconnecting_client", &[uri, "2".to_owned()]).await,
        "connected (1)\n<<< hello\nconnection closed\nconnected (2)\n<<< hello\nconnection closed\n"
    );
    server.close().await;
}

#[tokio::test]
async fn clock_server_serves_the_page_and_the_time() {
    let server = Server::start("clock_server", &[]).await;

    // A browser's plain GET / gets the page.
    let (head, body) = http_get(server.addr, "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(body.contains("new WebSocket("), "{body}");

    // Its WebSocket receives the time, once a second.
    let ws = server.connect().await;
    let first = recv_text(&ws).await;
    let second = recv_text(&ws).await;
    assert!(is_utc_timestamp(&first), "{first:?}");
    assert!(is_utc_timestamp(&second), "{second:?}");
    assert!(first < second, "{first:?} then {second:?}");
    close(&ws).await;
}

#[tokio::test]
async fn clock_reactor_broadcasts_the_time_and_closes_through_a_handle() {
    // Every 0.1 s: the broadcast from the main thread reaches every client.
    let server = Server::start("clock_reactor", &["0.1"]).await;
    let a = server.connect().await;
    let b = server.connect().await;
    for ws in [&a, &b] {
        let first: f64 = recv_text(ws).await.parse().expect("a timestamp");
        let second: f64 = recv_text(ws).await.parse().expect("a timestamp");
        assert!(first < second, "{first} then {second}");
    }
    // "stop": the handler hands its Handle to another thread, which closes the connection.
    a.send("stop").await.unwrap();
    loop {
        match timeout(STEP, a.recv())
            .await
            .expect("timed out waiting for the close")
        {
            Ok(Some(_)) => continue, // ticks sent before the close
            Ok(None) => break,
            Err(e) => panic!("expected a normal close: {e}"),
        }
    }
    assert_eq!(a.close_code(), CloseCode::NORMAL);
    assert_eq!(a.close_reason(), "stopped");
    // The other client still gets the time.
    let t: f64 = recv_text(&b).await.parse().expect("a timestamp");
    assert!(t > 0.0);
    close(&b).await;
}

#[tokio::test]
async fn health_check_answers_200_and_serves_websockets() {
    let server = Server::start("health_check", &[]).await;
    let (head, body) = http_get(server.addr, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "OK\n");

    // Every other path is the echo server.
    let ws = server.connect().await;
    ws.send("echo?").await.unwrap();
    assert_eq!(recv_text(&ws).await, "echo?");
    close(&ws).await;
}

#[tokio::test]
async fn headers_cookies_rejects_without_credentials() {
    let mut server = Server::start("headers_cookies", &[]).await;
    let uri = server.uri();

    // No cookie, no token: 401, and no connection.
    let refused = timeout(STEP, sockeye::connect(&uri))
        .await
        .expect("connect timed out");
    match refused {
        Err(Error::Handshake(HandshakeError::UnexpectedStatus(response))) => {
            assert_eq!(response.status, 401);
        }
        other => panic!("expected a 401: {other:?}"),
    }

    // A session cookie among others: accepted, and the handler sees it in `ws.request()`.
    let with_cookie = sockeye::ClientBuilder::default()
        .header("cookie", "theme=dark; session=alice")
        .unwrap()
        .connect(&uri);
    let ws = timeout(STEP, with_cookie).await.unwrap().unwrap();
    assert_eq!(recv_text(&ws).await, "Hello alice!");
    expect_closed(&ws).await;
    let line = server.line().await;
    assert!(line.starts_with("alice connected with sockeye/"), "{line}");

    // A bearer token works too.
    let with_token = sockeye::ClientBuilder::default()
        .header("authorization", "Bearer bob")
        .unwrap()
        .connect(&uri);
    let ws = timeout(STEP, with_token).await.unwrap().unwrap();
    assert_eq!(recv_text(&ws).await, "Hello bob!");
    expect_closed(&ws).await;
}

#[tokio::test]
async fn registration_broadcast_reaches_every_client() {
    let server = Server::start("registration_broadcast", &[]).await;
    let alice = server.connect().await;
    // Receiving the announcement proves the client is registered.
    assert_eq!(recv_text(&alice).await, "users: 1");
    let bob = server.connect().await;
    assert_eq!(recv_text(&bob).await, "users: 2");
    assert_eq!(recv_text(&alice).await, "users: 2");

    alice.send("hi everyone").await.unwrap();
    assert_eq!(recv_text(&alice).await, "hi everyone");
    assert_eq!(recv_text(&bob).await, "hi everyone");

    // Unregistered on close.
    close(&bob).await;
    assert_eq!(recv_text(&alice).await, "users: 1");
    close(&alice).await;
}

#[tokio::test]
async fn consumer_consumes_every_message() {
    let mut server = Server::start("consumer", &[]).await;
    let ws = server.connect().await;
    ws.send("one").await.unwrap();
    ws.send("two").await.unwrap();
    ws.send(vec![1u8, 2, 3]).await.unwrap();
    close(&ws).await;
    assert_eq!(server.line().await, "<<< one");
    assert_eq!(server.line().await, "<<< two");
    assert_eq!(server.line().await, "<<< 3 bytes");
    assert_eq!(server.line().await, "connection closed");
}

#[tokio::test]
async fn producer_produces_ticks() {
    let server = Server::start("producer", &[]).await;
    let ws = server.connect().await;
    assert_eq!(recv_text(&ws).await, "tick 1");
    assert_eq!(recv_text(&ws).await, "tick 2");
    close(&ws).await;
}

#[tokio::test]
async fn consumer_producer_does_both_and_stops_both() {
    let mut server = Server::start("consumer_producer", &[]).await;
    let ws = server.connect().await;
    assert_eq!(recv_text(&ws).await, "tick 1");
    ws.send("hello while ticking").await.unwrap();
    assert_eq!(server.line().await, "<<< hello while ticking");
    close(&ws).await;
    // Usually the consumer finishes (the client closed); the producer may if it was sending
    // right then. Either way the other one is cancelled.
    let line = server.line().await;
    assert!(line.ends_with("cancelled"), "{line}");
}

#[tokio::test]
async fn remote_address_is_the_client_address() {
    let mut server = Server::start("remote_address", &[]).await;
    let ws = server.connect().await;
    let local = ws.local_addr().expect("the client's address");
    assert_eq!(recv_text(&ws).await, format!("you are {local}"));
    assert_eq!(
        server.line().await,
        format!("connection from {} (port {})", local.ip(), local.port())
    );
    expect_closed(&ws).await;
}

#[tokio::test]
async fn recv_timeout_closes_idle_connections() {
    let mut server = Server::start("recv_timeout", &["0.5"]).await;
    let ws = server.connect().await;
    ws.send("still there").await.unwrap();
    assert_eq!(recv_text(&ws).await, "still there");
    // Then stay silent: the server gives up after 0.5 s.
    expect_closed(&ws).await;
    assert_eq!(ws.close_code(), CloseCode::NORMAL);
    assert_eq!(ws.close_reason(), "idle timeout");
    assert_eq!(server.line().await, "closing an idle connection");
}

#[tokio::test]
async fn keepalive_reports_latency() {
    let server = Server::start("keepalive", &[]).await;
    let ws = server.connect().await;
    ws.send("latency?").await.unwrap();
    let reply = recv_text(&ws).await;
    let ms = reply
        .strip_prefix("latency: ")
        .and_then(|r| r.strip_suffix(" ms"))
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("unexpected reply {reply:?}"));
    assert!((0.0..STEP.as_secs_f64() * 1000.0).contains(&ms), "{ms}");
    // Binary messages get an answer too.
    ws.send(Message::from(vec![0u8])).await.unwrap();
    assert!(recv_text(&ws).await.starts_with("latency: "));
    close(&ws).await;
}

/// Connects to `uri` and expects the handshake to be refused; returns the response.
async fn refused(uri: &str) -> sockeye::proto::HttpResponse {
    match timeout(STEP, sockeye::connect(uri))
        .await
        .expect("connect timed out")
    {
        Err(Error::Handshake(HandshakeError::UnexpectedStatus(response))) => *response,
        other => panic!("{uri}: expected a refusal: {other:?}"),
    }
}

async fn connect_to(uri: &str) -> ClientConnection {
    timeout(STEP, sockeye::connect(uri))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("{uri}: {e}"))
}

#[tokio::test]
async fn basic_auth_lets_known_users_in() {
    // The tokio and the blocking servers behave the same.
    for args in [&[][..], &["--sync"][..]] {
        let mut server = Server::start("basic_auth", args).await;
        let addr = server.addr;
        // No credentials, a wrong password: 401 with the challenge.
        for uri in [
            format!("ws://{addr}/"),
            format!("ws://alice:builder@{addr}/"),
        ] {
            let response = refused(&uri).await;
            assert_eq!(response.status, 401, "{args:?} {uri}");
            assert_eq!(
                response.headers["www-authenticate"],
                "Basic realm=\"example\", charset=\"UTF-8\""
            );
        }
        // Alice is greeted by name, then echoed.
        let ws = connect_to(&format!("ws://alice:wonderland@{addr}/")).await;
        assert_eq!(recv_text(&ws).await, "Hello alice!", "{args:?}");
        ws.send("down the rabbit hole").await.unwrap();
        assert_eq!(recv_text(&ws).await, "down the rabbit hole");
        close(&ws).await;
        assert_eq!(server.line().await, "alice connected", "{args:?}");
    }
}

#[tokio::test]
async fn router_routes_by_path() {
    for args in [&[][..], &["--sync"][..]] {
        let mut server = Server::start("router", args).await;
        let addr = server.addr;
        let ws = connect_to(&format!("ws://{addr}/")).await;
        assert_eq!(
            recv_text(&ws).await,
            "routes: /echo, /rooms/{id}",
            "{args:?}"
        );
        expect_closed(&ws).await;

        let ws = connect_to(&format!("ws://{addr}/echo")).await;
        ws.send("echo?").await.unwrap();
        assert_eq!(recv_text(&ws).await, "echo?");
        close(&ws).await;

        // The room's name is percent-decoded.
        let ws = connect_to(&format!("ws://{addr}/rooms/caf%C3%A9")).await;
        assert_eq!(server.line().await, "joined café", "{args:?}");
        ws.send("hi").await.unwrap();
        assert_eq!(recv_text(&ws).await, "[café] hi");
        close(&ws).await;

        // Other paths: 404 during the handshake.
        for path in ["/nope", "/rooms/", "/echo/x"] {
            let response = refused(&format!("ws://{addr}{path}")).await;
            assert_eq!(response.status, 404, "{args:?} {path}");
        }
    }
}

/// Connects to room `path` of a chat server as `name` and reads its own "joined" notice.
async fn join(server: &Server, path: &str, name: &str) -> ClientConnection {
    let uri = format!("ws://{}/{path}?name={name}", server.addr);
    let ws = timeout(STEP, sockeye::connect(&uri))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    assert_eq!(recv_text(&ws).await, format!("* {name} joined /{path}"));
    ws
}

#[tokio::test]
async fn chat_rooms_in_memory() {
    chat_rooms("chat").await;
}

#[tokio::test]
async fn chat_rooms_on_the_event_loops_topics() {
    chat_rooms("chat_reactor").await;
}

/// Two rooms: joins, messages and leaves reach everyone in the room, the author included.
async fn chat_rooms(example: &str) {
    let server = Server::start(example, &[]).await;
    let ann = join(&server, "lobby", "ann").await;
    let bob = join(&server, "lobby", "bob").await;
    assert_eq!(recv_text(&ann).await, "* bob joined /lobby");
    let eve = join(&server, "kitchen", "eve").await;
    ann.send("hi bob").await.unwrap();
    // Everyone in the room gets it, the author included; not the other room.
    assert_eq!(recv_text(&ann).await, "ann: hi bob");
    assert_eq!(recv_text(&bob).await, "ann: hi bob");
    eve.send("anyone?").await.unwrap();
    assert_eq!(recv_text(&eve).await, "eve: anyone?");
    close(&bob).await;
    assert_eq!(recv_text(&ann).await, "* bob left");
    close(&ann).await;
    close(&eve).await;
}

#[path = "support/redis_server.rs"]
mod redis_server;

#[cfg(feature = "redis")]
#[tokio::test]
async fn chat_rooms_across_two_processes_through_redis() {
    let Some(redis) = tokio::task::spawn_blocking(redis_server::Redis::start)
        .await
        .unwrap()
    else {
        return;
    };
    let url = redis.url();
    let one = Server::start("chat", &[&url]).await;
    let two = Server::start("chat", &[&url]).await;
    let ann = join(&one, "lobby", "ann").await;
    // Bob's subscription reaches Redis asynchronously: ann says hello until bob hears it.
    let bob = join(&two, "lobby", "bob").await;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "nothing crossed");
        ann.send("hello?").await.unwrap();
        if let Ok(Ok(Some(m))) = timeout(Duration::from_millis(200), bob.recv()).await {
            let line = m.as_text().unwrap().to_owned();
            if line == "ann: hello?" {
                break;
            }
            // Ann's joining may cross too, if her hub relayed it after bob's subscribed.
            assert_eq!(line, "* ann joined /lobby");
        }
    }
    bob.send("hello ann").await.unwrap();
    loop {
        let line = recv_text(&ann).await;
        if line == "bob: hello ann" {
            break;
        }
        // Her own greetings (and bob's joining, once subscribed) come first.
        assert!(
            line == "ann: hello?" || line == "* bob joined /lobby",
            "{line}"
        );
    }
    close(&ann).await;
    close(&bob).await;
    drop(redis);
}

/// A plain HTTP POST of `body`; returns the head and the body of the response.
#[cfg(feature = "axum")]
async fn http_post(addr: SocketAddr, path: &str, body: &str) -> (String, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = timeout(STEP, exchange)
        .await
        .expect("HTTP request timed out")
        .expect("HTTP request failed");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    (head.to_owned(), body.to_owned())
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_app_serves_its_api_and_websockets_on_one_port() {
    let server = Server::start("axum_app", &[]).await;
    let (head, body) = http_get(server.addr, "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("/ws"), "{body}");

    let ws = connect_to(&format!("ws://{}/ws", server.addr)).await;
    assert!(recv_text(&ws).await.starts_with("welcome"));
    let (_, listeners) = http_get(server.addr, "/api/listeners").await;
    assert!(listeners.ends_with("1\n"), "{listeners:?}");

    // The HTTP API reaches the WebSocket clients.
    let (head, sent) = http_post(server.addr, "/api/announce", "Hello, everyone!").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(sent.ends_with("sent to 1\n"), "{sent:?}");
    assert_eq!(recv_text(&ws).await, "Hello, everyone!");
    ws.send("echo?").await.unwrap();
    assert_eq!(recv_text(&ws).await, "echo?");

    // A WebSocket route fetched as a page: 426, not a crash.
    let (head, _) = http_get(server.addr, "/ws").await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    close(&ws).await;
}

// ----- Graceful shutdown ---------------------------------------------------------------------

/// Sends `signal` (`TERM`, `INT`) to process `pid` with `kill`.
#[cfg(unix)]
async fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "kill -s {signal} {pid} failed");
}

/// Starts the example, connects a client, sends it `signal`: the client gets 1001, the
/// example prints its lines and exits 0.
#[cfg(unix)]
async fn graceful_shutdown_on(name: &str, signal: &str) {
    let mut server = Server::start(name, &[]).await;
    let ws = server.connect().await;
    ws.send("still here?").await.unwrap();
    assert_eq!(recv_text(&ws).await, "still here?");
    send_signal(server._child.id().unwrap(), signal).await;
    assert_eq!(server.line().await, format!("shutting down (SIG{signal})"));
    let end = timeout(STEP, ws.recv()).await.expect("no close");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert_eq!(ws.close_code(), CloseCode::GOING_AWAY);
    assert_eq!(server.line().await, "server closed");
    let status = timeout(STEP, server._child.wait())
        .await
        .expect("the example did not exit")
        .unwrap();
    assert!(status.success(), "{name} on SIG{signal}: {status}");
}

#[cfg(unix)]
#[tokio::test]
async fn graceful_shutdown_on_sigterm_and_sigint() {
    graceful_shutdown_on("graceful_shutdown", "TERM").await;
    graceful_shutdown_on("graceful_shutdown", "INT").await;
}

#[cfg(unix)]
#[tokio::test]
async fn graceful_shutdown_sync_on_sigterm_and_sigint() {
    graceful_shutdown_on("graceful_shutdown_sync", "TERM").await;
    graceful_shutdown_on("graceful_shutdown_sync", "INT").await;
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    timeout(STEP, lines.next_line())
        .await
        .expect("no line")
        .unwrap()
        .expect("exited")
}

/// The tokio example on a Unix socket (`unix:PATH`): served, then closed on SIGTERM with the
/// socket file removed.
#[cfg(unix)]
#[tokio::test]
async fn graceful_shutdown_on_a_unix_socket() {
    ensure_built();
    let dir = std::env::temp_dir().join(format!("sockeye-example-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let mut child = Command::new(example_path("graceful_shutdown"))
        .arg(format!("unix:{}", path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(
        next_line(&mut lines).await,
        format!("listening on unix:{}", path.display())
    );
    let ws = timeout(STEP, sockeye::unix_connect(&path, "ws://localhost/"))
        .await
        .unwrap()
        .unwrap();
    ws.send("over unix").await.unwrap();
    assert_eq!(recv_text(&ws).await, "over unix");
    send_signal(child.id().unwrap(), "TERM").await;
    assert_eq!(next_line(&mut lines).await, "shutting down (SIGTERM)");
    expect_closed(&ws).await;
    assert_eq!(ws.close_code(), CloseCode::GOING_AWAY);
    assert_eq!(next_line(&mut lines).await, "server closed");
    let status = timeout(STEP, child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    assert!(!path.exists(), "the socket file is left");
    let _ = std::fs::remove_dir_all(&dir);
}
