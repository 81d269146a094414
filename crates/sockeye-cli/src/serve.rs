//! `sockeye serve`: the relay (topics by path, through a [`sockeye::Hub`], in memory or
//! shared through Redis, or on the event loop's own topics) with its demo page, and the echo
//! server: async handlers on event loops (the default) or tokio tasks, blocking, or
//! event-loop callbacks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use http::StatusCode;
use sockeye::Connection;

use crate::{demo, shutdown_signal};

/// Run a server: a relay (a client at ws://ADDR/<path> joins topic <path> and what it sends
/// goes to the other clients of that topic; GET / is a demo page), or an echo server with
/// --echo.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(default_value = "127.0.0.1:8765")]
    addr: String,
    /// Listen on a Unix domain socket at this path instead of TCP (clients: `sockeye connect
    /// --unix PATH ws://localhost/`). A stale socket file there is replaced; the file is
    /// removed when the server stops.
    #[cfg(unix)]
    #[arg(long, value_name = "PATH", conflicts_with = "addr")]
    unix: Option<PathBuf>,
    /// Echo every message back instead of relaying it.
    #[arg(long)]
    echo: bool,
    /// With --echo: run the blocking echo server (`sockeye::sync`, a thread per
    /// connection) instead of the tokio one.
    #[arg(long, requires = "echo")]
    sync: bool,
    /// Run the event-loop server (`sockeye::reactor`: callbacks, no task per connection),
    /// relay or echo; no TLS, Unix socket or Redis yet.
    #[arg(long, conflicts_with_all = ["sync", "tls_cert", "redis"])]
    reactor: bool,
    /// With --reactor --echo: the echo is an async handler (`recv().await`,
    /// `send().await`) polled by the event loops (`reactor::ServerBuilder::serve_async`)
    /// instead of a callback.
    #[arg(long = "async", requires_all = ["reactor", "echo"])]
    async_handler: bool,
    /// Run each connection in a tokio task of its own (`ServerBuilder::tasks`). By default
    /// connections run on event loops that poll their handlers (about 1.1 KB per idle
    /// connection against 2.0 KB); TLS always uses tasks.
    #[arg(long, conflicts_with_all = ["sync", "reactor"])]
    tasks: bool,
    /// How many event-loop threads (default: one per CPU the process may use).
    #[arg(long, conflicts_with_all = ["sync", "tasks"], value_name = "N")]
    threads: Option<usize>,
    /// Share the relay's topics with other `sockeye serve --redis` processes through Redis
    /// pub/sub, e.g. redis://127.0.0.1:6379/.
    #[arg(long, value_name = "URL", conflicts_with = "echo")]
    redis: Option<String>,
    /// Serve TLS (wss:// and https:// for the page) with this certificate chain (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_size: usize,
    /// Largest number of frames in one message.
    #[arg(long, default_value_t = 1 << 16)]
    max_fragments: usize,
    /// Turn permessage-deflate off.
    #[arg(long)]
    no_compression: bool,
    /// Seconds between keepalive pings (0: none).
    #[arg(long, default_value_t = 20.0)]
    ping_interval: f64,
}

impl ServeArgs {
    fn ping_interval(&self) -> Option<Duration> {
        (self.ping_interval > 0.0).then(|| Duration::from_secs_f64(self.ping_interval))
    }

    /// The Unix socket path, when given.
    fn unix(&self) -> Option<&PathBuf> {
        #[cfg(unix)]
        return self.unix.as_ref();
        #[cfg(not(unix))]
        None
    }

    /// Prints where the server listens, and how to stop it.
    fn announce(&self, what: &str, server_addr: Option<std::net::SocketAddr>, tls: bool) {
        let (ws, http) = if tls {
            ("wss", "https")
        } else {
            ("ws", "http")
        };
        if let Some(path) = self.unix() {
            let path = path.display();
            eprintln!("sockeye {what} on unix socket {path} ({ws}://) (Ctrl-C to stop)");
        } else if let Some(addr) = server_addr {
            eprintln!("sockeye {what} on {ws}://{addr}/ (Ctrl-C to stop)");
            if what.starts_with("relay") {
                eprintln!("demo page: {http}://{addr}/");
            }
        }
    }

    /// The TLS certificate and key, when both are given.
    fn tls(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.tls_cert.as_ref().zip(self.tls_key.as_ref())
    }
}

