//! Autobahn TestSuite client testee, blocking: drives every case a fuzzing server offers.
//! The same as `autobahn_client.rs`, with `sockeye::sync`.
//!
//! ```text
//! cargo run --release -p sockeye --example autobahn_client_sync -- ws://127.0.0.1:9001 [AGENT]
//! ```
//!
//! Asks `/getCaseCount` (the count arrives as a text message), then for each case N connects
//! to `/runCase?case=N&agent=AGENT` and echoes every message back until the connection
//! closes, then connects to `/updateReports?agent=AGENT` so the server writes its reports.
//! An error in one case is printed and the run moves on to the next. `AGENT` defaults to
//! `sockeye-sync`. A case that takes longer than `AUTOBAHN_CASE_TIMEOUT` seconds (default
//! 60) is abandoned with a close, so one hung case does not stall the run.

use std::time::{Duration, Instant};

use sockeye::sync::{ClientBuilder, Connection};
use sockeye::CloseCode;

/// Longest a single case may take before the client gives up on it.
fn case_timeout() -> Duration {
    let secs = std::env::var("AUTOBAHN_CASE_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0_f64);
    Duration::from_secs_f64(secs)
}

fn builder() -> ClientBuilder {
    // Two permessage-deflate offers, as examples/autobahn_client.rs explains.
    let no_context = sockeye::proto::DeflateConfig {
        client_no_context_takeover: true,
        ..Default::default()
    };
    ClientBuilder::default()
        .max_size(33_554_432)
        .max_fragments(1 << 20)
        // The fuzzing server decides when a case is over; no keepalive traffic of our own.
        .ping_interval(None)
        .deflate_offers(vec![Default::default(), no_context])
}

fn case_count(base: &str) -> Result<u32, sockeye::Error> {
    let ws = builder().connect(&format!("{base}/getCaseCount"))?;
    let count = match ws.recv()? {
        Some(sockeye::Message::Text(t)) => t.as_str().trim().parse().ok(),
        _ => None,
    };
    // Wait for the server's close; the count is all we need.
    while let Ok(Some(_)) = ws.recv() {}
    count.ok_or(sockeye::Error::Misuse(
        "getCaseCount did not answer a number",
    ))
}

/// Echoes until the connection closes, or until `deadline`.
fn echo(ws: &Connection, deadline: Instant) -> Result<(), sockeye::Error> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.recv_timeout(left) {
            Ok(Some(message)) => ws.send(message)?,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn run_case(base: &str, case: u32, agent: &str) -> Result<(), sockeye::Error> {
    let ws = builder().connect(&format!("{base}/runCase?case={case}&agent={agent}"))?;
    match echo(&ws, Instant::now() + case_timeout()) {
        Err(sockeye::Error::RecvTimeout) => {
            let _ = ws.close(CloseCode::NORMAL, "case timeout");
            Err(sockeye::Error::Misuse("case timed out"))
        }
        result => result,
    }
}

fn update_reports(base: &str, agent: &str) -> Result<(), sockeye::Error> {
    let ws = builder().connect(&format!("{base}/updateReports?agent={agent}"))?;
    // The server may close first; either way wait for the closing handshake.
    let _ = ws.close(CloseCode::NORMAL, "");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let base = base.trim_end_matches('/').to_owned();
    let agent = args.next().unwrap_or_else(|| "sockeye-sync".to_owned());

    let count = match case_count(&base) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("autobahn_client_sync: getCaseCount failed: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("autobahn_client_sync: {count} cases");
    let start = Instant::now();
    for case in 1..=count {
        if let Err(e) = run_case(&base, case, &agent) {
            // Most of these are expected: cases that send invalid data end in a failed
            // connection. The fuzzing server judges; this only shows progress.
            eprintln!("autobahn_client_sync: case {case}/{count}: {e}");
        }
    }
    eprintln!(
        "autobahn_client_sync: ran {count} cases in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    if let Err(e) = update_reports(&base, &agent) {
        eprintln!("autobahn_client_sync: updateReports failed: {e}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
