//! Reads the JSON lines of `bench/run.sh` and writes the markdown tables (stdout) and the
//! chart (an SVG file, plotters' SVG backend: text goes out as `<text>` elements, no font
//! files or fontconfig needed).
//!
//!     bench_report bench/results/latest.jsonl docs/bench.svg > table.md

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::prelude::*;
use serde_json::Value;

/// Servers in the order of the tables and the chart, with their chart colours.
const SERVERS: &[(&str, RGBColor)] = &[
    ("sockeye", RGBColor(0xd9, 0x4f, 0x2b)),
    // The event-loop front end (`sockeye serve --echo --reactor`): callbacks, no task per
    // connection.
    ("sockeye-reactor", RGBColor(0xf2, 0x9a, 0x6e)),
    ("fastwebsockets", RGBColor(0x2b, 0x6c, 0xb0)),
    ("tokio-tungstenite", RGBColor(0x5a, 0x9b, 0xd5)),
    ("tokio-websockets", RGBColor(0x8f, 0xbc, 0xe6)),
    ("yawc", RGBColor(0x4c, 0xa6, 0x6b)),
    ("python-websockets", RGBColor(0xe0, 0xb1, 0x2f)),
    ("node-ws", RGBColor(0x8a, 0x5c, 0xb8)),
];

struct Case {
    id: &'static str,
    title: &'static str,
    short: &'static str,
    /// Field of the bench result (or of the idle result) compared.
    metric: &'static str,
    unit: &'static str,
    higher_is_better: bool,
}

const CASES: &[Case] = &[
    Case { id: "echo-20-32", title: "Echo, 100 connections, 20 B text, 32 in flight", short: "20 B ×32", metric: "msgs_per_sec", unit: "msgs/s", higher_is_better: true },
    Case { id: "echo-20-1", title: "Echo, 100 connections, 20 B text, 1 in flight", short: "20 B ×1", metric: "msgs_per_sec", unit: "msgs/s", higher_is_better: true },
    Case { id: "echo-16k", title: "Echo, 100 connections, 16 KiB binary, 1 in flight", short: "16 KiB", metric: "msgs_per_sec", unit: "msgs/s", higher_is_better: true },
    Case { id: "echo-1m", title: "Echo, 10 connections, 1 MiB binary, 1 in flight: server CPU time per GB", short: "1 MiB (CPU/GB)", metric: "server_cpu_s_per_gb", unit: "CPU s/GB", higher_is_better: false },
    Case { id: "deflate", title: "Echo with permessage-deflate, 100 connections, 1 KiB JSON-like text, 4 in flight", short: "deflate 1 KiB", metric: "msgs_per_sec", unit: "msgs/s", higher_is_better: true },
    Case { id: "idle", title: "Memory per idle connection (server RSS delta / connections)", short: "idle memory", metric: "bytes_per_connection", unit: "bytes", higher_is_better: false },
    Case { id: "broadcast", title: "Broadcast: 20 B to every subscriber, 1 broadcast outstanding", short: "broadcast", metric: "msgs_per_sec", unit: "deliveries/s", higher_is_better: true },
    Case { id: "handshake", title: "Handshakes (connect, upgrade, close), 10 connections", short: "handshakes", metric: "msgs_per_sec", unit: "handshakes/s", higher_is_better: true },
];

/// Differences under this factor are ties.
const TIE: f64 = 1.3;

#[derive(Default)]
struct Cell {
    values: Vec<f64>,
    server_cpu: Vec<f64>,
    mib: Vec<f64>,
    failures: Vec<String>,
    compression: Option<String>,
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0} k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// How many times better than `reference` (> 1: better), whichever way the metric goes.
fn factor(case: &Case, v: f64, reference: f64) -> f64 {
    if case.higher_is_better {
        v / reference
    } else {
        reference / v
    }
}

