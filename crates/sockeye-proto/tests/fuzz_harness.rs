//! The fuzz targets' oracles on stable Rust, without libFuzzer.
//!
//! Each test runs one oracle of `tests/oracles/mod.rs` (the same code the cargo-fuzz targets in
//! `fuzz/` run) over every seed of its corpus in `fuzz/corpus/<target>/`, then over a few
//! thousand deterministic inputs: mutations of the seeds (bit flips, byte changes,
//! truncations, insertions, deletions, duplications, splices) and plain pseudo-random bytes.
//!
//! `SOCKEYE_FUZZ_ITERS` sets the number of generated inputs per target (default 3000) and
//! `SOCKEYE_FUZZ_SEED` the PRNG seed (default fixed), for a longer or different run.
//! A failing input is written to `$CARGO_TARGET_TMPDIR/fuzz-harness/<target>-failure.bin`;
//! replay it with `cargo fuzz run <target> that-file` or add it to the corpus.

mod oracles;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// splitmix64: small, fast, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Byte values that sit on boundaries of the wire format: lengths 125/126/127, FIN and mask
/// bits, opcodes, CR/LF, ASCII delimiters, UTF-8 lead bytes.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x02, 0x08, 0x09, 0x0a, 0x0d, 0x20, 0x2c, 0x3a, 0x3b, 0x3d, 0x40, 0x7d, 0x7e, 0x7f,
    0x80, 0x81, 0x82, 0x88, 0x89, 0x8a, 0xc0, 0xc1, 0xe0, 0xed, 0xf0, 0xf4, 0xfe, 0xff,
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(9) {
            // Flip one bit.
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            // Set a byte to an interesting value.
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            // Set a byte to anything.
            2 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.byte();
            }
            // Truncate.
            3 if len > 0 => input.truncate(rng.below(len)),
            // Insert random bytes.
            4 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes = rng.bytes(n);
                input.splice(at..at, bytes);
            }
            // Delete a range.
            5 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(32));
                input.drain(at..at + n);
            }
            // Duplicate a range (repeats frames and header lines).
            6 if len > 0 && len < 16 * 1024 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(256));
                let copy = input[at..at + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, copy);
            }
            // Splice: our head, another seed's tail.
            7 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            // Overwrite two bytes with a big-endian 16-bit boundary length.
            8 if len > 1 => {
                let i = rng.below(len - 1);
                let v: u16 = [0, 1, 125, 126, 127, 128, 255, 256, 0x7fff, 0xffff][rng.below(10)];
                input[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
            _ => input.push(rng.byte()),
        }
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// The seed files of a target, sorted by name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seed-* files in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

fn iterations() -> usize {
    std::env::var("SOCKEYE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn prng_seed() -> u64 {
    std::env::var("SOCKEYE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0073_6f63_6b65_7965)
}

/// Runs the oracle on one input; on a panic, saves the input and fails with its description.
fn check(target: &str, oracle: fn(&[u8]), what: &str, input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| oracle(input))).is_ok() {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-harness");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-failure.bin"));
    let saved = match std::fs::write(&path, input) {
        Ok(()) => format!("saved to {}", path.display()),
        Err(e) => format!("could not save it: {e}"),
    };
    let shown = &input[..input.len().min(64)];
    panic!(
        "oracle {target} failed on {what} ({} bytes, {saved}); first bytes: {shown:02x?}",
        input.len()
    );
}

/// The seeds, then mutations of them and random inputs, through one oracle.
fn run(target: &str, oracle: fn(&[u8])) {
    let seeds = seeds(target);
    for (name, bytes) in &seeds {
        check(target, oracle, name, bytes);
    }
    let pool: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    // One stream per target, so adding a target does not change the others' inputs.
    let mut rng = Rng(prng_seed()
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    for i in 0..iterations() {
        let input = if i % 8 == 7 {
            // Plain random bytes, mostly short.
            let max = if rng.below(4) == 0 { 2048 } else { 96 };
            let n = rng.below(max);
            rng.bytes(n)
        } else {
            let mut input = pool[rng.below(pool.len())].clone();
            mutate(&mut rng, &mut input, &pool);
            input
        };
        check(target, oracle, &format!("generated input #{i}"), &input);
    }
}

#[test]
fn frame_decode() {
    run("frame_decode", oracles::frame_decode);
}

#[test]
fn handshake_request() {
    run("handshake_request", oracles::handshake_request);
}

#[test]
fn handshake_response() {
    run("handshake_response", oracles::handshake_response);
}

#[test]
fn server_connection() {
    run("server_connection", oracles::server_connection);
}

#[test]
fn client_connection() {
    run("client_connection", oracles::client_connection);
}
