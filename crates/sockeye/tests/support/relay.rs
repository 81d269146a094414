//! A relay server on a hub, shared by the hub tests (in memory and through Redis). Included
//! with `#[path]` by the tests that need it.

use sockeye::{Connection, Hub, Server};
use tokio::sync::mpsc;

/// A server whose handler subscribes each connection to its path and relays what it sends
/// to the other subscribers (`publish_except`); every server-side connection is reported on
/// the receiver. Returns the server, its `ws://ADDR` base (no path) and the receiver.
pub async fn relay(hub: Hub) -> (Server, String, mpsc::UnboundedReceiver<Connection>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = sockeye::serve("127.0.0.1:0", move |ws: Connection| {
        let hub = hub.clone();
        let tx = tx.clone();
        async move {
            let topic = ws.request().uri().path().to_owned();
            hub.subscribe(&ws, &topic);
            let _ = tx.send(ws.clone());
            while let Some(message) = ws.recv().await? {
                hub.publish_except(&topic, message, &ws);
            }
            Ok(())
        }
    })
    .await
    .unwrap();
    let base = format!("ws://{}", server.local_addr().unwrap());
    (server, base, rx)
}
