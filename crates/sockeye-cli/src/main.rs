//! The `sockeye` command.
#![forbid(unsafe_code)]

fn main() {
    eprintln!(
        "sockeye {}: commands arrive with the tokio front end",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
