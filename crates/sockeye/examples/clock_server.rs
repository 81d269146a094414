//! The browser example: serves an HTML page at `GET /`, and pushes the current UTC time
//! every second to each WebSocket connection, which the page displays.
//!
//! ```text
//! cargo run -p sockeye --example clock_server            # listens on 127.0.0.1:8765
//! ```
//!
//! Then open <http://127.0.0.1:8765/> in a browser. sockeye is not an HTTP server: the page
//! is answered by the `process_request` hook, which sees every request before the WebSocket
//! handshake and may answer it with an HTTP response instead.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, UPGRADE};
use http::{Request, Response, StatusCode};
use sockeye::{BoxError, ServerConnection};
use tokio::time::MissedTickBehavior;

/// The page, embedded in the binary.
const PAGE: &str = include_str!("clock.html");

/// Answers plain HTTP requests for `/` with the page; lets WebSocket handshakes through
/// (returning `None` means "go on with the handshake").
fn serve_page(request: &Request<()>) -> Option<Response<Bytes>> {
    let is_websocket = request
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_websocket || request.uri().path() != "/" {
        return None;
    }
    // `respond` builds a complete response (Content-Length, Connection: close) with a
    // text/plain body; change its type to HTML.
    let mut response = sockeye::respond(StatusCode::OK, PAGE);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Some(response)
}

/// The connection handler: a producer that sends the time every second until the browser
/// goes away.
async fn show_time(ws: ServerConnection) -> Result<(), BoxError> {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    // If a send is slow, don't fire the missed ticks in a burst afterwards.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // `send` fails with `Error::ConnectionClosed` once the page is closed: stop then.
        if ws.send(utc_now()).await.is_err() {
            return Ok(());
        }
    }
}

/// The current UTC time as ISO 8601, e.g. `2024-05-01T12:34:56.789Z`.
fn utc_now() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, for dates after 1970).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year, March-based
    let mp = (5 * doy + 2) / 153; // month, March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8765".to_owned());
    let server = sockeye::Server::builder()
        .process_request(serve_page)
        .serve(addr, show_time)
        .await?;
    let bound = server.local_addr().ok_or("the server has no address")?;
    println!("listening on ws://{bound}/");
    std::io::stdout().flush()?;
    server.serve_forever().await?;
    Ok(())
}
