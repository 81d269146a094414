//! Fuzz target `client_connection`: runs `oracles::client_connection` (see crates/sockeye-proto/tests/oracles/mod.rs,
//! shared with the stable harness `crates/sockeye-proto/tests/fuzz_harness.rs`).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/sockeye-proto/tests/oracles/mod.rs"]
mod oracles;

fuzz_target!(|data: &[u8]| oracles::client_connection(data));
