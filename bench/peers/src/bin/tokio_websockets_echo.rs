//! Echo server on tokio-websockets 0.13: `ServerBuilder::accept` does the handshake; each
//! text or binary message is fed back into the sink, flushed when no more is ready. No
//! permessage-deflate (not in tokio-websockets). `--broadcast`: every message goes to every client.

#[path = "../common.rs"]
mod common;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::broadcast;
use tokio_websockets::{Config, Limits, Message, ServerBuilder};

async fn echo(stream: tokio::net::TcpStream) {
    let Ok((_request, mut ws)) = ServerBuilder::new()
        .config(Config::default().frame_size(usize::MAX))
        .limits(Limits::unlimited())
        .accept(stream)
        .await
    else {
        return;
    };
    // Feed every message that is already there, flush once nothing more is ready (what
    // `StreamExt::forward` does; `send` would flush, one write per message).
    while let Some(Ok(msg)) = ws.next().await {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            if (msg.is_text() || msg.is_binary()) && ws.feed(msg).await.is_err() {
                return;
            }
            if let Some(Some(Ok(m))) = ws.next().now_or_never() {
                next = Some(m);
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

async fn relay(stream: tokio::net::TcpStream, tx: broadcast::Sender<Message>) {
    let Ok((_request, ws)) = ServerBuilder::new().accept(stream).await else {
        return;
    };
    let mut rx = tx.subscribe();
    let (mut sink, mut source) = ws.split();
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(msg)) if msg.is_text() || msg.is_binary() => { let _ = tx.send(msg); }
                Some(Ok(_)) => {}
                _ => return,
            },
            out = rx.recv() => match out {
                Ok(msg) => if sink.send(msg).await.is_err() { return },
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
        }
    }
}

fn main() {
    let args = common::args();
    if args.deflate {
        eprintln!("tokio_websockets_echo: no --deflate");
        std::process::exit(2);
    }
    if args.broadcast {
        let (tx, _) = broadcast::channel(1024);
        common::serve_forever(args.addr, move |s| relay(s, tx.clone()));
    } else {
        common::serve_forever(args.addr, |s| tokio::task::unconstrained(echo(s)));
    }
}
