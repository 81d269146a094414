//! Interoperability with python-websockets, an independent implementation, both ways, over
//! loopback: its client against our server, our client against its server; compression on
//! and off, large and fragmented messages, pings, close codes.
//!
//! The Python interpreter comes from `SOCKEYE_PYTHON` (set by `scripts/test.sh` to a venv
//! with `websockets` installed), else `python3`. A missing `websockets` package is a test
//! failure, not a skip: the README's test command installs it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sockeye::{CloseCode, Error, Message, MessageKind};

fn python() -> String {
    std::env::var("SOCKEYE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs a Python script to completion (at most 60 s) and returns its stdout.
async fn run_python(script: &str, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg("-c").arg(script).args(args);
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("python script timed out")
        .expect("cannot run python (set SOCKEYE_PYTHON)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "python failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

const PY_CLIENT: &str = r#"
import asyncio, sys
from websockets.asyncio.client import connect

async def main(uri, compression):
    kw = {} if compression == "on" else {"compression": None}
    async with connect(uri, max_size=8 * 2**20, **kw) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        print("extensions", "deflate" if "permessage-deflate" in ext else "none")
        await ws.send("Hello, κόσμε!")
        assert await ws.recv() == "Hello, κόσμε!"
        await ws.send(b"\x00\x01\xfe\xff")
        assert await ws.recv() == b"\x00\x01\xfe\xff"
        big = bytes(range(256)) * 4096  # 1 MiB
        await ws.send(big)
        assert await ws.recv() == big
        await ws.send(["frag", "mented ", "text"])
        assert await ws.recv() == "fragmented text"
        latency = await (await ws.ping(b"py"))
        print("ping ok")
        await ws.send("close-4000")
        try:
            await ws.recv()
        except Exception:
            pass
        print("close", ws.close_code, ws.close_reason)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

/// Echoes until asked to close with 4000: the body of a handler, for either kind of
/// connection (`sockeye::Connection`, `sockeye::Connection`).
macro_rules! echo_until_close_4000 {
    ($ws:expr) => {{
        while let Some(msg) = $ws.recv().await? {
            if msg.as_text() == Some("close-4000") {
                $ws.close(CloseCode(4000), "asked to").await?;
                break;
            }
            $ws.send(msg).await?;
        }
        Ok(())
    }};
}

async fn echo_until_close_4000(ws: sockeye::Connection) -> Result<(), sockeye::BoxError> {
    echo_until_close_4000!(ws)
}

/// Runs [`PY_CLIENT`] against `uri` with compression on, then off, and checks its report.
async fn python_client_session(uri: &str) {
    for compression in ["on", "off"] {
        let out = run_python(PY_CLIENT, &[uri, compression]).await;
        let expected = if compression == "on" {
            "deflate"
        } else {
            "none"
        };
        assert!(out.contains(&format!("extensions {expected}")), "{out}");
        assert!(out.contains("ping ok"), "{out}");
        assert!(out.contains("close 4000 asked to"), "{out}");
    }
}

async fn sockeye_echo_server() -> sockeye::Server {
    sockeye::Server::builder()
        .max_size(8 << 20)
        .serve("127.0.0.1:0", echo_until_close_4000)
        .await
        .unwrap()
}

#[tokio::test]
async fn python_client_against_sockeye_server() {
    let server = sockeye_echo_server().await;
    let uri = format!("ws://{}/", server.local_addr().unwrap());
    python_client_session(&uri).await;
    server.close().await;
}

/// The same client against async handlers on the event loops
/// (`reactor::ServerBuilder::serve_async`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_against_async_handlers_on_the_event_loop() {
    let server = sockeye::reactor::Server::builder()
        .max_size(8 << 20)
        .threads(1)
        .serve_async("127.0.0.1:0", |ws: sockeye::Connection| async move {
            while let Some(msg) = ws.recv().await? {
                if msg.as_text() == Some("close-4000") {
                    ws.close(CloseCode(4000), "asked to").await?;
                    break;
                }
                ws.send(msg).await?;
            }
            Ok(())
        })
        .unwrap();
    let uri = format!("ws://{}/", server.local_addr());
    python_client_session(&uri).await;
    tokio::task::spawn_blocking(move || server.shutdown())
        .await
        .unwrap();
}

/// The same client against an axum router that also serves HTTP on the port: the upgrade
/// behaves as the server does (compression both ways, pings, close codes).
#[cfg(feature = "axum")]
#[tokio::test]
async fn python_client_against_an_axum_upgrade() {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/", get(|| async { "HTTP here\n" }))
        .route(
            "/ws",
            get(|ws: sockeye::axum::WebSocketUpgrade| async move {
                ws.max_size(8 << 20).on_upgrade(echo_until_close_4000)
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    python_client_session(&uri).await;
}

const PY_SERVER: &str = r#"
import asyncio, sys
from websockets.asyncio.server import serve

async def handler(ws):
    if ws.request.path == "/close4001":
        await ws.close(4001, "python says bye")
        return
    async for msg in ws:
        await ws.send(msg)

async def main(compression):
    kw = {} if compression == "on" else {"compression": None}
    async with serve(handler, "127.0.0.1", 0, max_size=8 * 2**20, **kw) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.wait_for(asyncio.get_running_loop().create_future(), 60)

try:
    asyncio.run(main(sys.argv[1]))
except asyncio.TimeoutError:
    pass
"#;

struct PyServer {
    child: Child,
    port: u16,
}

impl PyServer {
    fn start(compression: &str) -> PyServer {
        let mut child = Command::new(python())
            .arg("-c")
            .arg(PY_SERVER)
            .arg(compression)
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot run python (set SOCKEYE_PYTHON)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("python server did not start: {line:?}"));
        PyServer { child, port }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sockeye_client_against_python_server() {
    for compression in ["on", "off"] {
        let server = PyServer::start(compression);
        let uri = format!("ws://127.0.0.1:{}/", server.port);
        let ws = sockeye::ClientBuilder::default()
            .max_size(8 << 20)
            .connect(&uri)
            .await
            .unwrap();
        let negotiated = ws
            .response()
            .headers()
            .get("sec-websocket-extensions")
            .is_some();
        assert_eq!(negotiated, compression == "on");

        ws.send("Hello, κόσμε!").await.unwrap();
        assert_eq!(
            ws.recv().await.unwrap(),
            Some(Message::from("Hello, κόσμε!"))
        );
        let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        ws.send(big.clone()).await.unwrap();
        assert_eq!(ws.recv().await.unwrap(), Some(Message::from(big)));
        ws.send_fragmented(MessageKind::Text, ["frag", "mented ", "text"])
            .await
            .unwrap();
        assert_eq!(
            ws.recv().await.unwrap(),
            Some(Message::from("fragmented text"))
        );
        let rtt = ws.ping().await.unwrap().await.unwrap();
        assert!(rtt < Duration::from_secs(5));
        ws.close(CloseCode::NORMAL, "done").await.unwrap();
        assert!(ws.closed().unwrap().is_ok());

        // The server closes with its own code.
        let ws = sockeye::connect(&format!("ws://127.0.0.1:{}/close4001", server.port))
            .await
            .unwrap();
        match ws.recv().await {
            Err(Error::ConnectionClosed(c)) => {
                assert_eq!(c.code(), CloseCode(4001));
                assert_eq!(c.reason(), "python says bye");
            }
            other => panic!("{other:?}"),
        }
    }
}
