//! `sockeye bench URI`: a WebSocket load generator.
//!
//! One thread, one `mio` poll loop over raw non-blocking sockets; the sans-I/O core is used
//! for what it is good at (the opening handshake, frame headers, masking, permessage-deflate)
//! and the high-level `Connection` is not used at all. Per connection, the frames of the
//! messages in flight are encoded and masked once; sending a batch patches the 8-byte
//! sequence number of each message into its masked frame (`byte ^ key`) and writes all of
//! them with one system call. Echoes are checked where they lie in the read buffer: frame
//! headers are parsed, payload bytes compared with the message expected (its sequence number
//! included), nothing is copied.
//!
//! Modes: `echo` (each echo received lets one more message go), `handshake` (connect,
//! upgrade, close, in a loop), `broadcast` (N idle subscribers of a relay topic and one
//! publisher; deliveries per second).

mod handshakes;
mod hist;
mod wire;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use sockeye::proto::extensions::deflate::Deflate;

use hist::Histogram;
use wire::{Payload, Rng, Rx, Scan};

/// What `sockeye bench` measures.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Each connection keeps --in-flight messages in flight; each echo lets one more go.
    Echo,
    /// Each connection connects, upgrades and closes, in a loop: handshakes per second.
    Handshake,
    /// --connections idle subscribers of a relay topic (the URI's path) and one publisher
    /// with --in-flight broadcasts outstanding: deliveries per second.
    Broadcast,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Handshake => "handshake",
            Mode::Broadcast => "broadcast",
        }
    }
}

/// `sockeye bench` options.
#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// Server to load: ws://HOST:PORT/PATH (broadcast: a relay topic, e.g. `sockeye serve`).
    uri: String,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
    /// Connections (broadcast: subscribers, plus one publisher).
    #[arg(short = 'c', long, default_value_t = 10)]
    connections: usize,
    /// Message size, bytes (the first 8 carry a sequence number).
    #[arg(short = 's', long, default_value_t = 20)]
    size: usize,
    /// Messages in flight per connection (broadcast: broadcasts outstanding).
    #[arg(short = 'f', long, default_value_t = 1)]
    in_flight: usize,
    /// Seconds measured, after the warm-up.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Text messages (the default): JSON-like ASCII.
    #[arg(long, conflicts_with = "binary")]
    text: bool,
    /// Binary messages: pseudo-random bytes.
    #[arg(long)]
    binary: bool,
    /// Offer permessage-deflate; every message is compressed and every echo inflated, with
    /// the parameters the server negotiated.
    #[arg(long)]
    compression: bool,
    /// Never sleep in the poll: spin on a zero timeout (one core at 100 %), so that neither
    /// side waits for wake-ups in ping-pong runs.
    #[arg(long)]
    busy_poll: bool,
    /// The server's process id: its CPU time (/proc/PID/stat) tells whether it was saturated.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON line of results on stdout instead of the report.
    #[arg(long)]
    json: bool,
}

/// Clock ticks per second of /proc/PID/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// CPU use during the measured window, % of one core: (generator, server).
pub(crate) type CpuUse = (Option<f64>, Option<f64>);

/// CPU time of the generator and of the server since `start`.
struct CpuMeter {
    start: Instant,
    own: Option<f64>,
    server: Option<(String, f64)>,
}

impl CpuMeter {
    fn start(server_pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            start: Instant::now(),
            own: cpu_seconds("self"),
            server: server_pid
                .map(|p| p.to_string())
                .and_then(|p| cpu_seconds(&p).map(|t| (p, t))),
        }
    }

    /// (generator %, server %) of one core.
    fn stop(&self) -> CpuUse {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let own = self
            .own
            .and_then(|t0| cpu_seconds("self").map(|t| (t - t0) / wall * 100.0));
        let server = self
            .server
            .as_ref()
            .and_then(|(p, t0)| cpu_seconds(p).map(|t| (t - t0) / wall * 100.0));
        (own, server)
    }
}

