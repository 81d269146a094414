//! Reconnecting clients, both front ends, over loopback: a server stopped and started again
//! on the same port, a server answering 503 until it is ready, fatal answers and URIs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sockeye::bytes::Bytes;
use sockeye::http::{Request, Response, StatusCode};
use sockeye::proto::HandshakeError;
use sockeye::{Backoff, CloseCode, Error, Message};

/// Small delays: the first in [0, 50 ms], then 20, 40, 80, 160, 160... ms.
fn test_backoff() -> Backoff {
    Backoff::default()
        .initial_delay(ms(50))
        .min_delay(ms(20))
        .factor(2.0)
        .max_delay(ms(160))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A free port on 127.0.0.1: bound, then released for a server to take.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// What the thread's `tracing` events print, kept for the assertions.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's INFO events until the guard drops.
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// The delays of the retries logged, in order.
    fn retry_delays(&self) -> Vec<Duration> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains("sockeye::client") && l.contains("reconnecting in"))
            .map(|l| {
                let field = l.split("delay_secs=").nth(1).expect(l);
                let secs: f64 = field.split_whitespace().next().unwrap().parse().unwrap();
                Duration::from_secs_f64(secs)
            })
            .collect()
    }
}

/// python-websockets' sequence, at test size: random first delay, then 20 ms doubling,
/// capped at 160 ms.
fn assert_backoff(delays: &[Duration]) {
    let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_micros(10);
    assert!(delays[0] <= ms(50), "{delays:?}");
    for (i, d) in delays.iter().enumerate().skip(1) {
        let want = ms(20 * (1 << (i - 1).min(3)));
        assert!(close(*d, want), "delay {i}: {delays:?}");
    }
}

/// A retry hook that counts the failures (sending each on `tx`), retrying as the default
/// policy does but giving up after 200, so that a test fails rather than hangs.
fn counting_hook(
    count: Arc<AtomicUsize>,
    tx: std::sync::mpsc::Sender<String>,
) -> impl Fn(&Error) -> bool + Send + Sync + 'static {
    let tx = Mutex::new(tx);
    move |e| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = tx.lock().unwrap().send(e.to_string());
        n < 200 && sockeye::is_retryable(e)
    }
}

/// A `process_request` hook: 503 until `ready`.
fn unavailable_until(
    ready: Arc<AtomicBool>,
) -> impl Fn(&Request<()>) -> Option<Response<Bytes>> + Send + Sync + 'static {
    move |_| {
        (!ready.load(Ordering::SeqCst))
            .then(|| sockeye::respond(StatusCode::SERVICE_UNAVAILABLE, "starting"))
    }
}

/// A retry hook that expects 503s, counts them, and sets `ready` after the second.
fn ready_after_two_503s(
    failures: Arc<AtomicUsize>,
    ready: Arc<AtomicBool>,
) -> impl Fn(&Error) -> bool + Send + Sync + 'static {
    move |e| {
        assert!(is_status(e, 503), "{e}");
        if failures.fetch_add(1, Ordering::SeqCst) == 1 {
            ready.store(true, Ordering::SeqCst);
        }
        sockeye::is_retryable(e)
    }
}

/// A `process_request` hook: 404 for `/missing`, 403 for `/forbidden`.
fn refuse_by_path(req: &Request<()>) -> Option<Response<Bytes>> {
    match req.uri().path() {
        "/missing" => Some(sockeye::respond(StatusCode::NOT_FOUND, "no")),
        "/forbidden" => Some(sockeye::respond(StatusCode::FORBIDDEN, "no")),
        _ => None,
    }
}

/// The fatal answers, by path, and the status each must end the connections with.
const REFUSED: [(&str, u16); 2] = [("missing", 404), ("forbidden", 403)];

/// URIs that are not `ws://` or `wss://` URIs.
const INVALID_URIS: [&str; 2] = ["http://127.0.0.1/", "not a uri"];

fn is_status(e: &Error, status: u16) -> bool {
    matches!(e, Error::Handshake(HandshakeError::UnexpectedStatus(r)) if r.status == status)
}

mod tokio_front_end {
    use super::*;

    async fn echo_server(addr: &str) -> sockeye::Server {
        sockeye::serve(addr, |ws| async move {
            while let Some(msg) = ws.recv().await? {
                ws.send(msg).await?;
            }
            Ok(())
        })
        .await
        .unwrap()
    }

    async fn echo(ws: &sockeye::Connection, text: &str) {
        ws.send(text).await.unwrap();
        assert_eq!(ws.recv().await.unwrap(), Some(Message::from(text)));
    }