/// Runs `sockeye serve` until Ctrl-C or SIGTERM, then closes the server gracefully: open
/// connections get close code 1001 (going away), handlers finish, the process exits 0.
pub(crate) async fn serve(args: ServeArgs) -> Result<ExitCode, sockeye::BoxError> {
    // Before the server says where it listens: from then on a signal stops it gracefully.
    let signal = shutdown_signal();
    if args.sync {
        return serve_sync_echo(args, signal).await;
    }
    if args.reactor {
        return serve_reactor(args, signal).await;
    }
    let mut builder = sockeye::Server::builder()
        .max_size(args.max_size)
        .max_fragments(args.max_fragments)
        .compression(!args.no_compression)
        .ping_interval(args.ping_interval())
        .tasks(args.tasks)
        .threads(args.threads.unwrap_or(0));
    if let Some((cert, key)) = args.tls() {
        builder = builder.tls_pem_files(cert, key)?;
    }
    let server = if args.echo {
        let builder = builder.process_request(|request| {
            (request.uri().path() == "/healthz").then(|| sockeye::respond(StatusCode::OK, "OK\n"))
        });
        listen(builder, &args, |ws| async move {
            while let Some(message) = ws.recv().await? {
                ws.send(message).await?;
            }
            Ok(())
        })
        .await?
    } else {
        let hub = match &args.redis {
            Some(url) => sockeye::Hub::redis(url).await?,
            None => sockeye::Hub::new(),
        };
        let builder = builder.process_request(|request| match request.uri().path() {
            "/healthz" => Some(sockeye::respond(StatusCode::OK, "OK\n")),
            "/" if !demo::is_upgrade(request) => Some(demo::page()),
            _ => None,
        });
        listen(builder, &args, move |ws| {
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
    let mut mode = match (&args.redis, args.echo) {
        (_, true) => "echo server".to_owned(),
        (Some(url), _) => format!("relay server (topics shared through Redis at {url})"),
        (None, _) => "relay server".to_owned(),
    };
    if !server.on_event_loops() {
        mode.push_str(" (a task per connection)");
    }
    args.announce(&mode, server.local_addr(), server.is_tls());
    signal.await;
    eprintln!("shutting down");
    server.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Starts the tokio server on the Unix socket of `--unix`, or on the address.
async fn listen<H, Fut>(
    builder: sockeye::ServerBuilder,
    args: &ServeArgs,
    handler: H,
) -> Result<sockeye::Server, sockeye::Error>
where
    H: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), sockeye::BoxError>> + Send + 'static,
{
    #[cfg(unix)]
    if let Some(path) = args.unix() {
        return builder.unix_serve(path, handler).await;
    }
    builder.serve(args.addr.as_str(), handler).await
}

/// The blocking echo server (`serve --echo --sync`): its threads serve; this task waits for
/// the signal to stop, then shuts the server down (1001 to open connections) from a blocking
/// thread.
async fn serve_sync_echo(
    args: ServeArgs,
    signal: impl std::future::Future<Output = ()>,
) -> Result<ExitCode, sockeye::BoxError> {
    let mut builder = sockeye::sync::Server::builder()
        .max_size(args.max_size)
        .max_fragments(args.max_fragments)
        .compression(!args.no_compression)
        .ping_interval(args.ping_interval());
    if let Some((cert, key)) = args.tls() {
        builder = builder.tls_pem_files(cert, key)?;
    }
    let builder = builder.process_request(|request| {
        (request.uri().path() == "/healthz").then(|| sockeye::respond(StatusCode::OK, "OK\n"))
    });
    let echo = |ws: sockeye::sync::Connection| {
        while let Some(message) = ws.recv()? {
            ws.send(message)?;
        }
        Ok(())
    };
    let server = match args.unix() {
        #[cfg(unix)]
        Some(path) => builder.unix_serve(path, echo)?,
        _ => builder.serve(args.addr.as_str(), echo)?,
    };
    args.announce(
        "echo server (blocking)",
        server.local_addr(),
        server.is_tls(),
    );
    signal.await;
    eprintln!("shutting down");
    tokio::task::spawn_blocking(move || server.shutdown()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The event-loop server (`serve --reactor`): the relay, on the loop's own topics, or the
/// echo. Its loop threads serve; this task waits for the signal to stop, then shuts the
/// server down (1001 to open connections) from a blocking thread.
async fn serve_reactor(
    args: ServeArgs,
    signal: impl std::future::Future<Output = ()>,
) -> Result<ExitCode, sockeye::BoxError> {
    use sockeye::reactor::{Handler, Socket};
    if args.unix().is_some() {
        return Err("--reactor serves TCP only".into());
    }
    let echo = args.echo;
    let builder = sockeye::reactor::Server::builder()
        .max_size(args.max_size)
        .max_fragments(args.max_fragments)
        .compression(!args.no_compression)
        .ping_interval(args.ping_interval())
        .threads(args.threads.unwrap_or(0))
        .process_request(move |request| match request.uri().path() {
            "/healthz" => Some(sockeye::respond(StatusCode::OK, "OK\n")),
            "/" if !echo && !demo::is_upgrade(request) => Some(demo::page()),
            _ => None,
        });
    /// A relay member: subscribed to its path (the clock's subscribers only listen).
    struct Member {
        topic: String,
    }
    impl Handler for Member {
        fn on_open(&mut self, ws: &mut Socket<'_>) {
            ws.subscribe(&self.topic);
        }
        fn on_message(&mut self, ws: &mut Socket<'_>, message: sockeye::Message) {
            if self.topic != demo::CLOCK_PATH {
                ws.publish(&self.topic, message);
            }
        }
    }
    let (server, mode) = if echo && args.async_handler {
        let server =
            builder.serve_async(args.addr.as_str(), |ws: sockeye::Connection| async move {
                while let Some(message) = ws.recv().await? {
                    ws.send(message).await?;
                }
                Ok(())
            })?;
        (server, "echo server (async handlers on the event loop)")
    } else if echo {
        let server = builder.serve(args.addr.as_str(), |_request| {
            |ws: &mut Socket<'_>, message: sockeye::Message| {
                let _ = ws.send(message);
            }
        })?;
        (server, "echo server (event loop)")
    } else {
        let server = builder.serve(args.addr.as_str(), |request| Member {
            topic: request.uri().path().to_owned(),
        })?;
        // The demo's clock: one publish a second to its topic, for all its subscribers.
        let clock = server.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                clock.publish(demo::CLOCK_PATH, demo::utc_now());
            }
        });
        (server, "relay server (event loop)")
    };
    args.announce(mode, Some(server.local_addr()), false);
    signal.await;
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