/// Counters of the run. `msgs` and the histogram only count inside the measured window.
struct Stats {
    measuring: bool,
    msgs: u64,
    /// Messages at any time (for the progress line).
    progress_msgs: u64,
    errors: u64,
    hist: Histogram,
    first_error: Option<String>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            measuring: false,
            msgs: 0,
            progress_msgs: 0,
            errors: 0,
            hist: Histogram::new(),
            first_error: None,
        }
    }

    fn error(&mut self, what: impl Into<String>) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what.into());
        }
    }

    /// `bad` of the messages just counted were not the ones expected: errors, not messages.
    fn wrong(&mut self, bad: u32, what: &str) {
        if bad == 0 {
            return;
        }
        self.error(format!("{bad} {what}"));
        self.errors += u64::from(bad) - 1;
        self.progress_msgs -= u64::from(bad);
        if self.measuring {
            self.msgs -= u64::from(bad);
        }
    }

    fn message(&mut self, latency: Duration) {
        self.progress_msgs += 1;
        if self.measuring {
            self.msgs += 1;
            self.hist.record(latency.as_nanos() as u64);
        }
    }
}

/// The results, printed as a report or one JSON line.
struct Report {
    mode: Mode,
    uri: String,
    connections: usize,
    size: usize,
    in_flight: usize,
    text: bool,
    compression: Option<String>,
    busy_poll: bool,
    seconds: f64,
    msgs: u64,
    errors: u64,
    first_error: Option<String>,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    own_cpu: Option<f64>,
    server_cpu: Option<f64>,
}

impl Report {
    fn rate(&self) -> f64 {
        self.msgs as f64 / self.seconds
    }

    fn mib_per_second(&self) -> f64 {
        match self.mode {
            Mode::Handshake => 0.0,
            _ => self.rate() * self.size as f64 / (1024.0 * 1024.0),
        }
    }

    /// Server CPU seconds per GB (10^9 bytes) of payload received by the generator.
    fn server_seconds_per_gb(&self) -> Option<f64> {
        let bytes = self.msgs as f64 * self.size as f64;
        match (self.server_cpu, self.mode) {
            (Some(cpu), Mode::Echo | Mode::Broadcast) if bytes > 0.0 => {
                Some(cpu / 100.0 * self.seconds / (bytes / 1e9))
            }
            _ => None,
        }
    }