    async fn next(
        conns: &mut sockeye::Reconnecting,
    ) -> Option<sockeye::Result<sockeye::Connection>> {
        tokio::time::timeout(Duration::from_secs(20), conns.next())
            .await
            .expect("no connection within 20 s")
    }

    #[tokio::test]
    async fn reconnects_when_the_server_comes_back() {
        let (logs, _guard) = Logs::capture();
        let addr = format!("127.0.0.1:{}", free_port());
        let server = echo_server(&addr).await;
        let failures = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut conns = sockeye::ClientBuilder::default()
            .backoff(test_backoff())
            .retry_if(counting_hook(failures.clone(), tx))
            .reconnecting(&format!("ws://{addr}/"));

        let ws = next(&mut conns).await.unwrap().unwrap();
        echo(&ws, "first").await;
        server.close().await;
        assert_eq!(ws.recv().await.unwrap(), None);
        assert_eq!(ws.close_code(), CloseCode::GOING_AWAY);

        // The server comes back once the client has failed three times.
        let restart = tokio::task::spawn_blocking(move || {
            for _ in 0..3 {
                rx.recv().unwrap();
            }
        });
        let restarted = tokio::spawn(async move {
            restart.await.unwrap();
            echo_server(&addr).await
        });
        let ws2 = next(&mut conns).await.unwrap().unwrap();
        echo(&ws2, "second").await;
        let server = restarted.await.unwrap();

        let delays = logs.retry_delays();
        let n = failures.load(Ordering::SeqCst);
        assert!(n >= 3, "{n} failures");
        assert_eq!(delays.len(), n, "one INFO line per retry: {delays:?}");
        assert_backoff(&delays);
        ws2.close(CloseCode::NORMAL, "").await.unwrap();
        server.close().await;
    }

