//! `sockeye serve`: the relay (topics by path, through a [`sockeye::Hub`]) and the echo
//! server, tokio or blocking.

use std::process::ExitCode;

use http::StatusCode;
use sockeye::Connection;

use crate::{demo, shutdown_signal};

pub(crate) async fn serve(
    builder: sockeye::ServerBuilder,
    addr: &str,
    echo: bool,
) -> Result<ExitCode, sockeye::BoxError> {
    let server = if echo {
        builder
            .process_request(|request| {
                (request.uri().path() == "/healthz")
                    .then(|| sockeye::respond(StatusCode::OK, "OK\n"))
            })
            .serve(addr, |ws| async move {
                while let Some(message) = ws.recv().await? {
                    ws.send(message).await?;
                }
                Ok(())
            })
            .await?
    } else {
        let hub = sockeye::Hub::new();
        builder
            .process_request(|request| match request.uri().path() {
                "/healthz" => Some(sockeye::respond(StatusCode::OK, "OK\n")),
                "/" if !demo::is_upgrade(request) => Some(demo::page()),
                _ => None,
            })
            .serve(addr, move |ws| {
                let hub = hub.clone();
                async move {
                    if ws.request().uri().path() == demo::CLOCK_PATH {
                        demo::clock(ws).await
                    } else {
                        relay(ws, hub).await
                    }
                }
            })
            .await?
    };
    let mode = if echo { "echo" } else { "relay" };
    if let Some(addr) = server.local_addr() {
        eprintln!("sockeye {mode} server on ws://{addr}/ (Ctrl-C to stop)");
        if !echo {
            eprintln!("demo page: http://{addr}/");
        }
    }
    shutdown_signal().await;
    eprintln!("shutting down");
    server.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The blocking echo server (`serve --echo --sync`): its threads serve; this task waits for
/// the signal to stop.
pub(crate) async fn serve_sync_echo(
    builder: sockeye::sync::ServerBuilder,
    addr: &str,
) -> Result<ExitCode, sockeye::BoxError> {
    let server = builder
        .process_request(|request| {
            (request.uri().path() == "/healthz").then(|| sockeye::respond(StatusCode::OK, "OK\n"))
        })
        .serve(addr, |ws| {
            while let Some(message) = ws.recv()? {
                ws.send(message)?;
            }
            Ok(())
        })?;
    if let Some(addr) = server.local_addr() {
        eprintln!("sockeye echo server (blocking) on ws://{addr}/ (Ctrl-C to stop)");
    }
    shutdown_signal().await;
    eprintln!("shutting down");
    tokio::task::spawn_blocking(move || server.shutdown()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The relay: a client at `/<path>` joins topic `<path>`; what it sends goes to the other
/// clients of the topic. Closed connections leave their topic by themselves.
async fn relay(ws: Connection, hub: sockeye::Hub) -> Result<(), sockeye::BoxError> {
    let topic = ws.request().uri().path().to_owned();
    hub.subscribe(&ws, &topic);
    while let Some(message) = ws.recv().await? {
        hub.publish_except(&topic, message, &ws);
    }
    Ok(())
}
