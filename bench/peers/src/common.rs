//! What the peer servers share: command line and runtime.
//!
//! Every server takes `ADDR` (127.0.0.1:PORT) and, where it supports them, `--deflate`
//! (negotiate permessage-deflate) and `--broadcast` (every text/binary message received is
//! sent to every connected client, instead of echoed back).

use std::future::Future;

pub struct Args {
    pub addr: String,
    pub deflate: bool,
    pub broadcast: bool,
}

pub fn args() -> Args {
    let mut out = Args {
        addr: "127.0.0.1:9001".to_owned(),
        deflate: false,
        broadcast: false,
    };
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--deflate" => out.deflate = true,
            "--broadcast" => out.broadcast = true,
            s if !s.starts_with('-') => out.addr = s.to_owned(),
            s => {
                eprintln!("unknown option {s}");
                std::process::exit(2);
            }
        }
    }
    out
}

/// A current-thread tokio runtime, as the peers' own echo examples use (the server is
/// pinned to one CPU anyway).
pub fn run<F: Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Binds, then accepts forever; each connection goes to `serve` in a task of its own.
pub async fn accept_loop<F, Fut>(addr: &str, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    eprintln!("listening on {addr}");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
            Err(e) => {
                // EMFILE and the like: back off a little instead of spinning.
                eprintln!("accept: {e}");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Serves `addr` forever on a current-thread runtime.
pub fn serve_forever<F, Fut>(addr: String, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run(async move { accept_loop(&addr, serve).await })
}
