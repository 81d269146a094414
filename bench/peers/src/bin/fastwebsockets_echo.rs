//! Echo server on fastwebsockets 0.10: hyper's HTTP/1.1 server does the upgrade, a
//! `FragmentCollector` hands over whole messages, each written back as it is.
//! No permessage-deflate (fastwebsockets has none), no broadcast.

#[path = "../common.rs"]
mod common;

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn on_request(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(tokio::task::unconstrained(async move {
        let _ = echo(fut).await;
    }));
    Ok(response)
}

fn main() {
    let args = common::args();
    if args.deflate || args.broadcast {
        eprintln!("fastwebsockets_echo: no --deflate / --broadcast");
        std::process::exit(2);
    }
    common::serve_forever(args.addr, |stream| async move {
        let io = hyper_util::rt::TokioIo::new(stream);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, hyper::service::service_fn(on_request))
            .with_upgrades()
            .await;
    });
}
