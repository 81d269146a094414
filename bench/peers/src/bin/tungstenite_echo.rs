//! Echo server on tokio-tungstenite 0.30: `accept_async`, then the read half forwarded into
//! the write half (`StreamExt::forward` feeds and flushes when nothing more is ready).
//! No permessage-deflate. `--broadcast`: every message goes to every client.

#[path = "../common.rs"]
mod common;

use futures_util::{future, SinkExt, StreamExt, TryStreamExt};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

async fn echo(stream: tokio::net::TcpStream) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (write, read) = ws.split();
    let _ = read
        .try_filter(|m| future::ready(m.is_text() || m.is_binary()))
        .forward(write)
        .await;
}

async fn relay(stream: tokio::net::TcpStream, tx: broadcast::Sender<Message>) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
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
        eprintln!("tungstenite_echo: no --deflate");
        std::process::exit(2);
    }
    if args.broadcast {
        let (tx, _) = broadcast::channel(1024);
        common::serve_forever(args.addr, move |s| relay(s, tx.clone()));
    } else {
        common::serve_forever(args.addr, echo);
    }
}
