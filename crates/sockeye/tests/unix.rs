//! Unix domain sockets (issue 6 item 4), both front ends, over real sockets in a temporary
//! directory: `unix_serve`, `unix_connect`, routing, options, the stale socket file, the
//! socket file removed on close, and the graceful close (1001). Every wait is bounded.
#![cfg(unix)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sockeye::http::StatusCode;
use sockeye::proto::HandshakeError;
use sockeye::{sync, CloseCode, Error, Message};

const GUARD: Duration = Duration::from_secs(20);

/// A directory of its own for the test's sockets, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sockeye-unix-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(GUARD, f)
        .await
        .expect("test took too long")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    bounded(tokio::task::spawn_blocking(f)).await.unwrap()
}

/// Echoes, after greeting with the request's path and Host header.
async fn tokio_echo(ws: sockeye::Connection) -> Result<(), sockeye::BoxError> {
    let host = ws.request().headers()["host"].to_str()?.to_owned();
    ws.send(format!("{} {host}", ws.request().uri().path()))
        .await?;
    while let Some(msg) = ws.recv().await? {
        ws.send(msg).await?;
    }
    Ok(())
}

fn sync_echo(ws: sync::Connection) -> Result<(), sockeye::BoxError> {
    let host = ws.request().headers()["host"].to_str()?.to_owned();
    ws.send(format!("{} {host}", ws.request().uri().path()))?;
    while let Some(msg) = ws.recv_timeout(GUARD)? {
        ws.send(msg)?;
    }
    Ok(())
}

