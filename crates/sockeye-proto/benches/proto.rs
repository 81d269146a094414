//! Micro-benchmarks of sockeye-proto.
fn main() {}
