//! The in-memory pub/sub hub over real loopback connections.

use std::time::Duration;

use sockeye::{ClientBuilder, Hub, Message};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(20);

#[path = "support/relay.rs"]
mod relay;
use relay::relay;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_receive_every_message_in_order() {
    let hub = Hub::new();
    let (server, base, mut opened) = relay(hub.clone()).await;
    let mut clients = Vec::new();
    for _ in 0..1000 {
        let ws = ClientBuilder::default()
            .compression(false)
            .connect(&format!("{base}/news"))
            .await
            .unwrap();
        clients.push(ws);
    }
    for _ in 0..1000 {
        timeout(STEP, opened.recv()).await.unwrap().unwrap();
    }
    assert_eq!(hub.subscribers("/news"), 1000);
    assert_eq!(hub.topics(), vec!["/news".to_owned()]);
    for i in 0..20 {
        let published = hub.publish("/news", format!("message {i}"));
        assert_eq!(published.delivered, 1000);
        assert_eq!(published.dropped, 0);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|ws| {
            tokio::spawn(async move {
                for i in 0..20 {
                    let m = timeout(STEP, ws.recv()).await.unwrap().unwrap();
                    assert_eq!(m, Some(Message::from(format!("message {i}"))));
                }
                ws
            })
        })
        .collect();
    let mut clients = Vec::new();
    for r in readers {
        clients.push(r.await.unwrap());
    }
    // Closing connections leave their topic by themselves.
    for ws in &clients {
        ws.close(sockeye::CloseCode::NORMAL, "").await.unwrap();
    }
    server.close().await;
    assert_eq!(hub.subscribers("/news"), 0);
    assert!(hub.topics().is_empty());
}

#[tokio::test]
async fn a_stalled_subscriber_does_not_delay_the_others_and_stays_bounded() {
    let hub = Hub::new();
    let (server, base, mut opened) = relay(hub.clone()).await;
    // The stalled client never calls recv: once its queue (1 message) is full its driver
    // stops reading, the TCP buffers fill, and the server's output for it grows.
    let stalled = ClientBuilder::default()
        .max_queue(1)
        .compression(false)
        .connect(&format!("{base}/feed"))
        .await
        .unwrap();
    let stalled_on_server = timeout(STEP, opened.recv()).await.unwrap().unwrap();
    let healthy = ClientBuilder::default()
        .compression(false)
        .connect(&format!("{base}/feed"))
        .await
        .unwrap();
    timeout(STEP, opened.recv()).await.unwrap().unwrap();

    let payload = vec![7u8; 16 * 1024];
    let mut dropped = 0;
    for i in 0..600u32 {
        let mut message = payload.clone();
        message[..4].copy_from_slice(&i.to_be_bytes());
        let published = hub.publish("/feed", message.clone());
        dropped += published.dropped;
        // The healthy subscriber gets every message, in order, whatever the stalled one does.
        let got = timeout(STEP, healthy.recv()).await.unwrap().unwrap();
        assert_eq!(got, Some(Message::from(message)), "message {i}");
        // What the stalled subscriber pins stays within write_limit (32 KiB) + one message.
        assert!(
            stalled_on_server.buffered_amount() <= 32 * 1024 + payload.len() + 14,
            "buffered {} after {i} messages",
            stalled_on_server.buffered_amount()
        );
    }
    // 600 x 16 KiB (9.4 MiB) cannot all fit in loopback buffers: some were dropped for it.
    assert!(
        dropped > 0,
        "nothing was dropped for the stalled subscriber"
    );
    assert_eq!(
        hub.subscribers("/feed"),
        2,
        "the stalled subscriber stays subscribed"
    );
    drop(stalled);
    drop(healthy);
    server.close().await;
}

#[tokio::test]
async fn subscribe_unsubscribe_and_publish_except() {
    let hub = Hub::new();
    let (server, base, mut opened) = relay(hub.clone()).await;
    let a = sockeye::connect(&format!("{base}/room")).await.unwrap();
    let a_server = timeout(STEP, opened.recv()).await.unwrap().unwrap();
    let b = sockeye::connect(&format!("{base}/room")).await.unwrap();
    let b_server = timeout(STEP, opened.recv()).await.unwrap().unwrap();
    assert_eq!(hub.subscribers("/room"), 2);

    // The relay does not echo to the author.
    a.send("from a").await.unwrap();
    let got = timeout(STEP, b.recv()).await.unwrap().unwrap();
    assert_eq!(got, Some(Message::from("from a")));

    // A second topic for b; subscribing twice changes nothing.
    hub.subscribe(&b_server, "/other");
    hub.subscribe(&b_server, "/other");
    assert_eq!(hub.subscribers("/other"), 1);
    assert_eq!(hub.publish("/other", "x").delivered, 1);
    assert_eq!(
        timeout(STEP, b.recv()).await.unwrap().unwrap(),
        Some(Message::from("x"))
    );

    assert!(hub.unsubscribe(&a_server, "/room"));
    assert!(!hub.unsubscribe(&a_server, "/room"));
    assert_eq!(hub.publish("/room", "only b").delivered, 1);
    assert_eq!(
        timeout(STEP, b.recv()).await.unwrap().unwrap(),
        Some(Message::from("only b"))
    );
    assert_eq!(hub.publish("/nobody", "void").delivered, 0);

    // b closes: it leaves both of its topics.
    b.close(sockeye::CloseCode::NORMAL, "").await.unwrap();
    b_server.wait_closed().await;
    assert_eq!(hub.subscribers("/room"), 0);
    assert_eq!(hub.subscribers("/other"), 0);
    hub.unsubscribe_all(&a_server);
    assert!(hub.topics().is_empty());
    drop(a);
    server.close().await;
}