fn ratio_text(f: f64) -> String {
    if (1.0 / TIE..TIE).contains(&f) {
        format!("{f:.2}× (tie)")
    } else if f >= 1.0 {
        format!("**{f:.2}×**")
    } else {
        format!("{f:.2}×")
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let input = args.next().unwrap_or_else(|| "bench/results/latest.jsonl".into());
    let svg = args.next().unwrap_or_else(|| "docs/bench.svg".into());
    let text = std::fs::read_to_string(&input).expect("read results");

    let mut meta = Value::Null;
    let mut meta_end = Value::Null;
    let mut cells: BTreeMap<(String, String), Cell> = BTreeMap::new();
    let mut loads = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        if let Some(m) = v.get("meta") {
            meta = m.clone();
            continue;
        }
        if let Some(m) = v.get("meta_end") {
            meta_end = m.clone();
            continue;
        }
        let case = v["case"].as_str().unwrap_or_default().to_owned();
        let server = v["server"].as_str().unwrap_or_default().to_owned();
        if let Some(l) = v["load1"].as_f64() {
            loads.push(l);
        }
        let cell = cells.entry((case.clone(), server)).or_default();
        let r = &v["result"];
        let Some(spec) = CASES.iter().find(|c| c.id == case) else { continue };
        let errors = r["errors"].as_u64().unwrap_or(1);
        // CPU s/GB from the raw fields: the JSON's own figure has one decimal only.
        let value = if spec.metric == "server_cpu_s_per_gb" {
            match (r["server_cpu_percent"].as_f64(), r["seconds"].as_f64(), r["msgs"].as_f64(), r["size"].as_f64()) {
                (Some(c), Some(t), Some(n), Some(s)) if n > 0.0 => Some(c / 100.0 * t / (n * s / 1e9)),
                _ => None,
            }
        } else {
            r[spec.metric].as_f64()
        };
        match value {
            Some(x) if errors == 0 && x > 0.0 => {
                cell.values.push(x);
                if let Some(c) = r["server_cpu_percent"].as_f64() {
                    cell.server_cpu.push(c);
                }
                if let Some(m) = r["mib_per_sec"].as_f64() {
                    cell.mib.push(m);
                }
                if let Some(c) = r["compression"].as_str() {
                    cell.compression = Some(c.to_owned());
                }
            }
            _ => cell.failures.push(
                r["first_error"]
                    .as_str()
                    .or(v["error"].as_str())
                    .unwrap_or("no result")
                    .chars()
                    .take(80)
                    .collect(),
            ),
        }
    }

    // ---- markdown ----
    let mut md = String::new();
    let load_range = if loads.is_empty() {
        "n/a".to_owned()
    } else {
        let lo = loads.iter().copied().fold(f64::MAX, f64::min);
        let hi = loads.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}–{hi:.2}")
    };
    let _ = writeln!(
        md,
        "Run {} ({}{} round(s), {} s measured after {} s of warm-up per run; CPU: {}; python \
         websockets {}, Node {} with ws {}; commit {}). 1-minute load average when each run \
         started: {} (at the start: `{}`, at the end: `{}`).\n",
        meta["date"].as_str().unwrap_or("?"),
        if meta["quick"].as_bool() == Some(true) { "**--quick**, " } else { "" },
        meta["rounds"],
        meta["duration"],
        meta["warmup"],
        meta["cpu"].as_str().unwrap_or("?"),
        meta["python_websockets"].as_str().unwrap_or("?"),
        meta["node"].as_str().unwrap_or("?"),
        meta["node_ws"].as_str().unwrap_or("?"),
        meta["commit"].as_str().unwrap_or("?"),
        load_range,
        meta["loadavg_start"].as_str().unwrap_or("?"),
        meta_end["loadavg_end"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        md,
        "Medians of the runs; the range is min–max. \"vs\" columns: how many times better than \
         that server (> 1 is better, for rates and for costs alike); under {TIE}× either way \
         is a tie. Server CPU: % of its core during the measured window (≥ 95 %: saturated; \
         below, the rate is a lower bound of what the server can do).\n![benchmarks](bench.svg)\n"
    );
    let mut chart: Vec<(usize, usize, f64)> = Vec::new(); // (case, server, factor vs sockeye)
    for (ci, case) in CASES.iter().enumerate() {
        let present: Vec<_> = SERVERS
            .iter()
            .enumerate()
            .filter_map(|(si, (s, _))| cells.get(&(case.id.to_owned(), (*s).to_owned())).map(|c| (si, *s, c)))
            .collect();
        if present.is_empty() {
            continue;
        }
        let med = |s: &str| {
            cells
                .get(&(case.id.to_owned(), s.to_owned()))
                .and_then(|c| median(&c.values))
        };
        let fws = med("fastwebsockets");
        let sck = med("sockeye");
        let _ = writeln!(md, "### {}\n", case.title);
        let extra = if case.id == "echo-1m" { " | MiB/s" } else { "" };
        let _ = writeln!(
            md,
            "| server | {} | runs | vs fastwebsockets | vs sockeye | server CPU{extra} |",
            case.unit
        );
        let _ = writeln!(md, "|---|---:|---|---:|---:|---:{}|", if extra.is_empty() { "" } else { "|---:" });
        for (si, name, cell) in present {
            let Some(m) = median(&cell.values) else {
                let _ = writeln!(
                    md,
                    "| {name} | failed | {} failed: {} | | | |{}",
                    cell.failures.len(),
                    cell.failures.first().map_or("", String::as_str).replace('|', "/"),
                    if extra.is_empty() { "" } else { " |" }
                );
                continue;
            };
            let lo = cell.values.iter().copied().fold(f64::MAX, f64::min);
            let hi = cell.values.iter().copied().fold(0.0, f64::max);
            let mut runs = format!("{}: {}–{}", cell.values.len(), human(lo), human(hi));
            if !cell.failures.is_empty() {
                let _ = write!(runs, "; {} failed ({})", cell.failures.len(), cell.failures[0].replace('|', "/"));
            }
            let vs = |r: Option<f64>| r.map_or("–".to_owned(), |r| ratio_text(factor(case, m, r)));
            let cpu = median(&cell.server_cpu).map_or("–".to_owned(), |c| format!("{c:.0} %"));
            let mib = if extra.is_empty() {
                String::new()
            } else {
                format!(" {} |", median(&cell.mib).map_or("–".into(), |m| format!("{m:.0}")))
            };
            let _ = writeln!(md, "| {name} | {} | {runs} | {} | {} | {cpu} |{mib}", human(m), vs(fws), vs(sck));
            if let Some(s) = sck {
                chart.push((ci, si, factor(case, m, s)));
            }
        }
        let compressions: Vec<String> = SERVERS
            .iter()
            .filter_map(|(s, _)| {
                cells
                    .get(&(case.id.to_owned(), (*s).to_owned()))
                    .and_then(|c| c.compression.as_ref().map(|p| format!("{s}: {p}")))
            })
            .collect();
        if !compressions.is_empty() {
            let _ = writeln!(md, "\nNegotiated: {}.", compressions.join("; "));
        }
        md.push('\n');
    }
    print!("{}", md.trim_end());
    println!();
    draw(&svg, &chart, &meta).expect("chart");
}