    fn unit(&self) -> &'static str {
        match self.mode {
            Mode::Echo => "msgs",
            Mode::Handshake => "handshakes",
            Mode::Broadcast => "deliveries",
        }
    }

    fn json(&self) -> String {
        fn opt(v: Option<f64>) -> String {
            v.map_or("null".into(), |v| format!("{v:.1}"))
        }
        fn string(s: &str) -> String {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        format!(
            concat!(
                "{{\"mode\":\"{}\",\"uri\":{},\"connections\":{},\"size\":{},\"in_flight\":{},",
                "\"text\":{},\"compression\":{},\"busy_poll\":{},\"seconds\":{:.3},\"unit\":\"{}\",",
                "\"msgs\":{},\"msgs_per_sec\":{:.1},\"mib_per_sec\":{:.3},\"errors\":{},",
                "\"first_error\":{},\"latency_us\":{{\"p50\":{:.2},\"p99\":{:.2},\"p999\":{:.2},",
                "\"max\":{:.2}}},\"client_cpu_percent\":{},\"server_cpu_percent\":{},",
                "\"server_cpu_s_per_gb\":{},\"server_saturated\":{}}}"
            ),
            self.mode.name(),
            string(&self.uri),
            self.connections,
            self.size,
            self.in_flight,
            self.text,
            self.compression.as_deref().map_or("null".into(), string),
            self.busy_poll,
            self.seconds,
            self.unit(),
            self.msgs,
            self.rate(),
            self.mib_per_second(),
            self.errors,
            self.first_error.as_deref().map_or("null".into(), string),
            self.p50,
            self.p99,
            self.p999,
            self.max,
            opt(self.own_cpu),
            opt(self.server_cpu),
            opt(self.server_seconds_per_gb()),
            self.server_cpu
                .map_or("null".into(), |c| (c >= 95.0).to_string()),
        )
    }

    fn print(&self) {
        let kind = if self.text { "text" } else { "binary" };
        let mut setup = format!(
            "sockeye bench: {} {}, {} connections",
            self.mode.name(),
            self.uri,
            self.connections
        );
        if self.mode != Mode::Handshake {
            setup += &format!(", {} B {kind}, {} in flight", self.size, self.in_flight);
        }
        if let Some(c) = &self.compression {
            setup += &format!(", {c}");
        }
        if self.busy_poll {
            setup += ", busy-poll";
        }
        println!("{setup}, {:.1} s measured", self.seconds);
        println!(
            "  {:<12}{} ({:.0} {}/s)",
            format!("{}:", self.unit()),
            self.msgs,
            self.rate(),
            self.unit()
        );
        if self.mode != Mode::Handshake {
            println!("  payload:    {:.2} MiB/s received", self.mib_per_second());
        }
        let us = |v: f64| {
            if v >= 1000.0 {
                format!("{:.2} ms", v / 1000.0)
            } else {
                format!("{v:.1} µs")
            }
        };
        println!(
            "  latency:    p50 {}, p99 {}, p99.9 {}, max {}",
            us(self.p50),
            us(self.p99),
            us(self.p999),
            us(self.max)
        );
        match &self.first_error {
            Some(e) => println!("  errors:     {} (first: {e})", self.errors),
            None => println!("  errors:     {}", self.errors),
        }
        if let Some(own) = self.own_cpu {
            let note = if self.busy_poll {
                " (busy-poll: spins by design)"
            } else if own >= 95.0 {
                " -- the generator may be the bottleneck"
            } else {
                ""
            };
            println!("  generator:  {own:.0}% of one core{note}");
        }
        if let Some(cpu) = self.server_cpu {
            let per_gb = self
                .server_seconds_per_gb()
                .map(|s| format!(", {s:.2} CPU s/GB"))
                .unwrap_or_default();
            if cpu >= 95.0 {
                println!("  server:     {cpu:.0}% of one core{per_gb}: server saturated");
            } else {
                println!(
                    "  server:     {cpu:.0}% of one core{per_gb}: NOT saturated -- these figures \
                     are a lower bound of what the server can do"
                );
            }
        }
    }
}

/// Progress: one line per second on stderr, rewritten in place on a terminal.
struct Progress {
    tty: bool,
    next: Instant,
    last_msgs: u64,
    last_at: Instant,
    size: usize,
    unit: &'static str,
}

impl Progress {
    fn new(size: usize, unit: &'static str) -> Progress {
        let now = Instant::now();
        Progress {
            tty: std::io::stderr().is_terminal(),
            next: now + Duration::from_secs(1),
            last_msgs: 0,
            last_at: now,
            size,
            unit,
        }
    }

    fn tick(&mut self, now: Instant, msgs: u64, phase: &str) {
        if now < self.next {
            return;
        }
        let dt = now.duration_since(self.last_at).as_secs_f64().max(1e-9);
        let rate = (msgs - self.last_msgs) as f64 / dt;
        let mib = rate * self.size as f64 / (1024.0 * 1024.0);
        let mut line = format!("{phase}: {rate:.0} {}/s", self.unit);
        if self.size > 0 {
            line += &format!(", {mib:.2} MiB/s");
        }
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        self.last_msgs = msgs;
        self.last_at = now;
        self.next = now + Duration::from_secs(1);
    }

