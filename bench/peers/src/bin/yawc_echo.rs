//! Echo server on yawc 0.5: hyper's HTTP/1.1 server, `WebSocket::upgrade_with_options`,
//! every text or binary frame fed back, flushed when no more is ready. `--deflate`:
//! permessage-deflate at zlib's default level 6 with context takeover (what the other
//! servers do by default).

#[path = "../common.rs"]
mod common;

use futures_util::{FutureExt, SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use yawc::frame::OpCode;
use yawc::{CompressionLevel, Options, WebSocket};

fn options(deflate: bool) -> Options {
    // The default payload limit (1 MiB, exclusive) would refuse the 1 MiB case.
    let o = Options::default().with_limits(64 << 20, 128 << 20).with_no_delay();
    if deflate {
        o.with_compression_level(CompressionLevel::new(6))
    } else {
        o
    }
}

fn main() {
    let args = common::args();
    if args.broadcast {
        eprintln!("yawc_echo: no --broadcast");
        std::process::exit(2);
    }
    let deflate = args.deflate;
    common::serve_forever(args.addr, move |stream| async move {
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| async move {
            let (response, fut) = WebSocket::upgrade_with_options(&mut req, options(deflate))?;
            tokio::spawn(async move {
                let Ok(mut ws) = fut.await else { return };
                // Feed every frame that is already there, flush once nothing more is
                // ready (`send` would flush, one write per message). yawc answers close
                // frames itself; reading on until the stream ends lets that answer go out.
                while let Some(frame) = ws.next().await {
                    let mut next = Some(frame);
                    while let Some(frame) = next.take() {
                        if matches!(frame.opcode(), OpCode::Text | OpCode::Binary)
                            && ws.feed(frame).await.is_err()
                        {
                            return;
                        }
                        next = ws.next().now_or_never().flatten();
                    }
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
            });
            Ok::<Response<Empty<Bytes>>, yawc::WebSocketError>(response)
        });
        let io = hyper_util::rt::TokioIo::new(stream);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades()
            .await;
    });
}
