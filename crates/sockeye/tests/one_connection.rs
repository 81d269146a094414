//! One `sockeye::Connection` over both back ends: each behaviour here runs with the same
//! handler on the tokio server (`sockeye::serve`) and on the event loops
//! (`reactor::ServerBuilder::serve_async`), over real loopback sockets.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use sockeye::{BoxError, CloseCode, Connection, Error, Message, MessageKind};
use tokio::sync::mpsc;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(10);
const BACK_ENDS: [Back; 2] = [Back::Task, Back::Loop];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Back {
    /// `sockeye::serve`: a tokio task per connection.
    Task,
    /// `reactor::ServerBuilder::serve_async`: the event loops poll the handlers.
    Loop,
}

enum Running {
    Task(sockeye::Server),
    Loop(sockeye::reactor::Server),
}

impl Running {
    fn uri(&self) -> String {
        match self {
            Running::Task(s) => format!("ws://{}/", s.local_addr().unwrap()),
            Running::Loop(s) => format!("ws://{}/", s.local_addr()),
        }
    }

    async fn stop(self) {
        match self {
            Running::Task(s) => timeout(GUARD, s.close()).await.expect("close in time"),
            Running::Loop(s) => timeout(GUARD, tokio::task::spawn_blocking(move || s.shutdown()))
                .await
                .expect("shutdown in time")
                .unwrap(),
        }
    }
}

/// Serves `handler` on `back`, with `hook` as the `process_response` hook if given.
async fn serve<H, Fut>(back: Back, hook: bool, handler: H) -> Running
where
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let add_header = |_: &http::Request<()>, response: &mut http::Response<bytes::Bytes>| {
        response
            .headers_mut()
            .insert("x-hook", http::HeaderValue::from_static("was here"));
    };
    match back {
        Back::Task => {
            let mut builder = sockeye::Server::builder();
            if hook {
                builder = builder.process_response(add_header);
            }
            Running::Task(builder.serve("127.0.0.1:0", handler).await.unwrap())
        }
        Back::Loop => {
            let mut builder = sockeye::reactor::Server::builder().threads(2);
            if hook {
                builder = builder.process_response(add_header);
            }
            Running::Loop(builder.serve_async("127.0.0.1:0", handler).unwrap())
        }
    }
}

async fn recv(ws: &Connection) -> sockeye::Result<Option<Message>> {
    timeout(GUARD, ws.recv()).await.expect("recv in time")
}

/// What a handler reports, for the test to check.
fn reports() -> (
    mpsc::UnboundedSender<String>,
    mpsc::UnboundedReceiver<String>,
) {
    mpsc::unbounded_channel()
}

