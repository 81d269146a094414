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

/// A publish may write straight to an idle subscriber's socket instead of queueing for its
/// driver. Whatever the mix (messages the connection sends itself, publishes from another
/// thread, sockets that fill up and take partial writes), every frame arrives whole and each
/// sender's messages arrive in order; nothing published as delivered is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_keep_order_with_the_connections_own_sends() {
    const N: usize = 2000;
    let (hub, server, client, server_side) = one_subscriber_of_t().await;
    // Sizes that vary, some large enough to fill the socket and force partial writes.
    let body = |i: usize| "x".repeat([10, 3000, 40_000, 200][i % 4]);
    let own = tokio::spawn(async move {
        for i in 0..N {
            server_side
                .send(format!("own {i} {}", body(i)))
                .await
                .unwrap();
            if i % 8 == 0 {
                // Pauses in which the output drains, so that publishes find it idle.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut delivered = 0;
            for i in 0..N {
                delivered += hub.publish("/t", format!("pub {i} {}", body(i))).delivered;
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            delivered
        })
    };
    let (mut next_own, mut last_pub, mut pubs) = (0, None, 0);
    let deadline = tokio::time::Instant::now() + STEP;
    let expected_pubs = loop {
        if next_own == N && publisher.is_finished() {
            // Everything was sent; the last published frames may still be on their way.
            let expected = publisher.await.unwrap();
            while pubs < expected {
                let m = timeout(STEP, client.recv())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                let text = m.as_text().expect("text").to_owned();
                let i: usize = text.split(' ').nth(1).unwrap().parse().unwrap();
                assert!(text.starts_with("pub "), "{text:.20}");
                assert!(last_pub.is_none_or(|l| i > l), "published out of order");
                last_pub = Some(i);
                pubs += 1;
            }
            break expected;
        }
        assert!(tokio::time::Instant::now() < deadline, "stalled");
        let Ok(m) = timeout(Duration::from_millis(200), client.recv()).await else {
            continue;
        };
        let m = m.unwrap().unwrap();
        let text = m.as_text().expect("text");
        let mut words = text.splitn(3, ' ');
        let (who, i) = (words.next().unwrap(), words.next().unwrap());
        let i: usize = i.parse().unwrap();
        assert_eq!(words.next().unwrap(), body(i), "a frame was cut or mixed");
        match who {
            "own" => {
                assert_eq!(i, next_own, "own messages out of order");
                next_own += 1;
            }
            "pub" => {
                assert!(last_pub.is_none_or(|l| i > l), "published out of order");
                last_pub = Some(i);
                pubs += 1;
            }
            other => panic!("{other}"),
        }
    };
    assert_eq!(pubs, expected_pubs);
    // Nothing more: no publish was delivered twice.
    assert!(timeout(Duration::from_millis(100), client.recv())
        .await
        .is_err());
    own.await.unwrap();
    assert!(pubs > 0, "no publish reached the client");
    client.close(sockeye::CloseCode::NORMAL, "").await.unwrap();
    server.close().await;
}

/// Publishes to a subscriber that does not read: direct writes fill its socket, the last
/// one is partial and the driver writes the rest; later publishes are dropped at the write
/// limit. Every message reported delivered arrives whole and in order.
#[tokio::test]
async fn direct_writes_to_a_full_socket_leave_the_rest_to_the_driver() {
    let (hub, server, client, _) = one_subscriber_of_t().await;
    let body = |i: usize| vec![i as u8; 256 * 1024 + i];
    let mut delivered = Vec::new();
    for i in 0..100 {
        if hub.publish("/t", body(i)).delivered == 1 {
            delivered.push(i);
        }
        tokio::task::yield_now().await;
    }
    assert!(delivered.len() > 1, "{delivered:?}");
    assert!(delivered.len() < 100, "the socket never filled up");
    for &i in &delivered {
        let m = timeout(STEP, client.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(m.as_bytes() == body(i).as_slice(), "message {i} damaged");
    }
    assert!(timeout(Duration::from_millis(100), client.recv())
        .await
        .is_err());
    client.close(sockeye::CloseCode::NORMAL, "").await.unwrap();
    server.close().await;
}

/// A relay on a fresh hub with one client subscribed to `/t` (1 MiB messages allowed, no
/// compression, so that the hub's prepared frames are written as they are), and the
/// server's side of that connection.
async fn one_subscriber_of_t() -> (
    Hub,
    sockeye::Server,
    sockeye::Connection,
    sockeye::Connection,
) {
    let hub = Hub::new();
    let (server, base, mut opened) = relay(hub.clone()).await;
    let client = ClientBuilder::default()
        .compression(false)
        .max_size(1 << 20)
        .connect(&format!("{base}/t"))
        .await
        .unwrap();
    let server_side = timeout(STEP, opened.recv()).await.unwrap().unwrap();
    (hub, server, client, server_side)
}
