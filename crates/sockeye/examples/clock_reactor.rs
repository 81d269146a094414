//! A clock on the event-loop front end (`sockeye::reactor`): every connected client gets
//! the time once a second, pushed by the main thread with `Server::broadcast` (encoded
//! once for everyone). A client that sends `"stop"` is closed through a `Handle`, from
//! another thread, to show that way in too.
//!
//! ```text
//! cargo run -p sockeye --example clock_reactor            # listens on 127.0.0.1:8765
//! cargo run -p sockeye --example clock_reactor -- 127.0.0.1:0 0.2   # every 0.2 s
//! ```
//!
//! Then `sockeye connect ws://127.0.0.1:8765/` in another terminal.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sockeye::reactor::Socket;
use sockeye::{BoxError, CloseCode, Message};

fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let period: f64 = args.next().map_or(Ok(1.0), |s| s.parse())?;

    // Closing is asked of another thread here only to show `Handle`: a handler could as
    // well call `ws.close(...)` itself.
    let (stop, stops) = std::sync::mpsc::channel::<sockeye::reactor::Handle>();
    std::thread::spawn(move || {
        for handle in stops {
            handle.close(CloseCode::NORMAL, "stopped");
        }
    });

    let server = sockeye::reactor::serve(addr, move |_request| {
        let stop = stop.clone();
        move |ws: &mut Socket<'_>, message: Message| {
            if message.as_text() == Some("stop") {
                let _ = stop.send(ws.handle());
            }
        }
    })?;
    println!("listening on ws://{}/", server.local_addr());
    std::io::stdout().flush()?;

    loop {
        std::thread::sleep(Duration::from_secs_f64(period));
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        server.broadcast(format!("{:.3}", now.as_secs_f64()));
    }
}