async fn report(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    timeout(GUARD, rx.recv())
        .await
        .expect("a report in time")
        .expect("a report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_received_fragment_by_fragment() {
    for back in BACK_ENDS {
        let server = serve(back, false, |ws| async move {
            let mut fragments = ws.recv_streaming()?;
            // The receiving side is held while the fragments are read.
            let concurrent = matches!(ws.recv().await, Err(Error::ConcurrentRecv));
            let (mut count, mut data, mut last) = (0, Vec::new(), false);
            while let Some(f) = fragments.next().await? {
                assert_eq!(f.kind, MessageKind::Text);
                assert_eq!(f.first, count == 0);
                count += 1;
                data.extend_from_slice(&f.data);
                last = f.fin;
            }
            drop(fragments);
            let text = String::from_utf8(data)?;
            ws.send(format!("{count} {last} {concurrent} {text}"))
                .await?;
            // And whole messages again afterwards.
            let next = ws.recv().await?.expect("a message");
            ws.send(next).await?;
            Ok(())
        })
        .await;
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        ws.send_fragmented(MessageKind::Text, ["frag", "men", "ted é"])
            .await
            .unwrap();
        let got = recv(&ws).await.unwrap().unwrap();
        // The tokio connection hands out the frames as they come; the event loop joins a
        // message before its handler sees it (one fragment).
        let fragments = if back == Back::Task { 3 } else { 1 };
        assert_eq!(
            got,
            Message::from(format!("{fragments} true true fragmented é")),
            "{back:?}"
        );
        ws.send("whole").await.unwrap();
        assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("whole")));
        assert_eq!(recv(&ws).await.unwrap(), None, "{back:?}: closed with 1000");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_send_keeps_other_messages_out_until_it_ends() {
    for back in BACK_ENDS {
        let server = serve(back, false, |ws| async move {
            let (tx, rx) = mpsc::unbounded_channel::<&'static str>();
            let fragments = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|piece| (piece, rx))
            });
            tx.send("first half, ")?;
            let sending = ws.send_fragmented_stream(MessageKind::Text, fragments);
            let meanwhile = async {
                // Polled after `sending`, which queued the first fragment at once.
                let other = {
                    let ws = ws.clone();
                    tokio::spawn(async move { ws.send("the other message").await })
                };
                // The other sender has had time to try: it must wait for the end.
                tokio::time::sleep(Duration::from_millis(100)).await;
                tx.send("second half")?;
                drop(tx);
                Ok::<_, BoxError>(other)
            };
            let (sent, other) = tokio::join!(sending, meanwhile);
            sent?;
            other?.await??;
            ws.wait_closed().await;
            Ok(())
        })
        .await;
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        assert_eq!(
            recv(&ws).await.unwrap(),
            Some(Message::from("first half, second half")),
            "{back:?}"
        );
        assert_eq!(
            recv(&ws).await.unwrap(),
            Some(Message::from("the other message"))
        );
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_send_dropped_halfway_fails_the_connection_with_1011() {
    for back in BACK_ENDS {
        let server = serve(back, false, |ws| async move {
            let never_ends =
                futures_util::stream::iter(["only a start"]).chain(futures_util::stream::pending());
            let sending = ws.send_fragmented_stream(MessageKind::Binary, never_ends);
            assert!(timeout(Duration::from_millis(100), sending).await.is_err());
            ws.wait_closed().await;
            Ok(())
        })
        .await;
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        match recv(&ws).await {
            Err(Error::ConnectionClosed(closed)) => {
                assert_eq!(closed.code(), CloseCode::INTERNAL_ERROR, "{back:?}")
            }
            other => panic!("{back:?}: {other:?}"),
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_resolve_with_their_pongs() {
    for back in BACK_ENDS {
        let (tx, mut rx) = reports();
        let server = serve(back, false, move |ws| {
            let tx = tx.clone();
            async move {
                let first = ws.ping_with(b"mine").await?;
                // A second ping with the same payload while the first waits: refused.
                let again = ws.ping_with(b"mine").await;
                let other = ws.ping().await?;
                let (a, b) = tokio::join!(first, other);
                let report = format!(
                    "refused {} rtts {} {} latency {} long {}",
                    matches!(again, Err(Error::Misuse(_)) | Err(Error::Protocol(_))),
                    a? < GUARD,
                    b? < GUARD,
                    ws.latency().is_some(),
                    ws.ping_with(&[0; 126]).await.is_err(),
                );
                tx.send(report)?;
                ws.wait_closed().await;
                // Once closed, a ping fails at once.
                tx.send(format!("after {}", ws.ping().await.is_err()))?;
                Ok(())
            }
        })
        .await;
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        // The client answers pings while it waits in recv.
        let reading = {
            let ws = ws.clone();
            tokio::spawn(async move { while let Ok(Some(_)) = ws.recv().await {} })
        };
        assert_eq!(
            report(&mut rx).await,
            "refused true rtts true true latency true long true",
            "{back:?}"
        );
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        assert_eq!(report(&mut rx).await, "after true", "{back:?}");
        reading.await.unwrap();
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_hooks_run_once_the_connection_is_over_and_the_peers_close_is_known() {
    for back in BACK_ENDS {
        let (tx, mut rx) = reports();
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        let server = serve(back, false, move |ws| {
            let (tx, counted) = (tx.clone(), counted.clone());
            async move {
                let (hook_tx, hook_count) = (tx.clone(), counted.clone());
                ws.on_close(move || {
                    hook_count.fetch_add(1, Ordering::SeqCst);
                    let _ = hook_tx.send("hook".to_owned());
                });
                let end = ws.recv().await;
                ws.wait_closed().await;
                // A hook added once it is over runs at once.
                let late = counted.clone();
                ws.on_close(move || {
                    late.fetch_add(10, Ordering::SeqCst);
                });
                tx.send(format!(
                    "{} {} {:?} {}",
                    matches!(end, Err(Error::ConnectionClosed(_))),
                    ws.close_code(),
                    ws.close_reason(),
                    ws.state() == sockeye::State::Closed,
                ))?;
                Ok(())
            }
        })
        .await;
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        ws.close(CloseCode::from(4001), "bye now").await.unwrap();
        let mut got = vec![report(&mut rx).await, report(&mut rx).await];
        got.sort();
        assert_eq!(
            got,
            ["hook", "true 4001 (private use) \"bye now\" true"],
            "{back:?}"
        );
        assert_eq!(ran.load(Ordering::SeqCst), 11, "{back:?}");
        server.stop().await;
    }
}

/// A response's status and headers, sorted, on one line.
fn described(response: &http::Response<()>) -> String {
    let mut lines: Vec<String> = response
        .headers()
        .iter()
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
        .collect();
    lines.sort();
    format!("{} {}", response.status().as_u16(), lines.join("; "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_is_the_101_the_client_got() {
    for back in BACK_ENDS {
        for hook in [false, true] {
            let (tx, mut rx) = reports();
            let server = serve(back, hook, move |ws| {
                let tx = tx.clone();
                async move {
                    tx.send(described(ws.response()))?;
                    Ok(())
                }
            })
            .await;
            let ws = sockeye::connect(&server.uri()).await.unwrap();
            let got = ws.response();
            let expected = described(got);
            assert_eq!(report(&mut rx).await, expected, "{back:?}, hook {hook}");
            assert_eq!(got.headers().contains_key("x-hook"), hook);
            assert!(expected.contains("sec-websocket-accept"), "{expected}");
            drop(ws);
            server.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_and_broadcast_reach_connections_of_both_back_ends() {
    let hub = sockeye::Hub::new();
    let kept: Arc<Mutex<Vec<Connection>>> = Arc::default();
    let mut servers = Vec::new();
    for back in BACK_ENDS {
        let (hub, kept) = (hub.clone(), kept.clone());
        servers.push(
            serve(back, false, move |ws| {
                let (hub, kept) = (hub.clone(), kept.clone());
                async move {
                    hub.subscribe(&ws, "room");
                    kept.lock().unwrap().push(ws.clone());
                    ws.send("joined").await?;
                    while ws.recv().await?.is_some() {}
                    Ok(())
                }
            })
            .await,
        );
    }
    let mut clients = Vec::new();
    for server in &servers {
        let ws = sockeye::connect(&server.uri()).await.unwrap();
        assert_eq!(recv(&ws).await.unwrap(), Some(Message::from("joined")));
        clients.push(ws);
    }
    assert_eq!(hub.subscribers("room"), 2);
    let published = hub.publish("room", "to the room");
    assert_eq!((published.delivered, published.dropped), (2, 0));
    let all = kept.lock().unwrap().clone();
    assert!(sockeye::broadcast(&all, "to all").is_empty());
    for ws in &clients {
        assert_eq!(recv(ws).await.unwrap(), Some(Message::from("to the room")));
        assert_eq!(recv(ws).await.unwrap(), Some(Message::from("to all")));
    }
    // The topics of the event loops are only for their own connections.
    let on_task = all.iter().find(|c| c.subscribe("x").is_err());
    let on_loop = all.iter().find(|c| c.subscribe("x").is_ok());
    assert!(on_task.is_some() && on_loop.is_some());
    // Leaving: the event loop's connection leaves the hub when it closes (its close hook).
    let loop_client = clients.pop().unwrap();
    loop_client.close(CloseCode::NORMAL, "").await.unwrap();
    for _ in 0..100 {
        if hub.subscribers("room") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.subscribers("room"), 1);
    // A closed connection is skipped and returned by broadcast.
    let skipped = sockeye::broadcast(&all, "again");
    assert_eq!(skipped.len(), 1);
    assert_eq!(
        recv(&clients[0]).await.unwrap(),
        Some(Message::from("again"))
    );
    clients[0].close(CloseCode::NORMAL, "").await.unwrap();
    drop(all);
    kept.lock().unwrap().clear();
    for server in servers {
        server.stop().await;
    }
}