/// Grouped bars: per case, each server's factor vs sockeye (log scale; sockeye = 1).
fn draw(path: &str, bars: &[(usize, usize, f64)], meta: &Value) -> Result<(), Box<dyn std::error::Error>> {
    let cases: Vec<usize> = {
        let mut c: Vec<usize> = bars.iter().map(|b| b.0).collect();
        c.dedup();
        c
    };
    let n = cases.len().max(1);
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = (0.01f64, 20.0f64);
    let title = format!(
        "Relative to sockeye (= 1, higher is better, log scale) — medians, {}",
        meta["date"].as_str().unwrap_or("")
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(9)
        .y_label_formatter(&|v| format!("{v}×"))
        .draw()?;
    let per = SERVERS.len() as f64 + 1.0;
    for (gi, &ci) in cases.iter().enumerate() {
        let x0 = gi as f64;
        let (px, py) = chart.backend_coord(&(x0 + 0.5, lo));
        root.draw(&Text::new(
            CASES[ci].short.to_owned(),
            (px, py + 8),
            ("sans-serif", 13).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Top,
            )),
        ))?;
        for &(_, si, f) in bars.iter().filter(|b| b.0 == ci) {
            let a = x0 + (si as f64 + 0.5) / per;
            let b = a + 1.0 / per;
            let color = SERVERS[si].1;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(a, lo), (b, f.clamp(lo, hi))],
                color.filled(),
            )))?;
        }
    }
    // sockeye = 1 line.
    chart.draw_series(LineSeries::new(vec![(0.0, 1.0), (n as f64, 1.0)], BLACK.stroke_width(1)))?;
    for (name, color) in SERVERS {
        chart
            .draw_series(std::iter::once(Rectangle::new([(0.0, lo), (0.0, lo)], color.filled())))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .draw()?;
    root.present()?;
    Ok(())
}