    fn done(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

/// One connection of an echo or broadcast run.
struct Conn {
    sock: TcpStream,
    rx: Rx,
    deflate: Option<Box<Deflate>>,
    /// The pre-encoded, masked frames of the messages in flight (uncompressed runs).
    batch: Vec<u8>,
    /// Offset of each frame's payload in `batch`, and its masking key.
    slots: Vec<(usize, [u8; 4])>,
    frame_len: usize,
    /// Frames built for this batch (compressed runs, control frames).
    out: Vec<u8>,
    /// What is left to write, in `out` or in `batch`.
    pending: std::ops::Range<usize>,
    pending_in_out: bool,
    /// Control frames to send once the batch being written is out.
    ctrl: Vec<u8>,
    /// Messages that may be sent.
    owed: usize,
    /// The sequence number of the next message sent.
    sent: u32,
    /// Send time of each message in flight, by sequence number modulo its length.
    sent_at: Vec<Instant>,
    alive: bool,
    close_received: bool,
}

/// What all connections of a run share.
struct Shared {
    payload: Payload,
    rng: Rng,
    plain: Vec<u8>,
    compressed: Vec<u8>,
    inflated: Vec<u8>,
    rbuf: Vec<u8>,
    sending: bool,
}

/// Read buffer shared by all connections: one read takes at most this much.
const READ_BUFFER: usize = 256 * 1024;

impl Conn {
    fn new(opened: wire::Opened, shared: &mut Shared, in_flight: usize) -> std::io::Result<Conn> {
        let p = &shared.payload;
        let mut batch = Vec::new();
        let mut slots = Vec::new();
        let deflate = wire::codec(opened.deflate);
        if deflate.is_none() {
            for _ in 0..in_flight {
                let key = shared.rng.key();
                let at = wire::push_frame(&mut batch, p.opcode, false, key, &p.template);
                slots.push((at, key));
            }
        }
        let frame_len = batch.len() / in_flight.max(1);
        let mut rx = Rx::new();
        rx.carry = opened.extra;
        Ok(Conn {
            sock: TcpStream::from_std(opened.sock),
            rx,
            deflate,
            batch,
            slots,
            frame_len,
            out: Vec::new(),
            pending: 0..0,
            pending_in_out: false,
            ctrl: Vec::new(),
            owed: in_flight,
            sent: 0,
            sent_at: vec![Instant::now(); in_flight.max(1)],
            alive: true,
            close_received: false,
        })
    }

    /// Writes what can be written: the rest of the batch, control frames, then a new batch
    /// of the messages owed (one system call for all of them).
    fn flush(&mut self, shared: &mut Shared) -> std::io::Result<()> {
        loop {
            if !self.pending.is_empty() {
                let buf = if self.pending_in_out {
                    &self.out
                } else {
                    &self.batch
                };
                match self.sock.write(&buf[self.pending.clone()]) {
                    Ok(n) => self.pending.start += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            if !self.ctrl.is_empty() {
                self.out.clear();
                self.out.append(&mut self.ctrl);
                self.pending = 0..self.out.len();
                self.pending_in_out = true;
                continue;
            }
            if self.owed == 0 || !shared.sending {
                return Ok(());
            }
            let n = std::mem::take(&mut self.owed);
            let now = Instant::now();
            let p = &shared.payload;
            let ring = self.sent_at.len();
            if let Some(d) = self.deflate.as_deref_mut() {
                self.out.clear();
                for i in 0..n {
                    let seq = self.sent.wrapping_add(i as u32);
                    p.message(seq, &mut shared.plain);
                    shared.compressed.clear();
                    d.compress(&shared.plain, true, &mut shared.compressed);
                    let key = shared.rng.key();
                    wire::push_frame(&mut self.out, p.opcode, true, key, &shared.compressed);
                    self.sent_at[seq as usize % ring] = now;
                }
                self.pending = 0..self.out.len();
                self.pending_in_out = true;
            } else {
                let seq_len = wire::SEQ_LEN.min(p.size());
                for (i, &(at, key)) in self.slots[..n].iter().enumerate() {
                    let seq = self.sent.wrapping_add(i as u32);
                    let hex = wire::hex8(seq);
                    for j in 0..seq_len {
                        self.batch[at + j] = hex[j] ^ key[j & 3];
                    }
                    self.sent_at[seq as usize % ring] = now;
                }
                self.pending = 0..n * self.frame_len;
                self.pending_in_out = false;
            }
            self.sent = self.sent.wrapping_add(n as u32);
        }
    }

    /// Reads until the socket is drained, scanning as it goes; `on_messages(first_seq,
    /// count, bad, now)` is called after each read that completed messages. Returns `false`
    /// at end of stream.
    fn read(
        &mut self,
        shared: &mut Shared,
        mut on_messages: impl FnMut(u32, u32, u32, Instant),
    ) -> Result<bool, String> {
        let rbuf = &mut shared.rbuf;
        let mut have = self.rx.carry.len();
        rbuf[..have].copy_from_slice(&self.rx.carry);
        self.rx.carry.clear();
        let mut open = true;
        loop {
            let space = rbuf.len() - have;
            match self.sock.read(&mut rbuf[have..]) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => {
                    let now = Instant::now();
                    let total = have + n;
                    let first = self.rx.next_seq;
                    let mut scan = Scan::default();
                    let used = self.rx.scan(
                        &rbuf[..total],
                        &shared.payload,
                        self.deflate.as_deref_mut(),
                        &mut shared.inflated,
                        &mut scan,
                    )?;
                    rbuf.copy_within(used..total, 0);
                    have = total - used;
                    if scan.messages > 0 {
                        on_messages(first, scan.messages, scan.bad, now);
                    }
                    for pong in scan.pongs {
                        let key = shared.rng.key();
                        wire::push_frame(
                            &mut self.ctrl,
                            sockeye::proto::OpCode::Pong,
                            false,
                            key,
                            &pong,
                        );
                    }
                    self.close_received |= scan.close;
                    if n < space {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        self.rx.carry.extend_from_slice(&rbuf[..have]);
        Ok(open)
    }

    fn outstanding(&self) -> u32 {
        self.sent.wrapping_sub(self.rx.next_seq)
    }
}

/// Runs `sockeye bench`.
pub(crate) fn run(args: BenchArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sockeye bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: BenchArgs) -> Result<ExitCode, String> {
    let uri: http::Uri = args.uri.parse().map_err(|e| format!("{}: {e}", args.uri))?;
    let addr = wire::resolve(&uri)?;
    if args.connections == 0 || args.in_flight == 0 {
        return Err("--connections and --in-flight must be at least 1".into());
    }
    let times_ok = args.duration > 0.0 && args.warmup >= 0.0;
    if !times_ok {
        return Err("--duration must be positive and --warmup not negative".into());
    }
    let text = !args.binary;
    let config = wire::client_config(args.compression);
    let mut shared = Shared {
        payload: Payload::new(args.size, text),
        rng: Rng::new(),
        plain: Vec::new(),
        compressed: Vec::new(),
        inflated: Vec::new(),
        rbuf: vec![0; READ_BUFFER],
        sending: true,
    };
    let mut stats = Stats::new();
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let poll_timeout = (!args.busy_poll).then_some(Duration::from_millis(100));

    let (seconds, cpu, compression) =
        match args.mode {
            Mode::Handshake => {
                let (seconds, cpu) = handshakes::run(
                    addr,
                    &uri,
                    &config,
                    &mut shared.rng,
                    handshakes::Settings {
                        connections: args.connections,
                        warmup,
                        duration,
                        busy_poll: args.busy_poll,
                        server_pid: args.server_pid,
                    },
                    &mut stats,
                )?;
                (seconds, cpu, None)
            }
            Mode::Echo | Mode::Broadcast => {
                let broadcast = args.mode == Mode::Broadcast;
                let poll = Poll::new().map_err(|e| e.to_string())?;
                let mut conns = Vec::with_capacity(args.connections + 1);
                let mut compression = None;
                let total = args.connections + usize::from(broadcast);
                for i in 0..total {
                    let opened = wire::open(addr, &uri, &config, &mut shared.rng)
                        .map_err(|e| format!("connection {}: {e}", i + 1))?;
                    if args.compression && compression.is_none() {
                        compression =
                            Some(match &opened.deflate {
                                Some(p) => {
                                    format!(
                            "permessage-deflate (context takeover: client {}, server {}; \
                             window bits: client {}, server {})",
                            if p.client_no_context_takeover { "no" } else { "yes" },
                            if p.server_no_context_takeover { "no" } else { "yes" },
                            p.client_max_window_bits,
                            p.server_max_window_bits
                        )
                                }
                                None => "compression offered, not accepted".to_owned(),
                            });
                    }
                    let mut c = Conn::new(opened, &mut shared, args.in_flight)
                        .map_err(|e| e.to_string())?;
                    if broadcast {
                        // Subscribers send nothing; the publisher is the last connection.
                        c.owed = if i == args.connections {
                            args.in_flight
                        } else {
                            0
                        };
                        c.rx.discard = i == args.connections;
                    }
                    poll.registry()
                        .register(
                            &mut c.sock,
                            Token(i),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .map_err(|e| e.to_string())?;
                    conns.push(c);
                }
                if broadcast {
                    // Let the relay put the last subscribers in their topic.
                    std::thread::sleep(Duration::from_millis(100 + args.connections as u64 / 50));
                }
                let settings = LoopSettings {
                    warmup,
                    duration,
                    poll_timeout,
                    broadcast,
                    in_flight: args.in_flight,
                    server_pid: args.server_pid,
                    size: args.size,
                };
                let (seconds, cpu) = run_loop(poll, &mut conns, &mut shared, &mut stats, settings);
                (seconds, cpu, compression)
            }
        };
    let us = |q: f64| stats.hist.quantile(q) as f64 / 1000.0;
    let report = Report {
        mode: args.mode,
        uri: args.uri.clone(),
        connections: args.connections,
        size: args.size,
        in_flight: args.in_flight,
        text,
        compression,
        busy_poll: args.busy_poll,
        seconds,
        msgs: stats.msgs,
        errors: stats.errors,
        first_error: stats.first_error.clone(),
        p50: us(0.5),
        p99: us(0.99),
        p999: us(0.999),
        max: stats.hist.max() as f64 / 1000.0,
        own_cpu: cpu.0,
        server_cpu: cpu.1,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        report.print();
    }
    Ok(if report.errors == 0 && report.msgs > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

struct LoopSettings {
    warmup: Duration,
    duration: Duration,
    poll_timeout: Option<Duration>,
    broadcast: bool,
    in_flight: usize,
    server_pid: Option<u32>,
    size: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Warmup,
    Measure,
    /// No more sends; waiting for what is in flight.
    Drain,
    /// Close frames sent; waiting for the server's.
    Close,
}

/// The echo and broadcast loop. Returns the seconds measured and the CPU figures.
fn run_loop(
    mut poll: Poll,
    conns: &mut [Conn],
    shared: &mut Shared,
    stats: &mut Stats,
    s: LoopSettings,
) -> (f64, CpuUse) {
    let mut events = Events::with_capacity(1024);
    let unit = if s.broadcast { "deliveries" } else { "msgs" };
    let mut progress = Progress::new(s.size, unit);
    let subscribers = if s.broadcast {
        conns.len() - 1
    } else {
        conns.len()
    };
    // Broadcast: deliveries of each broadcast in flight, by sequence number modulo in_flight.
    let mut delivered = vec![0usize; s.in_flight];
    let mut credit = 0usize;
    let mut phase = Phase::Warmup;
    let start = Instant::now();
    let mut phase_end = start + s.warmup;
    let mut cpu = None;
    let mut cpu_result = (None, None);
    let mut measured = (start, start);
    let mut last_delivery = start;

    // First batches.
    for c in conns.iter_mut() {
        if let Err(e) = c.flush(shared) {
            stats.error(format!("write: {e}"));
            c.alive = false;
        }
    }
    loop {
        let now = Instant::now();
        match phase {
            Phase::Warmup if now >= phase_end => {
                phase = Phase::Measure;
                stats.measuring = true;
                cpu = Some(CpuMeter::start(s.server_pid));
                measured.0 = now;
                phase_end = now + s.duration;
            }
            Phase::Measure if now >= phase_end => {
                stats.measuring = false;
                measured.1 = now;
                cpu_result = cpu.as_ref().map_or((None, None), CpuMeter::stop);
                phase = Phase::Drain;
                shared.sending = false;
                phase_end = now + Duration::from_secs(2);
            }
            Phase::Drain => {
                let idle = if s.broadcast {
                    delivered.iter().all(|&d| d == 0)
                } else {
                    conns.iter().all(|c| !c.alive || c.outstanding() == 0)
                };
                if idle || now >= phase_end {
                    phase = Phase::Close;
                    phase_end = now + Duration::from_secs(1);
                    for c in conns.iter_mut().filter(|c| c.alive) {
                        c.ctrl.extend(wire::close_frame(shared.rng.key()));
                        if c.flush(shared).is_err() {
                            c.alive = false;
                        }
                    }
                }
            }
            Phase::Close
                if now >= phase_end || conns.iter().all(|c| !c.alive || c.close_received) =>
            {
                break;
            }
            _ => {}
        }
        if s.broadcast
            && phase <= Phase::Measure
            && now.duration_since(last_delivery) > Duration::from_secs(3)
        {
            stats.error("broadcast stalled: no delivery for 3 s (is it a relay?)");
            break;
        }
        if conns.iter().all(|c| !c.alive) {
            break;
        }
        if phase <= Phase::Measure {
            let label = if phase == Phase::Warmup {
                "warm-up"
            } else {
                "measuring"
            };
            progress.tick(now, stats.progress_msgs, label);
        }

        let timeout = s
            .poll_timeout
            .map(|t| t.min(phase_end.saturating_duration_since(now)));
        if let Err(e) = poll.poll(&mut events, Some(timeout.unwrap_or(Duration::ZERO))) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                stats.error(format!("poll: {e}"));
                break;
            }
        }
        let (subs, mut publisher) = if s.broadcast {
            let (a, b) = conns.split_at_mut(subscribers);
            (a, b.first_mut())
        } else {
            (&mut conns[..], None)
        };
        for event in events.iter() {
            let i = event.token().0;
            let is_publisher = s.broadcast && i == subscribers;
            let (c, times_owner) = if is_publisher {
                match publisher.as_deref_mut() {
                    Some(p) => (p, None),
                    None => continue,
                }
            } else {
                match subs.get_mut(i) {
                    Some(c) => (c, publisher.as_deref_mut()),
                    None => continue,
                }
            };
            if !c.alive {
                continue;
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                let result = if !s.broadcast {
                    let ring = c.sent_at.len();
                    let sent_at = std::mem::take(&mut c.sent_at);
                    let r = c.read(shared, |first, n, bad, now| {
                        for k in 0..n {
                            let seq = first.wrapping_add(k) as usize;
                            stats.message(now.duration_since(sent_at[seq % ring]));
                        }
                        stats.wrong(bad, "wrong echoes");
                    });
                    c.sent_at = sent_at;
                    r
                } else if is_publisher {
                    c.read(shared, |_, _, _, _| {})
                } else {
                    let owner = times_owner.expect("a publisher");
                    let pub_times = std::mem::take(&mut owner.sent_at);
                    let ring = pub_times.len();
                    let r = c.read(shared, |first, n, bad, now| {
                        last_delivery = now;
                        for k in 0..n {
                            let seq = first.wrapping_add(k) as usize;
                            stats.message(now.duration_since(pub_times[seq % ring]));
                            let d = &mut delivered[seq % ring];
                            *d += 1;
                            if *d == subscribers {
                                *d = 0;
                                credit += 1;
                            }
                        }
                        stats.wrong(bad, "wrong deliveries");
                    });
                    owner.sent_at = pub_times;
                    r
                };
                match result {
                    Ok(true) => {}
                    Ok(false) => {
                        if phase < Phase::Close && !c.close_received {
                            stats.error("the server closed the connection");
                        }
                        c.close_received = true;
                        c.alive = false;
                    }
                    Err(e) => {
                        stats.error(e);
                        c.alive = false;
                    }
                }
                if !s.broadcast {
                    // Each echo lets one more message go.
                    let arrived = c.rx.next_seq;
                    let owed_total = arrived.wrapping_sub(c.sent.wrapping_sub(s.in_flight as u32));
                    c.owed = owed_total as usize;
                }
            }
            if c.alive {
                if let Err(e) = c.flush(shared) {
                    stats.error(format!("write: {e}"));
                    c.alive = false;
                }
            }
        }
        if credit > 0 {
            if let Some(p) = publisher {
                p.owed += std::mem::take(&mut credit);
                if p.alive {
                    if let Err(e) = p.flush(shared) {
                        stats.error(format!("write: {e}"));
                        p.alive = false;
                    }
                }
            }
        }
    }
    progress.done();
    if measured.1 <= measured.0 {
        // Stopped early (every connection failed): report what was measured.
        measured.1 = Instant::now();
        cpu_result = cpu.as_ref().map_or((None, None), CpuMeter::stop);
    }
    (
        measured.1.duration_since(measured.0).as_secs_f64(),
        cpu_result,
    )
}
