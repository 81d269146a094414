//! The tokio front end over real loopback sockets.

use std::time::Duration;

use sockeye::{CloseCode, Error, Message, Server};

async fn echo_server() -> (Server, String) {
    let server = sockeye::serve("127.0.0.1:0", |ws| async move {
        while let Some(msg) = ws.recv().await? {
            ws.send(msg).await?;
        }
        Ok(())
    })
    .await
    .unwrap();
    let uri = format!("ws://{}/", server.local_addr().unwrap());
    (server, uri)
}

#[tokio::test]
async fn echo_round_trip_and_clean_close() {
    let (server, uri) = echo_server().await;
    let ws = sockeye::connect(&uri).await.unwrap();
    ws.send("Hello!").await.unwrap();
    assert_eq!(ws.recv().await.unwrap(), Some(Message::from("Hello!")));
    ws.send(vec![1u8, 2, 3]).await.unwrap();
    assert_eq!(
        ws.recv().await.unwrap(),
        Some(Message::from(vec![1u8, 2, 3]))
    );
    ws.close(CloseCode::NORMAL, "bye").await.unwrap();
    let closed = ws.closed().unwrap();
    assert!(closed.is_ok(), "{closed}");
    assert_eq!(ws.recv().await.unwrap(), None);
    tokio::time::timeout(Duration::from_secs(5), server.close())
        .await
        .unwrap();
}

#[tokio::test]
async fn handler_return_closes_with_1000() {
    let server = sockeye::serve("127.0.0.1:0", |ws| async move {
        ws.send("bye").await?;
        Ok(())
    })
    .await
    .unwrap();
    let ws = sockeye::connect(&format!("ws://{}/", server.local_addr().unwrap()))
        .await
        .unwrap();
    assert_eq!(ws.recv().await.unwrap(), Some(Message::from("bye")));
    assert_eq!(ws.recv().await.unwrap(), None);
    assert_eq!(ws.close_code(), CloseCode::NORMAL);
    server.close().await;
}

#[tokio::test]
async fn handler_error_closes_with_1011() {
    let server = sockeye::serve(
        "127.0.0.1:0",
        |_ws| async move { Err("something broke".into()) },
    )
    .await
    .unwrap();
    let ws = sockeye::connect(&format!("ws://{}/", server.local_addr().unwrap()))
        .await
        .unwrap();
    match ws.recv().await {
        Err(Error::ConnectionClosed(c)) => assert_eq!(c.code(), CloseCode::INTERNAL_ERROR),
        other => panic!("{other:?}"),
    }
    server.close().await;
}

#[tokio::test]
async fn dropping_the_last_client_handle_closes_with_1000() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let server = sockeye::serve("127.0.0.1:0", move |ws| {
        let tx = tx.lock().unwrap().take();
        async move {
            let mut received = 0;
            let end = loop {
                match ws.recv().await {
                    Ok(Some(_)) => received += 1,
                    other => break other,
                }
            };
            let _ = tx.unwrap().send(format!("{received} then {end:?}"));
            Ok(())
        }
    })
    .await
    .unwrap();
    let ws = sockeye::connect(&format!("ws://{}/", server.local_addr().unwrap()))
        .await
        .unwrap();
    let clone = ws.clone();
    drop(ws);
    // A clone is still alive: the connection stays open. Dropping it closes.
    clone.send("still open").await.unwrap();
    drop(clone);
    let end = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, "1 then Ok(None)");
    server.close().await;
}

#[tokio::test]
async fn connection_is_a_stream_and_a_sink_of_messages() {
    use futures_util::{SinkExt, StreamExt};
    let (server, uri) = echo_server().await;
    let mut ws = sockeye::connect(&uri).await.unwrap();
    SinkExt::send(&mut ws, Message::from("one")).await.unwrap();
    SinkExt::send(&mut ws, Message::from(vec![2u8]))
        .await
        .unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::from("one"));
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::from(vec![2u8]));
    // Closing the sink runs the closing handshake; the stream then ends.
    SinkExt::close(&mut ws).await.unwrap();
    assert!(ws.next().await.is_none());
    assert!(ws.closed().unwrap().is_ok());
    // Forwarding a stream into a sink, the ecosystem way.
    let mut ws = sockeye::connect(&uri).await.unwrap();
    let mut source = futures_util::stream::iter(["a", "b", "c"].map(|s| Ok(Message::from(s))));
    ws.send_all(&mut source).await.unwrap();
    let got: Vec<_> = ws.by_ref().take(3).map(|m| m.unwrap()).collect().await;
    assert_eq!(got, ["a", "b", "c"].map(Message::from));
    server.close().await;
}

#[tokio::test]
async fn both_ends_know_both_addresses_over_ipv4_and_ipv6() {
    // The server's connection and the client's, each with its local and remote address
    // (IPv4 pairs are kept inline, anything else out of line: both come back whole).
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let server = sockeye::serve(bind, |ws| async move {
            let addresses = format!("{:?} {:?}", ws.local_addr(), ws.remote_addr());
            ws.send(addresses).await?;
            Ok(())
        })
        .await
        .expect("a loopback address");
        let addr = server.local_addr().unwrap();
        let ws = sockeye::connect(&format!("ws://{addr}/")).await.unwrap();
        assert_eq!(ws.remote_addr(), Some(addr));
        assert_eq!(ws.local_addr().map(|a| a.is_ipv6()), Some(addr.is_ipv6()));
        let expected = format!("{:?} {:?}", Some(addr), ws.local_addr());
        assert_eq!(ws.recv().await.unwrap(), Some(Message::from(expected)));
        assert_eq!(ws.recv().await.unwrap(), None);
        server.close().await;
    }
}