    #[tokio::test]
    async fn retries_503_then_next_closes_the_previous_connection() {
        let (logs, _guard) = Logs::capture();
        let ready = Arc::new(AtomicBool::new(false));
        let server = sockeye::Server::builder()
            .process_request(unavailable_until(ready.clone()))
            .serve("127.0.0.1:0", |ws| async move {
                while let Some(msg) = ws.recv().await? {
                    ws.send(msg).await?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let failures = Arc::new(AtomicUsize::new(0));
        let mut conns = sockeye::ClientBuilder::default()
            .backoff(test_backoff())
            .retry_if(ready_after_two_503s(failures.clone(), ready))
            .reconnecting(&format!("ws://{}/", server.local_addr().unwrap()));

        // Also a `Stream`.
        let ws = tokio::time::timeout(
            Duration::from_secs(20),
            futures_util::StreamExt::next(&mut conns),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        echo(&ws, "up").await;
        assert_eq!(failures.load(Ordering::SeqCst), 2);
        assert_backoff(&logs.retry_delays());
        assert_eq!(logs.retry_delays().len(), 2);

        // The next item closes this connection normally and opens another, at once.
        let ws2 = next(&mut conns).await.unwrap().unwrap();
        let closed = ws.closed().expect("closed");
        assert!(closed.is_ok(), "{closed}");
        assert_eq!(ws.close_code(), CloseCode::NORMAL);
        echo(&ws2, "again").await;
        assert_eq!(failures.load(Ordering::SeqCst), 2);
        server.close().await;
    }

    #[tokio::test]
    async fn client_errors_end_the_stream() {
        let (logs, _guard) = Logs::capture();
        let server = sockeye::Server::builder()
            .process_request(refuse_by_path)
            .serve("127.0.0.1:0", |_| async { Ok(()) })
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        for (path, status) in REFUSED {
            let mut conns = sockeye::ClientBuilder::default()
                .backoff(test_backoff())
                .reconnecting(&format!("ws://{addr}/{path}"));
            let e = next(&mut conns).await.unwrap().unwrap_err();
            assert!(is_status(&e, status), "{e}");
            assert!(next(&mut conns).await.is_none());
            assert!(next(&mut conns).await.is_none());
        }
        for uri in INVALID_URIS {
            let mut conns = sockeye::reconnecting(uri);
            let e = next(&mut conns).await.unwrap().unwrap_err();
            assert!(matches!(e, Error::InvalidUri(_)), "{e}");
            assert!(next(&mut conns).await.is_none());
        }
        assert!(logs.retry_delays().is_empty());
        server.close().await;
    }

    #[tokio::test]
    async fn next_is_cancel_safe() {
        // Nothing listens: every attempt is refused. A `next` cut short by a timeout leaves
        // the stream usable, and the backoff goes on where it was.
        let (logs, _guard) = Logs::capture();
        let mut conns = sockeye::ClientBuilder::default()
            .backoff(test_backoff())
            .retry_if(|e| {
                assert!(sockeye::is_retryable(e), "{e}");
                true
            })
            .reconnecting(&format!("ws://127.0.0.1:{}/", free_port()));
        for _ in 0..3 {
            let cut = tokio::time::timeout(ms(30), conns.next()).await;
            assert!(cut.is_err(), "no server, yet {cut:?}");
        }
        let delays = logs.retry_delays();
        assert!(!delays.is_empty());
        assert_backoff(&delays);
    }
}

mod sync_front_end {
    use super::*;
    use sockeye::sync;

    fn echo_server(addr: &str) -> sync::Server {
        sync::serve(addr, |ws| {
            while let Some(msg) = ws.recv()? {
                ws.send(msg)?;
            }
            Ok(())
        })
        .unwrap()
    }

    fn echo(ws: &sync::Connection, text: &str) {
        ws.send(text).unwrap();
        let got = ws.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, Some(Message::from(text)));
    }

    #[test]
    fn reconnects_when_the_server_comes_back() {
        let (logs, _guard) = Logs::capture();
        let addr = format!("127.0.0.1:{}", free_port());
        let server = echo_server(&addr);
        let failures = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut conns = sync::ClientBuilder::default()
            .backoff(test_backoff())
            .retry_if(counting_hook(failures.clone(), tx))
            .reconnecting(&format!("ws://{addr}/"));

        let ws = conns.next().unwrap().unwrap();
        echo(&ws, "first");
        server.shutdown();
        assert_eq!(ws.recv_timeout(Duration::from_secs(10)).unwrap(), None);
        assert_eq!(ws.close_code(), CloseCode::GOING_AWAY);

        // The server comes back once the client has failed three times.
        let restart = std::thread::spawn(move || {
            for _ in 0..3 {
                rx.recv().unwrap();
            }
            echo_server(&addr)
        });
        let ws2 = conns.next().unwrap().unwrap();
        echo(&ws2, "second");
        let server = restart.join().unwrap();

        let delays = logs.retry_delays();
        let n = failures.load(Ordering::SeqCst);
        assert!(n >= 3, "{n} failures");
        assert_eq!(delays.len(), n, "one INFO line per retry: {delays:?}");
        assert_backoff(&delays);
        ws2.close(CloseCode::NORMAL, "").unwrap();
        server.shutdown();
    }

    #[test]
    fn retries_503_then_next_closes_the_previous_connection() {
        let (logs, _guard) = Logs::capture();
        let ready = Arc::new(AtomicBool::new(false));
        let server = sync::Server::builder()
            .process_request(unavailable_until(ready.clone()))
            .serve("127.0.0.1:0", |ws| {
                while let Some(msg) = ws.recv()? {
                    ws.send(msg)?;
                }
                Ok(())
            })
            .unwrap();
        let failures = Arc::new(AtomicUsize::new(0));
        let mut conns = sync::ClientBuilder::default()
            .backoff(test_backoff())
            .retry_if(ready_after_two_503s(failures.clone(), ready))
            .reconnecting(&format!("ws://{}/", server.local_addr().unwrap()));

        let ws = conns.next().unwrap().unwrap();
        echo(&ws, "up");
        assert_eq!(failures.load(Ordering::SeqCst), 2);
        assert_eq!(logs.retry_delays().len(), 2);
        assert_backoff(&logs.retry_delays());

        let ws2 = conns.next().unwrap().unwrap();
        let closed = ws.closed().expect("closed");
        assert!(closed.is_ok(), "{closed}");
        echo(&ws2, "again");
        assert_eq!(failures.load(Ordering::SeqCst), 2);
        ws2.close(CloseCode::NORMAL, "").unwrap();
        server.shutdown();
    }

    #[test]
    fn client_errors_end_the_iterator() {
        let (logs, _guard) = Logs::capture();
        let server = sync::Server::builder()
            .process_request(refuse_by_path)
            .serve("127.0.0.1:0", |_| Ok(()))
            .unwrap();
        let addr = server.local_addr().unwrap();
        for (path, status) in REFUSED {
            let mut conns = sync::ClientBuilder::default()
                .backoff(test_backoff())
                .reconnecting(&format!("ws://{addr}/{path}"));
            let e = conns.next().unwrap().unwrap_err();
            assert!(is_status(&e, status), "{e}");
            assert!(conns.next().is_none());
        }
        for uri in INVALID_URIS {
            let items: Vec<_> = sync::reconnecting(uri).collect();
            assert_eq!(items.len(), 1);
            assert!(matches!(items[0], Err(Error::InvalidUri(_))), "{items:?}");
        }
        assert!(logs.retry_delays().is_empty());
        server.shutdown();
    }
}
