//! The demo of `sockeye serve`: the page at `GET /` (embedded in the binary) and the clock it
//! shows, pushed by the server every second over `ws://ADDR/_sockeye/clock`.
//!
//! Paths under `/_sockeye/` are the server's own: they are not relay topics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use sockeye::Connection;

/// The page: a live clock and a chat on the relay's topics `/chat/<room>`.
const PAGE: &str = include_str!("demo.html");

/// The path of the clock's WebSocket.
pub(crate) const CLOCK_PATH: &str = "/_sockeye/clock";

/// Whether `request` asks for a WebSocket upgrade (`Upgrade: websocket`). A plain `GET /`
/// gets the page; a WebSocket client of `ws://ADDR/` still joins topic `/`.
pub(crate) fn is_upgrade(request: &Request<()>) -> bool {
    request
        .headers()
        .get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
}

/// The demo page as an HTTP response.
pub(crate) fn page() -> Response<Bytes> {
    let mut response = sockeye::respond(StatusCode::OK, PAGE);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Pushes the server's time (UTC, RFC 3339) every second until the client leaves, as the
/// seeds' browser example does. Messages from the client are read and ignored, so that its
/// close is seen at once.
pub(crate) async fn clock(ws: Connection) -> Result<(), sockeye::BoxError> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => ws.send(utc_now()).await?,
            received = ws.recv() => {
                if received?.is_none() {
                    return Ok(());
                }
            }
        }
    }
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC timestamp (proleptic Gregorian
/// calendar; days to civil date after H. Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn upgrade_requests_are_told_apart_from_page_requests() {
        let page = Request::get("/").body(()).unwrap();
        assert!(!is_upgrade(&page));
        let ws = Request::get("/")
            .header("Upgrade", "WebSocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&ws));
        let both = Request::get("/")
            .header("Upgrade", "h2c, websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&both));
    }

    #[test]
    fn the_page_is_html() {
        let response = page();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(
            response.headers()[http::header::CONTENT_LENGTH],
            PAGE.len().to_string().as_str()
        );
        assert!(response.body().starts_with(b"<!DOCTYPE html>"));
    }
}