fn text(s: &str) -> Option<Message> {
    Some(Message::Text(s.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_serve_and_connect_then_close_going_away() {
    // The event loops (the default), then a task per connection.
    for tasks in [false, true] {
        serve_connect_close(tasks).await;
    }
}

async fn serve_connect_close(tasks: bool) {
    let dir = TempDir::new();
    let path = dir.sock("echo.sock");
    bounded(async {
        let server = sockeye::Server::builder()
            .tasks(tasks)
            .unix_serve(&path, tokio_echo)
            .await
            .unwrap();
        assert_eq!(server.on_event_loops(), !tasks);
        assert_eq!(server.unix_path(), Some(path.as_path()));
        assert_eq!(server.local_addr(), None);
        assert!(path.exists());

        let ws = sockeye::unix_connect(&path, "ws://app.local/chat?x=1")
            .await
            .unwrap();
        assert_eq!(ws.recv().await.unwrap(), text("/chat app.local"));
        ws.send("hello").await.unwrap();
        assert_eq!(ws.recv().await.unwrap(), text("hello"));
        // No TCP addresses on a Unix socket, either side.
        assert_eq!((ws.local_addr(), ws.remote_addr()), (None, None));
        let conns = server.connections();
        assert_eq!(conns.len(), 1);
        assert_eq!(
            (conns[0].local_addr(), conns[0].remote_addr()),
            (None, None)
        );
        assert_eq!(conns[0].request().uri().path(), "/chat");

        // Graceful close: 1001 to the client, the handler ends, the socket file goes.
        server.close().await;
        assert_eq!(ws.recv().await.unwrap(), None);
        assert_eq!(ws.close_code(), CloseCode::GOING_AWAY);
        assert!(server.connections().is_empty());
        assert!(!path.exists(), "close removes the socket file");
        let err = sockeye::unix_connect(&path, "ws://localhost/")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
            "{err:?}"
        );
    })
    .await;
}

#[test]
fn sync_serve_and_connect_then_shutdown_going_away() {
    let dir = TempDir::new();
    let path = dir.sock("echo.sock");
    let server = sync::unix_serve(&path, sync_echo).unwrap();
    assert_eq!(server.unix_path(), Some(path.as_path()));
    assert_eq!(server.local_addr(), None);

    let ws = sync::unix_connect(&path, "ws://localhost/").unwrap();
    assert_eq!(ws.recv_timeout(GUARD).unwrap(), text("/ localhost"));
    ws.send("hello").unwrap();
    assert_eq!(ws.recv_timeout(GUARD).unwrap(), text("hello"));
    assert_eq!((ws.local_addr(), ws.remote_addr()), (None, None));
    assert_eq!(server.connections().len(), 1);

    // `shutdown` from another thread while this one waits in `serve_forever`.
    let closer = server.clone();
    let t = std::thread::spawn(move || closer.shutdown());
    server.serve_forever().unwrap();
    t.join().unwrap();
    assert_eq!(ws.recv_timeout(GUARD).unwrap(), None);
    assert_eq!(ws.close_code(), CloseCode::GOING_AWAY);
    assert!(!path.exists(), "shutdown removes the socket file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_ends_talk_to_each_other() {
    let dir = TempDir::new();
    // A blocking server, a tokio client.
    let path = dir.sock("sync.sock");
    let server = sync::unix_serve(&path, sync_echo).unwrap();
    bounded(async {
        let ws = sockeye::unix_connect(&path, "ws://localhost/a")
            .await
            .unwrap();
        assert_eq!(ws.recv().await.unwrap(), text("/a localhost"));
        ws.send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        assert_eq!(
            ws.recv().await.unwrap(),
            Some(Message::Binary(vec![1, 2, 3].into()))
        );
        ws.close(CloseCode::NORMAL, "").await.unwrap();
    })
    .await;
    blocking(move || server.shutdown()).await;

    // A tokio server, a blocking client.
    let path = dir.sock("tokio.sock");
    let server = bounded(sockeye::unix_serve(&path, tokio_echo))
        .await
        .unwrap();
    blocking(move || {
        let ws = sync::unix_connect(&path, "ws://localhost/b").unwrap();
        assert_eq!(ws.recv_timeout(GUARD).unwrap(), text("/b localhost"));
        ws.send("hi").unwrap();
        assert_eq!(ws.recv_timeout(GUARD).unwrap(), text("hi"));
        ws.close(CloseCode::NORMAL, "").unwrap();
    })
    .await;
    bounded(server.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced_and_a_live_one_is_refused() {
    let dir = TempDir::new();
    let path = dir.sock("s.sock");
    // A server that died without removing its socket file.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    bounded(async {
        let server = sockeye::unix_serve(&path, tokio_echo).await.unwrap();
        // A second server on the same path: refused, the first one keeps working.
        let err = sockeye::unix_serve(&path, tokio_echo).await.unwrap_err();
        assert!(
            matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::AddrInUse),
            "{err:?}"
        );
        assert!(err.to_string().contains("listens"), "{err}");
        let err = sync::unix_serve(&path, sync_echo).unwrap_err();
        assert!(matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::AddrInUse));
        let ws = sockeye::unix_connect(&path, "ws://localhost/")
            .await
            .unwrap();
        assert_eq!(ws.recv().await.unwrap(), text("/ localhost"));
        server.close().await;
    })
    .await;

    // Not a socket: never removed.
    let file = dir.sock("data");
    std::fs::write(&file, b"keep me").unwrap();
    let err = bounded(sockeye::unix_serve(&file, tokio_echo))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    let err = sync::unix_serve(&file, sync_echo).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_bound_by_the_application_keeps_its_file() {
    let dir = TempDir::new();
    let path = dir.sock("app.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    bounded(async {
        let server = sockeye::ServerBuilder::default()
            .unix_serve_listener(listener, tokio_echo)
            .unwrap();
        assert_eq!(server.unix_path(), Some(path.as_path()));
        let ws = sockeye::unix_connect(&path, "ws://localhost/")
            .await
            .unwrap();
        assert_eq!(ws.recv().await.unwrap(), text("/ localhost"));
        server.close().await;
        assert_eq!(ws.recv().await.unwrap(), None);
    })
    .await;
    assert!(path.exists(), "the application's file is the application's");

    std::fs::remove_file(&path).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = sync::ServerBuilder::default()
        .unix_serve_listener(listener, sync_echo)
        .unwrap();
    let ws = sync::unix_connect(&path, "ws://localhost/").unwrap();
    assert_eq!(ws.recv_timeout(GUARD).unwrap(), text("/ localhost"));
    server.shutdown();
    assert_eq!(ws.recv_timeout(GUARD).unwrap(), None);
    assert!(path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_options_apply_over_unix_sockets() {
    let dir = TempDir::new();
    let path = dir.sock("tokio.sock");
    // Answers the client's first message with the room (after the handshake, so that a
    // client's max_size applies to `recv`, not to the opening).
    let router =
        sockeye::Router::new().route("/rooms/{id}", |ws: sockeye::Connection| async move {
            ws.recv().await?;
            ws.send(format!("room {}", ws.param("id").unwrap_or_default()))
                .await?;
            ws.wait_closed().await;
            Ok(())
        });
    bounded(async {
        let server = sockeye::ServerBuilder::default()
            .max_size(16)
            .unix_route(&path, router)
            .await
            .unwrap();
        let ws = sockeye::unix_connect(&path, "ws://localhost/rooms/7")
            .await
            .unwrap();
        ws.send("hi").await.unwrap();
        assert_eq!(ws.recv().await.unwrap(), text("room 7"));
        // max_size: a message over 16 bytes fails the connection with 1009.
        ws.send("x".repeat(17)).await.unwrap();
        assert!(ws.recv().await.is_err());
        assert_eq!(ws.close_code(), CloseCode::MESSAGE_TOO_BIG);
        // No route: 404 during the handshake.
        let err = sockeye::unix_connect(&path, "ws://localhost/nope")
            .await
            .unwrap_err();
        assert_eq!(status_of(&err), StatusCode::NOT_FOUND);
        // Client options apply too: the client's max_size.
        let ws = sockeye::ClientBuilder::default()
            .max_size(4)
            .unix_connect(&path, "ws://localhost/rooms/12345")
            .await
            .unwrap();
        ws.send("hi").await.unwrap();
        // The client fails the connection with 1009.
        let err = ws.recv().await.unwrap_err();
        let sent = match &err {
            Error::ConnectionClosed(c) => c.sent.as_ref().map(|f| f.code),
            _ => None,
        };
        assert_eq!(sent, Some(CloseCode::MESSAGE_TOO_BIG), "{err:?}");
        server.close().await;
    })
    .await;

    let path = dir.sock("sync.sock");
    let router = sync::Router::new().route("/rooms/{id}", |ws: sync::Connection| {
        ws.send(format!("room {}", ws.param("id").unwrap_or_default()))?;
        while ws.recv_timeout(GUARD)?.is_some() {}
        Ok(())
    });
    let server = sync::ServerBuilder::default()
        .max_size(16)
        .unix_route(&path, router)
        .unwrap();
    let ws = sync::unix_connect(&path, "ws://localhost/rooms/7").unwrap();
    assert_eq!(ws.recv_timeout(GUARD).unwrap(), text("room 7"));
    ws.send("x".repeat(17)).unwrap();
    assert!(ws.recv_timeout(GUARD).is_err());
    assert_eq!(ws.close_code(), CloseCode::MESSAGE_TOO_BIG);
    let err = sync::unix_connect(&path, "ws://localhost/nope").unwrap_err();
    assert_eq!(status_of(&err), StatusCode::NOT_FOUND);
    server.shutdown();
}

fn status_of(err: &Error) -> StatusCode {
    match err {
        Error::Handshake(HandshakeError::UnexpectedStatus(r)) => r.status,
        other => panic!("not a refused handshake: {other:?}"),
    }
}

#[tokio::test]
async fn bad_paths_and_uris_are_clear_errors() {
    let dir = TempDir::new();
    let missing = dir.sock("missing.sock");
    let err = bounded(sockeye::unix_connect(&missing, "ws://localhost/"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    let err = sync::unix_connect(&missing, "ws://localhost/").unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    // The URI is checked before connecting.
    let err = bounded(sockeye::unix_connect(&missing, "http://localhost/"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUri(_)), "{err:?}");
    let err = sync::unix_connect(&missing, "not a uri").unwrap_err();
    assert!(matches!(err, Error::InvalidUri(_)), "{err:?}");
    // A path in a directory that does not exist.
    let err = bounded(sockeye::unix_serve(
        dir.sock("no/such/dir.sock"),
        tokio_echo,
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_handlers_to_finish() {
    let dir = TempDir::new();
    let path = dir.sock("s.sock");
    bounded(async {
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let done = finished.clone();
        let server = sockeye::unix_serve(&path, move |ws: sockeye::Connection| {
            let (tx, done) = (tx.clone(), done.clone());
            async move {
                let _ = tx.send(());
                // Cleanup after the connection closed, which `close` waits for.
                ws.wait_closed().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                done.store(true, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap();
        let ws = sockeye::unix_connect(&path, "ws://localhost/")
            .await
            .unwrap();
        rx.recv().await.unwrap();
        server.close().await;
        assert!(
            finished.load(Ordering::SeqCst),
            "close returned before the handler"
        );
        assert_eq!(ws.recv().await.unwrap(), None);
        assert_eq!(ws.close_code(), CloseCode::GOING_AWAY);
        assert!(!path.exists());
    })
    .await;
}

/// A server on the event loops whose runtime is dropped without `close()` stops serving and
/// removes its socket file (else a client connects to it and waits for ever). (A server on
/// tasks does not remove its file then: left as it was.)
#[test]
fn the_socket_file_goes_with_the_runtime() {
    let dir = TempDir::new();
    let path = dir.sock("gone.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(async { sockeye::unix_serve(&path, tokio_echo).await.unwrap() });
    assert!(server.on_event_loops());
    assert!(path.exists());
    drop(rt);
    // The server handle is still alive: the runtime's end is what stops it.
    assert!(!path.exists(), "the socket file outlived the runtime");
    let started = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&path).is_ok() {
        assert!(started.elapsed() < GUARD, "still accepting");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
}
