//! A timeout on `recv`: wrap it in `tokio::time::timeout`. This echo server closes
//! connections that stay silent for too long.
//!
//! ```text
//! cargo run -p sockeye --example recv_timeout                  # 127.0.0.1:8765, 10 s
//! cargo run -p sockeye --example recv_timeout -- 127.0.0.1:8765 2.5
//! ```
//!
//! The second argument is the timeout in seconds. The same technique works for any future:
//! `send`, `close`, `connect`...

use std::io::Write;
use std::time::Duration;

use sockeye::{BoxError, CloseCode, ServerConnection};
use tokio::time::timeout;

async fn handler(ws: ServerConnection, idle_timeout: Duration) -> Result<(), BoxError> {
    loop {
        // `timeout` gives `Err(Elapsed)` if `recv` didn't complete in time.
        let Ok(received) = timeout(idle_timeout, ws.recv()).await else {
            // `recv` is cancel-safe: giving up on it loses no message. Close the connection
            // with a reason the client can read.
            println!("closing an idle connection");
            ws.close(CloseCode::NORMAL, "idle timeout").await?;
            return Ok(());
        };
        // A message arrived in time; `None` means the client closed the connection.
        let Some(message) = received? else {
            return Ok(());
        };
        ws.send(message).await?;
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let idle_timeout = match args.next() {
        Some(secs) => Duration::try_from_secs_f64(secs.parse()?)?,
        None => Duration::from_secs(10),
    };
    let server = sockeye::serve(addr, move |ws| handler(ws, idle_timeout)).await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}
